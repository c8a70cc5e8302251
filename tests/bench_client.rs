//! `bertd bench` against a real server: every input of the corpus is answered in each run, and
//! what it reports adds up (tokens, padding ratio from the server's metrics, peak memory); the
//! bench scripts' machine line names the variables that change the kernels; the Python baselines
//! and the latency script run and check their outputs; the GPU script's CPU dry run passes.
mod common;

use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use common::grpc::*;
use common::*;
use serde_json::Value;

/// `bertd bench` against the server at `addr` over `corpus` with `args`, its JSON report written
/// to `json` and read back.
fn bench_report(addr: impl std::fmt::Display, corpus: &Path, json: &Path, args: &[&str]) -> Value {
    succeed(
        Command::new(env!("CARGO_BIN_EXE_bertd"))
            .args(["bench", "--server", &format!("http://{addr}")])
            .args(["--corpus", corpus.to_str().unwrap()])
            .args(["--json", json.to_str().unwrap()])
            .args(args),
    );
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

/// Taken by the tests that keep both cores busy for long. The GPU script's dry run sizes its runs
/// by the rate it measures, and the latency script's server and sentence-transformers beside it
/// would take those cores: beside the latency test, a dry run's forward passes took 635 ms each
/// and its first run served 7.5 inputs/s, too slow to size its runs (seen in CI).
static WHOLE_CPU: Mutex<()> = Mutex::new(());

fn whole_cpu() -> MutexGuard<'static, ()> {
    // A test that failed holding it leaves nothing behind to guard.
    WHOLE_CPU
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Lines of the corpus: varied lengths, so batches pad.
const LINES: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_answers_every_input_in_each_run_and_reports_padding_and_memory() {
    let mut s = settings(&model_dir("bert_tiny"));
    s.telemetry.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    s.batching.max_batch_size = Some(MAX_BATCH_INPUTS);
    let server = serve(s).await;
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    let lines: Vec<String> = (0..LINES)
        .map(|i| vec!["word"; 1 + i % 17].join(" "))
        .collect();
    std::fs::write(&corpus, lines.join("\n")).unwrap();
    for mode in ["stream", "unary"] {
        let json = dir.path().join(format!("{mode}.json"));
        let (metrics, pid) = (server.metrics_addr.unwrap(), std::process::id());
        let report = bench_report(
            server.addr,
            &corpus,
            &json,
            &[
                ["--mode", mode],
                ["--concurrency", "1,3"],
                ["--inputs-per-request", "4"],
                ["--metrics", &metrics.to_string()],
                ["--pid", &pid.to_string()],
            ]
            .concat(),
        );
        assert!(report["server_peak_rss_bytes"].as_u64().unwrap() > 0);
        let runs = report["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 2, "one run per concurrency");
        for (run, concurrency) in runs.iter().zip([1, 3]) {
            assert_eq!(run["mode"], mode);
            assert_eq!(run["concurrency"], concurrency);
            assert_eq!(run["inputs"], LINES);
            assert!(run["tokens_per_s"].as_f64().unwrap() > run["inputs_per_s"].as_f64().unwrap());
            let ratio = run["padding_ratio"].as_f64().unwrap();
            assert!(ratio > 0.0 && ratio <= 1.0, "{ratio}");
            let (p50, p99) = (
                run["latency_ms_p50"].as_f64().unwrap(),
                run["latency_ms_p99"].as_f64().unwrap(),
            );
            assert!(p50 > 0.0 && p50 <= p99, "{p50} {p99}");
            assert!(run["forward_ms_mean"].as_f64().unwrap() > 0.0, "{run}");
            let per_batch = run["batch_inputs_mean"].as_f64().unwrap();
            assert!(
                (1.0..=MAX_BATCH_INPUTS as f64).contains(&per_batch),
                "{run}"
            );
            let rss = |field: &str| run[field].as_u64().unwrap();
            assert!(rss("server_rss_bytes_start") > 0, "{run}");
            assert!(
                rss("server_rss_bytes_max") >= rss("server_rss_bytes_start"),
                "{run}"
            );
            assert!(
                rss("server_rss_bytes_max") >= rss("server_rss_bytes_end"),
                "{run}"
            );
        }
    }
}

/// The server's batch limit in the bench test (below what a concurrency of 3 could fill).
const MAX_BATCH_INPUTS: usize = 8;

/// Times the corpus is cycled through in the `--inputs` run.
const CYCLES: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_cycles_through_the_corpus_for_the_inputs_asked() {
    let server = serve(settings(&model_dir("bert_tiny"))).await;
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(&corpus, "one\ntwo words\nthree words here\n").unwrap();
    let inputs = 3 * CYCLES + 1;
    let inputs_arg = inputs.to_string();
    let report = bench_report(
        server.addr,
        &corpus,
        &dir.path().join("cycle.json"),
        &[
            "--concurrency",
            "2",
            "--inputs-per-request",
            "2",
            "--inputs",
            &inputs_arg,
        ],
    );
    let run = &report["runs"][0];
    assert_eq!(run["inputs"], inputs);
    // Without --metrics and --pid, what they would measure is absent rather than made up.
    for field in [
        "padding_ratio",
        "forward_ms_mean",
        "batch_inputs_mean",
        "server_rss_bytes_max",
    ] {
        assert!(run[field].is_null(), "{field}: {run}");
    }
}

/// BERT's special tokens around a single text (`[CLS]`, `[SEP]`) and around a pair (one more
/// `[SEP]`).
const SPECIAL_TOKENS_SINGLE: u64 = 2;
const SPECIAL_TOKENS_PAIR: u64 = 3;

/// The pairs test's corpus: lines of "a" (one token), each of another length.
const WORDS_A_LINE: [u64; 3] = [1, 2, 4];

/// Inputs of the pairs test's runs: fewer than the lines, so that which line follows which
/// shows in the tokens.
const PAIR_TEST_INPUTS: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_pairs_send_each_line_with_the_next() {
    let server = serve(settings(&model_dir("bert_tiny"))).await;
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    let lines: Vec<String> = WORDS_A_LINE
        .iter()
        .map(|&n| vec!["a"; n as usize].join(" "))
        .collect();
    std::fs::write(&corpus, lines.join("\n")).unwrap();
    let inputs = PAIR_TEST_INPUTS.to_string();
    let tokens = |pairs: bool| {
        let json = dir.path().join(format!("pairs-{pairs}.json"));
        let args = ["--inputs", &inputs, "--pairs"];
        let args = if pairs { &args[..] } else { &args[..2] };
        let report = bench_report(server.addr, &corpus, &json, args);
        assert_eq!(report["pairs"], pairs);
        let run = &report["runs"][0];
        assert_eq!(run["inputs"], PAIR_TEST_INPUTS);
        run["tokens"].as_u64().unwrap()
    };
    let words = &WORDS_A_LINE[..PAIR_TEST_INPUTS];
    let singles: u64 = words.iter().map(|w| w + SPECIAL_TOKENS_SINGLE).sum();
    assert_eq!(tokens(false), singles);
    let next = &WORDS_A_LINE[1..=PAIR_TEST_INPUTS];
    let pairs: u64 = words
        .iter()
        .zip(next)
        .map(|(w, v)| w + v + SPECIAL_TOKENS_PAIR)
        .sum();
    assert_eq!(tokens(true), pairs, "each line with the next");
}

/// The variables that pick the kernels' instruction sets, which the bench scripts' machine line
/// names when they are set (an emulated machine must say so in its report).
const KERNEL_VARIABLES: [&str; 3] = [
    "MKL_ENABLE_INSTRUCTIONS",
    "ONEDNN_MAX_CPU_ISA",
    "ATEN_CPU_CAPABILITY",
];

#[test]
fn the_bench_scripts_machine_line_names_the_kernel_variables_set() {
    let dir = tempfile::tempdir().unwrap();
    let machine_line = |set: &[(&str, &str)]| {
        let mut bash = Command::new("bash");
        bash.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "-c",
                "set -euo pipefail; source bench/common.sh; describe_machine",
            ])
            .env("OUT", dir.path());
        for variable in KERNEL_VARIABLES {
            bash.env_remove(variable);
        }
        bash.envs(set.iter().copied());
        String::from_utf8(succeed(&mut bash).stdout).unwrap()
    };
    let plain = machine_line(&[]);
    assert!(
        plain.contains(" cores, ") && plain.contains("load: "),
        "{plain}"
    );
    assert!(
        KERNEL_VARIABLES.iter().all(|v| !plain.contains(v)),
        "{plain}"
    );
    let emulated = machine_line(&[("MKL_ENABLE_INSTRUCTIONS", "AVX2")]);
    assert!(
        emulated.contains(", MKL_ENABLE_INSTRUCTIONS=AVX2"),
        "{emulated}"
    );
}

