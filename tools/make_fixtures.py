#!/usr/bin/env python3
"""Generate the reference fixtures that the Rust tests of `implicit` compare against.

Pinned reference stack (see tools/requirements-fixtures.txt):

    torch==2.9.1
    transformers==4.57.1
    safetensors, numpy (unpinned helpers)

Run it in a throwaway venv from the repository root:

    python -m venv /tmp/fx && /tmp/fx/bin/pip install -r tools/requirements-fixtures.txt
    /tmp/fx/bin/python tools/make_fixtures.py --out tests/fixtures

(`--out` defaults to tests/fixtures.)  Everything runs on the CPU in float32,
single-threaded, with `torch.manual_seed` and
`torch.use_deterministic_algorithms(True)`; CUDA is hidden before torch is
imported, so the GPU machine can run the script too (it simply ignores the
GPU) and should reproduce the same files.  Different CPUs / BLAS builds may
differ in the last ulp, so Rust tests should compare with tolerances.

Fixtures written (each well under 1 MB; the whole tree stays < 2 MB):

  <out>/llama-gqa/  LlamaForCausalLM, grouped-query attention (4 q heads, 2 kv heads)
  <out>/olmo/       OlmoForCausalLM (model_type "olmo", as OLMo-7B-Feb2024-hf:
                    non-parametric LayerNorm, SwiGLU, RoPE, clip_qkv), tied embeddings

Each folder holds
  config.json, generation_config.json, model.safetensors   (model.save_pretrained,
                      safe_serialization=True; tied lm_head.weight is absent)
  expected.safetensors  input_ids, logits, labels, loss, grad_norm, greedy_ids,
                        grad.<param>, adamw.<param>
  expected.json         hyper-parameters, versions, seed, shapes, loss definition, ...

The script checks its own outputs before saving (reload reproduces the logits
exactly, loss formula recomputed in float64, HF's token-mean loss agrees with
the label convention, AdamW step recomputed by hand, greedy generation
recomputed by a cache-free argmax loop, clip_qkv actually clips).
"""

import argparse
import json
import os
import sys

# CPU only: hide any GPU before torch is imported.
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import safetensors  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import (  # noqa: E402
    LlamaConfig,
    LlamaForCausalLM,
    OlmoConfig,
    OlmoForCausalLM,
)

PINNED_TORCH = "2.9.1"
PINNED_TRANSFORMERS = "4.57.1"

SEED = 20240229
BATCH, SEQ = 2, 12
PROMPT_MASK = (5, 7)  # first 5 labels of row 0 and first 7 of row 1 are -100
GEN_PROMPT_LEN, GEN_NEW_TOKENS = 4, 8
BOS, EOS, PAD = 1, 2, 0

INIT_STD = 0.2  # normal(0, 0.2) for every matrix
NORM_JITTER = 0.1  # norm weights = 1 + 0.1 * normal
OLMO_CLIP_QKV = 1.0

ADAMW = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
MAX_GRAD_NORM = 1.0

LOSS_DEFINITION = (
    "Per-example mean token loss. logits[b, t] predicts labels[b, t + 1] (HF causal shift; labels are "
    "input_ids with prompt positions set to -100). For each row b: "
    "loss_b = mean over t in [0, T-2] with labels[b, t+1] != -100 of "
    "-log_softmax(logits[b, t])[labels[b, t+1]]; loss = mean over rows of loss_b. Row 0 has "
    "7 target tokens (labels[0, 5:12]), row 1 has 5 (labels[1, 7:12]). Forward and backward run in "
    "float32 (the stored loss, grads and AdamW results come from that float32 graph); the float64 "
    "recomputation of the same formula from the float32 logits is stored as loss_f64_from_logits. "
    "This is NOT HF's built-in loss (which averages over all 12 unmasked tokens of the batch)."
)

ADAMW_DEFINITION = (
    "One torch.optim.AdamW(foreach=False) step (step=1, zero-initialised moments) on the grads after "
    "torch.nn.utils.clip_grad_norm_(params, max_norm=1.0) (global L2 norm over all parameters; "
    "grads are scaled by min(1, 1.0 / (grad_norm + 1e-6)); grad_norm is the pre-clip norm). "
    "Update per element: p <- p * (1 - lr * weight_decay); m = (1 - b1) * g; v = (1 - b2) * g^2; "
    "p <- p - lr * (m / (1 - b1)) / (sqrt(v) / sqrt(1 - b2) + eps)."
)


