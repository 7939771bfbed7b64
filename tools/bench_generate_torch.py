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

Recipes (--recipes, default "plain,static-compile"), each timed as above at every batch size:
  plain           model.generate as it comes (dynamic KV cache, eager forward): the peer
                  `implicit bench generate` has always been shown against;
  static-compile  the fast transformers recipe (its "LLM optimizations" guide): a static KV
                  cache (cache_implementation="static"), with which generate compiles the
                  decoding forward by torch.compile (its default CompileConfig: fullgraph,
                  mode "reduce-overhead", i.e. CUDA graphs). Two untimed generates of the full
                  length come first, so compilation and graph capture are not timed; their
                  wall time is recorded (warmup_s). If transformers has no CompileConfig, the
                  forward is compiled by hand (torch.compile(model.forward, mode="reduce-overhead",
                  fullgraph=True)) and the entry says so (compile).
The JSON is rewritten after every batch, so a run cut short keeps what it measured.

The JSON (--json; schema "implicit-bench-generate-torch/1") is what
`implicit bench generate --torch FILE` reads: device, versions, date, command, config, load,
results[] (the plain recipe) and results_static_compile[] (the same sizes, the fast recipe) of
{batch, prefill {tokens, seconds, tokens_per_s}, decode {steps, tokens, seconds, tokens_per_s,
step_ms {median, min, max}}, generate_s, peak_memory_bytes, first_tokens, error}, the second
with warmup_s and compile added.

Usage: python3 tools/bench_generate_torch.py --model DIR [--batch-sizes 1,64] [--prompt-len 128]
                                             [--new-tokens 128] [--seed 0] [--json OUT]
                                             [--recipes plain,static-compile]
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