#[test]
fn bench_names_a_missing_corpus() {
    let out = Command::new(env!("CARGO_BIN_EXE_bertd"))
        .args(["bench", "--corpus", "/nonexistent/corpus.txt"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--corpus /nonexistent/corpus.txt"));
}

/// Far longer than a failed server takes to be noticed: were `bertd bench` to wait it out, the
/// test would take this long and then fail on the message.
const LONG_CONNECT_TIMEOUT_S: &str = "600";

/// A server that fails to start (its model is missing) is reported as soon as its process has
/// exited, with the reason to look for, instead of after the whole connect timeout. The process
/// is left unreaped, a zombie, as a benchmark script's child is until it waits for it.
#[test]
fn bench_stops_waiting_when_the_servers_process_has_exited() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_bertd"))
        .args([
            "serve",
            "--model",
            "/nonexistent/model",
            "--addr",
            &addr.to_string(),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(&corpus, "A man is eating food.\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bertd"))
        .args(["bench", "--server", &format!("http://{addr}")])
        .args(["--corpus", corpus.to_str().unwrap()])
        .args(["--pid", &server.id().to_string()])
        .args(["--connect-timeout-s", LONG_CONNECT_TIMEOUT_S])
        .output()
        .unwrap();
    assert!(!server.wait().unwrap().success());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("the server's process ({}) exited", server.id())),
        "{stderr}"
    );
}

