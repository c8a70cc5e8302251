#!/usr/bin/env bash
# Memory under a long stream: one EncodeStream of INPUTS inputs (1,000,000) cycling through the
# realistic corpus, the server's resident memory read every 250 ms; bounded means its maximum
# stays near its level at the start, however long the stream runs.
#
#   bench/stream_memory.sh [flags for `bertd serve`, e.g. --model tests/fixtures/models/bert_tiny]
#
# Environment: INPUTS, OUT (target/stream-memory), and those of bench/common.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/stream-memory}
INPUTS=${INPUTS:-1000000}
CONCURRENCY=1
BENCH_FLAGS="--inputs $INPUTS"
source bench/common.sh

prepare
bench_server "$OUT/bertd.json" "$@"
"$PY" - "$OUT/bertd.json" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))["runs"][0]
mib = lambda b: b / 2**20
print(f"{run['inputs']} inputs in one stream at {run['inputs_per_s']:.0f} inputs/s: server RSS "
      f"{mib(run['server_rss_bytes_start']):.0f} MiB at the start, at most {mib(run['server_rss_bytes_max']):.0f} MiB, "
      f"{mib(run['server_rss_bytes_end']):.0f} MiB at the end; p99 latency {run['latency_ms_p99']:.1f} ms")
PY
