#!/usr/bin/env python3
"""transformers' greedy generate at the sizes `implicit bench generate` measures (its --torch).

The model: AutoModelForCausalLM.from_pretrained(DIR, torch_dtype=bfloat16,
attn_implementation="sdpa") on the GPU (device_map="cuda" when accelerate is there, else loaded
on the CPU and moved). Load: timed twice, each from the call to the synchronisation after the
weights are on the GPU; before the first, the weight files' cached pages are dropped with
posix_fadvise(DONTNEED) (best effort, no root needed); the second reads a warm page cache.
GB/s = the safetensors files' bytes on disk / seconds.

Per batch size B: B prompts of --prompt-len ids drawn exactly as `implicit bench generate`
draws them (xorshift64*, seeded, never an EOS id of config.json; prompt_ids below), all of the
same length, so no padding. Untimed warm-ups first (one prefill, one short generate). Then:
  prefill  one forward of all prompts with use_cache (logits of the last position only) and the
           argmax of each row, synchronised before and after;
  generate model.generate(input_ids, attention_mask, max_new_tokens=N, min_new_tokens=N,
           do_sample=False, use_cache=True), synchronised before and after; a stopping criterion
           that never stops records the time after every token (synchronised) for the per-step
           times;
  decode   seconds = generate's − the prefill's; steps = N − 1 (the prefill makes the first new
           token); tokens/s = B * steps / seconds, as implicit counts.
An error (out of memory included) is recorded in that batch's entry, and the exit code is 1.

The JSON (--json; schema "implicit-bench-generate-torch/1") is what
`implicit bench generate --torch FILE` reads: device, versions, date, command, config, load,
results[] of {batch, prefill {tokens, seconds, tokens_per_s}, decode {steps, tokens, seconds,
tokens_per_s, step_ms {median, min, max}}, generate_s, peak_memory_bytes, first_tokens, error}.

Usage: python3 tools/bench_generate_torch.py --model DIR [--batch-sizes 1,64] [--prompt-len 128]
                                             [--new-tokens 128] [--seed 0] [--json OUT]
Needs PyTorch with a CUDA GPU and transformers.
"""

import argparse
import datetime
import gc
import inspect
import json
import os
import shlex
import statistics
import sys
import time

MASK64 = (1 << 64) - 1
KEPT_TOKENS = 16
MAX_BATCH = 1024


