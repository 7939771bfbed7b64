#!/usr/bin/env python3
"""Drives a running `implicit serve` (or any OpenAI-compatible server) with the official `openai`
client at several concurrency levels, measuring throughput and latency and checking every
greedy answer against that prompt's answer at concurrency 1. Starts nothing itself.

Usage:
  serve_bench.py --base-url http://127.0.0.1:PORT/v1 --model ID
                 [--prompts FILE | --random-prompts 32 --prompt-tokens 128 --vocab-size 32000]
                 [--max-tokens 128] [--concurrency 1,16,64] [--rounds 2] [--margin 0.05]
                 [--wait 0] [--json OUT]
  serve_bench.py --self-test     (the answer comparison on made-up answers; no server)

Prompts: FILE holds one text prompt a line (blank lines skipped); otherwise --random-prompts
prompts of --prompt-tokens random token ids in [3, --vocab-size) after --bos (seeded, --seed),
sent as token ids to /v1/completions, so no tokenizer is needed on this side.

1. Reference: every prompt alone (concurrency 1), streamed at temperature 0 with the top-2
   logprobs of each token (`logprobs=2`).
2. For each concurrency level C: C client threads, each sending --rounds requests one after the
   other (request i asks for prompt i mod P), streamed at temperature 0 with `logprobs=0` (each
   token's own logprob, no alternatives: the server's plain greedy path, as fast as without
   logprobs). Reported: total throughput (generated tokens over the level's wall time, prefill
   included), time to first token (p50, p90: from sending the request to the first chunk with a
   token), per-request decode rate (p50 of (tokens - 1) / (last token - first token)).
3. Correctness: every answer's tokens equal its prompt's reference tokens. A divergence is
   accepted only where the reference's top-2 logprob margin is below --margin and the answer's
   token there is the reference's runner-up: a near-tie that batch numerics can flip (a
   sequence decoded in a batch of 64 goes through other GEMM tiles and reduction orders than
   alone). After it the texts differ legitimately and are not compared. Each accepted
   divergence is counted and printed; any other difference is a mismatch.

   The default margin of 0.05 nats: a random-init Llama-2-7B (`implicit init`, weights of std
   0.02) has logits of std about 0.02 * sqrt(4096) = 1.28 (a unit-rms normed state times the
   head), the largest of 32000 about 4.1 std = 5.2. bf16 keeps 8 significant bits, so a value
   rounds by up to 2^-9 = 0.2% of itself: 0.01 at 5.2 for each of the top two, 0.02 for their
   difference; the states feeding them went through 32 layers of bf16 roundings whose sums
   differ between batch shapes: 0.05, 2.5x that, is the margin below which a flipped argmax is
   numerics, not a bug. (Top-2 gaps of 32000 such logits average about 1.28 / sqrt(2 ln 32000)
   = 0.28, so about 1 position in 6 has a margin under 0.05: most tokens are still compared.)
   The noise actually seen is reported beside it: the largest |logprob difference| of the same
   token at the same position (matched positions only); if it exceeds half the margin, a
   warning says the margin may be too tight for these numerics. On a trained model the margins
   are larger and the same rule holds.

Prints one line per level and a summary; writes the figures to --json. Exits 1 on a mismatch
or a failed request, 2 on bad arguments.
"""

import argparse
import json
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

SCHEMA = "implicit-serve-bench/1"


