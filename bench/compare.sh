#!/usr/bin/env bash
# bertd against what a user would run instead, on one realistic corpus, back to back in one run.
# The ratios are the numbers that count: absolute rates vary from machine to machine. bertd runs
# twice: streamed (CONCURRENCY streams), then called by eight unary callers of one text each.
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
# Then eight callers of one text each, as a web application's requests come: the server must not
# pad the short texts queued together to the longest (BENCHMARKS.md, "batches cut at the least cost").
CONCURRENCY=8 BENCH_FLAGS="${BENCH_FLAGS:-} --mode unary --inputs-per-request 1" \
  bench_server "$OUT/bertd-unary.json" "$@"
# Serving in bf16, the baselines also run in bf16 (what such a user would set against it), and
# bertd's own embeddings of the corpus, which the baselines check, are made in bf16.
baselines=st,torch,onnx,dense encode_flags=()
if [[ " $* " == *" --dtype bf16 "* ]]; then
  baselines+=,st_bf16,torch_bf16
  encode_flags=(--dtype bf16)
fi
"$BERTD" encode --threads "$THREADS" "${encode_flags[@]}" < "$OUT/corpus.txt" > "$OUT/bertd-embeddings.jsonl"
"$PY" bench/baselines.py --corpus "$OUT/corpus.txt" --threads "$THREADS" --only "$baselines" \
  --check "$OUT/bertd-embeddings.jsonl" --json "$OUT/baselines.json" > /dev/null
"$PY" bench/ratios.py "$OUT/bertd.json,$OUT/bertd-unary.json" "$OUT/baselines.json" "$*"
