#!/usr/bin/env bash
# Installs CUDA 13.0's compiler (nvcc, ptxas, cicc, crt headers, cudart headers, CCCL) from PyPI
# into .venv-nvcc/ at the repository root (git-ignored by `/.venv*`), pinned to exact versions,
# so that `cargo build --features cuda` can compile kernels/*.cu on a machine without a CUDA
# toolkit or GPU. Idempotent: a second run with everything in place only checks and prints.
# Prints the nvcc path on its last line; build.rs finds it there by itself (or set NVCC).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${IMPLICIT_NVCC_VENV:-.venv-nvcc}"
PKGS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
)
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# pip's own check: a no-op (no download) when the pinned versions are already installed.
if ! "$VENV/bin/python" -m pip show -q "${PKGS[@]%%==*}" >/dev/null 2>&1 \
  || ! "$VENV/bin/python" - "${PKGS[@]}" <<'PYCHECK'
import sys
from importlib.metadata import version
sys.exit(0 if all(version(n) == v for n, v in (p.split("==") for p in sys.argv[1:])) else 1)
PYCHECK
then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "${PKGS[@]}"
fi
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
CU="$SITE/nvidia/cu13"
NVCC="$CU/bin/nvcc"
if [ ! -x "$NVCC" ]; then
  echo "install_nvcc.sh: $NVCC is missing after the install" >&2
  exit 1
fi
# The wheels spread one toolkit over packages that share nvidia/cu13: nvcc reads its nvcc.profile
# (TOP = bin/..), so include/ (crt, cudart, cccl) and nvvm/bin/cicc must sit under that same
# root. Check that a real kernel compiles end to end (cicc + ptxas + fatbinary).
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
cat >"$TMP/probe.cu" <<'CU'
#include <cuda_bf16.h>
extern "C" __global__ void probe(__nv_bfloat16* x) { x[threadIdx.x] = __float2bfloat16(1.0f); }
CU
if ! "$NVCC" -fatbin -gencode=arch=compute_80,code=sm_80 -o "$TMP/probe.fatbin" "$TMP/probe.cu" 2>"$TMP/err"; then
  echo "install_nvcc.sh: $NVCC cannot compile a probe kernel:" >&2
  cat "$TMP/err" >&2
  exit 1
fi
echo "$NVCC"