/// bench/corpus.py's realistic corpus of `lines` lines at `path`.
fn write_corpus(path: &Path, lines: usize) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    succeed(
        Command::new(root.join(".venv/bin/python"))
            .arg(root.join("bench/corpus.py"))
            .args(["--lines", &lines.to_string()])
            .args(["--out", path.to_str().unwrap()]),
    );
}

/// Lines the baselines encode in the test: enough for two sorted batches.
const BASELINE_LINES: usize = 40;

#[test]
fn the_python_baselines_and_bertds_own_outputs_agree_with_sentence_transformers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    let python = root.join(".venv/bin/python");
    write_corpus(&corpus, BASELINE_LINES);
    let lines = std::fs::read_to_string(&corpus).unwrap();
    let words: Vec<usize> = lines
        .lines()
        .map(|l| l.split_whitespace().count())
        .collect();
    assert_eq!(words.len(), BASELINE_LINES);
    assert!(words.iter().all(|w| (5..=120).contains(w)), "{words:?}");

    // bertd's embeddings of the corpus, as bench/compare.sh makes them for the check.
    let embeddings = dir.path().join("bertd.jsonl");
    let encoded = succeed(
        Command::new(env!("CARGO_BIN_EXE_bertd"))
            .args(["encode", "--threads", "1"])
            .stdin(std::fs::File::open(&corpus).unwrap()),
    );
    std::fs::write(&embeddings, &encoded.stdout).unwrap();

    let json = dir.path().join("baselines.json");
    succeed(
        Command::new(&python)
            .arg(root.join("bench/baselines.py"))
            .args([
                "--corpus",
                corpus.to_str().unwrap(),
                "--threads",
                "1",
                "--batch",
                "16",
            ])
            .args(["--check", embeddings.to_str().unwrap()])
            .args(["--json", json.to_str().unwrap()]),
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["inputs"], BASELINE_LINES);
    assert!(
        report["sentence_transformers"]["inputs_per_s"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    for baseline in ["torch_sorted", "onnx_fp32", "bertd_outputs"] {
        let cosine = report[baseline]["min_cosine"].as_f64().unwrap();
        assert!(cosine >= 0.9999, "{baseline}: min cosine {cosine}");
    }
    // The ceiling counts every real token of the corpus (more than one per line).
    let ceiling = &report["dense_ceiling"];
    assert!(ceiling["tokens"].as_u64().unwrap() > BASELINE_LINES as u64);
    assert!(ceiling["inputs_per_s"].as_f64().unwrap() > 0.0);
    assert!(ceiling["gflop_per_s"].as_f64().unwrap() > 0.0);
    // With the kernel the server computes its dense layers with here.
    assert_eq!(ceiling["kernel"], "oneDNN, packed weights");
}

/// Calls of bench/latency.sh's two parts in the test: the short sentence, and realistic lines.
const LATENCY_CALLS: usize = 20;
const LATENCY_LINES: usize = 12;

/// bench/latency.sh, as a user runs it (with the debug binary): the short sentence against the
/// server's forward, then realistic lines one a call beside sentence-transformers one text a
/// call, whose one-text outputs must be its batched ones.
#[test]
fn the_latency_script_sets_bertd_beside_sentence_transformers_one_text_a_call() {
    let _cores = whole_cpu();
    let dir = tempfile::tempdir().unwrap();
    let out = succeed(
        Command::new("bash")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .arg("bench/latency.sh")
            .env("OUT", dir.path())
            .env("BERTD", env!("CARGO_BIN_EXE_bertd"))
            .env("CALLS", LATENCY_CALLS.to_string())
            .env("MIXED_LINES", LATENCY_LINES.to_string()),
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let read = |name: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(name)).unwrap()).unwrap()
    };

    let short = &read("bertd.json")["runs"][0];
    assert_eq!(short["inputs"], LATENCY_CALLS);
    assert!(
        stdout.contains(&format!("{LATENCY_CALLS} calls of one short sentence")),
        "{stdout}"
    );

    let bertd = &read("bertd-mixed.json")["runs"][0];
    assert_eq!(bertd["inputs"], LATENCY_LINES);
    assert_eq!(bertd["mode"], "unary");
    assert_eq!(bertd["batch_inputs_mean"], 1.0, "one text a call: {bertd}");
    let st = &read("st-single.json")["sentence_transformers_single"];
    assert!(st["min_cosine"].as_f64().unwrap() >= 0.99999, "{st}");
    for run in [bertd, st] {
        let [p50, p90, p99] = ["latency_ms_p50", "latency_ms_p90", "latency_ms_p99"]
            .map(|p| run[p].as_f64().unwrap());
        assert!(0.0 < p50 && p50 <= p90 && p90 <= p99, "{run}");
        assert!(run["inputs_per_s"].as_f64().unwrap() > 0.0, "{run}");
    }
    assert!(
        stdout.contains(&format!("{LATENCY_LINES} realistic lines, one a call"))
            && stdout.contains("| bertd, unary Encode over gRPC |")
            && stdout.contains("| sentence-transformers encode([text]), in-process |"),
        "{stdout}"
    );
}

