#!/usr/bin/env bash
# Builds here what a GPU session runs (the GPU machines have no Rust toolchain): the release
# `implicit` binary and the CUDA test binaries, with the `cuda` feature, under stable names
# (implicit, cuda_kernels, cuda_model, cuda_train, cuda_generate), stripped of debug info and
# packed into target/gpu/bin.tar.xz (five binaries of ~15 MiB each share most of their bytes;
# packed they are ~15 MiB, under the device tool's 64 MiB carry limit); the small real data the
# GPU tests read (stories260k, LIMA: 4 MiB) under target/gpu/data/; target/gpu/COMMIT naming the
# commit they were built from ("-dirty" when the working tree had changes). Then carry
# target/gpu to the device tool and run tools/gpu_check.sh there, which unpacks the binaries
# (benches/NOTES.md, "How to run the benchmark").
#
# Usage: bash tools/build_gpu_binaries.sh          (nvcc: bash tools/install_nvcc.sh first)
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/gpu
build=target/gpu-build
rm -rf "$out"
mkdir -p "$out" "$build"

echo "== cargo build --release --features cuda --bin implicit"
cargo build --release --features cuda --bin implicit
cp target/release/implicit "$build/implicit"

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

for t in cuda_kernels cuda_model cuda_train cuda_generate; do
    if [ -f "tests/$t.rs" ]; then
        echo "== cargo test --release --features cuda --test $t --no-run"
        path=$(test_binary "$t")
        cp "$path" "$build/$t"
    else
        rm -f "$build/$t"
    fi
done

strip --strip-debug "$build/implicit"
bins=(implicit)
for t in cuda_kernels cuda_model cuda_train cuda_generate; do
    if [ -f "$build/$t" ]; then
        strip --strip-debug "$build/$t"
        bins+=("$t")
    fi
done
echo "== packing ${bins[*]} into $out/bin.tar.xz"
tar -C "$build" -cf - "${bins[@]}" | xz -T2 -6 > "$out/bin.tar.xz"

# The GPU machine has no ../shared/data: carry what the tests read (gpu_check.sh points
# IMPLICIT_DATA here).
data=${IMPLICIT_DATA:-../shared/data}
for f in models/stories260k-f32.gguf lima/lima_data.jsonl; do
    if [ -f "$data/$f" ]; then
        mkdir -p "$out/data/$(dirname "$f")"
        cp "$data/$f" "$out/data/$f"
    else
        echo "warning: $data/$f is absent; the GPU tests that read it will skip" >&2
    fi
done

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
