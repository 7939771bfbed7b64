#!/usr/bin/env bash
# The one script a GPU session runs on the device machine, with the binaries of
# tools/build_gpu_binaries.sh carried in target/gpu/ (device tool: carry ["target/gpu"]). It may
# be started from any folder (`bash tools/gpu_check.sh` in the repository root, or
# `bash /else/where/tools/gpu_check.sh`): every path below is made absolute from where the
# script lies. It unpacks target/gpu/bin.tar.xz into target/gpu-run/ (afresh at every start; the
# test binaries below are named by their short names), points the test binaries at the carried
# files (their compiled-in paths name the build machine's folders) and checks that what the
# chosen STEPS need is there, then runs them. In order, each step's output to $OUT/<step>.log:
#   1. nvidia-smi (device, driver, clocks)                            -> nvidia-smi.log
#   2. IMPLICIT_CUDA_SYNC=1 target/gpu/cuda_kernels (every kernel against its CPU reference;
#      the wgmma GEMM's tests, then the Hopper attention's ("hopper"), first and apart, each
#      under a short limit; a family that fails is switched off for the later steps; when the
#      wgmma tests fail, those without "multicast" run again under IMPLICIT_GEMM=wgmma-nocluster,
#      and if they pass the later steps keep the 1-block wgmma kernels)
#                               -> cuda_kernels_wgmma.log, cuda_kernels_hopper.log, cuda_kernels.log
#   3. target/gpu/cuda_model and cuda_generate                        -> cuda_model.log, cuda_generate.log
#   3b. target/gpu/cuda_train (the training step against the CPU)     -> cuda_train.log
#   3c. (only when STEPS names "mma") cuda_model and cuda_train with IMPLICIT_GEMM=mma: the
#      mma.sync GEMM, the sm_80 path and the fallback, which the default no longer takes on
#      compute capability 9.0                  -> cuda_model_mma.log, cuda_train_mma.log
#   4. python3 tools/bench_sdpa.py --json $OUT/sdpa.json (PyTorch SDPA) -> sdpa.log
#   5. target/gpu/implicit bench kernels --sdpa $OUT/sdpa.json --json $OUT/bench.json
#                                                                     -> bench.log
#   6. (only when STEPS names "generate"; MODEL_DIR or a random Llama-2-7B) python3
#      tools/bench_generate_torch.py --json $OUT/bench_generate_torch.json (plain generate and the
#      static-cache + torch.compile recipe, rows of both), then target/gpu/implicit
#      bench generate --torch $OUT/bench_generate_torch.json --json $OUT/bench_generate.json
#                                             -> bench_generate_torch.log, bench_generate.log
#   7. (only when STEPS names "serve"; under one limit of 240 s) target/gpu-run/implicit serve
#      --device cuda --max-batch 64 on MODEL_DIR or the random Llama-2-7B of step "generate"
#      (written by `implicit init` if absent); a model folder without tokenizer.json or
#      tokenizer.model is served through target/gpu-run/serve-model, links to its files beside
#      the carried Llama-2 tokenizer (target/gpu/data/tokenizers/llama2). Once the server prints
#      its "listening on" line, python3 tools/serve_bench.py drives it with the official openai
#      client at 1, 16 and 64 concurrent clients (greedy answers checked against each prompt's
#      answer alone; throughput, time to first token, per-request decode rate) into
#      $OUT/serve.json; then the server gets SIGTERM. When python3 has no openai (1.26 or
#      newer), the carried wheels (target/gpu/wheels) are pip-installed offline into
#      target/gpu-run/pylib first. The summary gives the 64-client throughput over bench
#      generate's batch-64 decode rate when $OUT/bench_generate.json exists (target: >= 0.8)
#                                   -> serve.log, serve_server.log, serve_listen.log
#   8. (only when STEPS names "trainbench") bench train against tools/bench_train_torch.py at
#      Llama-2-7B's shape (configs/models/llama2-7b.json): TRAIN_LAYERS layers (default 8) with
#      everything on the GPU against PyTorch AMP; then all 32 layers with --checkpointing
#      auto and bf16 optimizer state (stochastic rounding) against PyTorch bf16 at its best of
#      checkpointing, none, and checkpointing + torch.compile (--best-of; the JSON lists each);
#      with TRAIN_HOST=1 also the fp32 state in host memory; every implicit run with --profile
#      (one more step timed by kernel family and phase, whose "profile:" lines the summary shows)
#                                             -> bench_train_*.{log,json}, train_torch_*.{log,json}
#   9. (only when STEPS names "paper"; for an H200) the paper's numerics, fp32 master weights
#      and moments on the GPU with --checkpointing auto (no recompute where 141 GB hold it),
#      all 32 layers, against PyTorch AMP at its best of checkpointing and none
#                                             -> bench_train_paper.{log,json}, train_torch_paper.{log,json}
# then a short summary last (the device tool returns only the output's last 12k characters; the
# files under $OUT come back whole, at most 8 of them: the logs and steps.txt are packed into
# $OUT/logs.tar.gz at the end, the JSON results stay loose). bench kernels times the wgmma GEMM
# unless its tests failed earlier in the same call (then --no-wgmma). A failed step does not stop
# the later ones; the exit code is that of the first failed step (3 for a step's time limit).
#
# What the test binaries are told (exported, absolute paths; a value set by the caller is kept):
#   IMPLICIT_BIN       target/gpu-run/implicit (the tests that run the CLI)
#   IMPLICIT_FIXTURES  target/gpu/fixtures (carried; the checkout's tests/fixtures if absent)
#   IMPLICIT_DATA      ../shared/data beside the repository if there, else target/gpu/data
#   IMPLICIT_COMMIT    target/gpu/COMMIT (what the benchmarks record)
#
# Environment: DRY_RUN=1 (everything but the steps: unpacks, prints every path and variable the
# steps and the tests use, checks each one that the chosen STEPS need, runs each binary once with
# --version or --list, and exits 2 naming whatever is missing, else 0; without DRY_RUN a missing
# piece is printed as a warning and the steps run), OUT (default target/gpu-out in the
# repository; a relative OUT, MODEL_DIR or IMPLICIT_* is taken from the folder the script was
# started in), QUICK=1 (micro-batch 1, fewer samples),
# STEPS (default "smi,kernels,model,train,sdpa,bench"), BENCH_ARGS (more arguments for bench kernels,
# e.g. "--filter gemm"), TEST_ARGS (more arguments for the test binaries, e.g. a test name
# filter), BUDGET (seconds for all steps, default 570: the device tool stops a command at 600),
# MODEL_DIR (the model folder of step "generate"; unset: a random Llama-2-7B written once to
# /tmp/implicit-llama2-7b by `implicit init`),
# RESERVE (seconds of BUDGET the test steps leave to sdpa and bench, default 200 when "bench" is
# in STEPS), WGMMA=1 (bench kernels times the wgmma rows even when its tests failed in this call),
# EAGER=1 (step "generate" also runs bench generate --no-cuda-graphs -> bench_generate_eager.json),
# GENERATE_ARGS (more arguments for both generate benchmarks, e.g. "--batch-sizes 1,16"),
# SERVE_ARGS (more arguments for serve_bench.py, e.g. "--max-tokens 64 --rounds 1"),
# SERVE_START_LIMIT (seconds step "serve" waits for the server to listen, default 150),
# TRAIN_HOST=1 (step "trainbench" also runs bench train --optimizer-state host), TRAIN_LAYERS
# (layers of step "trainbench"'s first pair, default 8), TRAIN_ARGS (more arguments for every
# train benchmark, e.g. "--micro-batch 2").
set -uo pipefail
# The caller's folder (relative paths given in the environment are read from there) and the
# repository this script belongs to (the steps run there).
START=$PWD
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) || {
    echo "gpu_check: cannot enter the folder above $0"
    exit 2
}
cd "$REPO" || exit 2
absolute() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$START/$1" ;; esac; }