/// Corpus lines of the GPU script's dry run: its checks and its throughput runs.
const DRY_RUN_LINES: usize = 48;
/// The one batching setting the dry run sweeps (a GPU run sweeps bigger batches and workers).
const SWEPT: &str = "--max-batch-size 4";
const SWEPT_BATCH: u64 = 4;
/// How bench/gpu.py names the files of the dry run's servers: the model, the device and the
/// dtype, then a swept setting's flags, dashes dropped.
const SERVED_NAME: &str = "random-minilm-cpu-fp32";
const SWEPT_NAME: &str = "max-batch-size-4";
/// A setting the GPU sweep tries that a server on CPU refuses at start, swept before SWEPT.
const REFUSED: &str = "--cuda-streams per-worker";
/// What the server says when it refuses REFUSED.
const REFUSED_REASON: &str = "needs a CUDA device";
/// How long the dry run times the raw forward, and the least a bertd run that counts lasts: more
/// than the 48-line corpus once takes here (bertd serves the MiniLM shape at about 80 inputs/s
/// on 2 cores), so that the runs are sized.
const CEILING_S: f64 = 0.5;
const RUN_S: f64 = 3.0;
/// The dry run's budget: under the 300 s that `bertd bench` may wait for a server, so that the
/// budget left (not that cap) bounds the waits, as late in a GPU run; and ample for the dry run's
/// stages (about 60 s on 2 cores).
const DRY_RUN_BUDGET_S: f64 = 250.0;
/// How far a run's busy workers may pass its worker count: the metrics' window is a little
/// longer than the run.
const BUSY_MARGIN: f64 = 0.1;

