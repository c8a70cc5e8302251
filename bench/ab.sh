#!/usr/bin/env bash
# A lever against the default, in alternating rounds on one corpus, beside sentence-transformers
# in the same run: how each lever in BENCHMARKS.md was kept or dropped.
#
#   bench/ab.sh "FLAGS A" "FLAGS B" ...    (flags for `bertd serve`; "" is the default)
#
# Environment: ROUNDS (2), LINES, THREADS, CONCURRENCY (bench/common.sh), OUT (target/ab).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/ab}
ROUNDS=${ROUNDS:-2}
source bench/common.sh
[ $# -ge 2 ] || { echo "usage: bench/ab.sh \"FLAGS A\" \"FLAGS B\" ..." >&2; exit 2; }

prepare
"$PY" bench/baselines.py --corpus "$OUT/corpus.txt" --threads "$THREADS" --only st \
  --json "$OUT/st.json" > /dev/null
st=$("$PY" -c "import json; print(json.load(open('$OUT/st.json'))['sentence_transformers']['inputs_per_s'])")
echo
echo "| round | bertd serve flags | streams | inputs/s | vs sentence-transformers ($(printf %.1f "$st")/s) | padding ratio |"
echo "|---|---|---|---|---|---|"
for round in $(seq "$ROUNDS"); do
  variant=0
  for flags in "$@"; do
    variant=$((variant + 1))
    # shellcheck disable=SC2086 # the flags are words on purpose
    bench_server "$OUT/$round-$variant.json" $flags 2> /dev/null
    "$PY" - "$OUT/$round-$variant.json" "$round" "${flags:-(default)}" "$st" <<'PY'
import json, sys
report, round_, flags, st = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3], float(sys.argv[4])
for run in report["runs"]:
    print(f"| {round_} | {flags} | {run['concurrency']} | {run['inputs_per_s']:.1f} | "
          f"{run['inputs_per_s'] / st:.2f} | {run['padding_ratio']:.3f} |")
PY
  done
done