def fail(msg):
    raise SystemExit(f"FIXTURE CHECK FAILED: {msg}")


def reinit_(model, seed):
    """Re-initialise every parameter with a larger std so the logits are far from uniform."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied weights are listed once
            if name.endswith("norm.weight"):
                p.copy_(1.0 + NORM_JITTER * torch.randn(p.shape, generator=g, dtype=torch.float32))
            elif p.dim() >= 2:
                p.copy_(INIT_STD * torch.randn(p.shape, generator=g, dtype=torch.float32))
            else:  # biases (none in these configs)
                p.copy_(INIT_STD * torch.randn(p.shape, generator=g, dtype=torch.float32))


def make_inputs(vocab, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (BATCH, SEQ), generator=g, dtype=torch.int64)
    ids[:, 0] = BOS
    labels = ids.clone()
    for b, n in enumerate(PROMPT_MASK):
        labels[b, :n] = -100
    return ids, labels


def per_example_loss(logits, labels):
    """Per-example mean token loss (see LOSS_DEFINITION), in the dtype of `logits`."""
    shift_logits = logits[:, :-1, :]
    shift_labels = labels[:, 1:]
    per_row = []
    for b in range(logits.shape[0]):
        mask = shift_labels[b] != -100
        lp = F.log_softmax(shift_logits[b][mask], dim=-1)
        nll = -lp.gather(-1, shift_labels[b][mask].unsqueeze(-1)).squeeze(-1)
        per_row.append(nll.mean())
    return torch.stack(per_row).mean(), [int((shift_labels[b] != -100).sum()) for b in range(logits.shape[0])]


def per_example_loss_f64_numpy(logits, labels):
    """Independent float64 numpy recomputation of the same formula."""
    lg = logits.detach().numpy().astype(np.float64)
    lb = labels.numpy()
    rows = []
    for b in range(lg.shape[0]):
        nll = []
        for t in range(lg.shape[1] - 1):
            y = lb[b, t + 1]
            if y == -100:
                continue
            z = lg[b, t]
            m = z.max()
            lse = m + np.log(np.exp(z - m).sum())
            nll.append(lse - z[y])
        rows.append(np.mean(nll))
    return float(np.mean(rows))


def manual_adamw(p0, g):
    lr, (b1, b2), eps, wd = ADAMW["lr"], ADAMW["betas"], ADAMW["eps"], ADAMW["weight_decay"]
    p0 = p0.double()
    g = g.double()
    p = p0 * (1 - lr * wd)
    m = (1 - b1) * g
    v = (1 - b2) * g * g
    denom = v.sqrt() / np.sqrt(1 - b2) + eps
    return p - lr * (m / (1 - b1)) / denom


def greedy_manual(model, prompt, n_new):
    ids = prompt.clone()
    with torch.no_grad():
        for _ in range(n_new):
            nxt = model(ids).logits[:, -1, :].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=-1)
    return ids


def fsize(path):
    return os.path.getsize(path)


def build_fixture(name, model_cls, config, out_root, seed, notes):
    out = os.path.join(out_root, name)
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32)
    model.train(False)  # no dropout anyway (attention_dropout 0); use inference mode semantics
    reinit_(model, seed + 1)
    tied = bool(config.tie_word_embeddings)
    if tied:
        if model.lm_head.weight is not model.model.embed_tokens.weight:
            fail(f"{name}: lm_head.weight is not tied to embed_tokens")
    else:
        if model.lm_head.weight is model.model.embed_tokens.weight:
            fail(f"{name}: lm_head.weight unexpectedly tied")

    input_ids, labels = make_inputs(config.vocab_size, seed + 2)

    # --- clip_qkv instrumentation (pre-clamp q/k/v projection outputs) ---
    clip = getattr(config, "clip_qkv", None)
    captured = {"q": [], "k": [], "v": []}
    hooks = []
    if clip is not None:
        for layer in model.model.layers:
            for key, mod in (("q", layer.self_attn.q_proj), ("k", layer.self_attn.k_proj), ("v", layer.self_attn.v_proj)):
                hooks.append(mod.register_forward_hook(lambda m, i, o, key=key: captured[key].append(o.detach().clone())))

    # --- forward + per-example loss + backward (float32) ---
    model.zero_grad(set_to_none=True)
    out_f = model(input_ids=input_ids)
    logits = out_f.logits
    if logits.dtype != torch.float32 or tuple(logits.shape) != (BATCH, SEQ, config.vocab_size):
        fail(f"{name}: logits {logits.dtype} {tuple(logits.shape)}")
    loss, n_targets = per_example_loss(logits, labels)
    loss.backward()
    loss = loss.detach()
    for h in hooks:
        h.remove()

    clip_stats = None
    if clip is not None:
        clip_stats = {}
        tot_n = tot_c = 0
        for key in ("q", "k", "v"):
            x = torch.cat([t.reshape(-1) for t in captured[key]])
            c = int((x.abs() > clip).sum())
            clip_stats[key] = {"clipped": c, "total": x.numel(), "fraction": c / x.numel(),
                               "max_abs_pre_clip": float(x.abs().max())}
            tot_n += x.numel()
            tot_c += c
        clip_stats["all"] = {"clipped": tot_c, "total": tot_n, "fraction": tot_c / tot_n}
        if not (0.02 <= tot_c / tot_n <= 0.6):
            fail(f"{name}: clip fraction {tot_c / tot_n:.3f} not in a meaningful range")
        for key in ("q", "k", "v"):
            if clip_stats[key]["clipped"] == 0:
                fail(f"{name}: clip_qkv never clips {key}")

    logits_ref = logits.detach().clone()
    max_abs_logit = float(logits_ref.abs().max())
    if float(logits_ref.std()) < 0.5:
        fail(f"{name}: logits too close to uniform (std {float(logits_ref.std())})")

    # loss checks
    loss_f64_torch = float(per_example_loss(logits_ref.double(), labels)[0])
    loss_f64_np = per_example_loss_f64_numpy(logits_ref, labels)
    if abs(loss_f64_torch - loss_f64_np) > 1e-12 * max(1.0, abs(loss_f64_np)):
        fail(f"{name}: f64 loss torch {loss_f64_torch} vs numpy {loss_f64_np}")
    if abs(float(loss) - loss_f64_np) > 1e-5 * max(1.0, abs(loss_f64_np)):
        fail(f"{name}: f32 loss {float(loss)} vs f64 {loss_f64_np}")
    # label convention: HF's own (token-mean) loss must equal the token-mean of our shifted targets
    with torch.no_grad():
        hf_loss = float(model(input_ids=input_ids, labels=labels).loss)
        sl = labels[:, 1:].reshape(-1)
        tok_mean = float(F.cross_entropy(logits_ref[:, :-1].reshape(-1, config.vocab_size).double(), sl,
                                         ignore_index=-100))
    if abs(hf_loss - tok_mean) > 1e-5:
        fail(f"{name}: HF token-mean loss {hf_loss} vs ours {tok_mean} (label shift convention)")

    # grads
    named = list(model.named_parameters())  # tied params appear once (under the embedding name)
    grads = {}
    for pname, p in named:
        if p.grad is None:
            fail(f"{name}: no grad for {pname}")
        if not torch.isfinite(p.grad).all() or float(p.grad.abs().max()) == 0.0:
            fail(f"{name}: bad grad for {pname}")
        grads[pname] = p.grad.detach().clone()
    if tied and any(n == "lm_head.weight" for n, _ in named):
        fail(f"{name}: lm_head.weight listed separately despite tying")

    # clip + AdamW
    params_before = {pname: p.detach().clone() for pname, p in named}
    grad_norm = torch.nn.utils.clip_grad_norm_([p for _, p in named], max_norm=MAX_GRAD_NORM)
    gn_manual = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values())))
    if abs(float(grad_norm) - gn_manual) > 1e-5 * gn_manual:
        fail(f"{name}: grad_norm {float(grad_norm)} vs {gn_manual}")
    clip_coef = min(1.0, MAX_GRAD_NORM / (float(grad_norm) + 1e-6))
    opt = torch.optim.AdamW([p for _, p in named], lr=ADAMW["lr"], betas=ADAMW["betas"], eps=ADAMW["eps"],
                            weight_decay=ADAMW["weight_decay"], foreach=False)
    opt.step()
    adamw = {}
    for pname, p in named:
        adamw[pname] = p.detach().clone()
        ref = manual_adamw(params_before[pname], p.grad.detach())
        if not torch.allclose(adamw[pname].double(), ref, rtol=1e-6, atol=1e-7):
            fail(f"{name}: AdamW mismatch for {pname}")
        g_clipped_ref = grads[pname] * clip_coef
        if not torch.allclose(p.grad, g_clipped_ref, rtol=1e-5, atol=1e-9):
            fail(f"{name}: clipped grad mismatch for {pname}")
    # restore the original weights for saving / generation
    with torch.no_grad():
        for pname, p in named:
            p.copy_(params_before[pname])
    model.zero_grad(set_to_none=True)

    # --- save model (HF layout) and verify reload ---
    model.save_pretrained(out, safe_serialization=True)
    with safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    if tied and "lm_head.weight" in keys:
        fail(f"{name}: lm_head.weight saved despite tie_word_embeddings")
    if not tied and "lm_head.weight" not in keys:
        fail(f"{name}: lm_head.weight missing")
    if keys != {n for n, _ in named}:
        fail(f"{name}: saved keys {sorted(keys)} != parameter names")
    reloaded = model_cls.from_pretrained(out, dtype=torch.float32, attn_implementation="eager")
    reloaded.train(False)
    with torch.no_grad():
        l2 = reloaded(input_ids=input_ids).logits
        l1 = model(input_ids=input_ids).logits
    if not torch.equal(l2, logits_ref) or not torch.equal(l1, logits_ref):
        fail(f"{name}: reloaded logits differ (max {float((l2 - logits_ref).abs().max())})")
    if tied and reloaded.lm_head.weight is not reloaded.model.embed_tokens.weight:
        fail(f"{name}: reloaded model is not tied")

    # --- greedy generation (no eos stopping) ---
    prompt = input_ids[:1, :GEN_PROMPT_LEN].clone()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = PAD
    model.generation_config.bos_token_id = BOS
    with torch.no_grad():
        greedy = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                max_new_tokens=GEN_NEW_TOKENS, eos_token_id=None, pad_token_id=PAD,
                                num_beams=1, temperature=None, top_p=None, top_k=None)
    if tuple(greedy.shape) != (1, GEN_PROMPT_LEN + GEN_NEW_TOKENS):
        fail(f"{name}: greedy shape {tuple(greedy.shape)}")
    manual = greedy_manual(model, prompt, GEN_NEW_TOKENS)
    if not torch.equal(greedy, manual):
        fail(f"{name}: generate {greedy.tolist()} != cache-free argmax loop {manual.tolist()}")
    if not torch.equal(greedy[:, :GEN_PROMPT_LEN], prompt):
        fail(f"{name}: greedy output does not start with the prompt")

    # --- expected.safetensors ---
    tensors = {
        "input_ids": input_ids.contiguous(),
        "logits": logits_ref.contiguous(),
        "labels": labels.contiguous(),
        "loss": loss.detach().reshape(1).to(torch.float32).contiguous(),
        "grad_norm": grad_norm.detach().reshape(1).to(torch.float32).contiguous(),
        "greedy_ids": greedy.to(torch.int64).contiguous(),
    }
    for pname, g in grads.items():
        tensors[f"grad.{pname}"] = g.contiguous()
    for pname, p in adamw.items():
        tensors[f"adamw.{pname}"] = p.contiguous()
    # A single metadata key: safetensors writes multi-key metadata in hash order, which would make
    # the file bytes differ between runs. Everything descriptive lives in expected.json.
    meta = {"format": "pt"}
    exp_path = os.path.join(out, "expected.safetensors")
    save_file(tensors, exp_path, metadata=meta)

    # --- expected.json ---
    cfg_dict = json.load(open(os.path.join(out, "config.json")))
    info = {
        "fixture": name,
        "model_class": model_cls.__name__,
        "model_type": config.model_type,
        "generator": "tools/make_fixtures.py",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "safetensors": safetensors.__version__, "numpy": np.__version__,
                     "python": sys.version.split()[0]},
        "seed": seed,
        "seeds": {"torch.manual_seed": seed, "reinit_generator": seed + 1, "input_ids_generator": seed + 2},
        "device": "cpu",
        "dtype": "float32",
        "torch_num_threads": torch.get_num_threads(),
        "deterministic_algorithms": True,
        "attn_implementation": "eager",
        "hyperparameters": {k: cfg_dict.get(k) for k in (
            "vocab_size", "hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size",
            "num_hidden_layers", "rope_theta", "rms_norm_eps", "max_position_embeddings",
            "tie_word_embeddings", "attention_bias", "hidden_act", "clip_qkv") if k in cfg_dict},
        "head_dim": config.hidden_size // config.num_attention_heads,
        "init": {"matrices": f"normal(0, {INIT_STD})",
                 "norm_weights": f"1 + {NORM_JITTER} * normal(0, 1)",
                 "order": "model.named_parameters() order, one torch.Generator(seed + 1)"},
        "inputs": {
            "input_ids": input_ids.tolist(),
            "token_range": "input_ids[:, 0] = 1 (bos); others uniform in [3, vocab)",
            "attention_mask": "none (both rows full length, causal)",
            "labels": labels.tolist(),
            "prompt_masked_positions": {"row0": PROMPT_MASK[0], "row1": PROMPT_MASK[1]},
        },
        "loss_definition": LOSS_DEFINITION,
        "loss": float(loss),
        "loss_f64_from_logits": loss_f64_np,
        "targets_per_row": n_targets,
        "hf_builtin_token_mean_loss_for_reference": hf_loss,
        "grad_definition": "grad.<name> = d loss / d param (float32 autograd), unclipped, for every "
                           "model.named_parameters() entry (HF names, tied params listed once).",
        "grad_norm": float(grad_norm),
        "grad_clip": {"max_norm": MAX_GRAD_NORM, "norm_type": 2.0,
                      "clip_coef": clip_coef, "clipped": clip_coef < 1.0},
        "adamw": {"lr": ADAMW["lr"], "betas": list(ADAMW["betas"]), "eps": ADAMW["eps"],
                  "weight_decay": ADAMW["weight_decay"], "amsgrad": False, "maximize": False,
                  "foreach": False, "steps": 1, "definition": ADAMW_DEFINITION},
        "generation": {"prompt": "input_ids[:1, :4]", "do_sample": False, "num_beams": 1,
                       "max_new_tokens": GEN_NEW_TOKENS, "eos_token_id": None, "pad_token_id": PAD,
                       "stored": "full sequence (prompt + new tokens)", "greedy_ids": greedy.tolist(),
                       "note": "no eos stopping: generation ran with eos_token_id=None even though "
                               f"config.json has eos_token_id={cfg_dict.get('eos_token_id')}"},
        "max_abs_logit": max_abs_logit,
        "logits_std": float(logits_ref.std()),
        "tensors": {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)}
                    for k, v in tensors.items()},
        "checks_passed": [
            "from_pretrained reload reproduces logits bit-exactly",
            "f32 loss matches float64 numpy recomputation (rel 1e-5)",
            "HF built-in token-mean loss matches our shifted-label token mean (label convention)",
            "grad_norm matches manual global L2 norm",
            "AdamW result matches the closed-form first step",
            "generate() equals a cache-free greedy argmax loop",
        ] + (["clip_qkv clips q, k and v"] if clip is not None else [])
          + (["model.safetensors has no lm_head.weight (tied)"] if tied else []),
    }
    info.update(notes)
    if clip_stats is not None:
        info["clip_qkv_stats"] = clip_stats
        info["clip_qkv_stats_note"] = ("fraction of q/k/v projection outputs with |x| > clip_qkv "
                                       "in the forward on input_ids (both layers), before clamping")
    if tied:
        info["tied_embeddings_note"] = (
            "tie_word_embeddings=true: lm_head.weight is the same tensor as model.embed_tokens.weight, is "
            "absent from model.safetensors and from grad.*/adamw.*; grad.model.embed_tokens.weight is the SUM of "
            "the input-embedding gradient and the lm_head (output projection) gradient.")
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")

    print(f"[{name}] loss={float(loss):.6f} (f64 {loss_f64_np:.9f}) grad_norm={float(grad_norm):.6f} "
          f"max|logit|={max_abs_logit:.4f} greedy={greedy.tolist()[0]}")
    if clip_stats is not None:
        print(f"[{name}] clip_qkv={clip}: clipped fraction q={clip_stats['q']['fraction']:.4f} "
              f"k={clip_stats['k']['fraction']:.4f} v={clip_stats['v']['fraction']:.4f} "
              f"all={clip_stats['all']['fraction']:.4f}")
    total = 0
    for fn in sorted(os.listdir(out)):
        sz = fsize(os.path.join(out, fn))
        total += sz
        print(f"[{name}]   {fn:24s} {sz:9d} bytes")
    print(f"[{name}]   {'total':24s} {total:9d} bytes")
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="tests/fixtures", help="output root (default: tests/fixtures)")
    ap.add_argument("--allow-other-versions", action="store_true",
                    help="do not abort when torch/transformers differ from the pins")
    args = ap.parse_args()

    tv = torch.__version__.split("+")[0]
    if (tv != PINNED_TORCH or transformers.__version__ != PINNED_TRANSFORMERS) and not args.allow_other_versions:
        raise SystemExit(f"expected torch=={PINNED_TORCH} transformers=={PINNED_TRANSFORMERS}, got "
                         f"torch {torch.__version__} transformers {transformers.__version__} "
                         "(see tools/requirements-fixtures.txt, or pass --allow-other-versions)")

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()

    llama_cfg = LlamaConfig(
        vocab_size=128, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        intermediate_size=64, num_hidden_layers=2, rope_theta=10000.0, rms_norm_eps=1e-5,
        max_position_embeddings=64, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
        hidden_act="silu", bos_token_id=BOS, eos_token_id=EOS, pad_token_id=None,
        attention_dropout=0.0, initializer_range=0.02, dtype="float32",
    )
    llama_cfg._attn_implementation = "eager"
    olmo_cfg = OlmoConfig(
        vocab_size=128, hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
        intermediate_size=64, num_hidden_layers=2, rope_theta=10000.0, max_position_embeddings=64,
        tie_word_embeddings=True, attention_bias=False, hidden_act="silu", clip_qkv=OLMO_CLIP_QKV,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, attention_dropout=0.0,
        initializer_range=0.02, dtype="float32",
    )
    olmo_cfg._attn_implementation = "eager"

    os.makedirs(args.out, exist_ok=True)
    total = 0
    total += build_fixture("llama-gqa", LlamaForCausalLM, llama_cfg, args.out, SEED, {
        "architecture_note": "Llama: RMSNorm (weight, eps 1e-5), SwiGLU MLP, RoPE (rotate_half, "
                             "theta 10000), GQA with 4 query heads sharing 2 kv heads (q heads 0,1 -> "
                             "kv head 0; q heads 2,3 -> kv head 1), untied lm_head.",
    })
    total += build_fixture("olmo", OlmoForCausalLM, olmo_cfg, args.out, SEED + 100, {
        "architecture_note": "OLMo (HF model_type 'olmo', as allenai/OLMo-7B-Feb2024-hf): non-parametric "
                             "LayerNorm (no weight/bias, eps fixed at 1e-5 in OlmoLayerNorm, computed in "
                             "float32, mean-subtracting), SwiGLU MLP, RoPE (rotate_half, theta 10000), "
                             "q/k/v projection outputs clamped to [-clip_qkv, clip_qkv] before RoPE "
                             "(gradient is zero for clamped entries), tied lm_head.",
    })
    print(f"all fixtures: {total} bytes")
    if total >= 2 * 1024 * 1024:
        raise SystemExit(f"fixtures too large: {total} bytes")


if __name__ == "__main__":
    main()