/// bench/gpu.py run on what bench/gpu.sh carries, made in `dir`: the default model without
/// its weights (`assets/model`), and a corpus; its report goes to `dir/out`.
fn gpu_script(dir: &Path) -> Command {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let assets = dir.join("assets");
    std::fs::create_dir(&assets).unwrap();
    succeed(
        Command::new("cp")
            .arg("-r")
            .arg(bertd::config::default_model_dir())
            .arg(assets.join("model")),
    );
    std::fs::remove_file(assets.join("model/model.safetensors")).unwrap();
    write_corpus(&assets.join("corpus.txt"), DRY_RUN_LINES);
    let mut script = Command::new(root.join(".venv/bin/python"));
    script
        .arg(root.join("bench/gpu.py"))
        .args(["--bertd", env!("CARGO_BIN_EXE_bertd")])
        .arg("--assets")
        .arg(&assets)
        .arg("--out")
        .arg(dir.join("out"));
    script
}

/// The baselines of the dry run's host CPU stage: sentence-transformers alone, the reference
/// every other baseline and bertd's own embeddings are checked against (the others run in
/// `the_python_baselines_and_bertds_own_outputs_agree_with_sentence_transformers`).
const DRY_RUN_CPU_BASELINES: &str = "st";
/// The cores the dry run's host CPU stage runs on: fewer than any machine has, so that the
/// pinning shows (a GPU run takes 2, the issue's machine class).
const DRY_RUN_CPU_CORES: usize = 1;
/// The worker counts the dry run serves with on all cores (a GPU run tries 1, 2, 4 and 8).
const DRY_RUN_CPU_WORKERS: &str = "1,2";

/// bench/gpu.py on CPU, as far as it can go there: fp32 only, the MiniLM shape, and the host
/// CPU's stage in fp32 against sentence-transformers alone.
fn cpu_dry_run(dir: &Path) -> Command {
    let mut script = gpu_script(dir);
    script.args([
        "--device",
        "cpu",
        "--dtypes",
        "fp32",
        "--serve-dtype",
        "fp32",
    ]);
    script.args(["--shapes", "minilm"]);
    script.args([
        "--cpu-dtypes",
        "fp32",
        "--cpu-baselines",
        DRY_RUN_CPU_BASELINES,
    ]);
    script.args(["--cpu-cores", &DRY_RUN_CPU_CORES.to_string()]);
    script.args(["--cpu-workers", DRY_RUN_CPU_WORKERS]);
    script
}

/// The report bench/gpu.py wrote in `dir/out`.
fn gpu_report(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("out/gpu.json")).unwrap()).unwrap()
}

