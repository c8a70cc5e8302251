//! The real `bertd serve` as a child process: waiting until it serves, and stopping it with
//! SIGTERM within a bound. Shared by the tests and the benchmarks (which include this file).
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long a server may take to load its model and report SERVING.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a server may take to drain and exit after SIGTERM.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

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
