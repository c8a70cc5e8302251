#!/usr/bin/env python3
"""The CUDA path, proven in one call on a lent GPU machine that builds nothing (bench/gpu.sh
prepares what travels: a stripped `bertd`, the default model's tokenizer and configs without its
weights, a corpus). The same script runs on CPU as a dry run (tests/bench_client.rs).

1. Correctness: the test fixtures, and models with random weights in the all-MiniLM-L6-v2 and
   bert-base shapes made here with transformers, go through `bertd encode`/`bertd classify` on the
   device in each precision, against references computed here by transformers in fp32 on the same
   device: fp32 within FP32_ATOL of them, fp16 and bf16 within LOW_PRECISION_COSINE.
2. Throughput: `bertd serve` on the device (fp16 on CUDA) driven by `bertd bench` over the corpus,
   beside the raw transformers forward on the same length-sorted, pre-tokenized batches of
   CEILING_BATCH inputs: the ceiling that tokenization, gRPC and batching should hide behind.
   Each bertd run that counts lasts --run-s at least (the corpus once is a fraction of a second
   on an H200), sized from a first run of the corpus once.
3. The sweep behind the GPU's batching defaults: `bertd serve` again with each of --sweep's
   settings (bigger batches, more workers per GPU, a stream per worker), at --sweep-concurrency
   streams. Every run reports its busy workers (busy_workers).
4. The host's CPU, while the machine is lent: `make compare`'s comparison (bertd served on the CPU
   against sentence-transformers, the sorted transformers forward, ONNX Runtime and the dense
   layers alone) on --cpu-cores of its cores, in fp32 and, where the CPU computes it natively,
   bf16. The issue's CPU targets are ratios on a 2-core AMD EPYC with AVX-512, a machine class
   no session has been lent; a GPU machine's host may be one (its model and flags are reported).
   Then, on all of its cores, bertd with each of --cpu-workers' worker counts: the default (one
   worker in fp32, two in bf16) was chosen on 2 cores only.

One table on stdout, everything in OUT/gpu.json; the exit status is non-zero when a check fails
or a stage fails (throughput is reported, not judged). A lent GPU is scarce, so one call
must bring back all it can: a preflight (one input through `bertd encode` on the device) stops
the run at once when the device cannot be used; otherwise a stage that fails is recorded with
its error (for a server that failed, its exit status and the end of its log: `bertd bench` stops
waiting as soon as the server's process has exited) and the others still run; OUT/gpu.json is
written after every stage, so a call cut short by the machine's time limit still returns what was
measured; and each throughput stage runs only within --budget-s of the start (one left out for
time is listed under "skipped" in the report and on stdout, and is not a failure: nothing was
wrong with bertd). A stage that the budget's end cuts short keeps the runs it finished, and
what it left out is listed under "skipped" too.

usage: gpu.py --bertd BIN --assets DIR --device cuda:0 --out DIR
              [--dtypes fp32,fp16,bf16] [--serve-dtype fp16] [--shapes minilm,bert-base]
              [--check-lines 256] [--concurrency 1,8,32] [--budget-s 540]
              [--sweep "FLAGS;FLAGS"] [--sweep-concurrency 32] [--ceiling-s 2] [--run-s 4]
              [--cpu-cores 2] [--cpu-dtypes fp32,bf16] [--cpu-baselines st,torch,onnx,dense]
              [--cpu-workers 1,2,4,8]
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

from baselines import cosine, mean_pool, sorted_batches

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"

# Tolerances of the issue: fp32 is the same computation, the others lose mantissa bits.
FP32_ATOL = 1e-4
LOW_PRECISION_COSINE = 0.9995
# The raw forward's batch (an H100/H200-sized batch at about 128 tokens).
CEILING_BATCH = 256
# The raw forward is timed over whole passes through the corpus for at least this long: one pass
# of 20,000 lines takes a fraction of a second on an H200.
CEILING_MIN_S = 2.0
# The least a bertd run that counts lasts: the corpus once is a fraction of a second on an H200,
# which start-up and each shape's first batches would decide (serve_and_bench).
RUN_S = 4.0
# How long `bertd bench` waits for the server to load and serve.
SERVE_TIMEOUT_S = 300
# The least time a throughput stage is started with (loading the model, then its runs).
MIN_STAGE_S = 60
# `bertd serve` settings tried against the defaults (64 inputs, 16,384 tokens, one worker, the
# shared stream): a batch of CEILING_BATCH and more, more workers to overlap one batch's host work
# (tokens in, kernel launches, vectors out) with another's forward, and those workers each on a
# stream of its own, so that their kernels and copies need not wait for each other's.
SWEEP = ("--max-batch-size 256 --max-batch-tokens 32768;"
         "--max-batch-size 512 --max-batch-tokens 65536;"
         "--workers-per-device 2;"
         "--workers-per-device 2 --max-batch-size 256 --max-batch-tokens 32768;"
         "--workers-per-device 4 --max-batch-size 256 --max-batch-tokens 32768;"
         "--workers-per-device 4 --cuda-streams per-worker --max-batch-size 256 --max-batch-tokens 32768")

# The host CPU's stage (4 above): the issue's machine class has 2 cores, and the corpus's first
# CPU_LINES lines take 5-20 s a run there (the whole stage in fp32, its baselines included, about
# 2 minutes; ONNX Runtime's export of the model is its longest part). It runs last.
CPU_CORES = 2
CPU_LINES = 1000
CPU_BASELINES = "st,torch,onnx,dense"
# What a stage serving bf16 on the CPU compares bertd with: sentence-transformers in fp32 (the
# reference for cosines, and the issue's target's denominator) and in bf16, and the bf16 forward.
CPU_BF16_BASELINES = "st,st_bf16,torch_bf16"
# The CPU flags that pick the kernels (AVX2 or AVX-512 products, bf16 natively or with AMX).
KERNEL_FLAGS = {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}
# Worker counts tried on all of the host's cores, and the streams that drive them (enough to
# keep the most workers busy).
CPU_WORKERS = "1,2,4,8"
CPU_WORKERS_CONCURRENCY = "8"

SHAPES = {
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def bertd_env():
    """`bertd` loads this Python's libtorch (the GPU machine's PyTorch 2.11), whatever its rpath says."""
    env = dict(os.environ)
    lib = str(Path(torch.__file__).parent / "lib")
    env["LD_LIBRARY_PATH"] = lib + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    return env


def run_bertd(bertd, command, model, device, dtype, rows, extra=()):
    """One JSON result per row ({"text", "text_pair"}), through `bertd encode|classify --jsonl`."""
    stdin = "".join(json.dumps(r) + "\n" for r in rows)
    done = call([bertd, command, "--model", model, "--device", device, "--dtype", dtype, "--jsonl",
                 "--batch-size", "64", *extra], None, input=stdin, stdout=subprocess.PIPE, env=bertd_env())
    results = [json.loads(line) for line in done.stdout.splitlines()]
    if len(results) != len(rows):
        raise RuntimeError(f"{command} {model}: {len(results)} results for {len(rows)} inputs")
    return results


def compare(name, dtype, got, want):
    """One check row: fp32 by absolute difference, every precision by cosine."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    max_abs = float(np.abs(got - want).max())
    min_cos = cosine(got, want)
    ok = min_cos >= LOW_PRECISION_COSINE and (dtype != "fp32" or max_abs <= FP32_ATOL)
    return {"check": name, "dtype": dtype, "inputs": len(got), "max_abs_diff": max_abs,
            "min_cosine": min_cos, "ok": ok}


