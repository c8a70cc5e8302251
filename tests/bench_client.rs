//! `bertd bench` against a real server: every input of the corpus is answered in each run, and
//! what it reports adds up (tokens, padding ratio from the server's metrics, peak memory).
mod common;

use std::process::Command;

use common::grpc::*;
use common::*;
use serde_json::Value;

/// Runs `command`, which must succeed (its stderr otherwise in the failure).
fn succeed(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Lines of the corpus: varied lengths, so batches pad.
const LINES: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_answers_every_input_in_each_run_and_reports_padding_and_memory() {
    let mut s = settings(&model_dir("bert_tiny"));
    s.telemetry.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    let server = serve(s).await;
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    let lines: Vec<String> = (0..LINES)
        .map(|i| vec!["word"; 1 + i % 17].join(" "))
        .collect();
    std::fs::write(&corpus, lines.join("\n")).unwrap();
    for mode in ["stream", "unary"] {
        let json = dir.path().join(format!("{mode}.json"));
        succeed(
            Command::new(env!("CARGO_BIN_EXE_bertd"))
                .args(["bench", "--server", &format!("http://{}", server.addr)])
                .args(["--corpus", corpus.to_str().unwrap(), "--mode", mode])
                .args(["--concurrency", "1,3", "--inputs-per-request", "4"])
                .args(["--metrics", &server.metrics_addr.unwrap().to_string()])
                .args(["--pid", &std::process::id().to_string()])
                .args(["--json", json.to_str().unwrap()]),
        );
        let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
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
        }
    }
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

/// Lines the baselines encode in the test: enough for two sorted batches.
const BASELINE_LINES: usize = 40;

#[test]
fn the_python_baselines_run_and_agree_with_sentence_transformers() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    let python = root.join(".venv/bin/python");
    succeed(
        Command::new(&python)
            .arg(root.join("bench/corpus.py"))
            .args(["--lines", &BASELINE_LINES.to_string()])
            .args(["--out", corpus.to_str().unwrap()]),
    );
    let lines = std::fs::read_to_string(&corpus).unwrap();
    let words: Vec<usize> = lines
        .lines()
        .map(|l| l.split_whitespace().count())
        .collect();
    assert_eq!(words.len(), BASELINE_LINES);
    assert!(words.iter().all(|w| (5..=120).contains(w)), "{words:?}");

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
    for baseline in ["torch_sorted", "onnx_fp32"] {
        let cosine = report[baseline]["min_cosine"].as_f64().unwrap();
        assert!(cosine >= 0.9999, "{baseline}: min cosine {cosine}");
    }
}
