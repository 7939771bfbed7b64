#!/usr/bin/env bash
# Builds here what a GPU session runs (the GPU machines have no Rust toolchain): the release
# `implicit` binary and the CUDA test binaries, with the `cuda` feature, under stable names
# (implicit, cuda_kernels, cuda_model, cuda_train, cuda_generate), stripped of debug info and
# packed into target/gpu/bin.tar.xz (five binaries of ~15 MiB each share most of their bytes;
# packed they are ~15 MiB, under the device tool's 64 MiB carry limit); the small real data the
# GPU tests read (stories260k, LIMA: 4 MiB) under target/gpu/data/, with the Llama-2 tokenizer
# (3.6 MiB, data/tokenizers/llama2/tokenizer.json and tokenizer_config.json) that gpu_check.sh's
# step "serve" gives a random Llama-2-7B; the official `openai` client's wheels and their
# dependencies (pydantic-core and jiter for CPython 3.10-3.13 manylinux x86_64: the GPU machine's
# Python is unknown and it has no network; 14 MiB) under target/gpu/wheels/, which step "serve"
# pip-installs offline when its python3 cannot import openai; the test fixtures
# (tests/fixtures, 0.7 MiB) under target/gpu/fixtures/, so that the binaries read the fixtures
# of the tree they were built from; target/gpu/COMMIT naming the commit they were built from
# ("-dirty" when the working tree had changes). Then carry target/gpu to the device tool and run
# tools/gpu_check.sh there, which unpacks the binaries and tells them where the carried files are
# (benches/NOTES.md, "How to run the benchmark").
#
# Usage: bash tools/build_gpu_binaries.sh             (nvcc: bash tools/install_nvcc.sh first)
#        bash tools/build_gpu_binaries.sh --pack DIR  (no build: packs the binaries in DIR, the
#            `implicit` one and whichever test binaries are there, as they are; tests/gpu_check.rs
#            packs stand-ins this way)
# Environment: IMPLICIT_DATA (where the data is read from, default ../shared/data beside the
# repository), OPENAI_VERSION (the client's version for the wheels, default CI's: .ci/run),
# WHEELS (1: download the wheels, the default when building; 0: none, the default of --pack, so
# that tests/gpu_check.rs needs no network).
set -euo pipefail
start=$PWD
cd "$(dirname "$0")/.."
repo=$PWD

out=$repo/target/gpu
test_names=(cuda_kernels cuda_model cuda_train cuda_generate)

# Builds the binaries into $build, stripped of debug info.
build_binaries() {
    mkdir -p "$build"
    echo "== cargo build --release --features cuda --bin implicit"
    cargo build --release --features cuda --bin implicit
    cp target/release/implicit "$build/implicit"
    strip --strip-debug "$build/implicit"
    local t path
    for t in "${test_names[@]}"; do
        if [ -f "tests/$t.rs" ]; then
            echo "== cargo test --release --features cuda --test $t --no-run"
            path=$(test_binary "$t")
            cp "$path" "$build/$t"
            strip --strip-debug "$build/$t"
        else
            rm -f "$build/$t"
        fi
    done
}

# The path of a test binary, from cargo's JSON messages.
test_binary() {
    cargo test --release --features cuda --test "$1" --no-run --message-format=json \
        | python3 -c '
import json, sys
name = sys.argv[1]
path = None
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") \
            and m["target"]["name"] == name and "test" in m["target"]["kind"]:
        path = m["executable"]
if not path:
    sys.exit("no executable for test " + name)
print(path)
' "$1"
}

if [ "${1:-}" = --pack ]; then
    if [ -z "${2:-}" ] || ! (cd "$start" && [ -d "$2" ]); then
        echo "usage: bash tools/build_gpu_binaries.sh --pack DIR (DIR holds implicit and the cuda_* test binaries)" >&2
        exit 2
    fi
    build=$(cd "$start" && cd "$2" && pwd)
    WHEELS=${WHEELS:-0}
else
    build=$repo/target/gpu-build
    build_binaries
fi

# ---- pack: what is in $build, the data, the fixtures and the commit into $out ----
if [ ! -x "$build/implicit" ]; then
    echo "no executable $build/implicit to pack" >&2
    exit 2
fi
rm -rf "$out"
mkdir -p "$out"
bins=(implicit)
for t in "${test_names[@]}"; do
    if [ -f "$build/$t" ]; then bins+=("$t"); fi
done
echo "== packing ${bins[*]} into $out/bin.tar.xz"
tar -C "$build" -cf - "${bins[@]}" | xz -T2 -6 > "$out/bin.tar.xz"

# The GPU machine has no ../shared/data: carry what the tests read (gpu_check.sh points
# IMPLICIT_DATA here).
data=${IMPLICIT_DATA:-$repo/../shared/data}
for f in models/stories260k-f32.gguf lima/lima_data.jsonl; do
    if [ -f "$data/$f" ]; then
        mkdir -p "$out/data/$(dirname "$f")"
        cp "$data/$f" "$out/data/$f"
    else
        echo "warning: $data/$f is absent; the GPU tests that read it will skip" >&2
    fi
done

# The Llama-2 tokenizer under the names a model folder gives it (step "serve" of gpu_check.sh
# serves a random Llama-2-7B, which `implicit init` writes without one).
if [ -f "$data/tokenizers/llama2-tokenizer.json" ]; then
    mkdir -p "$out/data/tokenizers/llama2"
    cp "$data/tokenizers/llama2-tokenizer.json" "$out/data/tokenizers/llama2/tokenizer.json"
    if [ -f "$data/tokenizers/llama2-tokenizer_config.json" ]; then
        cp "$data/tokenizers/llama2-tokenizer_config.json" "$out/data/tokenizers/llama2/tokenizer_config.json"
    fi
else
    echo "warning: $data/tokenizers/llama2-tokenizer.json is absent; step serve needs a model with a tokenizer" >&2
fi

# The openai client for step "serve" (tools/serve_bench.py), whatever CPython 3.10-3.13 the GPU
# machine has: one resolution per version (the pure-Python wheels are shared, the compiled
# pydantic-core and jiter are one wheel each per version).
openai_version=${OPENAI_VERSION:-3.54.0}
mkdir -p "$out/wheels"
for py in 3.10 3.11 3.12 3.13; do
    if [ "${WHEELS:-1}" = 0 ]; then break; fi
    if ! python3 -m pip download --quiet --disable-pip-version-check "openai==$openai_version" \
        --only-binary=:all: --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
        --python-version "$py" --implementation cp --dest "$out/wheels"; then
        echo "warning: pip download of openai==$openai_version for CPython $py failed; step serve needs openai on the GPU machine" >&2
    fi
done

# The fixtures of this tree (gpu_check.sh points IMPLICIT_FIXTURES here): the GPU machine's
# checkout may have moved on since the binaries were built.
cp -R tests/fixtures "$out/fixtures"

commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=normal 2>/dev/null)" ]; then
    commit="$commit-dirty"
fi
echo "$commit" > "$out/COMMIT"

ls -l "$out"
total=$(du -sb "$out" | cut -f1)
echo "target/gpu: $((total / 1024 / 1024)) MiB, commit $commit"
if [ "$total" -gt $((60 * 1024 * 1024)) ]; then
    echo "warning: target/gpu is over 60 MiB; the device tool carries 64 MiB in all" >&2
fi