def fixture_checks(bertd, device, dtype):
    """The committed fixtures and their references (computed by transformers on CPU in fp32)."""
    checks = []
    rows = json.loads((FIXTURES / "references" / "bert_tiny.json").read_text())
    inputs = [{"text": r["text"], "text_pair": r["text_pair"]} for r in rows]
    for pooling in ["mean", "cls"]:
        got = run_bertd(bertd, "encode", FIXTURES / "models" / "bert_tiny", device, dtype, inputs,
                        ["--pooling", pooling, "--normalize", "false"])
        checks.append(compare(f"fixture bert_tiny {pooling}", dtype,
                              [g["embedding"] for g in got], [r[pooling] for r in rows]))
    rows = json.loads((FIXTURES / "references" / "sentence_transformers.json").read_text())
    # On a GPU, also on a stream of its own (what a server worker computes on with
    # --cuda-streams per-worker).
    streams = ["shared", "per-worker"] if device.startswith("cuda") else ["shared"]
    for stream in streams:
        got = run_bertd(bertd, "encode", FIXTURES / "models" / "sentence_transformers", device, dtype,
                        [{"text": r["text"], "text_pair": None} for r in rows], ["--cuda-streams", stream])
        name = "fixture sentence_transformers" + (", own stream" if stream == "per-worker" else "")
        checks.append(compare(name, dtype, [g["embedding"] for g in got], [r["embedding"] for r in rows]))
    for name, activation in [("classifier_single", "softmax"), ("classifier_multi", "sigmoid")]:
        model = FIXTURES / "models" / name
        labels = json.loads((model / "config.json").read_text())["id2label"]
        order = [labels[str(i)] for i in range(len(labels))]
        rows = json.loads((FIXTURES / "references" / f"{name}.json").read_text())
        got = run_bertd(bertd, "classify", model, device, dtype,
                        [{"text": r["text"], "text_pair": r["text_pair"]} for r in rows])
        scores = [[{s["label"]: s["score"] for s in g["labels"]}[label] for label in order] for g in got]
        checks.append(compare(f"fixture {name} {activation}", dtype, scores, [r[activation] for r in rows]))
    return checks


