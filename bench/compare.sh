#!/usr/bin/env bash
# bertd against what a user would run instead, on one realistic corpus, back to back in one run.
# The ratios are the numbers that count: absolute rates vary from machine to machine.
#
#   bench/compare.sh [flags for `bertd serve`, e.g. --max-batch-size 16]
#
# Environment: LINES (corpus lines, 2000), THREADS (the server's and the baselines' threads: all
# cores), CONCURRENCY (streams, comma-separated: 1,4), OUT (where results go: target/compare).
# The benchmark client shares the machine with the server, as a co-located client would.
set -euo pipefail
cd "$(dirname "$0")/.."
LINES=${LINES:-2000}
THREADS=${THREADS:-$(nproc)}
CONCURRENCY=${CONCURRENCY:-1,4}
OUT=${OUT:-target/compare}
PY=.venv/bin/python
BERTD=./target/release/bertd
mkdir -p "$OUT"

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

echo "# $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
  "flags: $(grep -o -w 'avx2\|avx512f\|avx512_bf16\|amx_bf16' /proc/cpuinfo | sort -u | xargs)," \
  "load: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/machine.txt"
"$PY" bench/corpus.py --lines "$LINES" --out "$OUT/corpus.txt"

port=$(free_port)
metrics=$(free_port)
BERTD_TELEMETRY__METRICS_ADDR="127.0.0.1:$metrics" \
  "$BERTD" serve --addr "127.0.0.1:$port" --cpu-threads "$THREADS" --log-level warn "$@" \
  2> "$OUT/server.log" &
server=$!
trap 'kill "$server" 2> /dev/null || true' EXIT
"$BERTD" bench --server "http://127.0.0.1:$port" --corpus "$OUT/corpus.txt" \
  --concurrency "$CONCURRENCY" --metrics "127.0.0.1:$metrics" --pid "$server" \
  --json "$OUT/bertd.json" > /dev/null
kill -TERM "$server"
wait "$server" || true

"$PY" bench/baselines.py --corpus "$OUT/corpus.txt" --threads "$THREADS" \
  --json "$OUT/baselines.json" > /dev/null
"$PY" bench/ratios.py "$OUT/bertd.json" "$OUT/baselines.json" "$*"
