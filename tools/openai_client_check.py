#!/usr/bin/env python3
"""Checks `implicit serve` with the official `openai` Python client as a real client.

Usage: openai_client_check.py --base-url http://127.0.0.1:PORT/v1 --expected expected.json

expected.json (written by tests/serve.rs from the Rust library's own greedy decoding):
  {"model": id,
   "chat": {"messages": [...], "max_tokens": n, "text": greedy text,
            "text_with_rules": greedy text through the paper's rule adapter},
   "completion": {"prompt": str, "max_tokens": n, "text": str,
                  "tokens": [token texts], "logprobs": [floats]},
   "concurrent": [{"messages": [...], "max_tokens": n}, ...]}

Exits 0 after printing "openai client check: N passed", non-zero with a traceback otherwise.
"""

import argparse
import json
import math
import sys
from concurrent.futures import ThreadPoolExecutor

import openai

CHECKS = []


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    CHECKS.append(what)


def close(a, b, tol=2e-4):
    return math.isfinite(a) and abs(a - b) <= tol * max(1.0, abs(b))


def chat_text(client, model, messages, max_tokens, **kw):
    r = client.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, temperature=0, **kw
    )
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--expected", required=True)
    args = ap.parse_args()
    with open(args.expected, encoding="utf-8") as f:
        exp = json.load(f)
    model = exp["model"]
    client = openai.OpenAI(base_url=args.base_url, api_key="unused", max_retries=0, timeout=120)

    # Models.
    ids = [m.id for m in client.models.list().data]
    check(model in ids, f"models.list has {model}: {ids}")

    # Chat: greedy text equals the library's.
    c = exp["chat"]
    r = chat_text(client, model, c["messages"], c["max_tokens"])
    text = r.choices[0].message.content
    check(text == c["text"], f"chat text {text!r} == {c['text']!r}")
    check(r.choices[0].message.role == "assistant", "chat role")
    check(r.choices[0].finish_reason in ("stop", "length"), "chat finish_reason")
    check(r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0, "chat usage")
    check(
        r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens,
        "usage adds up",
    )

    # The rule adapter per request, through the client's extra_body (the server's own field).
    r = chat_text(client, model, c["messages"], c["max_tokens"], extra_body={"rules": True})
    text = r.choices[0].message.content
    check(text == c["text_with_rules"], f"chat with rules {text!r} == {c['text_with_rules']!r}")
    r = chat_text(client, model, c["messages"], c["max_tokens"], extra_body={"rules": False})
    check(r.choices[0].message.content == c["text"], "chat with rules false is the plain text")

    # Chat with logprobs: top-1 is the chosen token, every logprob <= 0, bytes add up to text.
    r = chat_text(client, model, c["messages"], c["max_tokens"], logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    check(r.choices[0].message.content == c["text"], "logprobs do not change the greedy text")
    check(len(content) == r.usage.completion_tokens or r.choices[0].finish_reason == "stop",
          "one logprob entry per token")
    for e in content:
        check(e.logprob <= 1e-6, f"logprob {e.logprob} <= 0")
        check(len(e.top_logprobs) == 3, "3 alternatives")
        check(e.top_logprobs[0].token == e.token, f"top-1 {e.top_logprobs[0].token!r} is {e.token!r}")
        check(close(e.top_logprobs[0].logprob, e.logprob, 1e-6), "top-1 logprob is the token's")
        lps = [t.logprob for t in e.top_logprobs]
        check(lps == sorted(lps, reverse=True), "alternatives sorted")
    joined = b"".join(bytes(e.bytes) for e in content).decode("utf-8", "replace")
    check(joined == c["text"], f"token bytes {joined!r} spell the text")

    # Completions with logprobs: the values the Rust side computed.
    p = exp["completion"]
    r = client.completions.create(
        model=model, prompt=p["prompt"], max_tokens=p["max_tokens"], temperature=0, logprobs=3
    )
    ch = r.choices[0]
    check(ch.text == p["text"], f"completion text {ch.text!r} == {p['text']!r}")
    check(ch.logprobs.tokens == p["tokens"], f"tokens {ch.logprobs.tokens} == {p['tokens']}")
    for got, want in zip(ch.logprobs.token_logprobs, p["logprobs"]):
        check(close(got, want), f"logprob {got} == {want}")
    check(len(ch.logprobs.token_logprobs) == len(p["logprobs"]), "as many logprobs")
    for tok, lp, top in zip(ch.logprobs.tokens, ch.logprobs.token_logprobs, ch.logprobs.top_logprobs):
        check(0 < len(top) <= 3, "top_logprobs has up to 3 entries")
        check(all(v <= 1e-6 for v in top.values()), "top logprobs <= 0")
        check(close(max(top.values()), lp, 1e-6), "the chosen token is the most likely")
        check(close(top.get(tok, -1e9), lp, 1e-6), f"{tok!r} is in its top_logprobs")
    check(ch.logprobs.text_offset == sorted(ch.logprobs.text_offset), "text offsets increase")

    # Streaming: the deltas add up to the non-streamed text.
    chunks = list(
        client.chat.completions.create(
            model=model, messages=c["messages"], max_tokens=c["max_tokens"], temperature=0,
            stream=True, stream_options={"include_usage": True},
        )
    )
    deltas = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    check(deltas == c["text"], f"streamed chat {deltas!r} == {c['text']!r}")
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    check(len(finals) == 1, f"one finish_reason: {finals}")
    check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0, "stream usage")
    stream = client.completions.create(
        model=model, prompt=p["prompt"], max_tokens=p["max_tokens"], temperature=0, logprobs=2,
        stream=True,
    )
    pieces, toks = [], []
    for ch in stream:
        pieces.append(ch.choices[0].text)
        if ch.choices[0].logprobs:
            toks.extend(ch.choices[0].logprobs.tokens)
    check("".join(pieces) == p["text"], "streamed completion text")
    check(toks == p["tokens"], "streamed completion tokens")

    # Stop strings: the text ends just before the first one.
    words = p["text"].split(" ")
    if len(words) > 3:
        stop = " " + words[2]
        cut = p["text"].index(stop)
        r = client.completions.create(
            model=model, prompt=p["prompt"], max_tokens=p["max_tokens"], temperature=0, stop=[stop]
        )
        check(r.choices[0].text == p["text"][:cut], f"stop {stop!r}: {r.choices[0].text!r}")
        check(r.choices[0].finish_reason == "stop", "finish_reason stop")
        s = client.completions.create(
            model=model, prompt=p["prompt"], max_tokens=p["max_tokens"], temperature=0,
            stop=stop, stream=True,
        )
        check("".join(ch.choices[0].text for ch in s) == p["text"][:cut], "streamed stop")

    # Errors.
    for bad, param in [
        (dict(messages=[]), "messages"),
        (dict(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role"),
        (dict(messages=c["messages"], temperature=7), "temperature"),
    ]:
        try:
            client.chat.completions.create(model=model, max_tokens=4, **bad)
            check(False, f"{bad} must fail")
        except openai.BadRequestError as e:
            check(e.status_code == 400, "400")
            check(e.body.get("param") == param, f"param {e.body.get('param')} == {param}")
            check(e.body.get("type") == "invalid_request_error", "error type")
    try:
        client.chat.completions.create(model=model, max_tokens=4, messages=None)
        check(False, "missing messages must fail")
    except (openai.BadRequestError, TypeError) as e:
        check(True, f"missing messages: {type(e).__name__}")
    try:
        client.completions.create(model=model, prompt="x", max_tokens=1_000_000)
        check(False, "too many tokens must fail")
    except openai.BadRequestError as e:
        check(e.code == "context_length_exceeded", "context_length_exceeded")
    try:
        client.models.retrieve("no-such-model")
        check(False, "unknown model must fail")
    except openai.NotFoundError:
        check(True, "404 model")

    # Concurrency: requests in threads give what they give one after another.
    jobs = exp["concurrent"]
    sequential = [chat_text(client, model, j["messages"], j["max_tokens"]).choices[0].message.content for j in jobs]

    def run(j):
        if j.get("stream"):
            s = client.chat.completions.create(
                model=model, messages=j["messages"], max_tokens=j["max_tokens"], temperature=0,
                stream=True,
            )
            return "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices)
        return chat_text(client, model, j["messages"], j["max_tokens"]).choices[0].message.content

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        parallel = list(pool.map(run, jobs))
    for i, (a, b) in enumerate(zip(parallel, sequential)):
        check(a == b, f"concurrent request {i}: {a!r} == {b!r}")
    check(len(set(sequential)) > 1, "the concurrent prompts differ")

    print(f"openai client check: {len(CHECKS)} passed (openai {openai.__version__})")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
