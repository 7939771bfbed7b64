#!/usr/bin/env python3
"""PyTorch SDPA at the attention shapes `implicit bench kernels` times its flash attention at.

Causal bf16 attention, torch.nn.functional.scaled_dot_product_attention on q, k, v stored
[batch, seq, heads, head_dim] (the runtime's layout) and passed as [batch, heads, seq, head_dim]
views, as Hugging Face's Llama does. Default shapes: batch 1, 4, 8 sequences of 2048 tokens,
32 heads, head_dim 128 and 64.

Times (CUDA events; median, min and max of --reps samples after --warmup calls):
  fwd     the forward with gradients enabled (a training forward: saves what backward needs)
  bwd     torch.autograd.grad of a saved forward's output (retain_graph), i.e. backward alone
  fwdbwd  forward then backward
Each sample starts after a 512 MiB device-to-device copy (evicts L2 and lets the host queue the
call before the GPU reaches it), and several input sets are rotated when one would fit in L2
three times over, as in the Rust harness (src/bench/timing.rs).

FLOPs, as `implicit bench kernels` counts them: forward 4 * seq^2 * head_dim * heads / 2 per
sequence (causal: half the score matrix), backward 2.5x the forward.

The JSON (--json) is what `implicit bench kernels --sdpa FILE` reads: results[] hold, per shape,
PyTorch's default dispatch (batch, heads, seq, head_dim, fwd_ms, bwd_ms, fwd_tflops,
bwd_tflops, ...), and under "backends" each explicitly selected SDPA backend (flash, cudnn,
efficient) or the error it raised.

Usage: python3 tools/bench_sdpa.py [--json OUT] [--batches 1,4,8] [--head-dims 128,64]
                                    [--heads 32] [--seq 2048] [--reps 30] [--warmup 10] [--quick]
Needs only PyTorch with a CUDA GPU.
"""

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys

SPACER_BYTES = 512 << 20


def parse_ints(text):
    return [int(x) for x in text.split(",") if x.strip()]


def causal_fwd_flops(batch, heads, seq, head_dim):
    return 4.0 * batch * heads * seq * seq * head_dim / 2.0


class Timer:
    """CUDA-event timing with a spacer copy before every sample."""

    def __init__(self, torch, warmup, reps):
        self.torch = torch
        self.warmup = warmup
        self.reps = reps
        self.src = torch.randint(0, 256, (SPACER_BYTES,), dtype=torch.uint8, device="cuda")
        self.dst = torch.empty_like(self.src)

    def time(self, fn, sets):
        torch = self.torch
        for i in range(self.warmup):
            fn(i % sets)
        torch.cuda.synchronize()
        times = []
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        for r in range(self.reps):
            self.dst.copy_(self.src)
            start.record()
            fn(r % sets)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        torch.cuda.synchronize()
        return {
            "median_ms": statistics.median(times),
            "min_ms": min(times),
            "max_ms": max(times),
            "reps": len(times),
        }


