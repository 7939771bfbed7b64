#!/usr/bin/env python3
"""Full-finetuning step time of a Llama or OLMo model in PyTorch + Hugging Face transformers.

The PyTorch side of `implicit bench train`: the model is built from a Hugging Face config.json
with random init (no weights read; --layers overrides num_hidden_layers to fit memory, since
speed per layer is what matters). A step is --accumulation micro-batches of --micro-batch
sequences of --seq random token ids (labels = input ids), forward + backward each, then
clip_grad_norm_(1.0), a fused AdamW step (lr 1e-5, betas (0.9, 0.999), eps 1e-8, no weight
decay) and zero_grad(set_to_none=True).

Modes:
  amp   fp32 parameters, grads and AdamW moments, forward under bf16 autocast: implicit's
        trainer numerics (bf16 matmul inputs, fp32 master weights; 16 bytes of state/param)
  bf16  bf16 parameters, grads and AdamW moments (8 bytes/param)

Timing: --warmup untimed steps, then --steps steps each timed with CUDA events (synchronized at
the end of every step); median and min. Peak memory counts from after the warm-up. FLOPs/token
= 6*N + 12*n_layers*(num_heads*head_dim)*seq, N = weights of every nn.Linear (lm_head included,
not the embedding); MFU against the dense bf16 peak known by device name (else null).
--compile: torch.compile(model) (inductor, default mode) after checkpointing is set up; the
compilation happens in the warm-up steps, whose wall time is recorded (warmup_seconds).
CUDA out-of-memory: JSON "error": "out of memory", exit code 3.
--best-of 'FLAGS;FLAGS;...': PyTorch's best configuration that runs: each variant (extra flags
added to the others given, e.g. '--checkpointing;;--checkpointing --compile', an empty one
meaning none) runs in its own process (so an OOM or a crash cannot poison the next) with a
wall-clock limit of --variant-timeout seconds; the JSON is the fastest variant's, with every
variant tried under "variants" (flags, tokens/s, MFU, peak memory, error, wall seconds). Exit
code 0 when one ran, else 3 when every failure was out of memory, else 1.
--device cpu: a dry run for tiny configs (perf_counter timing, bf16 autocast on the CPU, null
memory fields); --self-test runs a tiny 2-layer Llama that way (skips without torch).

Usage: python3 tools/bench_train_torch.py --config CONFIG_JSON [--layers L] [--seq 2048]
           [--micro-batch 1] [--accumulation 1] [--steps 6] [--warmup 2] [--mode amp|bf16]
           [--checkpointing] [--compile] [--attention sdpa|eager] [--device cuda]
           [--best-of 'FLAGS;FLAGS' --variant-timeout 300] [--json OUT.json]
"""

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

SCHEMA = "implicit-bench-train-torch/1"
FLOPS_FORMULA = ("6*N + 12*n_layers*(num_heads*head_dim)*seq per token; N = weights of every "
                 "nn.Linear incl. lm_head (not the embedding lookup); attention counted "
                 "non-causal (PaLM's MFU); checkpointing's recompute not counted")
EXIT_OOM = 3
FIELDS = ("schema", "device", "torch", "transformers", "cuda", "date", "command", "config", "parameters",
          "matmul_parameters", "parameter_dtype", "optimizer", "tokens_per_step", "step_seconds",
          "median_step_s", "min_step_s", "tokens_per_s", "flops_per_token", "flops_formula",
          "achieved_tflops", "peak_tflops", "peak_note", "mfu", "peak_memory_allocated_bytes",
          "peak_memory_reserved_bytes", "warmup_seconds", "error")


def peak_bf16_tflops(name):
    """Dense bf16 tensor-core peak by device name; (None, why) when unknown."""
    n = name.upper()
    if "NVL" in n:  # H100/H200 NVL run at lower clocks than SXM: no entry
        return None, f"no peak known for {name}"
    if "H200" in n:
        return 989.4, "H200: 989.4 TFLOP/s dense bf16"
    if "H100" in n and "PCIE" in n:
        return 756.0, "H100 PCIe: 756 TFLOP/s dense bf16"
    if "H100" in n and ("SXM" in n or "HBM3" in n):
        return 989.4, "H100 SXM: 989.4 TFLOP/s dense bf16"
    if "A100" in n:
        return 312.0, "A100: 312 TFLOP/s dense bf16"
    return None, f"no peak known for {name}"