OUT=$(absolute "${OUT:-$REPO/target/gpu-out}")
# What is carried (the packed binaries, COMMIT, data/, fixtures/) and where the binaries are
# unpacked (outside the carried folder, so that it stays small).
CARRIED=$REPO/target/gpu
BIN=$REPO/target/gpu-run
STEPS=${STEPS:-smi,kernels,model,train,sdpa,bench}
BUDGET=${BUDGET:-570}
QUICK=${QUICK:-0}
DRY_RUN=${DRY_RUN:-0}
first_failure=0
# Python's output reaches its log even when a step's time limit kills it.
export PYTHONUNBUFFERED=1

wants() { case ",$STEPS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# The binaries travel packed (tools/build_gpu_binaries.sh): unpack them afresh, so that they are
# the archive's whole set (a binary left from an earlier archive would run in its place).
if [ -f "$CARRIED/bin.tar.xz" ]; then
    rm -rf "$BIN" && mkdir -p "$BIN" || exit 2
    python3 -c '
import sys, tarfile
with tarfile.open(sys.argv[1]) as archive:
    # The "data" filter (Python 3.12+) keeps the archive inside the folder and executables executable.
    archive.extractall(sys.argv[2], **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
' "$CARRIED/bin.tar.xz" "$BIN" || { echo "gpu_check: cannot unpack $CARRIED/bin.tar.xz"; exit 2; }
    echo "gpu_check: unpacked $CARRIED/bin.tar.xz into $BIN"
fi
commit_given=${IMPLICIT_COMMIT:-}
if [ -z "$commit_given" ] && [ -f "$CARRIED/COMMIT" ]; then
    IMPLICIT_COMMIT=$(cat "$CARRIED/COMMIT")
fi
export IMPLICIT_COMMIT=${IMPLICIT_COMMIT:-unknown}
# Where the test binaries find what they read: their compiled-in paths (env!("CARGO_MANIFEST_DIR"),
# env!("CARGO_BIN_EXE_implicit")) name the build machine's folders (tests/common/mod.rs).
if [ -n "${IMPLICIT_BIN:-}" ]; then
    IMPLICIT_BIN=$(absolute "$IMPLICIT_BIN")
else
    IMPLICIT_BIN=$BIN/implicit
fi
if [ -n "${IMPLICIT_FIXTURES:-}" ]; then
    IMPLICIT_FIXTURES=$(absolute "$IMPLICIT_FIXTURES")
elif [ -d "$CARRIED/fixtures" ]; then
    IMPLICIT_FIXTURES=$CARRIED/fixtures
else
    # An archive from before the fixtures were carried: the checkout's own (tracked, so the
    # device tool copies them).
    IMPLICIT_FIXTURES=$REPO/tests/fixtures
fi
# The real data the tests read: ../shared/data beside the repository (the build machine), else
# the copy build_gpu_binaries.sh carried.
if [ -n "${IMPLICIT_DATA:-}" ]; then
    IMPLICIT_DATA=$(absolute "$IMPLICIT_DATA")
elif [ -d "$REPO/../shared/data" ]; then
    IMPLICIT_DATA=$(cd "$REPO/../shared/data" && pwd)
else
    IMPLICIT_DATA=$CARRIED/data
fi
export IMPLICIT_BIN IMPLICIT_FIXTURES IMPLICIT_DATA
if [ -n "${MODEL_DIR:-}" ]; then MODEL_DIR=$(absolute "$MODEL_DIR"); fi

# cuBLAS (the GEMM reference): the image has libcublas in the nvidia-cublas wheel beside torch;
# make it loadable when it is not already.
if ! python3 -c 'import ctypes; ctypes.CDLL("libcublas.so.13")' 2>/dev/null; then
    cublas_dir=$(python3 - <<'EOF' 2>/dev/null
import glob, os, sys
dirs = []
try:
    import nvidia.cublas
    dirs += [os.path.join(p, "lib") for p in nvidia.cublas.__path__] + list(nvidia.cublas.__path__)
except Exception:
    pass
for p in sys.path:
    dirs += sorted(set(os.path.dirname(f) for f in glob.glob(os.path.join(p, "nvidia", "**", "libcublas.so.13*"), recursive=True)))
for d in dirs:
    if glob.glob(os.path.join(d, "libcublas.so.13*")):
        print(d)
        break
EOF
)
    if [ -z "$cublas_dir" ]; then
        found=$(find /usr /opt /lib /lib64 /root /home -name 'libcublas.so.13*' 2>/dev/null | head -1)
        if [ -n "$found" ]; then cublas_dir=$(dirname "$found"); fi
    fi
    if [ -n "$cublas_dir" ]; then
        export LD_LIBRARY_PATH="$cublas_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        echo "gpu_check: libcublas from $cublas_dir"
    else
        echo "gpu_check: no libcublas.so.13 found; bench kernels will run without the cuBLAS reference"
    fi
fi

# NCCL (data parallelism): cudarc loads "libnccl.so", the nvidia-nccl wheel beside torch ships
# libnccl.so.2: link it under that name.
if ! python3 -c 'import ctypes; ctypes.CDLL("libnccl.so")' 2>/dev/null; then
    nccl_so=$(python3 - <<'EOF' 2>/dev/null
import glob, os, sys
for p in sys.path:
    for f in sorted(glob.glob(os.path.join(p, "nvidia", "**", "libnccl.so.2*"), recursive=True)):
        print(f)
        sys.exit(0)
EOF
)
    if [ -n "$nccl_so" ]; then
        mkdir -p "$REPO/target/nccl-lib"
        ln -sf "$nccl_so" "$REPO/target/nccl-lib/libnccl.so"
        export LD_LIBRARY_PATH="$REPO/target/nccl-lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        echo "gpu_check: libnccl.so -> $nccl_so"
    else
        echo "gpu_check: no libnccl.so.2 found; the data-parallel tests will skip"
    fi
fi

# ---- what the chosen STEPS need: every path checked (and all printed under DRY_RUN=1) ----
missing=()
# report STATE NAME PATH: records one checked path; prints it under DRY_RUN=1 or when not ok.
report() {
    if [ "$1" != ok ]; then missing+=("$2: $3 ($1)"); fi
    if [ "$DRY_RUN" = 1 ] || [ "$1" != ok ]; then
        printf 'gpu_check: check %-14s %-37s %s\n' "$1" "$2" "$3"
    fi
}
need_file() { if [ -f "$2" ]; then report ok "$1" "$2"; else report MISSING "$1" "$2"; fi; }
# need_binary NAME PATH ARGS...: an executable that starts here when run with ARGS (--version,
# --list: nothing touches the GPU), so that a missing library or an older C library shows now.
need_binary() {
    local name=$1 path=$2 run_output
    shift 2
    if [ ! -f "$path" ]; then
        report MISSING "$name" "$path"
    elif [ ! -x "$path" ]; then
        report NOT-EXECUTABLE "$name" "$path"
    elif ! run_output=$(timeout 60 "$path" "$@" 2>&1); then
        report CANNOT-RUN "$name" "$path"
        printf '%s\n' "$run_output" | head -5 | sed 's/^/    /'
    else
        report ok "$name" "$path"
    fi
}
# Whether STEPS runs test binary $1.
runs_test() {
    case $1 in
        cuda_kernels) wants kernels ;;
        cuda_model) wants model || wants mma ;;
        cuda_generate) wants model ;;
        cuda_train) wants train || wants mma ;;
        *) return 1 ;;
    esac
}
if [ "$DRY_RUN" = 1 ]; then
    echo "gpu_check: dry run (nothing runs on the GPU), STEPS=$STEPS, started in $START"
    echo "gpu_check: path repository $REPO"
    echo "gpu_check: path carried $CARRIED"
    echo "gpu_check: path unpacked $BIN"
    echo "gpu_check: path OUT $OUT"
    for name in IMPLICIT_BIN IMPLICIT_FIXTURES IMPLICIT_DATA IMPLICIT_COMMIT; do
        echo "gpu_check: env $name=${!name}"
    done
    if [ -n "${MODEL_DIR:-}" ]; then echo "gpu_check: path MODEL_DIR $MODEL_DIR"; fi
    echo "gpu_check: machine python3 $(command -v python3 || echo absent)," \
        "nvidia-smi $(command -v nvidia-smi || echo absent), LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