def percentile(values, q):
    """Linear interpolation between the closest ranks; None for no values."""
    if not values:
        return None
    v = sorted(values)
    pos = (len(v) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def compare(reference, answer, margin):
    """Compares an answer's tokens with the reference's.

    reference: {"tokens": [str], "top": [{token text: logprob}], "logprobs": [float]}
    answer:    {"tokens": [str], "logprobs": [float]}
    Returns (verdict, position, detail, noise): verdict "equal", "accepted" (a near-tie flipped
    at `position`) or "mismatch"; noise is the largest |logprob difference| over the positions
    before the first difference (None when there are none).
    """
    ref, got = reference["tokens"], answer["tokens"]
    k = 0
    while k < len(ref) and k < len(got) and ref[k] == got[k]:
        k += 1
    diffs = [
        abs(a - b)
        for a, b in zip(reference["logprobs"][:k], answer["logprobs"][:k])
        if a is not None and b is not None
    ]
    noise = max(diffs) if diffs else None
    if k == len(ref) and k == len(got):
        return "equal", None, "", noise
    if k >= len(ref):
        # The reference stopped here (EOS, not reported with logprobs): no margin to judge by.
        return (
            "mismatch",
            k,
            f"the reference ends at token {k}, the answer goes on with {got[k]!r}",
            noise,
        )
    top = sorted(reference["top"][k].items(), key=lambda kv: -kv[1])
    if len(top) < 2:
        return "mismatch", k, f"token {k}: no runner-up in the reference's top logprobs", noise
    (first, lp1), (second, lp2) = top[0], top[1]
    gap = lp1 - lp2
    what = got[k] if k < len(got) else "the end (EOS)"
    detail = (
        f"token {k}: reference {ref[k]!r} (top-2 {first!r} {lp1:.4f}, {second!r} {lp2:.4f}, "
        f"margin {gap:.4f}), answer {what!r}"
    )
    runner_up = k < len(got) and got[k] == second
    if gap < margin and (runner_up or k >= len(got)):
        return "accepted", k, detail, noise
    return "mismatch", k, detail, noise


def stream_completion(client, model, prompt, max_tokens, logprobs):
    """One streamed greedy completion: its tokens, logprobs, top alternatives and timings."""
    t0 = time.perf_counter()
    stream = client.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=0,
        logprobs=logprobs,
        stream=True,
        stream_options={"include_usage": True},
    )
    tokens, lps, tops, stamps = [], [], [], []
    text, usage, finish = [], None, None
    for chunk in stream:
        now = time.perf_counter()
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
        for c in chunk.choices:
            text.append(c.text or "")
            if c.finish_reason:
                finish = c.finish_reason
            lp = c.logprobs
            if lp is not None and lp.tokens:
                tokens.extend(lp.tokens)
                lps.extend(lp.token_logprobs or [None] * len(lp.tokens))
                tops.extend(lp.top_logprobs or [{}] * len(lp.tokens))
                stamps.extend([now] * len(lp.tokens))
    return {
        "tokens": tokens,
        "logprobs": lps,
        "top": [dict(t or {}) for t in tops],
        "text": "".join(text),
        "finish_reason": finish,
        "completion_tokens": usage if usage is not None else len(tokens),
        "sent": t0,
        "first": stamps[0] if stamps else None,
        "last": stamps[-1] if stamps else None,
    }


def load_prompts(args):
    if args.prompts:
        with open(args.prompts, encoding="utf-8") as f:
            prompts = [line.rstrip("\n") for line in f if line.strip()]
        if not prompts:
            sys.exit(f"serve_bench: {args.prompts} has no prompts")
        return prompts
    if args.vocab_size <= 3:
        sys.exit(f"serve_bench: --vocab-size {args.vocab_size} leaves no token ids to draw from [3, vocab)")
    rng = random.Random(args.seed)
    head = [args.bos] if args.bos >= 0 else []
    return [
        head + [rng.randrange(3, args.vocab_size) for _ in range(args.prompt_tokens)]
        for _ in range(args.random_prompts)
    ]