def is_oom(torch, e):
    oom_type = getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(e, oom_type) or "out of memory" in str(e).lower()


def write_json(path, doc):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def load_config(transformers, path, layers):
    with open(path) as f:
        raw = json.load(f)
    model_type = raw.pop("model_type", None)
    if model_type not in ("llama", "olmo"):
        raise SystemExit(f"bench_train_torch: {path}: model_type {model_type!r}, expected llama or olmo")
    # A checkpoint's torch_dtype would make from_config build in that dtype; --mode decides.
    raw.pop("torch_dtype", None)
    raw.pop("dtype", None)
    if layers is not None:
        raw["num_hidden_layers"] = layers
    return transformers.AutoConfig.for_model(model_type, **raw)


def build_model(torch, transformers, config, args, device, dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters created in the mode's dtype, no fp32 copy first
    try:
        with device:  # random init straight on the device (fast on a GPU)
            model = transformers.AutoModelForCausalLM.from_config(
                config, attn_implementation=args.attention)
    finally:
        torch.set_default_dtype(previous)
    if any(p.dtype != dtype for p in model.parameters()):
        model.to(dtype)
    model.config.use_cache = False  # training: no KV cache
    if args.checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5's name for it
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    if args.compile:
        model = torch.compile(model)
    return model


def make_optimizer(torch, model, device):
    kwargs = dict(lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    try:
        return torch.optim.AdamW(model.parameters(), fused=True, **kwargs), "AdamW(fused=True)"
    except (RuntimeError, TypeError):
        if device.type == "cuda":
            raise
        # Older CPU builds have no fused AdamW; the dry run only checks the plumbing.
        return torch.optim.AdamW(model.parameters(), foreach=False, **kwargs), "AdamW(fused=False)"


def run(args, doc):
    import torch
    import transformers

    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    if on_cuda:
        if not torch.cuda.is_available():
            print("bench_train_torch: no CUDA device visible to PyTorch", file=sys.stderr)
            return 1
        if device.index is None:
            # Plain "cuda" is the current device; set_device wants an index (torch 2.11 raises
            # ValueError on a torch.device without one).
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device.index)
        doc["device"] = torch.cuda.get_device_name(device)
    else:
        doc["device"] = f"cpu ({os.cpu_count()} threads; dry run)"
    doc.update(torch=torch.__version__, transformers=transformers.__version__, cuda=torch.version.cuda)

    config = load_config(transformers, args.config, args.layers)
    num_heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
    doc["config"] = {
        "model_type": config.model_type, "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size, "num_layers": config.num_hidden_layers,
        "num_heads": num_heads, "num_kv_heads": getattr(config, "num_key_value_heads", None) or num_heads,
        "head_dim": head_dim, "vocab_size": config.vocab_size, "seq": args.seq,
        "micro_batch": args.micro_batch, "accumulation": args.accumulation, "mode": args.mode,
        "checkpointing": args.checkpointing, "attention": args.attention, "compile": args.compile,
    }
    tokens_per_step = args.seq * args.micro_batch * args.accumulation
    doc["tokens_per_step"] = tokens_per_step
    peak, peak_note = peak_bf16_tflops(doc["device"]) if on_cuda else (None, "cpu dry run: no peak")
    doc["peak_tflops"], doc["peak_note"] = peak, peak_note

    phase = "build"
    step_seconds = []
    try:
        torch.manual_seed(0)
        dtype = torch.float32 if args.mode == "amp" else torch.bfloat16
        model = build_model(torch, transformers, config, args, device, dtype)
        doc["parameters"] = sum(p.numel() for p in model.parameters())
        doc["parameter_dtype"] = str(next(model.parameters()).dtype).replace("torch.", "")
        # Every Linear multiplies activations, a tied lm_head included (counted again).
        matmul_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
        doc["matmul_parameters"] = matmul_params
        flops_per_token = 6 * matmul_params + 12 * config.num_hidden_layers * num_heads * head_dim * args.seq
        doc["flops_per_token"] = flops_per_token
        optimizer, doc["optimizer"] = make_optimizer(torch, model, device)
        params = [p for p in model.parameters() if p.requires_grad]

        # Same token ids every step: their values do not change the work.
        gen = torch.Generator(device=device).manual_seed(0)
        batches = [torch.randint(0, config.vocab_size, (args.micro_batch, args.seq),
                                 device=device, generator=gen) for _ in range(args.accumulation)]

        def train_step():
            for ids in batches:
                if args.mode == "amp":
                    with torch.autocast(device.type, dtype=torch.bfloat16):
                        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                else:
                    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                # backward outside autocast, as autocast's docs recommend
                (loss / args.accumulation).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        phase = "warmup"
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            train_step()
        if on_cuda:
            torch.cuda.synchronize()
        doc["warmup_seconds"] = time.perf_counter() - t0
        if on_cuda:
            torch.cuda.reset_peak_memory_stats()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        phase = "timed"
        for i in range(args.steps):
            if on_cuda:
                start.record()
                train_step()
                end.record()
                torch.cuda.synchronize()
                seconds = start.elapsed_time(end) / 1e3
            else:
                t0 = time.perf_counter()
                train_step()
                seconds = time.perf_counter() - t0
            step_seconds.append(seconds)
            print(f"  step {i + 1}/{args.steps}: {seconds * 1e3:.1f} ms")
    except Exception as e:
        doc["step_seconds"] = step_seconds
        if on_cuda:
            doc["peak_memory_allocated_bytes"] = torch.cuda.max_memory_allocated()
            doc["peak_memory_reserved_bytes"] = torch.cuda.max_memory_reserved()
        first_line = str(e).splitlines()[0] if str(e) else ""
        doc["error_detail"] = f"{phase}: {type(e).__name__}: {first_line}"
        if on_cuda and is_oom(torch, e):
            doc["error"] = "out of memory"
            print(f"bench_train_torch: out of memory during {phase}, peak allocated "
                  f"{doc['peak_memory_allocated_bytes'] / 2**30:.2f} GiB", file=sys.stderr)
            return EXIT_OOM
        traceback.print_exc()
        doc["error"] = f"{type(e).__name__}: {first_line}"
        return 1

    median = statistics.median(step_seconds)
    tokens_per_s = tokens_per_step / median
    achieved = flops_per_token * tokens_per_s / 1e12
    doc.update(step_seconds=step_seconds, median_step_s=median, min_step_s=min(step_seconds),
               tokens_per_s=tokens_per_s, achieved_tflops=achieved,
               mfu=achieved / peak if peak else None)
    if on_cuda:
        doc["peak_memory_allocated_bytes"] = torch.cuda.max_memory_allocated()
        doc["peak_memory_reserved_bytes"] = torch.cuda.max_memory_reserved()
    return 0


def best_of(args, variants):
    """Runs each variant in its own process; writes the fastest one's JSON with every variant
    listed. Returns the exit code (see the module doc)."""
    common = ["--config", args.config, "--seq", str(args.seq), "--micro-batch", str(args.micro_batch),
              "--accumulation", str(args.accumulation), "--steps", str(args.steps),
              "--warmup", str(args.warmup), "--mode", args.mode, "--attention", args.attention,
              "--device", args.device]
    if args.layers is not None:
        common += ["--layers", str(args.layers)]
    common += ["--checkpointing"] if args.checkpointing else []
    common += ["--compile"] if args.compile else []
    tried, docs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, flags in enumerate(variants):
            out = os.path.join(tmp, f"variant-{i}.json")
            cmd = [sys.executable, os.path.abspath(__file__)] + common + shlex.split(flags) + ["--json", out]
            print(f"bench_train_torch: variant {i + 1}/{len(variants)}: {flags or '(no extra flags)'}",
                  flush=True)
            t0 = time.perf_counter()
            try:
                rc = subprocess.run(cmd, timeout=args.variant_timeout).returncode
                timed_out = False
            except subprocess.TimeoutExpired:
                rc, timed_out = None, True
            wall = time.perf_counter() - t0
            doc = None
            if os.path.isfile(out):
                with open(out) as f:
                    doc = json.load(f)
            error = (f"timed out after {args.variant_timeout:g} s" if timed_out
                     else (doc or {}).get("error") or (None if rc == 0 else f"exit code {rc}, no JSON"))
            tried.append({"flags": flags, "tokens_per_s": (doc or {}).get("tokens_per_s"),
                          "mfu": (doc or {}).get("mfu"),
                          "peak_memory_allocated_bytes": (doc or {}).get("peak_memory_allocated_bytes"),
                          "warmup_seconds": (doc or {}).get("warmup_seconds"),
                          "error": error, "wall_seconds": wall})
            docs.append(doc if error is None else None)
            # Written after every variant, so that a caller's time limit keeps what ran.
            rc = write_best(args, variants, tried, docs)
    print("bench_train_torch: variants (best first)")
    for t in sorted(tried, key=lambda t: -(t["tokens_per_s"] or 0)):
        speed = f"{t['tokens_per_s']:.0f} tokens/s" if t["tokens_per_s"] else "-"
        print(f"  {t['flags'] or '(no extra flags)':<32} {speed:>16}  {t['error'] or 'ok'}")
    if args.json:
        print(f"bench_train_torch: wrote {args.json}")
    return rc


def write_best(args, variants, tried, docs):
    """The JSON of the fastest variant so far (every variant tried listed); the exit code."""
    ran = [(d["tokens_per_s"], i) for i, d in enumerate(docs) if d and d.get("tokens_per_s")]
    if ran:
        best = docs[max(ran)[1]]
        rc = 0
    else:
        best = dict.fromkeys(FIELDS)
        best.update(schema=SCHEMA, flops_formula=FLOPS_FORMULA,
                    error="; ".join(f"{t['flags'] or '(none)'}: {t['error']}" for t in tried))
        all_oom = all(t["error"] == "out of memory" for t in tried)
        if all_oom:
            best["error"] = "out of memory"
        rc = EXIT_OOM if all_oom else 1
    best["command"] = " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable)] + sys.argv)
    best["best_of"] = variants
    best["variants"] = list(tried)
    if args.json:
        write_json(args.json, best)
    return rc


def summary(doc):
    c = doc["config"] or {}
    print(f"bench_train_torch: {doc['device']}, torch {doc['torch']} (CUDA {doc['cuda']}), "
          f"transformers {doc['transformers']}")
    print(f"  {c.get('model_type')} {c.get('num_layers')} layers, hidden {c.get('hidden_size')}, "
          f"{doc['parameters']} params ({doc['matmul_parameters']} in matmuls); seq {c.get('seq')} x "
          f"micro-batch {c.get('micro_batch')} x accumulation {c.get('accumulation')}, mode {c.get('mode')}, "
          f"checkpointing {c.get('checkpointing')}, attention {c.get('attention')}, "
          f"compile {c.get('compile')}")
    if doc["median_step_s"] is not None:
        mfu = f"{doc['mfu'] * 100:.1f}%" if doc["mfu"] is not None else f"n/a ({doc['peak_note']})"
        print(f"  step median {doc['median_step_s'] * 1e3:.1f} ms (min {doc['min_step_s'] * 1e3:.1f}), "
              f"{doc['tokens_per_s']:.0f} tokens/s, {doc['achieved_tflops']:.1f} TFLOP/s, MFU {mfu}")
    if doc["peak_memory_allocated_bytes"] is not None:
        print(f"  peak memory {doc['peak_memory_allocated_bytes'] / 2**30:.2f} GiB allocated, "
              f"{doc['peak_memory_reserved_bytes'] / 2**30:.2f} GiB reserved")
    if doc["error"]:
        print(f"  error: {doc['error']} ({doc.get('error_detail')})")


def self_test():
    """Two tiny 2-layer Llama runs on the CPU through the real command line."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        print(f"bench_train_torch self-test: SKIPPED (torch/transformers not importable: {e})")
        return 0
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 256,
              "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
              "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "float16"}
    runs = [["--mode", "amp"], ["--mode", "bf16", "--checkpointing", "--attention", "eager"]]
    with tempfile.TemporaryDirectory() as tmp:
        config_path = os.path.join(tmp, "config.json")
        write_json(config_path, config)
        for extra in runs:
            out = os.path.join(tmp, "out.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--config", config_path, "--layers", "2",
                   "--seq", "32", "--micro-batch", "2", "--accumulation", "2", "--steps", "2",
                   "--warmup", "1", "--device", "cpu", "--json", out] + extra
            rc = subprocess.run(cmd).returncode
            assert rc == 0, f"{cmd}: exit code {rc}"
            with open(out) as f:
                doc = json.load(f)
            missing = [key for key in FIELDS if key not in doc]
            assert not missing, f"missing {missing}"
            c = doc["config"]
            assert doc["schema"] == SCHEMA and doc["error"] is None
            assert c["num_layers"] == 2 and c["head_dim"] == 16 and c["num_kv_heads"] == 2
            assert len(doc["step_seconds"]) == 2 and doc["tokens_per_s"] > 0
            assert doc["tokens_per_step"] == 32 * 2 * 2
            # 2 layers x (q,o 64x64; k,v 64x32; gate,up,down 64x128) + lm_head 256x64
            n = 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128) + 256 * 64
            assert doc["matmul_parameters"] == n, doc["matmul_parameters"]
            assert doc["flops_per_token"] == 6 * n + 12 * 2 * 64 * 32
            assert doc["peak_memory_allocated_bytes"] is None and doc["mfu"] is None
            assert doc["parameter_dtype"] == ("float32" if extra[1] == "amp" else "bfloat16")
        # --best-of: three variants (one compiled), each in its own process; the fastest is
        # written, every variant listed.
        out = os.path.join(tmp, "best.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--config", config_path, "--layers", "2",
               "--seq", "32", "--steps", "2", "--warmup", "1", "--device", "cpu", "--mode", "bf16",
               "--best-of", ";--checkpointing;--compile", "--json", out]
        rc = subprocess.run(cmd).returncode
        assert rc == 0, f"{cmd}: exit code {rc}"
        with open(out) as f:
            doc = json.load(f)
        tried = doc["variants"]
        assert [t["flags"] for t in tried] == ["", "--checkpointing", "--compile"], tried
        assert all(t["error"] is None and t["tokens_per_s"] > 0 for t in tried), tried
        assert doc["tokens_per_s"] == max(t["tokens_per_s"] for t in tried)
        assert tried[2]["warmup_seconds"] is not None
        best = tried[[t["tokens_per_s"] for t in tried].index(doc["tokens_per_s"])]["flags"]
        assert doc["config"]["checkpointing"] == ("--checkpointing" in best)
        assert doc["config"]["compile"] == ("--compile" in best)
    print("bench_train_torch self-test: 3 passed, 0 failed")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="--device cpu: dry run for tiny configs (perf_counter timing, "
                                            "bf16 autocast on the CPU, memory fields null).")
    parser.add_argument("--config", help="Hugging Face config.json (model_type llama or olmo)")
    parser.add_argument("--layers", type=int, help="override num_hidden_layers (to fit memory)")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--mode", choices=("amp", "bf16"), default="amp",
                        help="amp: fp32 params/grads/AdamW state, bf16 autocast; bf16: all bf16")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing (non-reentrant)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--attention", choices=("sdpa", "eager"), default="sdpa")
    parser.add_argument("--best-of", help="';'-separated variants of extra flags; the fastest is written")
    parser.add_argument("--variant-timeout", type=float, default=300,
                        help="seconds each --best-of variant may take (default 300)")
    parser.add_argument("--device", default="cuda", help="cuda (or cuda:N); cpu only for a dry run")
    parser.add_argument("--json", help="write the results here (atomically)")
    parser.add_argument("--self-test", action="store_true", help="tiny 2-layer Llama dry run on the CPU")
    args = parser.parse_args()
    if args.self_test:
        return self_test()
    if not args.config:
        parser.error("--config is required")
    for name in ("seq", "micro_batch", "accumulation", "steps", "layers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    if not args.variant_timeout > 0:
        parser.error("--variant-timeout must be positive")
    if args.best_of is not None:
        variants = [v.strip() for v in args.best_of.split(";")]
        if len(variants) < 2 or len(set(variants)) != len(variants):
            parser.error("--best-of: give at least two different variants, separated by ';'")
        for v in variants:
            unknown = [f for f in shlex.split(v) if f not in ("--checkpointing", "--compile")]
            if unknown:
                parser.error(f"--best-of: {unknown[0]} is not --checkpointing or --compile")
            if (args.checkpointing and "--checkpointing" in v) or (args.compile and "--compile" in v):
                parser.error(f"--best-of: variant '{v}' repeats a flag given to every variant")
        return best_of(args, variants)
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        print(f"bench_train_torch: PyTorch or transformers is not importable: {e}", file=sys.stderr)
        return 1

    doc = dict.fromkeys(FIELDS)  # every field present (null until known), in this order
    doc.update(schema=SCHEMA, flops_formula=FLOPS_FORMULA,
               date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
               command=" ".join(shlex.quote(a) for a in [os.path.basename(sys.executable)] + sys.argv))
    rc = run(args, doc)
    if doc["device"] is None:  # gave up before anything ran (no CUDA device)
        return rc
    summary(doc)
    if args.json:
        write_json(args.json, doc)
        print(f"bench_train_torch: wrote {args.json}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