def prompt_ids(seed, batch, length, vocab, avoid):
    """src/bench/generate/mod.rs's prompt_ids: xorshift64* started from splitmix64(seed) (1 if
    that is 0), one id per draw (next % vocab, drawn again while in `avoid`), prompt after
    prompt, so a smaller batch's prompts are the larger one's first."""
    z = (seed + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    s = (z ^ (z >> 31)) or 1
    out = []
    for _ in range(batch):
        row = []
        while len(row) < length:
            s ^= s >> 12
            s ^= (s << 25) & MASK64
            s ^= s >> 27
            token = ((s * 0x2545F4914F6CDD1D) & MASK64) % vocab
            if token not in avoid:
                row.append(token)
        out.append(row)
    return out


# The same pinned values as the Rust test `prompts_are_seeded_and_avoid_eos`.
assert prompt_ids(0, 2, 6, 32000, {2}) == [
    [4048, 9725, 2193, 13820, 13046, 17999],
    [15701, 827, 4589, 3590, 7086, 25212],
], "prompt_ids no longer matches implicit's"


def parse_ints(text):
    return [int(x) for x in text.split(",") if x.strip()]


def spread(values):
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def weight_files(model_dir):
    """The safetensors files implicit reads: the index's shards, else model.safetensors."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
    else:
        names = ["model.safetensors"]
    return [os.path.join(model_dir, n) for n in names]


def drop_page_cache(files):
    """posix_fadvise(DONTNEED) on each file (best effort): whether every call succeeded."""
    ok = hasattr(os, "posix_fadvise")
    for path in files:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        except (OSError, AttributeError):
            ok = False
    return ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a Hugging Face model folder")
    parser.add_argument("--batch-sizes", default="1,64")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results here (for implicit bench generate --torch)")
    args = parser.parse_args()

    batch_sizes = parse_ints(args.batch_sizes)
    if not batch_sizes or any(b < 1 or b > MAX_BATCH for b in batch_sizes):
        parser.error(f"--batch-sizes: each must be 1 to {MAX_BATCH}")
    if len(set(batch_sizes)) != len(batch_sizes):
        parser.error("--batch-sizes: a size is given twice")
    if args.prompt_len < 1:
        parser.error("--prompt-len must be at least 1")
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2 (the first new token comes from the prefill)")
    if args.seed < 0:
        parser.error("--seed must be non-negative")

    config_path = os.path.join(args.model, "config.json")
    try:
        with open(config_path) as f:
            config = json.load(f)
        files = weight_files(args.model)
        bytes_on_disk = sum(os.path.getsize(p) for p in files)
    except (OSError, ValueError, KeyError) as e:
        print(f"bench_generate_torch: {args.model}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    eos = config.get("eos_token_id")
    avoid = set(eos if isinstance(eos, list) else ([] if eos is None else [eos]))
    vocab = int(config["vocab_size"])
    context = int(config.get("max_position_embeddings", 4096))
    if args.prompt_len + args.new_tokens > context:
        print(f"bench_generate_torch: prompt {args.prompt_len} + new {args.new_tokens} tokens exceed "
              f"the model's context of {context}", file=sys.stderr)
        return 1

    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, StoppingCriteria, StoppingCriteriaList
    except ImportError as e:
        print(f"bench_generate_torch: PyTorch or transformers is not importable: {e}", file=sys.stderr)
        return 1
    if not torch.cuda.is_available():
        print("bench_generate_torch: no CUDA device visible to PyTorch", file=sys.stderr)
        return 1
    props = torch.cuda.get_device_properties(0)
    try:
        import accelerate  # noqa: F401  (device_map needs it)

        load_path = "device_map=cuda"
    except ImportError:
        load_path = "cpu, then .to(cuda)"
    print(f"bench_generate_torch: torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"transformers {transformers.__version__}, {props.name}; {args.model}: "
          f"{bytes_on_disk / 1e9:.2f} GB in {len(files)} file(s); loading via {load_path}")

    def load():
        torch.cuda.synchronize()
        t = time.perf_counter()
        kwargs = {"torch_dtype": torch.bfloat16, "attn_implementation": "sdpa"}
        if load_path == "device_map=cuda":
            model = AutoModelForCausalLM.from_pretrained(args.model, device_map="cuda", **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(args.model, **kwargs).to("cuda")
        torch.cuda.synchronize()
        return model, time.perf_counter() - t

    loads = []
    load_error = None
    model = None
    try:
        dropped = drop_page_cache(files)
        model, seconds = load()
        loads.append({"label": "first", "seconds": seconds, "gb_s": bytes_on_disk / seconds / 1e9,
                      "page_cache": "dropped with posix_fadvise(DONTNEED) (not verified)" if dropped
                      else "unknown (posix_fadvise failed)"})
        del model
        gc.collect()
        torch.cuda.empty_cache()
        model, seconds = load()
        loads.append({"label": "second", "seconds": seconds, "gb_s": bytes_on_disk / seconds / 1e9,
                      "page_cache": "warm (loaded just before)"})
        model.eval()
    except Exception as e:  # recorded; nothing else can run
        load_error = f"{type(e).__name__}: {e}"
        model = None
    for entry in loads:
        print(f"load {entry['label']:<6} {entry['seconds']:8.2f} s {entry['gb_s']:7.2f} GB/s  "
              f"page cache: {entry['page_cache']}")
    if load_error:
        print(f"load error: {load_error}")

    class StepClock(StoppingCriteria):
        """Never stops; records the time after each new token (after the GPU finished it)."""

        def __init__(self):
            self.times = []

        def __call__(self, input_ids, scores, **kwargs):
            torch.cuda.synchronize()
            self.times.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    steps = args.new_tokens - 1
    results = []
    failed = load_error is not None
    if model is not None:
        forward_params = inspect.signature(model.forward).parameters
        if "logits_to_keep" in forward_params:
            keep = {"logits_to_keep": 1}
        elif "num_logits_to_keep" in forward_params:
            keep = {"num_logits_to_keep": 1}
        else:
            keep = {}
        gen = model.generation_config
        pad = gen.pad_token_id if gen.pad_token_id is not None else (min(avoid) if avoid else 0)
        print(f"{'batch':>5} {'prefill tok/s':>13} {'decode tok/s':>12} {'step ms median (min-max)':>24} "
              f"{'generate s':>10} {'peak GiB':>9}")

    for batch in batch_sizes if model is not None else []:
        entry = {"batch": batch}
        ids = input_ids = mask = None
        try:
            ids = prompt_ids(args.seed, batch, args.prompt_len, vocab, avoid)
            input_ids = torch.tensor(ids, dtype=torch.long, device="cuda")
            mask = torch.ones_like(input_ids)
            gen_kwargs = dict(attention_mask=mask, do_sample=False, use_cache=True, pad_token_id=pad)

            def prefill():
                torch.cuda.synchronize()
                t = time.perf_counter()
                out = model(input_ids, attention_mask=mask, use_cache=True, **keep)
                out.logits[:, -1, :].argmax(dim=-1)
                torch.cuda.synchronize()
                seconds = time.perf_counter() - t
                del out
                return seconds

            with torch.inference_mode():
                prefill()  # warm-up
                model.generate(input_ids, max_new_tokens=2, min_new_tokens=2, **gen_kwargs)
                prefill_s = prefill()
                torch.cuda.reset_peak_memory_stats()
                clock = StepClock()
                torch.cuda.synchronize()
                t = time.perf_counter()
                out = model.generate(input_ids, max_new_tokens=args.new_tokens,
                                     min_new_tokens=args.new_tokens,
                                     stopping_criteria=StoppingCriteriaList([clock]), **gen_kwargs)
                torch.cuda.synchronize()
                generate_s = time.perf_counter() - t
            new = out.shape[1] - args.prompt_len
            if new != args.new_tokens:
                raise RuntimeError(f"generate made {new} new tokens, not {args.new_tokens}")
            decode_s = generate_s - prefill_s
            if decode_s <= 0:
                raise RuntimeError(f"generate took {generate_s:.4f} s, less than its prefill alone "
                                   f"({prefill_s:.4f} s)")
            step_ms = [1e3 * (b - a) for a, b in zip(clock.times, clock.times[1:])]
            entry.update({
                "prefill": {"tokens": batch * args.prompt_len, "seconds": prefill_s,
                            "tokens_per_s": batch * args.prompt_len / prefill_s},
                "decode": {"steps": steps, "tokens": batch * steps, "seconds": decode_s,
                           "tokens_per_s": batch * steps / decode_s,
                           "step_ms": spread(step_ms)},
                "generate_s": generate_s,
                "peak_memory_bytes": torch.cuda.max_memory_allocated(),
                "first_tokens": out[0, args.prompt_len:args.prompt_len + KEPT_TOKENS].tolist(),
                "error": None,
            })
            s = entry["decode"]["step_ms"]
            step = f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})" if s else "-"
            print(f"{batch:>5} {entry['prefill']['tokens_per_s']:>13.1f} "
                  f"{entry['decode']['tokens_per_s']:>12.1f} {step:>24} {generate_s:>10.2f} "
                  f"{entry['peak_memory_bytes'] / 2**30:>9.1f}")
            del out
        except Exception as e:  # out of memory included: recorded, the next size still runs
            failed = True
            entry["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            print(f"{batch:>5} error: {entry['error']}")
        del ids, input_ids, mask
        gc.collect()
        torch.cuda.empty_cache()
        results.append(entry)

    if args.json:
        doc = {
            "schema": "implicit-bench-generate-torch/1",
            "device": props.name,
            "sm_count": props.multi_processor_count,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "transformers": transformers.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable)] + sys.argv),
            "model": args.model,
            "config": {
                "batch_sizes": batch_sizes,
                "prompt_len": args.prompt_len,
                "new_tokens": args.new_tokens,
                "decode_steps": steps,
                "seed": args.seed,
                "dtype": "bfloat16",
                "attn_implementation": "sdpa",
                "load_path": load_path,
            },
            "load": {"files": len(files), "bytes_on_disk": bytes_on_disk, "loads": loads,
                     "error": load_error},
            "results": results,
        }
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        os.replace(tmp, args.json)
        print(f"bench_generate_torch: wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
