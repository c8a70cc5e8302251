//! The server's life: configuration layers and refusals, health from start to graceful stop,
//! SIGTERM on the real binary.
mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use bertd::api::proto::bert::v1 as pb;
use bertd::config::{Settings, default_model_dir};
use common::grpc::*;
use common::process;
use common::scrape::get;
use common::*;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// HTTP statuses of the metrics port's `/health`.
const OK: u16 = 200;
const SERVICE_UNAVAILABLE: u16 = 503;

async fn health(channel: &Channel, service: &str) -> ServingStatus {
    let response = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(response.status).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_serving_only_after_the_workers_have_warmed_up() {
    // The real model: loading and warming it up takes long enough to look at the server before.
    let mut s = settings(&default_model_dir());
    s.telemetry.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    let mut server = bertd::server::start(s).await.unwrap();
    let channel = channel(&server).await;
    let metrics = server.metrics_addr.expect("a metrics endpoint");
    assert_eq!(health(&channel, "").await, ServingStatus::NotServing);
    assert_eq!(
        get(metrics, "/health").await.0,
        SERVICE_UNAVAILABLE,
        "/health follows gRPC health"
    );
    assert_eq!(
        health(&channel, "bert.v1.Encoder").await,
        ServingStatus::NotServing
    );
    server.ready().await.unwrap();
    assert_eq!(health(&channel, "").await, ServingStatus::Serving);
    assert_eq!(
        get(metrics, "/health").await,
        (OK, "text/plain".into(), "SERVING\n".into())
    );
    assert_eq!(
        health(&channel, "bert.v1.Encoder").await,
        ServingStatus::Serving
    );
    assert_eq!(
        health(&channel, "bert.v1.Tokenizer").await,
        ServingStatus::Serving
    );
    // all-MiniLM-L6-v2 has no classification head.
    assert_eq!(
        health(&channel, "bert.v1.Classifier").await,
        ServingStatus::NotServing
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_turns_health_not_serving_refuses_new_calls_and_drains_in_flight_ones() {
    let mut s = settings(&model_dir("bert_tiny"));
    s.batching.max_batch_delay_ms = 800; // keeps the call in flight while we shut down
    s.batching.max_batch_size = Some(1_000);
    s.server.shutdown_timeout_ms = 3_000;
    s.telemetry.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    let mut server = serve(s).await;
    let channel = channel(&server).await;
    let metrics = server.metrics_addr.expect("a metrics endpoint");
    assert_eq!(get(metrics, "/health").await.0, OK);
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );

    let in_flight = tokio::spawn({
        let channel = channel.clone();
        async move {
            EncoderClient::new(channel)
                .encode(pb::EncodeRequest {
                    id: "in-flight".into(),
                    inputs: vec![input("drain me")],
                    options: None,
                })
                .await
        }
    });
    while stats(&channel).await.inputs_queued == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let addr = server.addr;
    server.shutdown();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
    assert_eq!(
        get(metrics, "/health").await.0,
        SERVICE_UNAVAILABLE,
        "/health turns 503 with gRPC health, while the server drains"
    );
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight call completes");
    assert_eq!(response.into_inner().results[0].embedding.len(), 32);
    let fresh = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(fresh) = fresh {
        let refused = EncoderClient::new(fresh)
            .encode(pb::EncodeRequest {
                id: "late".into(),
                inputs: vec![input("x")],
                options: None,
            })
            .await;
        assert!(refused.is_err(), "a call after shutdown is refused");
    }
    let stopped = tokio::time::timeout(Duration::from_secs(10), server.wait()).await;
    stopped
        .expect("stops within the drain timeout")
        .expect("stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_fails_when_one_maximum_input_cannot_fit_the_batch_budget() {
    let mut s = settings(&model_dir("bert_tiny"));
    s.batching.max_batch_tokens = Some(16); // the model takes 48 tokens
    let err = bertd::server::start(s)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.starts_with(
            "batching.max_batch_tokens: 16 is smaller than the maximum input length (48"
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_fails_when_a_worker_cannot_start_and_never_serves() {
    if tch::Cuda::device_count() > 0 {
        return; // this machine has a GPU: cuda:0 would start
    }
    let mut s = settings(&model_dir("bert_tiny"));
    s.engine.devices = vec!["cuda:0".parse().unwrap()];
    let mut server = bertd::server::start(s).await.unwrap();
    let err = server.ready().await.expect_err("not ready").to_string();
    assert!(
        err.contains("cuda:0") && err.contains("CUDA is not available"),
        "{err}"
    );
}

fn bertd() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bertd"));
    command.env_clear();
    command
}

#[test]
fn configuration_layers_defaults_file_environment_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bertd.toml");
    std::fs::write(
        &file,
        "[batching]\nmax_batch_size = 5\nqueue_capacity = 999\nmax_batch_tokens = 777\n",
    )
    .unwrap();
    let out = bertd()
        .args([
            "config",
            "--config",
            file.to_str().unwrap(),
            "--max-batch-tokens",
            "555",
        ])
        .env("BERTD_BATCHING__MAX_BATCH_SIZE", "7")
        .env("BERTD_BATCHING__MAX_BATCH_TOKENS", "666")
        .env("BERTD_ENGINE__DEVICES", "cpu,cpu")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Settings = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(printed.batching.queue_capacity, 999, "file over defaults");
    assert_eq!(
        printed.batching.max_batch_size,
        Some(7),
        "environment over file"
    );
    assert_eq!(
        printed.batching.max_batch_tokens,
        Some(555),
        "flag over environment"
    );
    let devices: Vec<String> = printed
        .engine
        .devices
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert_eq!(devices, ["cpu", "cpu"]);
    assert_eq!(
        printed.batching.stream_window,
        Settings::default().batching.stream_window
    );

    let yaml = dir.path().join("bertd.yaml");
    std::fs::write(&yaml, "server:\n  addr: 127.0.0.1:6000\n").unwrap();
    let out = bertd()
        .args(["config", "--config", yaml.to_str().unwrap()])
        .output()
        .unwrap();
    let printed: Settings = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(printed.server.addr.to_string(), "127.0.0.1:6000");
}

#[test]
fn the_example_config_file_is_valid_and_holds_the_defaults() {
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/bertd.example.toml");
    let out = bertd()
        .args(["config", "--config", example.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Settings = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    // `bertd config` prints the batch limits, forward cost and workers the devices chose.
    let mut expected = Settings::default();
    expected.engine.workers_per_device = Some(expected.engine.workers_per_device());
    expected.batching.max_batch_size = Some(expected.max_batch_size());
    expected.batching.max_batch_tokens = Some(expected.max_batch_tokens());
    expected.batching.forward_cost_tokens = Some(expected.forward_cost_tokens());
    assert_eq!(printed, expected);
}

#[test]
fn invalid_configuration_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[limits]\nmax_input_tokens = 600\n[batching]\nmax_batch_tokens = 512\n",
            "limits.max_input_tokens: 600 is larger than batching.max_batch_tokens (512)",
        ),
        ("[batching]\nmax_batch_sizee = 3\n", "max_batch_sizee"),
        ("[engine]\ndtype = \"fp8\"\n", "engine.dtype"),
        (
            "[engine]\ncuda_streams = \"per-worker\"\n",
            "engine.cuda_streams: cuda streams per-worker needs a CUDA device, and the devices are cpu",
        ),
    ];
    for (text, expected) in cases {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, text).unwrap();
        let out = bertd()
            .args(["serve", "--config", file.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{stderr} lacks {expected}");
    }
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let addr = free_addr();
    let mut child = process::serve(&addr, &model_dir("bert_tiny"))
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(process::wait_serving(&addr));
    let status = process::terminate(&mut child);
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "exit status {status}: {stderr}");
    assert!(stderr.contains("stopped"), "{stderr}");
    let _ = std::io::stderr().flush();
}
