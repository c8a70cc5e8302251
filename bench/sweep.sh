#!/usr/bin/env bash
# The batch-limit sweep behind the CPU defaults: bertd's streaming throughput for each pair of
# max_batch_size and max_batch_tokens, beside sentence-transformers in the same run.
#
#   bench/sweep.sh ["SIZE:TOKENS SIZE:TOKENS ..."]
#
# Environment: LINES, THREADS, CONCURRENCY (bench/common.sh), OUT (target/sweep).
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${1:-"8:16384 16:16384 32:16384 64:16384 16:1024 32:1024 64:1024 32:2048 64:2048 128:2048 64:4096"}
OUT=${OUT:-target/sweep}
source bench/common.sh

prepare
"$PY" bench/baselines.py --corpus "$OUT/corpus.txt" --threads "$THREADS" --only st \
  --json "$OUT/st.json" > /dev/null
st=$("$PY" -c "import json; print(json.load(open('$OUT/st.json'))['sentence_transformers']['inputs_per_s'])")
echo
echo "| max_batch_size | max_batch_tokens | streams | inputs/s | vs sentence-transformers ($(printf %.1f "$st")/s) | padding ratio |"
echo "|---|---|---|---|---|---|"
for pair in $PAIRS; do
  size=${pair%:*}
  tokens=${pair#*:}
  bench_server "$OUT/$size-$tokens.json" --max-batch-size "$size" --max-batch-tokens "$tokens" 2> /dev/null
  "$PY" - "$OUT/$size-$tokens.json" "$size" "$tokens" "$st" <<'PY'
import json, sys
report, size, tokens, st = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3], float(sys.argv[4])
for run in report["runs"]:
    print(f"| {size} | {tokens} | {run['concurrency']} | {run['inputs_per_s']:.1f} | "
          f"{run['inputs_per_s'] / st:.2f} | {run['padding_ratio']:.3f} |")
PY
done
