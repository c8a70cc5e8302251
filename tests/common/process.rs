//! The real `bertd serve` as a child process: waiting until it serves, and stopping it with
//! SIGTERM within a bound. Shared by the tests and the benchmarks (which include this file).
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long a server may take to load its model and report SERVING.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a server may take to drain and exit after SIGTERM.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// `bertd serve` of `model` on `addr`, with a clean environment (no stray `BERTD_*` setting) and
/// its output discarded; callers add flags, variables or pipes before spawning it.
pub fn serve(addr: &str, model: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bertd"));
    command
        .args(["serve", "--addr", addr, "--model"])
        .arg(model)
        .env_clear()
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// The flags of a server that takes TLS with `cert` and `key` and the API keys in `api_keys`.
#[allow(dead_code)] // The tests' (the benchmarks serve in plain text).
pub fn secured<'a>(
    command: &'a mut Command,
    cert: &Path,
    key: &Path,
    api_keys: &Path,
) -> &'a mut Command {
    command
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .arg("--api-keys-file")
        .arg(api_keys)
}

/// A channel to the server at `addr` once its health says SERVING, within `START_TIMEOUT`.
pub async fn wait_serving(addr: &str) -> Channel {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(channel) = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            let status = HealthClient::new(channel.clone())
                .check(HealthCheckRequest::default())
                .await;
            if status.is_ok_and(|s| s.into_inner().status == ServingStatus::Serving as i32) {
                return channel;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the server at {addr} became SERVING within {START_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends SIGTERM and waits, at most `EXIT_TIMEOUT`, for the exit.
pub fn terminate(child: &mut Child) -> ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -TERM {}", child.id());
    let started = Instant::now();
    loop {
        if let Some(exit) = child.try_wait().unwrap() {
            return exit;
        }
        assert!(
            started.elapsed() < EXIT_TIMEOUT,
            "exits within {EXIT_TIMEOUT:?} after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process (a server) that is killed if the test ends without stopping it.
pub struct Running(Option<Child>);

impl Running {
    pub fn spawn(command: &mut Command) -> Running {
        let program = command.get_program().to_string_lossy().into_owned();
        Running(Some(
            command
                .spawn()
                .unwrap_or_else(|e| panic!("{program} starts: {e}")),
        ))
    }

    /// SIGKILL: the process dies mid-work, as on a crash or a lost node.
    #[allow(dead_code)] // The tests' (the benchmarks only stop servers).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM and the exit, within `EXIT_TIMEOUT`.
    pub fn stop(mut self) -> ExitStatus {
        terminate(self.0.as_mut().expect("running"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
