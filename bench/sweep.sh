#!/usr/bin/env bash
# The batch-limit sweep behind the CPU defaults: bertd's streaming throughput for each pair of
# max_batch_size and max_batch_tokens, beside sentence-transformers in the same run.
#
#   bench/sweep.sh ["SIZE:TOKENS SIZE:TOKENS ..."]
#
# Environment: LINES (corpus lines, 2000), THREADS (all cores), CONCURRENCY (streams: 1,4),
# OUT (target/sweep).
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${1:-"8:16384 16:16384 32:16384 64:16384 16:1024 32:1024 64:1024 32:2048 64:2048 128:2048 64:4096"}
LINES=${LINES:-2000}
THREADS=${THREADS:-$(nproc)}
CONCURRENCY=${CONCURRENCY:-1,4}
OUT=${OUT:-target/sweep}
PY=.venv/bin/python
BERTD=./target/release/bertd
mkdir -p "$OUT"
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

echo "# $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
  "flags: $(grep -o -w 'avx2\|avx512f\|avx512_bf16\|amx_bf16' /proc/cpuinfo | sort -u | xargs)," \
  "load: $(cut -d' ' -f1-3 /proc/loadavg)"
"$PY" bench/corpus.py --lines "$LINES" --out "$OUT/corpus.txt"
"$PY" bench/baselines.py --corpus "$OUT/corpus.txt" --threads "$THREADS" --only st \
  --json "$OUT/st.json" > /dev/null
st=$("$PY" -c "import json; print(json.load(open('$OUT/st.json'))['sentence_transformers']['inputs_per_s'])")
echo
echo "| max_batch_size | max_batch_tokens | streams | inputs/s | vs sentence-transformers ($(printf %.1f "$st")/s) | padding ratio |"
echo "|---|---|---|---|---|---|"
for pair in $PAIRS; do
  size=${pair%:*}
  tokens=${pair#*:}
  port=$(free_port)
  metrics=$(free_port)
  BERTD_TELEMETRY__METRICS_ADDR="127.0.0.1:$metrics" \
    "$BERTD" serve --addr "127.0.0.1:$port" --cpu-threads "$THREADS" --log-level warn \
    --max-batch-size "$size" --max-batch-tokens "$tokens" 2> "$OUT/server.log" &
  server=$!
  "$BERTD" bench --server "http://127.0.0.1:$port" --corpus "$OUT/corpus.txt" \
    --concurrency "$CONCURRENCY" --metrics "127.0.0.1:$metrics" \
    --json "$OUT/$size-$tokens.json" > /dev/null 2>&1
  kill -TERM "$server"
  wait "$server" || true
  "$PY" - "$OUT/$size-$tokens.json" "$size" "$tokens" "$st" <<'PY'
import json, sys
report, size, tokens, st = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3], float(sys.argv[4])
for run in report["runs"]:
    print(f"| {size} | {tokens} | {run['concurrency']} | {run['inputs_per_s']:.1f} | "
          f"{run['inputs_per_s'] / st:.2f} | {run['padding_ratio']:.3f} |")
PY
done
