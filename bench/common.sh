# What bench/compare.sh and bench/sweep.sh share; sourced, with OUT set, from the repository root.
# Environment: LINES (corpus lines, 2000), THREADS (the server's and the baselines' threads: all
# cores), CONCURRENCY (streams, comma-separated: 1,4), BENCH_FLAGS (more flags for `bertd bench`),
# BERTD (the binary that serves and benches: target/release/bertd).
LINES=${LINES:-2000}
THREADS=${THREADS:-$(nproc)}
CONCURRENCY=${CONCURRENCY:-1,4}
PY=.venv/bin/python
BERTD=${BERTD:-./target/release/bertd}
mkdir -p "$OUT"

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The machine, then the realistic corpus.
prepare() {
  describe_machine
  "$PY" bench/corpus.py --lines "$LINES" --out "$OUT/corpus.txt"
}

# The machine and its load: absolute rates mean little without them. Also the variables that
# pick the kernels' instruction sets (MKL, oneDNN, ATen) or OpenMP's waiting, when set: with
# MKL_ENABLE_INSTRUCTIONS=AVX2 an Intel CPU runs MKL's sgemm as an AMD EPYC does (BENCHMARKS.md).
describe_machine() {
  local kernels
  kernels=$(env | { grep -E '^(MKL_ENABLE_INSTRUCTIONS|ONEDNN_MAX_CPU_ISA|ATEN_CPU_CAPABILITY|OMP_[A-Z_]+|GOMP_[A-Z_]+)=' || true; } \
    | sort | xargs)
  echo "# $(date -u +%FT%TZ) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
    "flags: $(grep -o -w 'avx2\|avx512f\|avx512_bf16\|amx_bf16' /proc/cpuinfo | sort -u | xargs)," \
    "load: $(cut -d' ' -f1-3 /proc/loadavg)${kernels:+, $kernels}" | tee "$OUT/machine.txt"
}

# bench_server JSON [flags for `bertd serve`]: serves, drives the server with `bertd bench` over
# the corpus (its padding ratio from /metrics, its peak memory from its process), writes JSON,
# stops the server.
bench_server() {
  local json=$1 port metrics
  shift
  port=$(free_port)
  metrics=$(free_port)
  BERTD_TELEMETRY__METRICS_ADDR="127.0.0.1:$metrics" \
    "$BERTD" serve --addr "127.0.0.1:$port" --cpu-threads "$THREADS" --log-level warn "$@" \
    2> "$OUT/server.log" &
  # Global, so that the trap still names it if the script ends while the server runs.
  bench_pid=$!
  trap 'kill "$bench_pid" 2> /dev/null || true' EXIT
  "$BERTD" bench --server "http://127.0.0.1:$port" --corpus "$OUT/corpus.txt" \
    --concurrency "$CONCURRENCY" --metrics "127.0.0.1:$metrics" --pid "$bench_pid" \
    --json "$json" ${BENCH_FLAGS:-} > /dev/null
  kill -TERM "$bench_pid"
  wait "$bench_pid" || true
  trap - EXIT
}

# sentence_transformers_rate: runs sentence-transformers alone on the corpus, prints its inputs/s.
sentence_transformers_rate() {
  "$PY" bench/baselines.py --corpus "$OUT/corpus.txt" --threads "$THREADS" --only st \
    --json "$OUT/st.json" > /dev/null
  "$PY" -c "import json; print(json.load(open('$OUT/st.json'))['sentence_transformers']['inputs_per_s'])"
}

# table_rows JSON ST CELL...: a Markdown row for each run of a `bertd bench` report, starting with
# the given cells, then streams, inputs/s, the ratio to ST (sentence-transformers' inputs/s) and
# the padding ratio.
table_rows() {
  "$PY" - "$@" <<'PY'
import json, sys
report, st, cells = json.load(open(sys.argv[1])), float(sys.argv[2]), sys.argv[3:]
for run in report["runs"]:
    print(f"| {' | '.join(cells)} | {run['concurrency']} | {run['inputs_per_s']:.1f} | "
          f"{run['inputs_per_s'] / st:.2f} | {run['padding_ratio']:.3f} |")
PY
}
