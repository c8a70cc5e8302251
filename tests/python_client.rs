//! A Python client (grpcio, stubs generated from proto/ in the test) encodes, classifies, streams,
//! tokenizes and checks health against the real `bertd serve`.
mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::*;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_python_client_generated_from_the_proto_works() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    assert!(python.exists(), "make setup installs grpcio into .venv");
    let addr = free_addr();
    let _server = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_bertd"))
            .args([
                "serve",
                "--addr",
                &addr,
                "--model",
                model_dir("classifier_single").to_str().unwrap(),
            ])
            .env_clear()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
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
    assert!(stdout.contains("8 passed, 0 failed"), "{stdout}");
}