/// bench/gpu.py, the script a lent GPU machine runs, run here on CPU: the same code path with
/// `--device cpu` (only the device and the precisions differ), so that it is ready when a GPU is.
/// A swept setting that the server refuses fails its own stage alone, at once, with the server's
/// reason; the script exits non-zero for it, and everything else runs and passes, the host
/// CPU's stage last.
#[test]
fn the_gpu_script_runs_on_cpu_and_its_checks_pass() {
    let _cores = whole_cpu();
    let dir = tempfile::tempdir().unwrap();
    let run = cpu_dry_run(dir.path())
        .args(["--concurrency", "1,2"])
        .args(["--sweep", &format!("{REFUSED};{SWEPT}")])
        .args(["--sweep-concurrency", "2"])
        .args(["--ceiling-s", &CEILING_S.to_string()])
        .args(["--budget-s", &DRY_RUN_BUDGET_S.to_string()])
        .args(["--run-s", &RUN_S.to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("FAILED: sweep minilm {REFUSED}\n")),
        "{stderr}"
    );
    let report = gpu_report(dir.path());
    let errors = report["errors"].as_array().unwrap();
    assert_eq!(
        errors.len(),
        1,
        "only the refused setting failed: {errors:?}"
    );
    assert_eq!(errors[0]["stage"], format!("sweep minilm {REFUSED}"));
    let error = errors[0]["error"].as_str().unwrap();
    assert!(error.contains("exited before"), "{error}");
    assert!(error.contains(REFUSED_REASON), "{error}");
    assert_eq!(report["skipped"], serde_json::json!([]), "every stage ran");
    // Each server's metrics are kept beside the report, for what the table does not show.
    for name in [SERVED_NAME, &format!("{SERVED_NAME}-{SWEPT_NAME}")] {
        let metrics = std::fs::read_to_string(dir.path().join(format!("out/metrics-{name}.txt")))
            .unwrap_or_else(|e| panic!("metrics-{name}.txt: {e}"));
        assert!(
            metrics.contains("bertd_batch_forward_duration_seconds_count"),
            "{metrics}"
        );
    }
    let checks = report["checks"].as_array().unwrap();
    let names: Vec<&str> = checks
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    for expected in [
        "fixture bert_tiny mean",
        "fixture sentence_transformers",
        "fixture classifier_single softmax",
        "fixture classifier_multi sigmoid",
        "random minilm",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    for check in checks {
        assert_eq!(check["ok"], true, "{check}");
        assert!(check["max_abs_diff"].as_f64().unwrap() <= 1e-4, "{check}");
    }
    let random = checks
        .iter()
        .find(|c| c["check"] == "random minilm")
        .unwrap();
    assert_eq!(random["inputs"], DRY_RUN_LINES);
    let speed = &report["speeds"][0];
    let raw = speed["ceiling"]["inputs_per_s"].as_f64().unwrap();
    let passes = speed["ceiling"]["passes"].as_f64().unwrap();
    assert!(
        passes * DRY_RUN_LINES as f64 / raw >= CEILING_S,
        "the raw forward was timed for at least --ceiling-s: {speed}"
    );
    let runs = speed["bench"]["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "one run per concurrency");
    assert_sized(runs, &speed["bench"]["first_runs"]);
    let sweep = speed["sweep"].as_array().unwrap();
    assert_eq!(sweep.len(), 1, "one entry per swept setting: {sweep:?}");
    assert_eq!(sweep[0]["flags"], SWEPT);
    let swept = &sweep[0]["bench"]["runs"][0];
    assert_eq!(swept["concurrency"], 2);
    assert_sized(
        sweep[0]["bench"]["runs"].as_array().unwrap(),
        &sweep[0]["bench"]["first_runs"],
    );
    // The swept setting was the one served: no batch above its limit.
    assert!(
        swept["batch_inputs_mean"].as_f64().unwrap() <= SWEPT_BATCH as f64,
        "{swept}"
    );
    assert_host_cpu_stage(&report, &String::from_utf8_lossy(&run.stdout));
}

/// The host CPU's stage: bertd served on DRY_RUN_CPU_CORES cores, at 1 and 4 streams over the corpus
/// once, beside sentence-transformers on the same cores, its own embeddings checked against
/// sentence-transformers', and the ratios printed.
fn assert_host_cpu_stage(report: &Value, stdout: &str) {
    let host = &report["host"];
    assert!(host["cpus"].as_u64().unwrap() >= 1, "{host}");
    assert!(!host["model"].as_str().unwrap().is_empty(), "{host}");
    let stages = report["cpu"].as_array().unwrap();
    assert_eq!(stages.len(), 1, "fp32 only: {stages:?}");
    let cpu = &stages[0];
    assert_eq!(cpu["dtype"], "fp32");
    let cores = cpu["cpus"].as_array().unwrap();
    assert_eq!(cores.len(), DRY_RUN_CPU_CORES, "{cpu}");
    assert_eq!(
        cpu["affinity"], cpu["cpus"],
        "the stage ran on its cores alone"
    );
    let concurrency: Vec<u64> = cpu["bench"]["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["inputs"], DRY_RUN_LINES, "the corpus once: {r}");
            r["concurrency"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(concurrency, [1, 4]);
    let baselines = &cpu["baselines"];
    assert_eq!(baselines["threads"], DRY_RUN_CPU_CORES);
    assert_eq!(baselines["inputs"], DRY_RUN_LINES);
    assert!(
        baselines["sentence_transformers"]["inputs_per_s"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    // fp32: bertd's own embeddings are sentence-transformers' (parity within 1e-4 elsewhere).
    let cosine = baselines["bertd_outputs"]["min_cosine"].as_f64().unwrap();
    assert!(cosine >= 0.99999, "{baselines}");
    assert!(stdout.contains("## The host's CPU"), "{stdout}");
    assert!(
        stdout.contains("| bertd stream x4 (gRPC, end to end) |"),
        "{stdout}"
    );

    // Then each worker count on all cores: as many workers computed at once as it was asked
    // for (more than one less).
    let sweeps = report["cpu_workers"].as_array().unwrap();
    assert_eq!(sweeps.len(), 1, "fp32 only: {sweeps:?}");
    assert_eq!(sweeps[0]["dtype"], "fp32");
    let entries = sweeps[0]["runs"].as_array().unwrap();
    let counts: Vec<String> = entries.iter().map(|e| e["workers"].to_string()).collect();
    assert_eq!(counts.join(","), DRY_RUN_CPU_WORKERS);
    for entry in entries {
        let workers = entry["workers"].as_f64().unwrap();
        let run = &entry["bench"]["runs"][0];
        let busy = run["busy_workers"].as_f64().unwrap();
        assert!(
            busy > workers - 1.0 && busy <= workers + BUSY_MARGIN,
            "{entry}"
        );
    }
    assert!(stdout.contains("## Workers on all"), "{stdout}");
}

/// Stream counts that the cut run asks for: more runs than fit in CUT_TIMEOUT_S on any machine
/// (each starts a `bertd bench` process: 0.3-0.5 s here), while the first fits in it with room
/// to spare.
const CUT_COUNTS: usize = 1000;
const CUT_TIMEOUT_S: u64 = 15;

/// A server's runs that the budget's end cuts short keep the runs they finished and say where
/// they were cut (bench/gpu.py lists the rest as skipped), instead of failing and losing them.
#[test]
fn a_gpu_script_server_cut_by_the_budget_keeps_the_runs_it_finished() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    write_corpus(&corpus, DRY_RUN_LINES);
    let script = format!(
        "import json, sys\n\
         from pathlib import Path\n\
         sys.path.insert(0, {bench:?})\n\
         import gpu\n\
         print(json.dumps(gpu.serve_and_bench({bertd:?}, Path({model:?}), 'cpu', 'fp32', {corpus:?}, \
         ','.join(['1'] * {CUT_COUNTS}), 0, Path({out:?}), {CUT_TIMEOUT_S})))\n",
        bench = root.join("bench").to_str().unwrap(),
        bertd = env!("CARGO_BIN_EXE_bertd"),
        model = root
            .join("tests/fixtures/models/bert_tiny")
            .to_str()
            .unwrap(),
        corpus = corpus.to_str().unwrap(),
        out = dir.path().to_str().unwrap(),
    );
    let run = succeed(Command::new(root.join(".venv/bin/python")).args(["-c", &script]));
    let stdout = String::from_utf8_lossy(&run.stdout);
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let runs = result["runs"].as_array().unwrap().len();
    assert!((1..CUT_COUNTS).contains(&runs), "{runs} runs");
    assert_eq!(
        result["cut"], "the budget ended at the runs at 1 streams",
        "{result}"
    );
}

/// Each run that counts follows a first run of the corpus once, at the same concurrency, and has
/// as many inputs as that first run's rate gives in RUN_S: more than the corpus once.
fn assert_sized(runs: &[Value], first_runs: &Value) {
    let first_runs = first_runs.as_array().unwrap();
    assert_eq!(runs.len(), first_runs.len());
    for (run, first) in runs.iter().zip(first_runs) {
        assert_eq!(first["inputs"], DRY_RUN_LINES);
        assert_eq!(run["concurrency"], first["concurrency"]);
        let rate = first["inputs_per_s"].as_f64().unwrap();
        let sized = (rate * RUN_S).round() as u64;
        assert!(
            sized > DRY_RUN_LINES as u64,
            "the corpus once took under RUN_S: {first}"
        );
        assert_eq!(run["inputs"], sized, "{run}");
        // One worker: computing for at most the run's time (the server's metrics are read just
        // before and after it, hence the margin).
        let busy = run["busy_workers"].as_f64().unwrap();
        assert!(busy > 0.0 && busy <= 1.0 + BUSY_MARGIN, "{run}");
    }
}

/// A budget too short for any throughput stage: every correctness check still runs, and the
/// throughput stages are listed as left out for time, which is not a failure.
#[test]
fn the_gpu_script_leaves_out_throughput_stages_past_its_budget_without_failing() {
    let dir = tempfile::tempdir().unwrap();
    let run = succeed(cpu_dry_run(dir.path()).args(["--sweep", SWEPT, "--budget-s", "0"]));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("not run: throughput minilm"), "{stdout}");
    assert!(stdout.contains("not run: cpu fp32"), "{stdout}");
    let report = gpu_report(dir.path());
    assert_eq!(report["errors"], serde_json::json!([]));
    let skipped: Vec<&str> = report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        skipped,
        ["throughput minilm", "cpu fp32", "cpu workers fp32"]
    );
    assert_eq!(report["speeds"], serde_json::json!([]));
    assert_eq!(report["cpu"], serde_json::json!([]));
    assert_eq!(report["cpu_workers"], serde_json::json!([]));
    let checks = report["checks"].as_array().unwrap();
    assert!(checks.iter().any(|c| c["check"] == "random minilm"));
    assert!(checks.iter().all(|c| c["ok"] == true), "{checks:?}");
}

/// A device no machine has: bertd refuses it whether or not CUDA is there.
const UNUSABLE_DEVICE: &str = "cuda:99";

/// A lent GPU's minutes are scarce: when bertd cannot compute on the device, the script says why
/// in its report and stops after one input, instead of failing every stage in turn.
#[test]
fn the_gpu_script_stops_at_its_preflight_when_bertd_cannot_use_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let run = gpu_script(dir.path())
        .args(["--device", UNUSABLE_DEVICE])
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("nothing else was run"), "{stderr}");
    let report = gpu_report(dir.path());
    let errors = report["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["stage"], "preflight");
    assert!(
        errors[0]["error"]
            .as_str()
            .unwrap()
            .contains(UNUSABLE_DEVICE),
        "the error names the device: {errors:?}"
    );
    assert_eq!(report["checks"], serde_json::json!([]));
}