RECIPES = ("plain", "static-compile")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a Hugging Face model folder")
    parser.add_argument("--batch-sizes", default="1,64")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipes", default=",".join(RECIPES),
                        help=f"which of {', '.join(RECIPES)} to run (comma-separated)")
    parser.add_argument("--device", default="cuda",
                        help="cuda; cpu only as a dry run of the plumbing on a tiny model")
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
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    if not recipes or any(r not in RECIPES for r in recipes) or len(set(recipes)) != len(recipes):
        parser.error(f"--recipes: a comma-separated choice of {', '.join(RECIPES)}, each once")
    if args.device not in ("cuda", "cpu"):
        parser.error("--device: cuda or cpu")

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
    on_cuda = args.device == "cuda"
    if on_cuda and not torch.cuda.is_available():
        print("bench_generate_torch: no CUDA device visible to PyTorch", file=sys.stderr)
        return 1
    device_name = torch.cuda.get_device_properties(0).name if on_cuda else "cpu (dry run)"
    sm_count = torch.cuda.get_device_properties(0).multi_processor_count if on_cuda else None

    def sync():
        if on_cuda:
            torch.cuda.synchronize()

    try:
        import accelerate  # noqa: F401  (device_map needs it)

        load_path = f"device_map={args.device}"
    except ImportError:
        load_path = f"cpu, then .to({args.device})"
    print(f"bench_generate_torch: torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"transformers {transformers.__version__}, {device_name}; {args.model}: "
          f"{bytes_on_disk / 1e9:.2f} GB in {len(files)} file(s); loading via {load_path}; "
          f"recipes {', '.join(recipes)}")

    def load():
        sync()
        t = time.perf_counter()
        kwargs = {"dtype": torch.bfloat16, "attn_implementation": "sdpa"}
        if load_path.startswith("device_map"):
            model = AutoModelForCausalLM.from_pretrained(args.model, device_map=args.device, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(args.model, **kwargs).to(args.device)
        sync()
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
        if on_cuda:
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
            sync()
            self.times.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    steps = args.new_tokens - 1
    results = {r: [] for r in recipes}
    failed = load_error is not None
    keep, pad = {}, 0
    if model is not None:
        forward_params = inspect.signature(model.forward).parameters
        if "logits_to_keep" in forward_params:
            keep = {"logits_to_keep": 1}
        elif "num_logits_to_keep" in forward_params:
            keep = {"num_logits_to_keep": 1}
        gen = model.generation_config
        pad = gen.pad_token_id if gen.pad_token_id is not None else (min(avoid) if avoid else 0)

    def compile_config():
        """generate's own compilation of the decoding forward (its defaults: inductor,
        "reduce-overhead"), forced on the CPU for the dry run."""
        from transformers import CompileConfig

        config = CompileConfig()
        if not on_cuda:
            config._compile_all_devices = True
        return config

    def measure(batch, recipe):
        """One batch size under one recipe: the entry of results[]."""
        entry = {"batch": batch}
        ids = prompt_ids(args.seed, batch, args.prompt_len, vocab, avoid)
        input_ids = torch.tensor(ids, dtype=torch.long, device=args.device)
        mask = torch.ones_like(input_ids)
        gen_kwargs = dict(attention_mask=mask, do_sample=False, use_cache=True, pad_token_id=pad)
        if recipe == "static-compile":
            gen_kwargs.update(cache_implementation="static", compile_config=compile_config())

        def generate(new, clock=None):
            criteria = {"stopping_criteria": StoppingCriteriaList([clock])} if clock else {}
            return model.generate(input_ids, max_new_tokens=new, min_new_tokens=new, **gen_kwargs,
                                  **criteria)

        def prefill():
            sync()
            t = time.perf_counter()
            if recipe == "plain":
                out = model(input_ids, attention_mask=mask, use_cache=True, **keep)
                out.logits[:, -1, :].argmax(dim=-1)
            else:
                # The static recipe's prefill is generate's own first step (eager, into the
                # static cache it allocates): generate of one token.
                out = generate(1)
            sync()
            seconds = time.perf_counter() - t
            del out
            return seconds

        with torch.inference_mode():
            t = time.perf_counter()
            prefill()  # warm-up
            if recipe == "plain":
                generate(2)
            else:
                import torch._dynamo.utils as dynamo_utils

                # Compilation and graph capture: two full-length generates, untimed.
                graphs_before = dynamo_utils.counters["stats"]["unique_graphs"]
                generate(args.new_tokens)
                generate(args.new_tokens)
                entry["warmup_s"] = time.perf_counter() - t
                entry["compile"] = {"config": "transformers CompileConfig() defaults (inductor, "
                                              "mode reduce-overhead)",
                                    "new_graphs": dynamo_utils.counters["stats"]["unique_graphs"]
                                    - graphs_before}
                if entry["compile"]["new_graphs"] == 0:
                    raise RuntimeError("generate compiled nothing: the static recipe ran eagerly")
            prefill_s = prefill()
            if on_cuda:
                torch.cuda.reset_peak_memory_stats()
            clock = StepClock()
            sync()
            t = time.perf_counter()
            out = generate(args.new_tokens, clock)
            sync()
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
                       "tokens_per_s": batch * steps / decode_s, "step_ms": spread(step_ms)},
            "generate_s": generate_s,
            "peak_memory_bytes": torch.cuda.max_memory_allocated() if on_cuda else None,
            "first_tokens": out[0, args.prompt_len:args.prompt_len + KEPT_TOKENS].tolist(),
            "error": None,
        })
        return entry

    def write():
        if not args.json:
            return
        doc = {
            "schema": "implicit-bench-generate-torch/1",
            "device": device_name,
            "sm_count": sm_count,
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
                "recipes": recipes,
            },
            "load": {"files": len(files), "bytes_on_disk": bytes_on_disk, "loads": loads,
                     "error": load_error},
            "results": results.get("plain", []),
            "results_static_compile": results.get("static-compile", []),
        }
        tmp = f"{args.json}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, args.json)

    for recipe in recipes if model is not None else []:
        print(f"-- recipe {recipe}")
        print(f"{'batch':>5} {'prefill tok/s':>13} {'decode tok/s':>12} {'step ms median (min-max)':>24} "
              f"{'generate s':>10} {'peak GiB':>9}")
        for batch in batch_sizes:
            try:
                entry = measure(batch, recipe)
                s = entry["decode"]["step_ms"]
                step = f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})" if s else "-"
                peak = entry["peak_memory_bytes"]
                peak = f"{peak / 2**30:>9.1f}" if peak is not None else f"{'-':>9}"
                warm = f"  (warm-up and compile {entry['warmup_s']:.1f} s)" if "warmup_s" in entry else ""
                print(f"{batch:>5} {entry['prefill']['tokens_per_s']:>13.1f} "
                      f"{entry['decode']['tokens_per_s']:>12.1f} {step:>24} {entry['generate_s']:>10.2f} "
                      f"{peak}{warm}", flush=True)
            except Exception as e:  # out of memory included: recorded, the next size still runs
                failed = True
                entry = {"batch": batch,
                         "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
                print(f"{batch:>5} error: {entry['error']}", flush=True)
            gc.collect()
            if on_cuda:
                torch.cuda.empty_cache()
            results[recipe].append(entry)
            write()
    write()
    if args.json:
        print(f"bench_generate_torch: wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
