#!/usr/bin/env bash
# Latency on an idle server: one short sentence at a time over unary Encode calls, one client, set
# against the server's own mean forward time for it (from its metrics). The difference is what
# the server adds around the model: gRPC, tokenizing, queueing, the response.
#
#   bench/latency.sh [flags for `bertd serve`]
#
# Environment: CALLS (1000), OUT (target/latency), and those of bench/common.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/latency}
CALLS=${CALLS:-1000}
CONCURRENCY=1
BENCH_FLAGS="--mode unary --inputs-per-request 1 --inputs $CALLS"
source bench/common.sh

describe_machine
echo "The quick brown fox jumps over the lazy dog." > "$OUT/corpus.txt"
bench_server "$OUT/bertd.json" "$@"
"$PY" - "$OUT/bertd.json" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))["runs"][0]
forward = run["forward_ms_mean"]
print(f"{run['inputs']} calls of one short sentence: p50 {run['latency_ms_p50']:.2f} ms, "
      f"p99 {run['latency_ms_p99']:.2f} ms; the server's forward {forward:.2f} ms; "
      f"overhead at p50 {run['latency_ms_p50'] - forward:.2f} ms")
PY