def bench_shape(torch, timer, batch, heads, seq, head_dim, backend, l2_bytes):
    """Times one shape with one backend (None: PyTorch's default dispatch)."""
    import contextlib

    F = torch.nn.functional
    if backend is None:
        ctx = contextlib.nullcontext
    else:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        chosen = {
            "flash": SDPBackend.FLASH_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION,
        }[backend]

        def ctx():
            return sdpa_kernel([chosen])

    shape = (batch, seq, heads, head_dim)
    set_bytes = 3 * batch * seq * heads * head_dim * 2
    sets = max(1, min(8, -(-3 * l2_bytes // set_bytes)))

    def rand():
        # Uniform in [-1, 1), like the Rust harness; never zeros.
        return (torch.rand(shape, device="cuda", dtype=torch.float32) * 2 - 1).to(torch.bfloat16)

    qs = [rand().requires_grad_() for _ in range(sets)]
    ks = [rand().requires_grad_() for _ in range(sets)]
    vs = [rand().requires_grad_() for _ in range(sets)]
    douts = [rand() for _ in range(sets)]

    def attn(s):
        q, k, v = (t.transpose(1, 2) for t in (qs[s], ks[s], vs[s]))
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)

    with ctx():
        fwd = timer.time(attn, sets)
        outs = [attn(s) for s in range(sets)]

        def backward(s):
            torch.autograd.grad(outs[s], (qs[s], ks[s], vs[s]), douts[s], retain_graph=True)

        bwd = timer.time(backward, sets)

        def forward_backward(s):
            out = attn(s)
            torch.autograd.grad(out, (qs[s], ks[s], vs[s]), douts[s])

        fwdbwd = timer.time(forward_backward, sets)
    del outs, qs, ks, vs, douts
    flops = causal_fwd_flops(batch, heads, seq, head_dim)
    return {
        "fwd_ms": fwd["median_ms"],
        "bwd_ms": bwd["median_ms"],
        "fwdbwd_ms": fwdbwd["median_ms"],
        "fwd_tflops": flops / (fwd["median_ms"] * 1e-3) / 1e12,
        "bwd_tflops": 2.5 * flops / (bwd["median_ms"] * 1e-3) / 1e12,
        "fwdbwd_tflops": 3.5 * flops / (fwdbwd["median_ms"] * 1e-3) / 1e12,
        "fwd": fwd,
        "bwd": bwd,
        "fwdbwd": fwdbwd,
        "input_sets": sets,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the results here (for implicit bench kernels --sdpa)")
    parser.add_argument("--batches", default=None, help="comma-separated (default 1,4,8; 1 with --quick)")
    parser.add_argument("--head-dims", default="128,64")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--reps", type=int, default=None, help="timed samples (default 30; 10 with --quick)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--backends", default="flash,cudnn,efficient",
                        help="explicitly selected SDPA backends to time too ('' for none)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()

    batches = parse_ints(args.batches) if args.batches else ([1] if args.quick else [1, 4, 8])
    head_dims = parse_ints(args.head_dims)
    reps = args.reps if args.reps is not None else (10 if args.quick else 30)
    backends = [b for b in args.backends.split(",") if b]
    for b in backends:
        if b not in ("flash", "cudnn", "efficient"):
            parser.error(f"--backends: unknown backend {b!r} (flash, cudnn, efficient)")
    if reps < 3:
        parser.error("--reps must be at least 3")

    try:
        import torch
    except ImportError as e:
        print(f"bench_sdpa: PyTorch is not importable: {e}", file=sys.stderr)
        return 1
    if not torch.cuda.is_available():
        print("bench_sdpa: no CUDA device visible to PyTorch", file=sys.stderr)
        return 1
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    props = torch.cuda.get_device_properties(0)
    l2_bytes = getattr(props, "L2_cache_size", 50 << 20) or (50 << 20)
    timer = Timer(torch, args.warmup, reps)
    print(f"bench_sdpa: torch {torch.__version__} (CUDA {torch.version.cuda}), {props.name}, "
          f"{props.multi_processor_count} SMs, L2 {l2_bytes >> 20} MiB; {reps} samples after {args.warmup} warm-ups")
    header = f"{'shape':<24} {'backend':<9} {'fwd ms':>8} {'TF/s':>6} {'bwd ms':>8} {'TF/s':>6} {'fwd+bwd ms':>10} {'TF/s':>6}"
    print(header)

    def line(name, backend, r):
        print(f"{name:<24} {backend:<9} {r['fwd_ms']:>8.3f} {r['fwd_tflops']:>6.1f} {r['bwd_ms']:>8.3f} "
              f"{r['bwd_tflops']:>6.1f} {r['fwdbwd_ms']:>10.3f} {r['fwdbwd_tflops']:>6.1f}")

    results = []
    failed = False
    for head_dim in head_dims:
        for batch in batches:
            name = f"b{batch} s{args.seq} h{args.heads} d{head_dim}"
            entry = {"batch": batch, "heads": args.heads, "seq": args.seq, "head_dim": head_dim}
            try:
                r = bench_shape(torch, timer, batch, args.heads, args.seq, head_dim, None, l2_bytes)
                entry.update(r)
                line(name, "default", r)
            except Exception as e:  # recorded, and the exit code says so
                failed = True
                entry["error"] = f"{type(e).__name__}: {e}"
                print(f"{name:<24} default   error: {entry['error']}")
            entry["backends"] = {}
            for backend in backends:
                try:
                    r = bench_shape(torch, timer, batch, args.heads, args.seq, head_dim, backend, l2_bytes)
                    entry["backends"][backend] = r
                    line(name, backend, r)
                except Exception as e:  # a backend that does not take this shape
                    msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                    entry["backends"][backend] = {"error": msg}
                    print(f"{name:<24} {backend:<9} unavailable: {msg[:100]}")
                torch.cuda.empty_cache()
            if "fwd_ms" in entry:
                results.append(entry)
            torch.cuda.empty_cache()

    if args.json:
        doc = {
            "schema": "implicit-bench-sdpa/1",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "device": props.name,
            "sm_count": props.multi_processor_count,
            "l2_bytes": l2_bytes,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable)] + sys.argv),
            "reps": reps,
            "warmup": args.warmup,
            "flops": "forward 4*seq^2*head_dim*heads/2 per sequence (causal); backward 2.5x forward",
            "results": results,
        }
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        os.replace(tmp, args.json)
        print(f"bench_sdpa: wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
