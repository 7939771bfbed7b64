#!/usr/bin/env python3
"""Names the tests that skipped at run time, from the output of test binaries run with
`-- --nocapture --test-threads=1`.

A test that cannot run here (no GPU, no ../shared/data) prints a line holding "SKIPPED (why)" and
returns, and cargo counts it as passed. This reads such a log and prints, per reason, how many
tests skipped and their names, then one count line, so that CI's output says what did not run.

Usage: python3 tools/skip_summary.py LOG [LOG...]      (exit 1 if a log cannot be read)
"""
import re
import sys
from collections import OrderedDict

# libtest's lines: "test NAME ... " (then the test's own output), then "ok", "FAILED" or
# "ignored" (on the same line when the test printed nothing).
TEST_START = re.compile(r"^test (\S+) \.\.\. ?(.*)$")
RESULT = re.compile(r"^(ok|FAILED|ignored)\b")
RUNNING = re.compile(r"^\s*Running (\S+)")
SKIPPED = re.compile(r"SKIPPED\b[^:]*:?\s*(.*)")


def summarize(lines):
    """(binary, test, reason) for every skipped test; the number of tests seen."""
    skipped = []
    seen = 0
    binary, current, reason = None, None, None

    def finish():
        if current is not None and reason is not None:
            skipped.append((binary, current, reason))

    for line in lines:
        line = line.rstrip("\n")
        m = RUNNING.match(line)
        if m:
            finish()
            current, reason = None, None
            binary = m.group(1).split("/")[-1].removesuffix(".rs")
            continue
        m = TEST_START.match(line)
        if m:
            finish()
            seen += 1
            current, reason = m.group(1), None
            rest = m.group(2)
            if "ignored" == rest.strip():
                current = None
            elif "SKIPPED" in rest:
                reason = skip_reason(rest)
            continue
        if current is None:
            continue
        if "SKIPPED" in line and reason is None:
            reason = skip_reason(line)
        elif RESULT.match(line):
            if not line.startswith("ok"):
                reason = None  # a failure or an ignored test is reported by cargo itself
            finish()
            current, reason = None, None
    finish()
    return skipped, seen


def skip_reason(text):
    """The reason part of "... SKIPPED (no GPU): why" (the whole text after SKIPPED)."""
    i = text.index("SKIPPED")
    return text[i:].strip()


def main(paths):
    lines = []
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                lines.extend(f)
        except OSError as e:
            print(f"skip_summary: cannot read {path}: {e}", file=sys.stderr)
            return 1
    skipped, seen = summarize(lines)
    by_reason = OrderedDict()
    for binary, test, reason in skipped:
        by_reason.setdefault(reason, []).append(f"{binary}::{test}" if binary else test)
    print(f"== tests that skipped at run time (cargo counts them as passed): {len(skipped)} of {seen}")
    for reason, names in by_reason.items():
        print(f"{len(names)} x {reason}")
        for name in names:
            print(f"    {name}")
    print(f"skipped at run time: {len(skipped)} of {seen} tests ran nothing")
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    try:
        sys.exit(main(sys.argv[1:]))
    except BrokenPipeError:  # a reader such as `head` closed the pipe: nothing left to say
        sys.exit(0)
