#!/usr/bin/env bash
# Latency on an idle server, one call at a time from one client, in two parts:
#
# 1. One short sentence, CALLS times, set against the server's own mean forward time for it (from
#    its metrics). The difference is what the server adds around the model: gRPC, tokenizing,
#    queueing, the response.
# 2. Realistic text: each of the realistic corpus's first MIXED_LINES lines, one a call, beside
#    what a user would run instead: sentence-transformers encoding the same lines one per
#    `encode([text])` call in-process (no network at all), on the same number of threads. Its
#    outputs are checked against its own batched ones.
#
#   bench/latency.sh [flags for `bertd serve`]
#
# Environment: CALLS (1000), MIXED_LINES (500), OUT (target/latency), and those of bench/common.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/latency}
CALLS=${CALLS:-1000}
MIXED_LINES=${MIXED_LINES:-500}
CONCURRENCY=1
source bench/common.sh

describe_machine
echo "The quick brown fox jumps over the lazy dog." > "$OUT/corpus.txt"
BENCH_FLAGS="--mode unary --inputs-per-request 1 --inputs $CALLS" bench_server "$OUT/bertd.json" "$@"
"$PY" - "$OUT/bertd.json" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))["runs"][0]
forward = run["forward_ms_mean"]
print(f"{run['inputs']} calls of one short sentence: p50 {run['latency_ms_p50']:.2f} ms, "
      f"p99 {run['latency_ms_p99']:.2f} ms; the server's forward {forward:.2f} ms; "
      f"overhead at p50 {run['latency_ms_p50'] - forward:.2f} ms")
PY

"$PY" bench/corpus.py --lines "$MIXED_LINES" --out "$OUT/corpus.txt"
BENCH_FLAGS="--mode unary --inputs-per-request 1" bench_server "$OUT/bertd-mixed.json" "$@"
"$PY" bench/baselines.py --corpus "$OUT/corpus.txt" --threads "$THREADS" --only st_single \
  --json "$OUT/st-single.json" > /dev/null
"$PY" - "$OUT/bertd-mixed.json" "$OUT/st-single.json" <<'PY'
import json, sys
bertd = json.load(open(sys.argv[1]))["runs"][0]
st = json.load(open(sys.argv[2]))["sentence_transformers_single"]
print(f"\n{bertd['inputs']} realistic lines, one a call:\n")
print("| what | p50 ms | p90 ms | p99 ms | inputs/s |")
print("|---|---|---|---|---|")
for name, run in [("bertd, unary Encode over gRPC", bertd),
                  ("sentence-transformers encode([text]), in-process", st)]:
    print(f"| {name} | {run['latency_ms_p50']:.2f} | {run['latency_ms_p90']:.2f} "
          f"| {run['latency_ms_p99']:.2f} | {run['inputs_per_s']:.1f} |")
print(f"\nsentence-transformers' latency over bertd's (above 1, bertd answers sooner): "
      f"p50 {st['latency_ms_p50'] / bertd['latency_ms_p50']:.2f}, "
      f"p99 {st['latency_ms_p99'] / bertd['latency_ms_p99']:.2f}. Its one-text outputs: "
      f"min cosine {st['min_cosine']:.5f} against its batched ones.")
PY
