//! The example clients in other languages (`clients/python`, `clients/node`), written from the
//! proto alone, run against the real `bertd serve`: their unary and streamed answers are the
//! server's own, in order.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use bertd::api::proto::bert::v1 as pb;
use common::grpc::{ClassifierClient, EncoderClient, input};
use common::process::{self, Running, wait_serving};
use common::*;
use serde_json::Value;

/// Streamed inputs per example run: more than one stream message, several batches.
const STREAM_INPUTS: usize = 300;
/// Vectors computed in different batches differ in the last bits (padding changes the sums).
const TOLERANCE: f32 = 1e-5;
/// The texts both examples send in their unary calls.
const UNARY_TEXTS: [&str; 2] = ["A man is eating food.", "A man eats."];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Each input's labels, best first, with their scores.
type Ranked = Vec<Vec<(String, f32)>>;

/// The server's own answers: unary encodes of `texts`, and classification of the unary texts.
fn server_answers(addr: &str, texts: &[String]) -> (Vec<Vec<f32>>, Ranked) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let channel = wait_serving(addr).await;
        let mut encoder = EncoderClient::new(channel.clone());
        let mut vectors = Vec::new();
        for chunk in texts.chunks(64) {
            let request = pb::EncodeRequest {
                id: String::new(),
                inputs: chunk.iter().map(|t| input(t)).collect(),
                options: None,
            };
            let response = encoder.encode(request).await.unwrap().into_inner();
            vectors.extend(response.results.into_iter().map(|r| r.embedding));
        }
        let request = pb::ClassifyRequest {
            id: String::new(),
            inputs: UNARY_TEXTS.iter().map(|t| input(t)).collect(),
            options: None,
        };
        let labels = ClassifierClient::new(channel)
            .classify(request)
            .await
            .unwrap()
            .into_inner()
            .results
            .into_iter()
            .map(|r| r.labels.into_iter().map(|l| (l.label, l.score)).collect())
            .collect();
        (vectors, labels)
    })
}

/// Runs an example against a ready server and checks what it printed.
fn check_example(name: &str, program: &Path, script: &Path) {
    let addr = free_addr();
    let server = Running::spawn(&mut process::serve(&addr, &model_dir("classifier_single")));
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(wait_serving(&addr));
    let out = Command::new(program)
        .arg(script)
        .args([
            "--addr",
            &addr,
            "--stream-inputs",
            &STREAM_INPUTS.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let texts: Vec<String> = printed["stream"]["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts.len(), STREAM_INPUTS, "{name}: the whole corpus");
    let unary: Vec<String> = UNARY_TEXTS.iter().map(|t| t.to_string()).collect();
    let (expected_unary, expected_labels) = server_answers(&addr, &unary);
    let (expected_stream, _) = server_answers(&addr, &texts);

    let vectors =
        |v: &Value| -> Vec<Vec<f32>> { v.as_array().unwrap().iter().map(floats).collect() };
    for (what, got, expected) in [
        ("unary Encode", vectors(&printed["encode"]), expected_unary),
        (
            "EncodeStream",
            vectors(&printed["stream"]["vectors"]),
            expected_stream,
        ),
    ] {
        assert_eq!(
            got.len(),
            expected.len(),
            "{name} {what}: one vector per input"
        );
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            let diff = max_abs_diff(g, e);
            assert!(
                diff <= TOLERANCE,
                "{name} {what}: input {i} differs by {diff}"
            );
        }
    }
    let labels = printed["classify"].as_array().unwrap();
    assert_eq!(labels.len(), expected_labels.len());
    for (got, expected) in labels.iter().zip(&expected_labels) {
        let got: Vec<(String, f32)> = got
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["label"].as_str().unwrap().to_string(),
                    l["score"].as_f64().unwrap() as f32,
                )
            })
            .collect();
        assert_eq!(got.len(), expected.len());
        for ((gl, gs), (el, es)) in got.iter().zip(expected) {
            assert_eq!(gl, el, "{name}: labels ranked as the server ranks them");
            assert!(
                (gs - es).abs() <= TOLERANCE,
                "{name}: {gl} scored {gs}, not {es}"
            );
        }
    }
    server.stop();
}

#[test]
fn the_python_example_client_gets_the_servers_answers_in_order() {
    let python = root().join(".venv/bin/python");
    assert!(python.exists(), "make setup creates .venv with grpcio");
    check_example("python", &python, &root().join("clients/python/example.py"));
}

#[test]
fn the_node_example_client_gets_the_servers_answers_in_order() {
    assert!(
        root()
            .join("clients/node/node_modules/@grpc/grpc-js")
            .exists(),
        "make setup installs the Node example's packages (npm ci in clients/node)"
    );
    check_example(
        "node",
        Path::new("node"),
        &root().join("clients/node/example.js"),
    );
}
