#!/usr/bin/env bash
# The one script a GPU session runs, from the repository root on the device machine, with the
# binaries of tools/build_gpu_binaries.sh carried in target/gpu/ (device tool: carry
# ["target/gpu"]), unpacked from target/gpu/bin.tar.xz into target/gpu-run/ (the test binaries
# below are named by their short names). In order, each step's output to $OUT/<step>.log:
#   1. nvidia-smi (device, driver, clocks)                            -> nvidia-smi.log
#   2. IMPLICIT_CUDA_SYNC=1 target/gpu/cuda_kernels (every kernel against its CPU reference;
#      the wgmma GEMM's tests apart, under a 60 s limit)     -> cuda_kernels.log, cuda_kernels_wgmma.log
#   3. target/gpu/cuda_model and cuda_generate                        -> cuda_model.log, cuda_generate.log
#   3b. target/gpu/cuda_train (the training step against the CPU)     -> cuda_train.log
#   3c. (only when STEPS names "wgmma") cuda_model and cuda_train with IMPLICIT_GEMM=wgmma
#                                             -> cuda_model_wgmma.log, cuda_train_wgmma.log
#   4. python3 tools/bench_sdpa.py --json $OUT/sdpa.json (PyTorch SDPA) -> sdpa.log
#   5. target/gpu/implicit bench kernels --sdpa $OUT/sdpa.json --json $OUT/bench.json
#                                                                     -> bench.log
#   6. (only when STEPS names "generate"; MODEL_DIR or a random Llama-2-7B) python3
#      tools/bench_generate_torch.py --json $OUT/bench_generate_torch.json, then target/gpu/implicit
#      bench generate --torch $OUT/bench_generate_torch.json --json $OUT/bench_generate.json
#                                             -> bench_generate_torch.log, bench_generate.log
#   7. (only when STEPS names "trainbench") bench train against tools/bench_train_torch.py at
#      Llama-2-7B's shape: TRAIN_LAYERS layers (default 8) with everything on the GPU against
#      PyTorch AMP; then all 32 layers with checkpointing and bf16 optimizer state (stochastic
#      rounding) against PyTorch bf16 + checkpointing (what fits 80 GB on both sides); with
#      TRAIN_HOST=1 also the fp32 state in host memory
#                                             -> bench_train_*.{log,json}, train_torch_*.{log,json}
# then a short summary last (the device tool returns only the output's last 12k characters; the
# files under $OUT come back whole, at most 8 of them: the logs and steps.txt are packed into
# $OUT/logs.tar.gz at the end, the JSON results stay loose). bench kernels times the wgmma GEMM
# (--wgmma) only when its tests passed earlier in the same call. A failed step does not stop
# the later ones; the exit code is that of the first failed step (3 for a step's time limit).
#
# Environment: OUT (default target/gpu-out), QUICK=1 (micro-batch 1, fewer samples),
# STEPS (default "smi,kernels,model,train,sdpa,bench"), BENCH_ARGS (more arguments for bench kernels,
# e.g. "--filter gemm"), TEST_ARGS (more arguments for the test binaries, e.g. a test name
# filter), BUDGET (seconds for all steps, default 570: the device tool stops a command at 600),
# MODEL_DIR (the model folder of step "generate"; unset: a random Llama-2-7B written once to
# /tmp/implicit-llama2-7b by `implicit init`),
# RESERVE (seconds of BUDGET the test steps leave to sdpa and bench, default 200 when "bench" is
# in STEPS), WGMMA=1 (bench kernels --wgmma even when this call did not run the wgmma tests),
# EAGER=1 (step "generate" also runs bench generate --no-cuda-graphs -> bench_generate_eager.json),
# GENERATE_ARGS (more arguments for both generate benchmarks, e.g. "--batch-sizes 1,16"),
# TRAIN_HOST=1 (step "trainbench" also runs bench train --optimizer-state host), TRAIN_LAYERS
# (layers of step "trainbench"'s first pair, default 8), TRAIN_ARGS (more arguments for every
# train benchmark, e.g. "--micro-batch 2").
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-target/gpu-out}
mkdir -p "$OUT"
# What is carried (the packed binaries, COMMIT, data/) and where the binaries are unpacked
# (outside the carried folder, so that it stays small).
CARRIED=target/gpu
BIN=target/gpu-run
STEPS=${STEPS:-smi,kernels,model,train,sdpa,bench}
BUDGET=${BUDGET:-570}
QUICK=${QUICK:-0}
first_failure=0
# Python's output reaches its log even when a step's time limit kills it.
export PYTHONUNBUFFERED=1

