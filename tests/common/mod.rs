//! Shared by the integration tests: fixture paths, references, loading an engine.
#![allow(dead_code, unused_imports)]
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use tch::{Device, Kind};

use bertd::engine::{DenseKernel, DeviceSpec, Engine};
use bertd::model::{LinearKernel, Model, ModelSpec};
use bertd::tokenize::BertTokenizer;

pub mod otlp;
pub mod process;
pub mod scrape;
pub mod sentences;
pub mod tls;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

pub fn references(name: &str) -> Vec<Value> {
    let path = fixtures().join("references").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The dense kernel a server picks on this CPU by default (oneDNN where libtorch has it).
pub fn cpu_kernel() -> LinearKernel {
    DenseKernel::Auto.resolve(DeviceSpec(Device::Cpu)).unwrap()
}

/// Both dense kernels this CPU can run, the default first: parity holds for each.
pub fn cpu_kernels() -> Vec<LinearKernel> {
    let mut kernels = vec![cpu_kernel()];
    if !kernels.contains(&LinearKernel::Aten) {
        kernels.push(LinearKernel::Aten);
    }
    kernels
}

/// fp32 on the CPU with the default dense kernel.
pub fn load(dir: &Path) -> (BertTokenizer, Engine) {
    load_with(dir, cpu_kernel())
}

pub fn load_with(dir: &Path, kernel: LinearKernel) -> (BertTokenizer, Engine) {
    let spec = Arc::new(ModelSpec::load(dir).unwrap());
    let tokenizer = BertTokenizer::load(&spec).unwrap();
    let model = Model::load(spec, Device::Cpu, Kind::Float, kernel).unwrap();
    (tokenizer, Engine::new(model))
}

pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

pub fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

/// Row-major floats of a nested array ([[...], ...]).
pub fn flat_floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().flat_map(floats).collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn assert_close(what: &str, actual: &[f32], expected: &[f32]) {
    let diff = max_abs_diff(actual, expected);
    assert!(diff <= 1e-5, "{what}: max abs difference {diff} > 1e-5");
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Runs `command` to its end and fails the test, with what it printed, unless it succeeded.
pub fn succeed(command: &mut std::process::Command) -> std::process::Output {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A loopback address with a port free now, for a server started as a child process.
pub fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// A writable copy of a fixture model, for tests that damage it.
pub fn copy_model(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&model_dir(name), dir.path());
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

pub mod grpc {
    //! Starting the real server in-process on an ephemeral loopback port, and clients for it.
    use std::path::Path;

    use bertd::api::proto::bert::v1 as pb;
    use bertd::config::Settings;
    use bertd::server::{Replicas, ServerHandle, start, start_with};
    use tonic::transport::Channel;

    pub use pb::classifier_client::ClassifierClient;
    pub use pb::encoder_client::EncoderClient;
    pub use pb::model_client::ModelClient;
    pub use pb::tokenizer_client::TokenizerClient;

    pub fn settings(model: &Path) -> Settings {
        let mut s = Settings::default();
        s.server.addr = "127.0.0.1:0".parse().unwrap();
        s.model.dir = model.to_path_buf();
        s.engine.cpu_threads = 1;
        s.server.shutdown_timeout_ms = 2_000;
        s
    }

    /// A server on `settings` whose workers get their replicas from `replicas`, ready.
    pub async fn serve_with(settings: Settings, replicas: Replicas) -> ServerHandle {
        let mut server = start_with(settings, replicas).await.expect("server starts");
        server.ready().await.expect("workers start");
        server
    }

    /// A server on `settings`, ready (SERVING).
    pub async fn serve(settings: Settings) -> ServerHandle {
        let mut server = start(settings).await.expect("server starts");
        server.ready().await.expect("workers start");
        server
    }

    pub async fn channel(server: &ServerHandle) -> Channel {
        Channel::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
            .expect("connects")
    }

    pub fn input(text: &str) -> pb::TextInput {
        pb::TextInput {
            text: text.into(),
            text_pair: None,
        }
    }

    pub fn encode_request(
        id: impl Into<String>,
        inputs: Vec<pb::TextInput>,
        pooling: pb::Pooling,
    ) -> pb::EncodeRequest {
        pb::EncodeRequest {
            id: id.into(),
            inputs,
            options: Some(pb::EncodeOptions {
                pooling: pooling as i32,
                ..Default::default()
            }),
        }
    }

    /// The server's resident memory in bytes, from /proc (a child process's, or this one's).
    pub fn resident_bytes(pid: u32) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .expect("VmRSS in /proc status");
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in kB");
        kib * 1024
    }

    /// A stream whose first request has been answered and whose client has not finished
    /// sending, so the call stays open; dropping the sender ends it.
    pub async fn open_stream(
        channel: &Channel,
    ) -> (
        tokio::sync::mpsc::Sender<pb::EncodeRequest>,
        tonic::Streaming<pb::EncodeResponse>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(encode_request(
            "first",
            vec![input("one")],
            pb::Pooling::Mean,
        ))
        .await
        .unwrap();
        let mut responses = EncoderClient::new(channel.clone())
            .encode_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(responses.message().await.unwrap().unwrap().id, "first");
        (tx, responses)
    }

    pub async fn stats(channel: &Channel) -> pb::Stats {
        ModelClient::new(channel.clone())
            .get_info(pb::GetInfoRequest {})
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap()
    }
}