fi
if [ -z "$commit_given" ]; then need_file COMMIT "$CARRIED/COMMIT"; fi
need_binary implicit "$IMPLICIT_BIN" --version
for t in cuda_kernels cuda_model cuda_generate cuda_train; do
    if runs_test "$t"; then need_binary "$t" "$BIN/$t" --list; fi
done
if wants model || wants train || wants mma; then
    # What cuda_model, cuda_generate and cuda_train read.
    for f in llama-gqa/config.json llama-gqa/model.safetensors olmo/config.json olmo/model.safetensors; do
        need_file "fixtures/$f" "$IMPLICIT_FIXTURES/$f"
    done
    for f in models/stories260k-f32.gguf lima/lima_data.jsonl; do
        need_file "data/$f" "$IMPLICIT_DATA/$f"
    done
fi
if wants sdpa; then need_file tools/bench_sdpa.py "$REPO/tools/bench_sdpa.py"; fi
if wants generate; then
    need_file tools/bench_generate_torch.py "$REPO/tools/bench_generate_torch.py"
fi
# The tokenizer step "serve" gives a model folder that has none (a random Llama-2-7B).
SERVE_TOKENIZER=$CARRIED/data/tokenizers/llama2
# Whether python3 has an openai client serve_bench.py can use (stream_options: 1.26 or newer).
export OPENAI_OK='import openai, sys; sys.exit(tuple(int(x) for x in openai.__version__.split(".")[:2]) < (1, 26))'
if wants serve; then
    need_file tools/serve_bench.py "$REPO/tools/serve_bench.py"
    if [ -z "${MODEL_DIR:-}" ] || { [ ! -f "$MODEL_DIR/tokenizer.json" ] && [ ! -f "$MODEL_DIR/tokenizer.model" ]; }; then
        need_file tokenizers/llama2 "$SERVE_TOKENIZER/tokenizer.json"
    fi
    # The openai client: the machine's own, or the carried wheels.
    if python3 -c "$OPENAI_OK" 2>/dev/null || compgen -G "$CARRIED/wheels/openai-*.whl" > /dev/null; then
        report ok wheels "$CARRIED/wheels"
    else
        report MISSING wheels "$CARRIED/wheels"
    fi
