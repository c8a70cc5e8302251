//! A Python client (grpcio, stubs generated from proto/ in the test) encodes, classifies, streams,
//! tokenizes and checks health against the real `bertd serve`, and its OpenTelemetry trace
//! continues in the server's spans, received by a real OTLP receiver in this process.
mod common;

use std::path::Path;
use std::process::Command;

use common::otlp::{Receiver, hex};
use common::process::{self, Running};
use common::*;

#[test]
fn a_python_client_generated_from_the_proto_works_and_its_trace_continues() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    assert!(python.exists(), "make setup installs grpcio into .venv");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (receiver, collector) = runtime.block_on(Receiver::start());
    let addr = free_addr();
    let server = Running::spawn(process::serve(&addr, &model_dir("classifier_single")).env(
        "BERTD_TELEMETRY__OTLP_ENDPOINT",
        format!("http://{collector}"),
    ));
    // The client waits until the server reports SERVING.
    let out = Command::new(&python)
        .arg(root.join("tests/python/client_test.py"))
        .args(["--addr", &addr])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("9 passed, 0 failed"), "{stdout}");
    server.stop();

    let (trace, parent) = stdout
        .lines()
        .find_map(|l| l.strip_prefix("TRACE "))
        .and_then(|ids| ids.split_once(' '))
        .unwrap_or_else(|| panic!("the client printed its trace: {stdout}"));
    let continued: Vec<_> = receiver
        .spans()
        .into_iter()
        .filter(|r| hex(&r.span.trace_id) == trace && hex(&r.span.parent_span_id) == parent)
        .collect();
    assert_eq!(continued.len(), 1, "one server span continues the client's");
    assert_eq!(continued[0].span.name, "bert.v1.Encoder/Encode");
}

/// The key the Python client sends.
const PYTHON_KEY: &str = "python-client-key-0c8e5a1f7b";

#[test]
fn a_python_client_works_over_tls_with_an_api_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ca = common::tls::Ca::new("bertd test CA");
    let (cert, key) = ca.server_cert();
    let keys = format!("python {PYTHON_KEY}\n");
    let secret =
        common::tls::SecretDir::new(&[("tls.crt", &cert), ("tls.key", &key), ("keys", &keys)]);
    let ca_file = secret.path("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let addr = free_addr();
    let server = Running::spawn(process::secured(
        &mut process::serve(&addr, &model_dir("classifier_single")),
        &secret.path("tls.crt"),
        &secret.path("tls.key"),
        &secret.path("keys"),
    ));
    let out = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("tests/python/client_test.py"))
        .args(["--addr", &addr, "--api-key", PYTHON_KEY])
        .arg("--ca")
        .arg(&ca_file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("10 passed, 0 failed"), "{stdout}");
    server.stop();
}