# The binaries travel packed (tools/build_gpu_binaries.sh): unpack them next to the archive.
if [ -f "$CARRIED/bin.tar.xz" ] && { [ ! -x "$BIN/implicit" ] || [ "$CARRIED/bin.tar.xz" -nt "$BIN/implicit" ]; }; then
    mkdir -p "$BIN"
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
        "$CARRIED/bin.tar.xz" "$BIN" || { echo "gpu_check: cannot unpack $CARRIED/bin.tar.xz"; exit 2; }
    touch "$BIN"/implicit "$BIN"/cuda_* 2>/dev/null
fi
if [ ! -x "$BIN/implicit" ]; then
    echo "gpu_check: no $BIN/implicit: run 'bash tools/build_gpu_binaries.sh' on the build machine and carry target/gpu"
    exit 2
fi
if [ -z "${IMPLICIT_COMMIT:-}" ] && [ -f "$CARRIED/COMMIT" ]; then
    IMPLICIT_COMMIT=$(cat "$CARRIED/COMMIT")
fi
export IMPLICIT_COMMIT=${IMPLICIT_COMMIT:-unknown}
# The real data the tests read, carried by build_gpu_binaries.sh when ../shared/data is absent.
if [ -z "${IMPLICIT_DATA:-}" ] && [ ! -d ../shared/data ] && [ -d "$CARRIED/data" ]; then
    export IMPLICIT_DATA=$PWD/$CARRIED/data
fi

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
        mkdir -p target/nccl-lib
        ln -sf "$nccl_so" target/nccl-lib/libnccl.so
        export LD_LIBRARY_PATH="$PWD/target/nccl-lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        echo "gpu_check: libnccl.so -> $nccl_so"
    else
        echo "gpu_check: no libnccl.so.2 found; the data-parallel tests will skip"
    fi
fi

wants() { case ",$STEPS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

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
    step cuda_kernels 240 env IMPLICIT_CUDA_SYNC=1 "$BIN/cuda_kernels" --nocapture --test-threads=1 --skip wgmma ${TEST_ARGS:-}
    # The Hopper GEMM on its own, under a short limit: a wrong barrier count hangs rather than
    # failing, and must not eat the other kernels' time.
    step cuda_kernels_wgmma 60 env IMPLICIT_CUDA_SYNC=1 "$BIN/cuda_kernels" --nocapture --test-threads=1 wgmma
    wgmma_ok=$((last_rc == 0))
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
# Step "wgmma" (not in the default STEPS): the model and training tests again with every large
# product on kernels/gemm_wgmma.cu (IMPLICIT_GEMM=wgmma), once its own tests pass.
# shellcheck disable=SC2086
if wants wgmma && [ -x "$BIN/cuda_model" ]; then
    step cuda_model_wgmma 120 env IMPLICIT_GEMM=wgmma IMPLICIT_CUDA_SYNC=1 "$BIN/cuda_model" --nocapture --test-threads=1 ${TEST_ARGS:-}
fi
# shellcheck disable=SC2086
if wants wgmma && [ -x "$BIN/cuda_train" ]; then
    step cuda_train_wgmma 180 env IMPLICIT_GEMM=wgmma IMPLICIT_CUDA_SYNC=1 "$BIN/cuda_train" --nocapture --test-threads=1 ${TEST_ARGS:-}
fi
# The benchmarks get the whole budget, reserve included.
STEP_BUDGET=$BUDGET
quick_flag=()
if [ "$QUICK" = 1 ]; then quick_flag=(--quick); fi
if wants sdpa; then
    rm -f "$OUT/sdpa.json"
    step sdpa 150 python3 tools/bench_sdpa.py --json "$OUT/sdpa.json" "${quick_flag[@]}"
fi
if wants bench; then
    sdpa_flag=()
    if [ -f "$OUT/sdpa.json" ]; then sdpa_flag=(--sdpa "$OUT/sdpa.json"); fi
    # The Hopper GEMM's rows only once its own tests passed in this call (or WGMMA=1).
    wgmma_flag=()
    if [ "${wgmma_ok:-0}" = 1 ] || [ "${WGMMA:-0}" = 1 ]; then wgmma_flag=(--wgmma); fi
    # shellcheck disable=SC2086
    step bench 400 "$BIN/implicit" bench kernels "${sdpa_flag[@]}" "${wgmma_flag[@]}" --json "$OUT/bench.json" \
        "${quick_flag[@]}" ${BENCH_ARGS:-}
fi
if wants generate; then
    if [ -z "${MODEL_DIR:-}" ]; then
        # No model given: a random Llama-2-7B (speed does not depend on the weights), made once
        # per machine.
        MODEL_DIR=/tmp/implicit-llama2-7b
        if [ ! -f "$MODEL_DIR/config.json" ]; then
            step init 240 "$BIN/implicit" init --config llama2-7b --out "$MODEL_DIR"
        fi
    fi
    if [ ! -f "$MODEL_DIR/config.json" ]; then
        echo "generate: failed (MODEL_DIR=$MODEL_DIR has no config.json)" | tee -a "$OUT/steps.txt"
        if [ "$first_failure" -eq 0 ]; then first_failure=1; fi
    else
        rm -f "$OUT/bench_generate_torch.json"
        # shellcheck disable=SC2086
        step bench_generate_torch 240 python3 tools/bench_generate_torch.py --model "$MODEL_DIR" \
            --json "$OUT/bench_generate_torch.json" ${GENERATE_ARGS:-}
        torch_flag=()
        if [ -f "$OUT/bench_generate_torch.json" ]; then torch_flag=(--torch "$OUT/bench_generate_torch.json"); fi
        # shellcheck disable=SC2086
        step bench_generate 240 "$BIN/implicit" bench generate --model "$MODEL_DIR" "${torch_flag[@]}" \
            --json "$OUT/bench_generate.json" ${GENERATE_ARGS:-}
        if [ "${EAGER:-0}" = 1 ]; then
            # The same decode launched kernel by kernel: what the CUDA graphs gain.
            # shellcheck disable=SC2086
            step bench_generate_eager 240 "$BIN/implicit" bench generate --model "$MODEL_DIR" \
                --no-cuda-graphs --json "$OUT/bench_generate_eager.json" ${GENERATE_ARGS:-}
        fi
    fi
fi
if wants trainbench; then
    llama=configs/models/llama2-7b.json
    layers=${TRAIN_LAYERS:-8}
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
        step "train_torch_$name" 200 python3 tools/bench_train_torch.py --config "$llama" \
            "${torch_args[@]}" --json "$OUT/train_torch_$name.json" ${TRAIN_ARGS:-}
        local torch_flag=()
        if [ -f "$OUT/train_torch_$name.json" ]; then torch_flag=(--torch "$OUT/train_torch_$name.json"); fi
        # shellcheck disable=SC2086
        step "bench_train_$name" 200 "$BIN/implicit" bench train --config "$llama" \
            "${implicit_args[@]}" "${torch_flag[@]}" --json "$OUT/bench_train_$name.json" ${TRAIN_ARGS:-}
    }
    train_pair "l$layers" --layers "$layers" --mode amp -- --layers "$layers"
    # All 32 layers on one GPU, like for like: PyTorch bf16 (bf16 AdamW state) against bf16
    # state with stochastic rounding, both with checkpointing, 8 micro-batches per step as
    # gradient accumulation does in the paper's recipe (64).
    full=(--accumulation 8 --steps 3 --warmup 1)
    train_pair full --mode bf16 --checkpointing "${full[@]}" -- \
        --checkpointing --optimizer-state bf16 "${full[@]}"
    if [ "${TRAIN_HOST:-0}" = 1 ]; then
        # The fp32 master and moments in page-locked host memory (75 GiB), streamed over PCIe
        # at each step (24 bytes per parameter).
        # shellcheck disable=SC2086
        step bench_train_host 200 "$BIN/implicit" bench train --config "$llama" --checkpointing \
            --optimizer-state host "${full[@]}" --json "$OUT/bench_train_host.json" ${TRAIN_ARGS:-}
    fi