def make_model(assets, shape, out, seed):
    """A BertModel with random weights in SHAPE, the default model's tokenizer and pooling
    (ASSETS/model: its directory without the weights)."""
    directory = out / f"random-{shape}"
    if directory.exists():
        shutil.rmtree(directory)
    shutil.copytree(assets / "model", directory)
    config = json.loads((directory / "config.json").read_text())
    config.update(SHAPES[shape])
    pooling = json.loads((directory / "1_Pooling" / "config.json").read_text())
    pooling["word_embedding_dimension"] = config["hidden_size"]
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    from transformers import BertConfig, BertModel
    torch.manual_seed(seed)
    model = BertModel(BertConfig(**config), add_pooling_layer=False).eval()
    model.save_pretrained(directory)
    return directory


def load(model_dir, device, dtype):
    """transformers' tokenizer, the model's maximum length, and the model on DEVICE in DTYPE."""
    from transformers import AutoModel, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    max_length = json.loads((Path(model_dir) / "sentence_bert_config.json").read_text())["max_seq_length"]
    # .to rather than a from_pretrained argument, whose name changed between versions.
    return tokenizer, max_length, AutoModel.from_pretrained(model_dir).to(device=device, dtype=dtype).eval()


def references(model_dir, texts, device, dtype=torch.float32, batch=64):
    """transformers' normalized mean-pooled embeddings (the model's sentence-transformers pooling)."""
    tokenizer, max_length, model = load(model_dir, device, dtype)
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for ids, encoded in sorted_batches(tokenizer, texts, batch, max_length):
            encoded = encoded.to(device)
            hidden = model(**encoded).last_hidden_state.float()
            vectors = torch.nn.functional.normalize(mean_pool(hidden, encoded["attention_mask"]))
            out[ids] = vectors.cpu().numpy()
    return out


def shape_checks(bertd, model_dir, shape, texts, device, dtypes):
    want = references(model_dir, texts, device)
    rows = [{"text": t, "text_pair": None} for t in texts]
    return [compare(f"random {shape}", dtype,
                    [g["embedding"] for g in run_bertd(bertd, "encode", model_dir, device, dtype, rows)],
                    want)
            for dtype in dtypes]


