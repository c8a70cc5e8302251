#!/usr/bin/env bash
# bertd against what a user would run instead, on one realistic corpus, back to back in one run.
# The ratios are the numbers that count: absolute rates vary from machine to machine.
#
#   bench/compare.sh [flags for `bertd serve`, e.g. --max-batch-size 16]
#
# Environment: LINES, THREADS, CONCURRENCY (bench/common.sh), OUT (target/compare).
# The benchmark client shares the machine with the server, as a co-located client would.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/compare}
source bench/common.sh

prepare
bench_server "$OUT/bertd.json" "$@"
"$PY" bench/baselines.py --corpus "$OUT/corpus.txt" --threads "$THREADS" \
  --json "$OUT/baselines.json" > /dev/null
"$PY" bench/ratios.py "$OUT/bertd.json" "$OUT/baselines.json" "$*"
