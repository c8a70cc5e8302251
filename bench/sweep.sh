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
st=$(sentence_transformers_rate)
echo
echo "| max_batch_size | max_batch_tokens | streams | inputs/s | vs sentence-transformers ($(printf %.1f "$st")/s) | padding ratio |"
echo "|---|---|---|---|---|---|"
for pair in $PAIRS; do
  size=${pair%:*}
  tokens=${pair#*:}
  bench_server "$OUT/$size-$tokens.json" --max-batch-size "$size" --max-batch-tokens "$tokens" 2> /dev/null
  table_rows "$OUT/$size-$tokens.json" "$st" "$size" "$tokens"
done