def run_level(client, args, prompts, references, concurrency):
    n = concurrency * args.rounds
    answers = [None] * n
    errors = []
    lock = threading.Lock()

    def client_thread(k):
        for i in range(k, n, concurrency):
            try:
                answers[i] = stream_completion(
                    client, args.model, prompts[i % len(prompts)], args.max_tokens, 0
                )
            except Exception as e:  # noqa: BLE001 -- every failure is reported, none stops the rest
                with lock:
                    errors.append(f"request {i}: {type(e).__name__}: {e}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(client_thread, range(concurrency)))
    wall = time.perf_counter() - t0
    done = [a for a in answers if a is not None]
    generated = sum(a["completion_tokens"] for a in done)
    ttft = [a["first"] - a["sent"] for a in done if a["first"] is not None]
    decode = [
        (len(a["tokens"]) - 1) / (a["last"] - a["first"])
        for a in done
        if a["first"] is not None and len(a["tokens"]) > 1 and a["last"] > a["first"]
    ]
    accepted, mismatches, noise = [], [], []
    for i, a in enumerate(answers):
        if a is None:
            continue
        verdict, pos, detail, nz = compare(references[i % len(prompts)], a, args.margin)
        if nz is not None:
            noise.append(nz)
        if verdict == "accepted":
            accepted.append({"request": i, "prompt": i % len(prompts), "position": pos, "detail": detail})
        elif verdict == "mismatch":
            mismatches.append({"request": i, "prompt": i % len(prompts), "position": pos, "detail": detail})
    return {
        "concurrency": concurrency,
        "requests": n,
        "completed": len(done),
        "errors": errors,
        "wall_s": wall,
        "generated_tokens": generated,
        "throughput_tokens_per_s": generated / wall if wall > 0 else None,
        "ttft_s": {"p50": percentile(ttft, 0.5), "p90": percentile(ttft, 0.9)},
        "decode_tokens_per_s_per_request": {"p50": percentile(decode, 0.5)},
        "accepted_divergences": accepted,
        "mismatches": mismatches,
        "max_logprob_noise": max(noise) if noise else None,
    }


def fmt(x, spec):
    return "n/a" if x is None else format(x, spec)


def self_test():
    """The comparison on made-up answers: what must pass, be accepted, and fail."""
    ref = {
        "tokens": ["a", "b", "c", "d"],
        "logprobs": [-0.1, -0.2, -0.69, -0.3],
        "top": [{"a": -0.1, "x": -3.0}, {"b": -0.2, "y": -2.0}, {"c": -0.69, "z": -0.70}, {"d": -0.3, "w": -1.5}],
    }
    cases = [
        ({"tokens": ["a", "b", "c", "d"], "logprobs": [-0.1, -0.21, -0.69, -0.3]}, "equal"),
        # A near-tie (margin 0.01) flipped to the runner-up: accepted; what follows may differ.
        ({"tokens": ["a", "b", "z", "q"], "logprobs": [-0.1, -0.2, -0.7, -5.0]}, "accepted"),
        # The same position but a token that is not the runner-up: a mismatch.
        ({"tokens": ["a", "b", "q"], "logprobs": [-0.1, -0.2, -0.7]}, "mismatch"),
        # A clear winner (margin 2.8) replaced: a mismatch.
        ({"tokens": ["x", "b", "c", "d"], "logprobs": [-3.0, -0.2, -0.69, -0.3]}, "mismatch"),
        # Going on after the reference's EOS: a mismatch (no margin to judge by).
        ({"tokens": ["a", "b", "c", "d", "e"], "logprobs": [-0.1, -0.2, -0.69, -0.3, -1.0]}, "mismatch"),
        # Stopping early where the reference's margin is large: a mismatch.
        ({"tokens": ["a"], "logprobs": [-0.1]}, "mismatch"),
    ]
    failed = 0
    for answer, want in cases:
        verdict, pos, detail, noise = compare(ref, answer, 0.05)
        ok = verdict == want
        failed += not ok
        print(f"self-test: {'ok ' if ok else 'BAD'} {answer['tokens']} -> {verdict} (want {want}) {detail}")
    _, _, _, noise = compare(ref, cases[0][0], 0.05)
    if noise is None or abs(noise - 0.01) > 1e-9:
        print(f"self-test: BAD noise {noise}, want 0.01")
        failed += 1
    assert percentile([1, 2, 3, 4], 0.5) == 2.5 and percentile([5], 0.9) == 5
    print(f"serve_bench self-test: {len(cases) + 1 - failed} of {len(cases) + 1} passed")
    return 1 if failed else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-url")
    ap.add_argument("--model")
    ap.add_argument("--prompts", help="a text file, one prompt a line")
    ap.add_argument("--random-prompts", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--vocab-size", type=int, default=32000)
    ap.add_argument("--bos", type=int, default=1, help="token id before each random prompt (-1: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--rounds", type=int, default=2, help="requests each client sends in turn")
    ap.add_argument("--margin", type=float, default=0.05)
    ap.add_argument("--wait", type=float, default=0, help="seconds to wait for the server to answer")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per request")
    ap.add_argument("--json")
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    if not args.base_url or not args.model:
        ap.error("--base-url and --model are required")
    try:
        levels = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        ap.error(f"--concurrency {args.concurrency!r} must be integers separated by commas")
    if not levels or min(levels) < 1 or args.rounds < 1 or args.max_tokens < 1:
        ap.error("--concurrency, --rounds and --max-tokens must be at least 1")
    if args.random_prompts < 1 or args.prompt_tokens < 1:
        ap.error("--random-prompts and --prompt-tokens must be at least 1")

    import openai  # here, so that --self-test and --help need no client

    client = openai.OpenAI(
        base_url=args.base_url, api_key="unused", max_retries=0, timeout=args.timeout
    )
    deadline = time.monotonic() + args.wait
    while True:
        try:
            ids = [m.id for m in client.models.list().data]
            break
        except openai.APIConnectionError as e:
            if time.monotonic() >= deadline:
                print(f"serve_bench: no server at {args.base_url}: {e}", file=sys.stderr)
                return 1
            time.sleep(0.5)
    if args.model not in ids:
        print(f"serve_bench: the server serves {ids}, not {args.model!r}", file=sys.stderr)
        return 1
    prompts = load_prompts(args)

    t0 = time.perf_counter()
    references = [
        stream_completion(client, args.model, p, args.max_tokens, 2) for p in prompts
    ]
    ref_wall = time.perf_counter() - t0
    ref_tokens = sum(r["completion_tokens"] for r in references)
    print(
        f"serve_bench: reference: {len(prompts)} prompts alone with top-2 logprobs, "
        f"{ref_tokens} tokens in {ref_wall:.2f} s"
    )
    results = []
    for c in levels:
        r = run_level(client, args, prompts, references, c)
        results.append(r)
        print(
            f"serve_bench: concurrency {c:3d}: {r['completed']}/{r['requests']} requests, "
            f"{r['generated_tokens']} tokens in {r['wall_s']:.2f} s = "
            f"{fmt(r['throughput_tokens_per_s'], '.1f')} tokens/s; TTFT p50 "
            f"{fmt(r['ttft_s']['p50'], '.3f')} s, p90 {fmt(r['ttft_s']['p90'], '.3f')} s; "
            f"per-request decode p50 {fmt(r['decode_tokens_per_s_per_request']['p50'], '.1f')} "
            f"tokens/s; {len(r['accepted_divergences'])} accepted divergences, "
            f"{len(r['mismatches'])} mismatches; logprob noise "
            f"{fmt(r['max_logprob_noise'], '.2e')}"
        )
        for d in r["accepted_divergences"]:
            print(f"  accepted divergence, request {d['request']} (prompt {d['prompt']}): {d['detail']}")
        for d in r["mismatches"]:
            print(f"  MISMATCH, request {d['request']} (prompt {d['prompt']}): {d['detail']}")
        for e in r["errors"][:5]:
            print(f"  ERROR {e}")
    noise = [r["max_logprob_noise"] for r in results if r["max_logprob_noise"] is not None]
    if noise and max(noise) > args.margin / 2:
        print(
            f"serve_bench: warning: logprob noise up to {max(noise):.3g} against a margin of "
            f"{args.margin}: the margin may be too tight for these numerics"
        )
    mismatches = sum(len(r["mismatches"]) for r in results)
    errors = sum(len(r["errors"]) for r in results)
    accepted = sum(len(r["accepted_divergences"]) for r in results)
    out = {
        "schema": SCHEMA,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(sys.argv),
        "config": {
            "base_url": args.base_url,
            "model": args.model,
            "prompts": args.prompts or "random",
            "prompt_count": len(prompts),
            "prompt_tokens": None if args.prompts else args.prompt_tokens + (args.bos >= 0),
            "max_tokens": args.max_tokens,
            "concurrency": levels,
            "rounds": args.rounds,
            "margin": args.margin,
            "openai": openai.__version__,
        },
        "reference": {"prompts": len(prompts), "tokens": ref_tokens, "wall_s": ref_wall},
        "levels": results,
        "accepted_divergences": accepted,
        "mismatches": mismatches,
        "errors": errors,
    }
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
    verdict = "ok" if mismatches == 0 and errors == 0 else "FAILED"
    print(
        f"serve_bench: {verdict}: {mismatches} mismatches, {errors} failed requests, "
        f"{accepted} accepted divergences (margin {args.margin})"
    )
    return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