fi

# ---- summary (last, so the device tool's 12k-character tail holds it) ----
echo
echo "================ gpu_check summary (full logs in \$OUT: $OUT) ================"
for t in cuda_kernels cuda_kernels_wgmma cuda_model cuda_generate cuda_train cuda_model_wgmma cuda_train_wgmma; do
    log="$OUT/$t.log"
    step_of_t=kernels
    if [ "$t" = cuda_model ] || [ "$t" = cuda_generate ]; then step_of_t=model; fi
    if [ "$t" = cuda_train ]; then step_of_t=train; fi
    if [ "$t" = cuda_model_wgmma ] || [ "$t" = cuda_train_wgmma ]; then step_of_t=wgmma; fi
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
if wants trainbench; then
    for log in "$OUT"/bench_train_*.log; do
        [ -f "$log" ] || continue
        echo "-- $(basename "$log" .log)"
        grep -E '^(implicit:|PyTorch|memory plan|measured peak|does not fit|pool:|error)' "$log" | head -12
    done
fi
echo "-- steps"
cat "$OUT/steps.txt"
# The device tool brings back at most 8 files: the logs and steps.txt travel as one archive,
# the JSON results stay as they are.
(cd "$OUT" && tar -czf logs.tar.gz --remove-files -- *.log steps.txt 2>/dev/null)
echo "gpu_check: logs in \$OUT/logs.tar.gz; results: $(cd "$OUT" && ls -- *.json 2>/dev/null | tr '\n' ' ')"
# A step stopped by its own limit exits 124 or 137, which the device tool would read as the
# whole call timing out: report it as 3 (steps.txt says which step).
case "$first_failure" in
    124 | 137) exit 3 ;;
    *) exit "$first_failure" ;;
esac
