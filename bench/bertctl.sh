#!/usr/bin/env bash
# Is bertctl ever the bottleneck? One server, the realistic corpus (LINES lines, 100,000), driven
# twice back to back: by `bertd bench` (the server's own capacity: streams of requests built in
# memory, answers dropped) and by `bertctl encode` writing .npy (reading the file, ordering,
# writing). The ratio of the two rates is the client's cost. Then bertctl's peak resident memory
# on a corpus of MEMORY_LINES lines (1,000,000; the corpus repeated), which must not grow with it.
#
#   bench/bertctl.sh [flags for `bertd serve`, e.g. --model tests/fixtures/models/bert_tiny]
#
# Environment: LINES, MEMORY_LINES (0 skips that run), STREAMS (2), BATCH (32), WINDOW (16), OUT (target/bench-bertctl), and
# those of bench/common.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/bench-bertctl}
LINES=${LINES:-100000}
MEMORY_LINES=${MEMORY_LINES:-1000000}
STREAMS=${STREAMS:-2}
BATCH=${BATCH:-32}
WINDOW=${WINDOW:-16}  # bertctl's default
CONCURRENCY=$STREAMS
BERTCTL=./target/release/bertctl
source bench/common.sh

prepare
port=$(free_port)
"$BERTD" serve --addr "127.0.0.1:$port" --cpu-threads "$THREADS" --log-level warn "$@" 2> "$OUT/server.log" &
server=$!
trap 'kill "$server" 2> /dev/null || true' EXIT
url="http://127.0.0.1:$port"

"$BERTD" bench --server "$url" --corpus "$OUT/corpus.txt" --concurrency "$STREAMS" \
  --inputs-per-request "$BATCH" --json "$OUT/capacity.json" > /dev/null
# GNU time's maximum resident set size (KiB) is the client's peak memory.
/usr/bin/time -f '%M' -o "$OUT/bertctl.rss" "$BERTCTL" encode --server "$url" --streams "$STREAMS" \
  --batch "$BATCH" --window "$WINDOW" -i "$OUT/corpus.txt" -o "$OUT/out.npy" --overwrite 2> "$OUT/bertctl.json"

rm -f "$OUT/memory.json" "$OUT/memory.rss"
if (( MEMORY_LINES > 0 )); then
  for _ in $(seq $(( (MEMORY_LINES + LINES - 1) / LINES ))); do cat "$OUT/corpus.txt"; done \
    | head -n "$MEMORY_LINES" > "$OUT/memory-corpus.txt"
  /usr/bin/time -f '%M' -o "$OUT/memory.rss" "$BERTCTL" encode --server "$url" --streams "$STREAMS" \
    --batch "$BATCH" --window "$WINDOW" -i "$OUT/memory-corpus.txt" -o "$OUT/memory.npy" --overwrite 2> "$OUT/memory.json"
  rm -f "$OUT/memory-corpus.txt" "$OUT/memory.npy"
fi

"$PY" - "$OUT" "$LINES" "$MEMORY_LINES" <<'PY'
import json, sys
from pathlib import Path
out, lines, memory_lines = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
capacity = json.loads((out / "capacity.json").read_text())["runs"][0]["inputs_per_s"]
summary = json.loads((out / "bertctl.json").read_text().splitlines()[-1])
rss = int((out / "bertctl.rss").read_text().split()[-1]) / 1024
print(f"bertd bench (server capacity): {capacity:.0f} inputs/s")
print(f"bertctl encode -> .npy, {lines} lines: {summary['items_per_second']:.0f} inputs/s "
      f"({summary['items_per_second'] / capacity:.2f}x capacity), peak RSS {rss:.0f} MiB, "
      f"{summary['failed']} failed")
if (out / "memory.json").exists():
    memory = json.loads((out / "memory.json").read_text().splitlines()[-1])
    memory_rss = int((out / "memory.rss").read_text().split()[-1]) / 1024
    print(f"bertctl encode -> .npy, {memory_lines} lines: {memory['items_per_second']:.0f} inputs/s, "
          f"peak RSS {memory_rss:.0f} MiB, {memory['failed']} failed")
PY