def device_name(device):
    if not device.startswith("cuda"):
        return "cpu"
    try:
        return torch.cuda.get_device_name(device)
    except Exception as error:  # no driver, no such device, a PyTorch without CUDA
        return f"not usable by this PyTorch ({error})"


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def ceiling(model_dir, texts, device, dtype, min_s=CEILING_MIN_S):
    """The raw forward on pre-tokenized, length-sorted batches already on the device: inputs/s,
    over as many whole passes through them as take MIN_S."""
    tokenizer, max_length, model = load(model_dir, device, dtype)
    batches = [encoded.to(device) for _, encoded in sorted_batches(tokenizer, texts, CEILING_BATCH, max_length)]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    with torch.inference_mode():
        model(**batches[len(batches) // 2])  # warm-up
        sync(device)
        start, passes = time.perf_counter(), 0
        while passes == 0 or time.perf_counter() - start < min_s:
            for encoded in batches:
                model(**encoded)
            sync(device)
            passes += 1
        elapsed = time.perf_counter() - start
    return {"inputs_per_s": passes * len(texts) / elapsed, "tokens_per_input": tokens / len(texts),
            "passes": passes}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def busy_workers(run):
    """How many workers computed at once on average during RUN (its forward time over its wall
    time), or None without the server's metrics. One worker below 1 left the device waiting
    between batches on host work (building a batch, copying, replying)."""
    forward_ms, per_batch = run.get("forward_ms_mean"), run.get("batch_inputs_mean")
    if forward_ms is None or not per_batch:
        return None
    return forward_ms / 1000 * (run["inputs"] / per_batch) / run["seconds"]


def last_lines(text, lines=5):
    """The end of a process's output, for an error message."""
    return " | ".join(text.strip().splitlines()[-lines:])


class OutOfBudget(Exception):
    """The budget ended before a stage had anything to show: the stage is skipped, not failed."""


def call(args, timeout, **kwargs):
    """ARGS run to the end within TIMEOUT seconds (None: however long), text in and out; its
    stderr's end is in the error when it fails."""
    args = [str(a) for a in args]
    what = f"{Path(args[0]).name} {Path(args[1]).name}"
    try:
        done = subprocess.run(args, stderr=subprocess.PIPE, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired:
        raise OutOfBudget(f"the budget ended during {what}") from None
    print(done.stderr, end="", file=sys.stderr, flush=True)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {last_lines(done.stderr)}")
    return done


def save_metrics(addr, path):
    """The server's metrics after its runs (queue waits, batch sizes, forward times, by
    histogram), kept with the report for what its table does not show. Not a stage's failure
    when they cannot be read."""
    try:
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as response:
            path.write_bytes(response.read())
    except OSError as error:
        print(f"# metrics from {addr} not saved: {error}", flush=True)


def serve_and_bench(bertd, model_dir, device, dtype, corpus, concurrency, run_s, out, timeout_s, flags=()):
    """`bertd serve` on the device with its default batching (or FLAGS), driven by `bertd bench`
    at each of CONCURRENCY's stream counts, all within TIMEOUT_S seconds. Each count first runs
    the corpus once (this also warms the server up for it); when that took less than RUN_S, the
    run that counts cycles through the corpus to as many inputs as that rate gives in RUN_S.
    When the time ends during a stream count's runs, the counts before it are kept and the result
    says which were cut ("cut"); with none finished, OutOfBudget."""
    deadline = time.monotonic() + timeout_s
    port = free_port()
    metrics = f"127.0.0.1:{free_port()}"
    env = bertd_env()
    env["BERTD_TELEMETRY__METRICS_ADDR"] = metrics
    name = "-".join([model_dir.name, device.replace(":", ""), dtype, *[f.lstrip("-") for f in flags]])
    log_path = out / f"server-{name}.log"
    log = open(log_path, "w")
    server = subprocess.Popen([bertd, "serve", "--addr", f"127.0.0.1:{port}", "--model", str(model_dir),
                               "--devices", device, "--dtype", dtype, "--log-level", "warn", *flags],
                              stdout=log, stderr=subprocess.STDOUT, env=env)

    def run(streams, inputs, label):
        report = out / f"bench-{name}-x{streams}-{label}.json"
        left = deadline - time.monotonic()
        if left < 1:  # bertd's --connect-timeout-s takes whole seconds
            raise OutOfBudget(f"the budget ended before the runs at {streams} streams")
        # bertd bench stops waiting for the server as soon as its process (--pid) has exited.
        try:
            call([bertd, "bench", "--server", f"http://127.0.0.1:{port}", "--corpus", corpus,
                  "--concurrency", streams, *(["--inputs", inputs] if inputs else []),
                  "--metrics", metrics, "--pid", server.pid, "--json", report,
                  "--connect-timeout-s", int(min(SERVE_TIMEOUT_S, left))],
                 left, stdout=subprocess.DEVNULL, env=env)
        except RuntimeError as error:
            status = server.poll()
            log.flush()
            raise RuntimeError(f"{error}; the server {'is running' if status is None else f'exited ({status})'}, "
                               f"its log ends: {last_lines(log_path.read_text(errors='replace'))}") from None
        return json.loads(report.read_text())

    try:
        result = {"runs": [], "first_runs": [], "server_peak_rss_bytes": None}
        for streams in concurrency.split(","):
            try:
                first = run(streams, None, "first")
                counted, once = first, first["runs"][0]
                if once["seconds"] < run_s:
                    counted = run(streams, max(once["inputs"], round(once["inputs_per_s"] * run_s)), "sized")
            except OutOfBudget:
                if not result["runs"]:
                    raise
                result["cut"] = f"the budget ended at the runs at {streams} streams"
                break
            for r in counted["runs"]:
                r["busy_workers"] = busy_workers(r)
            result["first_runs"] += first["runs"]
            result["runs"] += counted["runs"]
            rss = [r for r in (result["server_peak_rss_bytes"], first["server_peak_rss_bytes"],
                               counted["server_peak_rss_bytes"]) if r]
            result["server_peak_rss_bytes"] = max(rss, default=None)
        save_metrics(metrics, out / f"metrics-{name}.txt")
        return result
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


def host_cpu():
    """The host's processor: its model, the flags that pick the kernels, its CPU count and load.
    What a sandbox does not show is left unknown: describing the host never stops a GPU run."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"model": fields.get("model name", "unknown"), "cpus": os.cpu_count(),
            "flags": sorted(KERNEL_FLAGS & set(fields.get("flags", "").split())), "load": load}


def distinct_cores(count):
    """COUNT of the CPUs this process may run on, each on a physical core of its own where the
    kernel says which (two SMT siblings share one core's units), and how they were chosen."""
    allowed = sorted(os.sched_getaffinity(0))
    chosen, cores = [], set()
    try:
        for cpu in allowed:
            topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
            core = ((topology / "physical_package_id").read_text(), (topology / "core_id").read_text())
            if core not in cores:
                cores.add(core)
                chosen.append(cpu)
    except OSError as error:
        return allowed[:count], f"the first {count} allowed; no core topology ({error})"
    if len(chosen) < count:
        return allowed[:count], f"the first {count} allowed; {len(chosen)} physical cores"
    return chosen[:count], "one per physical core"


def cpu_compare(bertd, model_dir, corpus, out, dtype, baselines, cores, timeout_s):
    """`make compare` on CORES of the host's cores: bertd served on the CPU in DTYPE (its default
    settings, but the thread count), driven by `bertd bench` at 1 and 4 streams over CORPUS
    once, then BASELINES (bench/baselines.py) on the same lines and cores, which also checks
    bertd's own embeddings of them against sentence-transformers'. This process, and so the
    server, the client and the baselines, runs on those cores alone until it returns."""
    deadline = time.monotonic() + timeout_s
    cpus, chosen = distinct_cores(cores)
    threads = len(cpus)
    bertd_json, baselines_json = out / f"cpu-{dtype}-bertd.json", out / f"cpu-{dtype}-baselines.json"
    embeddings = out / f"cpu-{dtype}-embeddings.jsonl"
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        held = sorted(os.sched_getaffinity(0))
        bench = serve_and_bench(bertd, model_dir, "cpu", dtype, corpus, "1,4", 0, out, timeout_s,
                                ["--cpu-threads", str(threads)])
        bertd_json.write_text(json.dumps(bench, indent=2) + "\n")
        with open(corpus, encoding="utf-8") as stdin, open(embeddings, "w", encoding="utf-8") as stdout:
            call([bertd, "encode", "--model", model_dir, "--device", "cpu", "--dtype", dtype, "--threads", threads],
                 deadline - time.monotonic(), stdin=stdin, stdout=stdout, env=bertd_env())
        call([sys.executable, REPO / "bench" / "baselines.py", "--corpus", corpus, "--threads", threads,
              "--model", model_dir, "--only", baselines, "--check", embeddings, "--json", baselines_json],
             deadline - time.monotonic(), stdout=subprocess.DEVNULL)
    finally:
        os.sched_setaffinity(0, previous)
    table = call([sys.executable, REPO / "bench" / "ratios.py", bertd_json, baselines_json,
                  f"--dtype {dtype} --cpu-threads {threads}"], 60, stdout=subprocess.PIPE).stdout
    return {"dtype": dtype, "cpus": cpus, "chosen": chosen, "affinity": held, "bench": bench,
            "baselines": json.loads(baselines_json.read_text()), "table": table}


def cpu_workers(bertd, model_dir, corpus, out, dtype, counts, run_s, timeout_s):
    """bertd served on all of the host's cores in DTYPE with each of COUNTS workers (the cores
    split among them), driven at CPU_WORKERS_CONCURRENCY streams over CORPUS, its runs sized to
    RUN_S. When the time ends, the counts finished are kept ("cut" says where it ended); with
    none finished, OutOfBudget."""
    deadline = time.monotonic() + timeout_s
    result = {"dtype": dtype, "runs": []}
    for count in counts.split(","):
        try:
            bench = serve_and_bench(bertd, model_dir, "cpu", dtype, corpus,
                                    CPU_WORKERS_CONCURRENCY, run_s, out, deadline - time.monotonic(),
                                    ["--workers-per-device", count])
        except OutOfBudget:
            if not result["runs"]:
                raise
            result["cut"] = f"the budget ended at {count} workers"
            break
        result["runs"].append({"workers": int(count), "bench": bench})
        if "cut" in bench:
            result["cut"] = f"{bench['cut']} with {count} workers"
            break
    return result


class Report:
    """What the run has found so far, saved to OUT/gpu.json after every stage."""

    def __init__(self, out, device):
        self.path = out / "gpu.json"
        self.data = {"device": device, "host": host_cpu(), "checks": [], "speeds": [], "cpu": [],
                     "cpu_workers": [], "errors": [], "skipped": []}
        self.started = time.monotonic()

    def left_s(self, budget_s):
        return budget_s - (time.monotonic() - self.started)

    def stage(self, name, run):
        """RUN's result, or None when it failed: its error is recorded and printed."""
        try:
            return run()
        except OutOfBudget as reason:
            self.skip(name, str(reason))
            return None
        except Exception as error:  # any failure of one stage: the others still run
            message = f"{type(error).__name__}: {error}"
            self.data["errors"].append({"stage": name, "error": message})
            print(f"# {name}: FAILED: {message}", flush=True)
            return None
        finally:
            self.save()

    def skip(self, name, reason):
        """A stage, or the rest of one, left out (for time, or where this machine cannot run it):
        reported, not a failure."""
        self.data["skipped"].append({"stage": name, "reason": reason})
        print(f"# {name}: not run: {reason}", flush=True)
        self.save()

    def add_checks(self, checks):
        self.data["checks"] += checks
        for c in checks:
            print(f"# {c['check']} {c['dtype']}: {'ok' if c['ok'] else 'NOT OK'} "
                  f"(max abs diff {c['max_abs_diff']:.2e}, min cosine {c['min_cosine']:.6f})", flush=True)

    def save(self):
        self.path.write_text(json.dumps(self.data, indent=2) + "\n")


def table(checks, speeds):
    lines = ["| check | dtype | inputs | max abs diff | min cosine | ok |", "|---|---|---|---|---|---|"]
    for c in checks:
        lines.append(f"| {c['check']} | {c['dtype']} | {c['inputs']} | {c['max_abs_diff']:.2e} | "
                     f"{c['min_cosine']:.6f} | {'yes' if c['ok'] else 'NO'} |")
    lines += ["", "| model | dtype | what | inputs/s | vs raw forward | p50 ms | p99 ms | padding ratio "
                  "| inputs/batch | busy workers |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in speeds:
        raw = s["ceiling"]["inputs_per_s"]
        lines.append(f"| {s['model']} | {s['dtype']} | raw forward, batch {CEILING_BATCH} "
                     f"({s['ceiling']['tokens_per_input']:.0f} tokens/input) | {raw:.0f} | 1.00 | | | | "
                     f"{CEILING_BATCH} | |")
        for flags, bench in [("", s["bench"])] + [(f"`{t['flags']}` ", t["bench"]) for t in s.get("sweep", [])]:
            for run in bench["runs"]:
                padding, per_batch, busy = run["padding_ratio"], run["batch_inputs_mean"], run.get("busy_workers")
                lines.append(f"| {s['model']} | {s['dtype']} | bertd {flags}stream x{run['concurrency']} | "
                             f"{run['inputs_per_s']:.0f} | {run['inputs_per_s'] / raw:.2f} | "
                             f"{run['latency_ms_p50']:.1f} | {run['latency_ms_p99']:.1f} | "
                             f"{'-' if padding is None else f'{padding:.3f}'} | "
                             f"{'-' if per_batch is None else f'{per_batch:.1f}'} | "
                             f"{'-' if busy is None else f'{busy:.2f}'} |")
            rss = bench.get("server_peak_rss_bytes")
            if rss:
                lines.append(f"| {s['model']} | {s['dtype']} | bertd {flags}server peak RSS | "
                             f"{rss / 2**20:.0f} MiB | | | | | | |")
    return "\n".join(lines)


def workers_table(host, results):
    lines = [f"\n## Workers on all {host['cpus']} of the host's CPUs, {CPU_WORKERS_CONCURRENCY} streams\n",
             "| dtype | workers | inputs/s | vs the dtype's first row | p50 ms | padding ratio | inputs/batch "
             "| busy workers |", "|---|---|---|---|---|---|---|---|"]
    for result in results:
        first = None
        for entry in result["runs"]:
            for run in entry["bench"]["runs"]:
                first = first or run["inputs_per_s"]
                busy, padding, per_batch = run.get("busy_workers"), run["padding_ratio"], run["batch_inputs_mean"]
                lines.append(f"| {result['dtype']} | {entry['workers']} | {run['inputs_per_s']:.0f} | "
                             f"{run['inputs_per_s'] / first:.2f} | {run['latency_ms_p50']:.1f} | "
                             f"{'-' if padding is None else f'{padding:.3f}'} | "
                             f"{'-' if per_batch is None else f'{per_batch:.1f}'} | "
                             f"{'-' if busy is None else f'{busy:.2f}'} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bertd", required=True)
    parser.add_argument("--assets", required=True, type=Path,
                        help="model/ (the default model without its weights) and corpus.txt")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--dtypes", default="fp32,fp16,bf16")
    parser.add_argument("--serve-dtype", default="fp16")
    parser.add_argument("--shapes", default="minilm,bert-base")
    parser.add_argument("--check-lines", type=int, default=256)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--sweep", default=SWEEP, help="`bertd serve` flags to try, ';' between settings")
    parser.add_argument("--sweep-concurrency", default="32")
    parser.add_argument("--ceiling-s", type=float, default=CEILING_MIN_S,
                        help="time the raw forward over whole passes through the corpus for this long")
    parser.add_argument("--run-s", type=float, default=RUN_S,
                        help="the least a bertd run that counts lasts (see serve_and_bench)")
    parser.add_argument("--budget-s", type=float, default=540,
                        help="start no throughput stage later than this many seconds from the start, "
                             "less MIN_STAGE_S, and end each by then (the device call's limit, less a margin)")
    parser.add_argument("--cpu-cores", type=int, default=CPU_CORES,
                        help="the host CPU's stage runs on this many cores (0: no such stage)")
    parser.add_argument("--cpu-dtypes", default="fp32,bf16",
                        help="the host CPU's stage in each (bf16 only where the CPU computes it natively)")
    parser.add_argument("--cpu-baselines", default=CPU_BASELINES,
                        help="bench/baselines.py's --only for the host CPU's fp32 stage")
    parser.add_argument("--cpu-workers", default=CPU_WORKERS,
                        help="worker counts to serve with on all of the host's cores, after each of "
                             "--cpu-dtypes' comparison on --cpu-cores (empty: none)")
    args = parser.parse_args()
    # Its load report lists the pooler that the encoders here leave out; nothing else is missing.
    import transformers
    transformers.logging.set_verbosity_error()
    args.out.mkdir(parents=True, exist_ok=True)
    corpus = args.assets / "corpus.txt"
    texts = [line for line in corpus.read_text(encoding="utf-8").splitlines() if line]
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.serve_dtype]
    dtypes = args.dtypes.split(",")
    print(f"# {args.device}: {device_name(args.device)}, torch {torch.__version__}, {len(texts)} corpus lines",
          flush=True)

    report = Report(args.out, args.device)
    host = report.data["host"]
    print(f"# host: {host['model']}, {host['cpus']} CPUs, flags {' '.join(host['flags'])}, load {host['load']}",
          flush=True)

    def preflight():
        return run_bertd(args.bertd, "encode", FIXTURES / "models" / "bert_tiny", args.device, "fp32",
                         [{"text": texts[0], "text_pair": None}])

    if report.stage("preflight", preflight) is None:
        print("FAILED: bertd cannot compute on the device; nothing else was run", file=sys.stderr)
        return 1
    for dtype in dtypes:
        checks = report.stage(f"fixtures {dtype}", lambda: fixture_checks(args.bertd, args.device, dtype))
        report.add_checks(checks or [])
    # Correctness first, for every shape; then throughput, which the budget may cut short.
    models = {}
    for seed, shape in enumerate(args.shapes.split(",")):
        model_dir = report.stage(f"make {shape}", lambda: make_model(args.assets, shape, args.out, seed))
        if model_dir is None:
            continue
        models[shape] = model_dir
        checks = report.stage(f"random {shape}", lambda: shape_checks(
            args.bertd, model_dir, shape, texts[:args.check_lines], args.device, dtypes))
        report.add_checks(checks or [])

    def within_budget(stage):
        left = report.left_s(args.budget_s)
        if left < MIN_STAGE_S:
            report.skip(stage, f"{left:.0f} s of --budget-s left, under {MIN_STAGE_S}")
            return False
        return True

    def kept(stage, result):
        """RESULT, a bertd run's, after listing what the budget's end cut from it as skipped."""
        if result is not None and "cut" in result:
            report.skip(f"{stage} (the rest)", result["cut"])
        return result

    def bench(model_dir, concurrency, flags=()):
        return serve_and_bench(args.bertd, model_dir, args.device, args.serve_dtype, corpus, concurrency,
                               args.run_s, args.out, max(1, report.left_s(args.budget_s)), flags)

    def throughput(shape, model_dir):
        return {"model": shape, "dtype": args.serve_dtype,
                "ceiling": ceiling(model_dir, texts, args.device, torch_dtype, args.ceiling_s),
                "bench": bench(model_dir, args.concurrency), "sweep": []}

    speeds = {}
    for shape, model_dir in models.items():
        if within_budget(f"throughput {shape}"):
            speed = report.stage(f"throughput {shape}", lambda: throughput(shape, model_dir))
            if speed is not None:
                kept(f"throughput {shape}", speed["bench"])
                speeds[shape] = speed
                report.data["speeds"].append(speed)
                report.save()
    for shape, speed in speeds.items():
        for flags in [f for f in args.sweep.split(";") if f.strip()]:
            stage = f"sweep {shape} {flags}"
            if within_budget(stage):
                run = kept(stage, report.stage(stage, lambda: bench(models[shape], args.sweep_concurrency,
                                                                     flags.split())))
                if run is not None:
                    speed["sweep"].append({"flags": flags, "bench": run})
                    report.save()
    # The host CPU's stages, each dtype's comparison on --cpu-cores, then its worker counts.
    cpu_corpus = args.out / "cpu-corpus.txt"
    cpu_corpus.write_text("".join(t + "\n" for t in texts[:CPU_LINES]), encoding="utf-8")
    for dtype in [d for d in args.cpu_dtypes.split(",") if d and args.cpu_cores > 0]:
        if "minilm" not in models:
            report.skip(f"cpu {dtype}", "it serves the minilm shape, which --shapes left out or failed to make")
            continue
        if dtype == "bf16" and not NATIVE_BF16_FLAGS & set(host["flags"]):
            report.skip(f"cpu {dtype}", f"{host['model']} computes bf16 with neither AVX512-BF16 nor AMX")
            continue
        stage = f"cpu {dtype}"
        if within_budget(stage):
            baselines = args.cpu_baselines if dtype == "fp32" else CPU_BF16_BASELINES
            result = report.stage(stage, lambda: cpu_compare(
                args.bertd, models["minilm"], cpu_corpus, args.out, dtype, baselines, args.cpu_cores,
                max(1, report.left_s(args.budget_s))))
            if result is not None:
                kept(stage, result["bench"])
                report.data["cpu"].append(result)
                report.save()
        stage = f"cpu workers {dtype}"
        if args.cpu_workers and within_budget(stage):
            workers = kept(stage, report.stage(stage, lambda: cpu_workers(
                args.bertd, models["minilm"], cpu_corpus, args.out, dtype, args.cpu_workers, args.run_s,
                max(1, report.left_s(args.budget_s)))))
            if workers is not None:
                report.data["cpu_workers"].append(workers)
                report.save()
    for model_dir in models.values():
        shutil.rmtree(model_dir)
    print(table(report.data["checks"], report.data["speeds"]))
    for result in report.data["cpu"]:
        print(f"\n## The host's CPU: {host['model']}, {host['cpus']} CPUs, flags {' '.join(host['flags'])}; "
              f"on CPUs {result['affinity']} ({result['chosen']})")
        print(result["table"])
    if report.data["cpu_workers"]:
        print(workers_table(host, report.data["cpu_workers"]))
    for skipped in report.data["skipped"]:
        print(f"not run: {skipped['stage']} ({skipped['reason']})")
    failed = [c["check"] + " " + c["dtype"] for c in report.data["checks"] if not c["ok"]]
    failed += [e["stage"] for e in report.data["errors"]]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