fi
if wants generate || wants serve; then
    if [ -n "${MODEL_DIR:-}" ]; then
        need_file MODEL_DIR/config.json "$MODEL_DIR/config.json"
    elif [ "$DRY_RUN" = 1 ]; then
        echo "gpu_check: note MODEL_DIR unset: step generate (or serve) writes a random Llama-2-7B to /tmp/implicit-llama2-7b"
    fi
fi
if wants trainbench || wants paper; then
    need_file tools/bench_train_torch.py "$REPO/tools/bench_train_torch.py"
    need_file configs/models/llama2-7b.json "$REPO/configs/models/llama2-7b.json"
fi
if [ "$DRY_RUN" = 1 ]; then
    if [ ${#missing[@]} -gt 0 ]; then
        echo "gpu_check: dry run: ${#missing[@]} missing for STEPS=$STEPS:"
        printf '  %s\n' "${missing[@]}"
        if [ ! -f "$CARRIED/bin.tar.xz" ]; then
            echo "  (no $CARRIED/bin.tar.xz: run 'bash tools/build_gpu_binaries.sh' on the build machine and carry target/gpu)"
        fi
        exit 2
    fi
    echo "gpu_check: dry run: everything STEPS=$STEPS needs is in place"
    exit 0
fi
if [ ! -x "$IMPLICIT_BIN" ]; then
    echo "gpu_check: no $IMPLICIT_BIN: run 'bash tools/build_gpu_binaries.sh' on the build machine and carry target/gpu"
    exit 2
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "gpu_check: warning: ${#missing[@]} missing (the steps that need them will fail or skip); DRY_RUN=1 lists what is checked"
fi
mkdir -p "$OUT"

# step NAME CAP_SECONDS COMMAND...: runs COMMAND with its output in $OUT/NAME.log, under a time
# limit of min(CAP, what is left of BUDGET); records rc and seconds in $OUT/steps.txt.
step() {
    local name=$1 cap=$2
    shift 2
    local left=$((STEP_BUDGET - SECONDS))
    local limit=$((cap < left ? cap : left))
    if [ "$limit" -lt 10 ]; then
        echo "$name: skipped (budget spent)" | tee -a "$OUT/steps.txt"
        return 0
    fi
    local t0=$SECONDS
    echo "gpu_check: $name (limit ${limit}s): $*"
    timeout --kill-after=5 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    local note=""
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then note=" (timed out)"; fi
    echo "$name: rc $rc$note, $((SECONDS - t0)) s" | tee -a "$OUT/steps.txt"
    if [ "$rc" -ne 0 ] && [ "$first_failure" -eq 0 ]; then first_failure=$rc; fi
    last_rc=$rc
    return 0
}
last_rc=0
# The test steps leave RESERVE seconds of the budget to the benchmarks of the same call (SDPA
# and bench kernels), so that a slow or hung test cannot starve them.
if wants bench; then RESERVE=${RESERVE:-200}; else RESERVE=${RESERVE:-0}; fi
STEP_BUDGET=$((BUDGET - RESERVE))

: > "$OUT/steps.txt"
echo "commit $IMPLICIT_COMMIT" >> "$OUT/steps.txt"

if wants smi; then
    step nvidia-smi 30 bash -c 'nvidia-smi; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw,power.limit --format=csv; grep -E "MemTotal|MemAvailable" /proc/meminfo'
fi
# shellcheck disable=SC2086
if wants kernels && [ -x "$BIN/cuda_kernels" ]; then
    # The Hopper kernels' own tests first, each family under a short limit of its own: a wrong
    # barrier count hangs rather than failing, and must not eat the other kernels' time. When
    # one family fails, the later steps of this call run without it (IMPLICIT_GEMM=mma,
    # IMPLICIT_ATTENTION=sm80; a value the caller set is kept), so that one broken kernel does
    # not cost the model, training and benchmark figures too.
    step cuda_kernels_wgmma 180 env IMPLICIT_CUDA_SYNC=1 "$BIN/cuda_kernels" --nocapture --test-threads=1 wgmma
    wgmma_ok=$((last_rc == 0))
    if [ "$wgmma_ok" = 0 ] && [ -z "${IMPLICIT_GEMM:-}" ]; then
        # The 1-block wgmma kernels alone (the 2-block-cluster ones are the "multicast" tests):
        # if they pass, the later steps keep them (IMPLICIT_GEMM=wgmma-nocluster), else mma.sync.
        step cuda_kernels_wgmma_nocluster 120 env IMPLICIT_GEMM=wgmma-nocluster IMPLICIT_CUDA_SYNC=1 "$BIN/cuda_kernels" --nocapture --test-threads=1 --skip multicast wgmma
        if [ "$last_rc" = 0 ]; then
            echo "gpu_check: the wgmma GEMM's cluster tests failed: the later steps run with IMPLICIT_GEMM=wgmma-nocluster" | tee -a "$OUT/steps.txt"
            export IMPLICIT_GEMM=wgmma-nocluster
        else
            echo "gpu_check: the wgmma GEMM's tests failed: the later steps run with IMPLICIT_GEMM=mma" | tee -a "$OUT/steps.txt"
            export IMPLICIT_GEMM=mma
        fi
    fi
    step cuda_kernels_hopper 120 env IMPLICIT_CUDA_SYNC=1 "$BIN/cuda_kernels" --nocapture --test-threads=1 hopper
    if [ "$last_rc" != 0 ] && [ -z "${IMPLICIT_ATTENTION:-}" ]; then
        echo "gpu_check: the Hopper attention tests failed: the later steps run with IMPLICIT_ATTENTION=sm80" | tee -a "$OUT/steps.txt"
        export IMPLICIT_ATTENTION=sm80
    fi
    step cuda_kernels 240 env IMPLICIT_CUDA_SYNC=1 "$BIN/cuda_kernels" --nocapture --test-threads=1 --skip wgmma --skip hopper ${TEST_ARGS:-}
fi
# shellcheck disable=SC2086
if wants model && [ -x "$BIN/cuda_model" ]; then
    step cuda_model 120 env IMPLICIT_CUDA_SYNC=1 "$BIN/cuda_model" --nocapture --test-threads=1 ${TEST_ARGS:-}
fi
# shellcheck disable=SC2086
if wants model && [ -x "$BIN/cuda_generate" ]; then
    step cuda_generate 90 env IMPLICIT_CUDA_SYNC=1 "$BIN/cuda_generate" --nocapture --test-threads=1 ${TEST_ARGS:-}
fi
# shellcheck disable=SC2086
if wants train && [ -x "$BIN/cuda_train" ]; then
    step cuda_train 180 env IMPLICIT_CUDA_SYNC=1 "$BIN/cuda_train" --nocapture --test-threads=1 ${TEST_ARGS:-}
fi
# Step "mma" (not in the default STEPS): the model and training tests again with every large
# product on kernels/gemm.cu (IMPLICIT_GEMM=mma), the path of sm_80 and of shapes TMA cannot read:
# on compute capability 9.0 the default runs kernels/gemm_wgmma.cu.
# shellcheck disable=SC2086
if wants mma && [ -x "$BIN/cuda_model" ]; then
    step cuda_model_mma 120 env IMPLICIT_GEMM=mma IMPLICIT_CUDA_SYNC=1 "$BIN/cuda_model" --nocapture --test-threads=1 ${TEST_ARGS:-}
fi
# shellcheck disable=SC2086
if wants mma && [ -x "$BIN/cuda_train" ]; then
    step cuda_train_mma 180 env IMPLICIT_GEMM=mma IMPLICIT_CUDA_SYNC=1 "$BIN/cuda_train" --nocapture --test-threads=1 ${TEST_ARGS:-}
fi
# The benchmarks get the whole budget, reserve included.
STEP_BUDGET=$BUDGET
quick_flag=()
if [ "$QUICK" = 1 ]; then quick_flag=(--quick); fi
if wants sdpa; then
    rm -f "$OUT/sdpa.json"
    step sdpa 150 python3 "$REPO"/tools/bench_sdpa.py --json "$OUT/sdpa.json" "${quick_flag[@]}"
fi
if wants bench; then
    sdpa_flag=()
    if [ -f "$OUT/sdpa.json" ]; then sdpa_flag=(--sdpa "$OUT/sdpa.json"); fi
    # The Hopper GEMM's rows, unless its own tests ran in this call and failed (or WGMMA=1).
    wgmma_flag=()
    if [ "${wgmma_ok:-1}" = 0 ] && [ "${WGMMA:-0}" != 1 ]; then wgmma_flag=(--no-wgmma); fi
    # shellcheck disable=SC2086
    step bench 400 "$IMPLICIT_BIN" bench kernels "${sdpa_flag[@]}" "${wgmma_flag[@]}" --json "$OUT/bench.json" \
        "${quick_flag[@]}" ${BENCH_ARGS:-}
fi
if wants generate; then
    if [ -z "${MODEL_DIR:-}" ]; then
        # No model given: a random Llama-2-7B (speed does not depend on the weights), made once
        # per machine.
        MODEL_DIR=/tmp/implicit-llama2-7b
        if [ ! -f "$MODEL_DIR/config.json" ]; then
            step init 240 "$IMPLICIT_BIN" init --config llama2-7b --out "$MODEL_DIR"
        fi
    fi
    if [ ! -f "$MODEL_DIR/config.json" ]; then
        echo "generate: failed (MODEL_DIR=$MODEL_DIR has no config.json)" | tee -a "$OUT/steps.txt"
        if [ "$first_failure" -eq 0 ]; then first_failure=1; fi
    else
        rm -f "$OUT/bench_generate_torch.json"
        # shellcheck disable=SC2086
        # Both transformers recipes: plain generate, and a static cache with generate's
        # torch.compile (its compilation is untimed but takes minutes: hence the longer limit;
        # the JSON is rewritten after every batch, so a run cut short keeps what it measured).
        step bench_generate_torch 420 python3 "$REPO"/tools/bench_generate_torch.py --model "$MODEL_DIR" \
            --json "$OUT/bench_generate_torch.json" ${GENERATE_ARGS:-}
        torch_flag=()
        if [ -f "$OUT/bench_generate_torch.json" ]; then torch_flag=(--torch "$OUT/bench_generate_torch.json"); fi
        # shellcheck disable=SC2086
        step bench_generate 240 "$IMPLICIT_BIN" bench generate --model "$MODEL_DIR" "${torch_flag[@]}" \
            --json "$OUT/bench_generate.json" ${GENERATE_ARGS:-}
        if [ "${EAGER:-0}" = 1 ]; then
            # The same decode launched kernel by kernel: what the CUDA graphs gain.
            # shellcheck disable=SC2086
            step bench_generate_eager 240 "$IMPLICIT_BIN" bench generate --model "$MODEL_DIR" \
                --no-cuda-graphs --json "$OUT/bench_generate_eager.json" ${GENERATE_ARGS:-}
        fi
    fi
fi
# Step "serve": the server on the GPU, driven by tools/serve_bench.py (header, step 7). The body
# runs under the step's time limit as its own bash (timeout kills its process group, the server
# with it); what it needs comes through the environment.
# shellcheck disable=SC2317 # run through $BIN/serve_step.sh
serve_run() {
    local model=$SERVE_MODEL url="" pid rc vocab t0=$SECONDS
    if ! python3 -c "$OPENAI_OK" 2>/dev/null; then
        local pylib=$BIN/pylib
        if ! PYTHONPATH=$pylib python3 -c "$OPENAI_OK" 2>/dev/null; then
            echo "serve: python3 has no openai 1.26 or newer; installing it from $CARRIED/wheels into $pylib"
            python3 -m pip install --quiet --disable-pip-version-check --no-index \
                --find-links "$CARRIED/wheels" --target "$pylib" openai || {
                echo "serve: failed: cannot install openai from $CARRIED/wheels"
                return 1
            }
        fi
        export PYTHONPATH="$pylib${PYTHONPATH:+:$PYTHONPATH}"
    fi
    python3 -c 'import openai; print("serve: openai", openai.__version__)' || return 1
    "$IMPLICIT_BIN" serve --device cuda --model "$model" --model-name serve-bench --port 0 \
        --max-batch 64 --max-requests 256 > "$OUT/serve_listen.log" 2> "$OUT/serve_server.log" &
    pid=$!
    # Whatever ends this body, the server goes with it.
    trap 'kill -TERM "$pid" 2>/dev/null' EXIT
    while [ -z "$url" ]; do
        url=$(sed -n 's/^listening on \(http:.*\)$/\1/p' "$OUT/serve_listen.log" | head -1)
        [ -n "$url" ] && break
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid"
            rc=$?
            echo "serve: failed: the server stopped (rc $rc) before listening; its log ends:"
            tail -5 "$OUT/serve_server.log"
            return 1
        fi
        if [ $((SECONDS - t0)) -ge "${SERVE_START_LIMIT:-150}" ]; then
            echo "serve: failed: the server did not listen within ${SERVE_START_LIMIT:-150} s; its log ends:"
            tail -5 "$OUT/serve_server.log"
            return 1
        fi
        sleep 0.5
    done
    echo "serve: $model listening at $url after $((SECONDS - t0)) s"
    # The random prompts' token ids are drawn from the model's vocabulary.
    vocab=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["vocab_size"])' \
        "$model/config.json") || { echo "serve: failed: no vocab_size in $model/config.json"; return 1; }
    # shellcheck disable=SC2086
    python3 "$REPO/tools/serve_bench.py" --base-url "$url/v1" --model serve-bench \
        --vocab-size "$vocab" --concurrency 1,16,64 --max-tokens 128 --json "$OUT/serve.json" \
        ${SERVE_ARGS:-}
    rc=$?
    # SIGTERM: the server finishes what is in flight (nothing by now) and exits.
    kill -TERM "$pid" 2>/dev/null
    local waited=0
    while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt 40 ]; do
        sleep 0.5
        waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "serve: the server did not exit 20 s after SIGTERM; killed"
        kill -KILL "$pid" 2>/dev/null
    fi
    trap - EXIT
    return "$rc"
}
if wants serve; then
    serve_dir=${MODEL_DIR:-/tmp/implicit-llama2-7b}
    if [ -z "${MODEL_DIR:-}" ] && [ ! -f "$serve_dir/config.json" ]; then
        step init 240 "$IMPLICIT_BIN" init --config llama2-7b --out "$serve_dir"
    fi
    if [ ! -f "$serve_dir/config.json" ]; then
        echo "serve: failed ($serve_dir has no config.json)" | tee -a "$OUT/steps.txt"
        if [ "$first_failure" -eq 0 ]; then first_failure=1; fi
    else
        SERVE_MODEL=$serve_dir
        if [ ! -f "$serve_dir/tokenizer.json" ] && [ ! -f "$serve_dir/tokenizer.model" ]; then
            # No tokenizer (implicit init writes none): links to its files beside the carried one.
            SERVE_MODEL=$BIN/serve-model
            rm -rf "$SERVE_MODEL" && mkdir -p "$SERVE_MODEL"
            for f in "$serve_dir"/*; do ln -s "$f" "$SERVE_MODEL/"; done
            for f in "$SERVE_TOKENIZER"/*; do
                rm -f "$SERVE_MODEL/$(basename "$f")"
                cp "$f" "$SERVE_MODEL/"
            done
        fi
        export SERVE_MODEL IMPLICIT_BIN OUT BIN CARRIED REPO
        mkdir -p "$BIN"
        { echo 'set -u'; declare -f serve_run; echo serve_run; } > "$BIN/serve_step.sh"
        step serve 240 bash "$BIN/serve_step.sh"
    fi
fi
if wants trainbench || wants paper; then
    llama=$REPO/configs/models/llama2-7b.json
    # name TORCH_ARGS... -- IMPLICIT_ARGS...: one PyTorch run and one implicit run, side by side.
    train_pair() {
        local name=$1
        shift
        local torch_args=() implicit_args=()
        while [ "$1" != "--" ]; do torch_args+=("$1"); shift; done
        shift
        implicit_args=("$@")
        rm -f "$OUT/train_torch_$name.json"
        # shellcheck disable=SC2086
        step "train_torch_$name" "${TORCH_LIMIT:-200}" python3 "$REPO"/tools/bench_train_torch.py --config "$llama" \
            "${torch_args[@]}" --json "$OUT/train_torch_$name.json" ${TRAIN_ARGS:-}
        local torch_flag=()
        if [ -f "$OUT/train_torch_$name.json" ]; then torch_flag=(--torch "$OUT/train_torch_$name.json"); fi
        # shellcheck disable=SC2086
        step "bench_train_$name" 200 "$IMPLICIT_BIN" bench train --config "$llama" --profile \
            "${implicit_args[@]}" "${torch_flag[@]}" --json "$OUT/bench_train_$name.json" ${TRAIN_ARGS:-}
    }
fi
if wants trainbench; then
    layers=${TRAIN_LAYERS:-8}
    train_pair "l$layers" --layers "$layers" --mode amp -- --layers "$layers"
    # All 32 layers on one GPU, like for like: PyTorch bf16 (bf16 AdamW state) against bf16
    # state with stochastic rounding, 8 micro-batches per step as gradient accumulation does in
    # the paper's recipe (64). implicit's checkpointing is auto: as many layers keep their
    # activations as the memory beside the 63 GiB of state holds (the plan says all 32).
    full=(--accumulation 8 --steps 3 --warmup 1)
    # PyTorch's side is its best configuration that runs: with checkpointing, without (if the
    # activations fit beside the 54 GB of bf16 state), and compiled with checkpointing, each in
    # its own process (tools/bench_train_torch.py --best-of); its JSON is the fastest one's and
    # lists every variant.
    TORCH_LIMIT=480 train_pair full --mode bf16 --best-of "--checkpointing;;--checkpointing --compile" \
        --variant-timeout 200 "${full[@]}" -- --checkpointing auto --optimizer-state bf16 "${full[@]}"
    if [ "${TRAIN_HOST:-0}" = 1 ]; then
        # The fp32 master and moments in page-locked host memory (75 GiB), streamed over PCIe
        # at each step (24 bytes per parameter).
        # shellcheck disable=SC2086
        step bench_train_host 200 "$IMPLICIT_BIN" bench train --config "$llama" --checkpointing \
            --profile --optimizer-state host "${full[@]}" --json "$OUT/bench_train_host.json" ${TRAIN_ARGS:-}
    fi
fi
if wants paper; then
    # The paper's numerics on one GPU that holds them (an H200: 141 GB): fp32 master weights
    # and AdamW moments on the device (113 GiB for Llama-2-7B) with --checkpointing auto, which
    # plans no recompute there (src/train/plan/tests.rs), against PyTorch AMP (fp32 parameters,
    # gradients and AdamW state, bf16 autocast) at its best of with and without checkpointing.
    # On an 80 GB GPU both sides say that the state does not fit.
    full=(--accumulation 8 --steps 3 --warmup 1)
    TORCH_LIMIT=380 train_pair paper --mode amp --best-of "--checkpointing;" --variant-timeout 180 \
        "${full[@]}" -- --checkpointing auto --optimizer-state device "${full[@]}"
fi

# ---- summary (last, so the device tool's 12k-character tail holds it) ----
echo
echo "================ gpu_check summary (full logs in \$OUT: $OUT) ================"
for t in cuda_kernels_wgmma cuda_kernels_wgmma_nocluster cuda_kernels_hopper cuda_kernels cuda_model cuda_generate cuda_train cuda_model_mma cuda_train_mma; do
    log="$OUT/$t.log"
    step_of_t=kernels
    if [ "$t" = cuda_model ] || [ "$t" = cuda_generate ]; then step_of_t=model; fi
    if [ "$t" = cuda_train ]; then step_of_t=train; fi
    if [ "$t" = cuda_model_mma ] || [ "$t" = cuda_train_mma ]; then step_of_t=mma; fi
    if ! wants "$step_of_t" || [ ! -f "$log" ]; then continue; fi
    echo "-- $t: $(grep -c 'rel err' "$log") error checks printed, $(grep -c 'SKIPPED' "$log") SKIPPED"
    grep -E 'test result|panicked|FAILED|^error' "$log" | head -20
done
if wants sdpa && [ -f "$OUT/sdpa.log" ]; then
    echo "-- SDPA (PyTorch)"
    grep -vE '^\s*$' "$OUT/sdpa.log" | tail -30
fi
if wants bench && [ -f "$OUT/bench.log" ]; then
    echo "-- bench kernels (full table in bench.log / bench.json)"
    grep -E '^(device|ceiling):' "$OUT/bench.log"
    grep -E 'CHECK|^error' "$OUT/bench.log" | head -10
    sed -n '/^targets:/,$p' "$OUT/bench.log"
fi
if wants generate && [ -f "$OUT/bench_generate_torch.log" ]; then
    echo "-- bench_generate_torch.py (transformers generate)"
    grep -vE '^\s*$' "$OUT/bench_generate_torch.log" | tail -12
fi
if wants generate && [ -f "$OUT/bench_generate.log" ]; then
    echo "-- bench generate (full figures in bench_generate.log / bench_generate.json)"
    sed -n '/^bench generate: .*B parameters)/,$p' "$OUT/bench_generate.log" | head -40
    grep -E '^error' "$OUT/bench_generate.log" | head -5
fi
if wants serve && [ -f "$OUT/serve.log" ]; then
    echo "-- serve (implicit serve --device cuda driven by tools/serve_bench.py; serve.json)"
    grep -E '^serve(_bench)?:|^  (MISMATCH|ERROR|accepted)' "$OUT/serve.log" | head -24
    grep -E '^error|panicked' "$OUT/serve_server.log" 2>/dev/null | head -5
    python3 - "$OUT/serve.json" "$OUT/bench_generate.json" <<'EOF'
import json, os, sys
serve_path, generate_path = sys.argv[1:3]
if not os.path.exists(serve_path):
    sys.exit("serve: no serve.json (see serve.log)")
serve = json.load(open(serve_path))
at64 = [l for l in serve["levels"] if l["concurrency"] == 64]
rate = at64[0]["throughput_tokens_per_s"] if at64 else None
line = f"serve: 64 clients {rate:.1f} tokens/s" if rate else "serve: no 64-client level"
if rate and os.path.exists(generate_path):
    rows = [r for r in json.load(open(generate_path)).get("results", []) if r.get("batch") == 64]
    decode = rows[0]["decode"]["tokens_per_s"] if rows and rows[0].get("decode") else None
    if decode:
        ratio = rate / decode
        verdict = "within" if ratio >= 0.8 else "NOT within"
        line += (f" = {ratio:.2f}x bench generate's batch-64 decode ({decode:.1f} tokens/s):"
                 f" {verdict} 20% (target >= 0.80)")
print(line + f"; {serve['mismatches']} mismatches, {serve['accepted_divergences']} accepted divergences")
EOF
fi
if wants trainbench || wants paper; then
    for log in "$OUT"/bench_train_*.log; do
        [ -f "$log" ] || continue
        echo "-- $(basename "$log" .log)"
        grep -E '^(implicit:|PyTorch|targets:|memory plan|measured peak|does not fit|pool:|error)' "$log" | head -13
        # The step profile: the headline, one line per kernel family, the host gaps and the
        # phases (the kernels by name stay in the log).
        grep -E '^profile:' "$log" | head -20
        grep -E '^profile kernel:' "$log" | head -5
    done
fi
echo "-- steps"
cat "$OUT/steps.txt"
# The device tool brings back at most 8 files: the logs and steps.txt travel as one archive,
# the JSON results stay as they are.
(cd "$OUT" && tar -czf logs.tar.gz --remove-files -- *.log steps.txt 2>/dev/null)
results=$(cd "$OUT" && for f in *.json; do if [ -f "$f" ]; then printf '%s ' "$f"; fi; done)
echo "gpu_check: logs in \$OUT/logs.tar.gz; results: $results"
# A step stopped by its own limit exits 124 or 137, which the device tool would read as the
# whole call timing out: report it as 3 (steps.txt says which step).
case "$first_failure" in
    124 | 137) exit 3 ;;
    *) exit "$first_failure" ;;
esac
