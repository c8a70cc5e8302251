#!/usr/bin/env bash
# A lever against the default, in alternating rounds on one corpus, beside sentence-transformers
# in the same run: how each lever in BENCHMARKS.md was kept or dropped.
#
#   bench/ab.sh "FLAGS A" "FLAGS B" ...    (flags for `bertd serve`; "" is the default)
#
# A variant whose first word is `bertd=PATH` is served by that binary instead (a lever in the
# code: keep a copy of the release binary built without it, then build with it).
#
# Environment: ROUNDS (2), LINES, THREADS, CONCURRENCY (bench/common.sh), OUT (target/ab).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/ab}
ROUNDS=${ROUNDS:-2}
source bench/common.sh
[ $# -ge 2 ] || { echo "usage: bench/ab.sh \"FLAGS A\" \"FLAGS B\" ..." >&2; exit 2; }

prepare
st=$(sentence_transformers_rate)
echo
echo "| round | bertd serve flags | streams | inputs/s | vs sentence-transformers ($(printf %.1f "$st")/s) | padding ratio |"
echo "|---|---|---|---|---|---|"
variants=("$@")
for round in $(seq "$ROUNDS"); do
  # Odd rounds run the variants in the order given, even rounds in reverse: the server that runs
  # first in a round was measured faster (bf16, 2026-12-01: 429 against 347 inputs/s for the same
  # binary), so each variant runs first as often as the others.
  order=$(seq "$#")
  if ((round % 2 == 0)); then order=$(seq "$#" -1 1); fi
  for variant in $order; do
    flags=${variants[variant - 1]}
    binary=$BERTD label=
    if [[ $flags == bertd=* ]]; then
      read -r binary flags <<< "$flags"
      binary=${binary#bertd=} label="$binary "
    fi
    # shellcheck disable=SC2086 # the flags are words on purpose
    BERTD=$binary bench_server "$OUT/$round-$variant.json" $flags 2> /dev/null
    table_rows "$OUT/$round-$variant.json" "$st" "$round" "$label${flags:-(default)}"
  done
done
