//! `bertd encode` and `bertd classify` on stdin and stdout.
mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

fn bertd(args: &[&str], stdin: &str) -> (bool, Vec<Value>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bertd"))
        .args(args)
        .env_clear() // the binary finds libtorch and its default model without any environment
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (
        out.status.success(),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn encode_writes_one_json_line_per_input_line_in_order() {
    let refs = references("bert_tiny");
    let singles: Vec<&Value> = refs.iter().filter(|r| r["text_pair"].is_null()).collect();
    let stdin: String = singles
        .iter()
        .map(|r| format!("{}\n", r["text"].as_str().unwrap()))
        .collect();
    let dir = model_dir("bert_tiny");
    let (ok, lines, stderr) = bertd(
        &[
            "encode",
            "--model",
            dir.to_str().unwrap(),
            "--batch-size",
            "2",
        ],
        &stdin,
    );
    assert!(ok, "{stderr}");
    assert_eq!(lines.len(), singles.len());
    for (r, line) in singles.iter().zip(&lines) {
        // A plain BertModel directory defaults to mean pooling without normalisation.
        assert_close("mean", &floats(&line["embedding"]), &floats(&r["mean"]));
        assert_eq!(
            line["truncated"],
            Value::Bool(r["original_length"].as_u64().unwrap() > 48)
        );
        assert_eq!(
            line["tokens"].as_u64().unwrap(),
            r["input_ids"].as_array().unwrap().len() as u64
        );
    }
}

#[test]
fn encode_jsonl_takes_pairs_and_options() {
    let refs = references("bert_tiny");
    let pair = refs.iter().find(|r| !r["text_pair"].is_null()).unwrap();
    let stdin = format!(
        "{}\n",
        serde_json::json!({"text": pair["text"], "text_pair": pair["text_pair"]})
    );
    let dir = model_dir("bert_tiny");
    let (ok, lines, stderr) = bertd(
        &[
            "encode",
            "--model",
            dir.to_str().unwrap(),
            "--jsonl",
            "--pooling",
            "cls",
            "--layer",
            "0",
        ],
        &stdin,
    );
    assert!(ok, "{stderr}");
    assert_close(
        "layer0 cls",
        &floats(&lines[0]["embedding"]),
        &floats(&pair["layer0_cls"]),
    );
}

#[test]
fn a_bad_line_gets_an_error_line_and_a_failing_exit() {
    let dir = model_dir("bert_tiny");
    let (ok, lines, _) = bertd(
        &["encode", "--model", dir.to_str().unwrap(), "--jsonl"],
        "{\"text\": \"fine\"}\nnot json\n",
    );
    assert!(!ok);
    assert!(lines[0]["embedding"].is_array());
    assert_eq!(lines[1]["line"], 2);
    assert!(lines[1]["error"].as_str().unwrap().contains("invalid JSON"));
}

#[test]
fn a_stream_of_its_own_is_refused_on_a_cpu_before_anything_is_computed() {
    let dir = model_dir("bert_tiny");
    let (ok, lines, stderr) = bertd(
        &[
            "encode",
            "--model",
            dir.to_str().unwrap(),
            "--cuda-streams",
            "per-worker",
        ],
        "fine\n",
    );
    assert!(!ok);
    assert!(lines.is_empty());
    assert!(
        stderr.contains("cuda streams per-worker needs a CUDA device, and the devices are cpu"),
        "{stderr}"
    );
}

#[test]
fn classify_prints_labels_by_score() {
    let refs = references("classifier_single");
    let dir = model_dir("classifier_single");
    let stdin = format!("{}\n", refs[1]["text"].as_str().unwrap());
    let (ok, lines, stderr) = bertd(
        &["classify", "--model", dir.to_str().unwrap(), "--top-k", "1"],
        &stdin,
    );
    assert!(ok, "{stderr}");
    let want = floats(&refs[1]["softmax"]);
    let best = (0..3).max_by(|&a, &b| want[a].total_cmp(&want[b])).unwrap();
    let labels = lines[0]["labels"].as_array().unwrap();
    assert_eq!(labels.len(), 1);
    assert_eq!(
        labels[0]["label"],
        ["negative", "neutral", "positive"][best]
    );
    assert!((labels[0]["score"].as_f64().unwrap() as f32 - want[best]).abs() < 1e-5);
}

#[test]
fn encode_defaults_to_the_installed_all_minilm_l6_v2() {
    let refs = references("all_minilm_l6_v2");
    let (ok, lines, stderr) = bertd(
        &["encode"],
        &format!("{}\n", refs[0]["text"].as_str().unwrap()),
    );
    assert!(ok, "{stderr}");
    let c = cosine(
        &floats(&lines[0]["embedding"]),
        &floats(&refs[0]["embedding"]),
    );
    assert!(c >= 0.99999, "cosine {c}");
}
