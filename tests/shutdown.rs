//! Shutdown within its bound, against the real server on loopback: open streams stop being
//! read, answer what they admitted and end naming where to resume; health Watch streams end;
//! queued work past the drain timeout fails with UNAVAILABLE; a shutdown during start-up ends
//! the server at once; a second signal to the binary exits at once.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel as std_channel};
use std::time::{Duration, Instant};

use bertd::api::proto::bert::v1 as pb;
use bertd::batch::pool::LoadReplica;
use bertd::engine::replica::ReplicaPlan;
use bertd::server::{Replicas, start_with};
use common::grpc::*;
use common::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_ends_open_streams_and_health_watches_long_before_its_timeout() {
    const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
    const ANSWERED_BEFORE: usize = 100;
    let mut s = settings(&model_dir("bert_tiny"));
    s.server.shutdown_timeout_ms = DRAIN_TIMEOUT.as_millis() as u64;
    let mut server = serve(s).await;
    let channel = channel(&server).await;
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

    // A bulk stream whose client would go on sending for ever.
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        for i in 0.. {
            let request = encode_request(i.to_string(), vec![input("bulk")], pb::Pooling::Mean);
            if tx.send(request).await.is_err() {
                return;
            }
        }
    });
    let mut responses = EncoderClient::new(channel.clone())
        .encode_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut answered = Vec::new();
    while answered.len() < ANSWERED_BEFORE {
        answered.push(responses.message().await.unwrap().unwrap().id);
    }

    let drain_started = Instant::now();
    server.shutdown();
    let end = loop {
        match tokio::time::timeout(PATIENCE, responses.message())
            .await
            .unwrap()
        {
            Ok(Some(response)) => {
                assert!(response.error.is_none(), "{:?}", response.error);
                answered.push(response.id);
            }
            Ok(None) => panic!("the stream ends with a status naming where to resume"),
            Err(status) => break status,
        }
    };
    // Every admitted request was answered, in order, and the status names the last one.
    let expected: Vec<String> = (0..answered.len()).map(|i| i.to_string()).collect();
    assert_eq!(answered, expected);
    let last = answered.last().unwrap();
    // Known race (noted on issue 6): a client still writing when the drained connection closes
    // can see the pipe break before it reads the final status.
    if end.code() == Code::Unknown && format!("{end:?}").contains("BrokenPipe") {
        return;
    }
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    assert!(
        end.message().contains(&format!("up to id \"{last}\"")),
        "{}",
        end.message()
    );
    let resume = end
        .metadata()
        .get_bin("bertd-resume-after-bin")
        .expect("the resume trailer")
        .to_bytes()
        .unwrap();
    assert_eq!(&resume[..], last.as_bytes());

    // The health Watch ends too, its last word NOT_SERVING.
    let mut last_health = None;
    while let Some(update) = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .unwrap()
        .unwrap()
    {
        last_health = Some(update.status);
    }
    assert_eq!(last_health, Some(ServingStatus::NotServing as i32));

    tokio::time::timeout(PATIENCE, server.wait())
        .await
        .unwrap()
        .expect("a clean drain");
    assert!(
        drain_started.elapsed() < DRAIN_TIMEOUT,
        "drained in {:?}, not cut at the timeout",
        drain_started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_work_still_waiting_when_the_drain_times_out_fails_with_unavailable() {
    let mut s = settings(&model_dir("bert_tiny"));
    s.batching.max_batch_delay_ms = 60_000; // the input would wait for company far too long
    s.batching.max_batch_size = Some(1_000);
    s.server.shutdown_timeout_ms = 300;
    let mut server = serve(s).await;
    let channel = channel(&server).await;
    let call = tokio::spawn({
        let channel = channel.clone();
        async move {
            EncoderClient::new(channel)
                .encode(encode_request("late", vec![input("x")], pb::Pooling::Mean))
                .await
        }
    });
    let started = Instant::now();
    while stats(&channel).await.inputs_queued == 0 {
        assert!(started.elapsed() < PATIENCE, "the call is queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.shutdown();
    let status = tokio::time::timeout(PATIENCE, call)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
    tokio::time::timeout(PATIENCE, server.wait())
        .await
        .unwrap()
        .unwrap();
}

/// Replicas whose loading never ends until the test lets it (or gives up).
fn never_loading(release: Receiver<()>) -> Replicas {
    let release = Arc::new(std::sync::Mutex::new(release));
    Box::new(move |_: ReplicaPlan| -> LoadReplica {
        Arc::new(move |_| {
            let _ = release.lock().unwrap().recv_timeout(PATIENCE);
            Err("released".to_string())
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_during_start_up_ends_the_server_at_once() {
    let (release, released) = std_channel();
    let mut server = start_with(settings(&model_dir("bert_tiny")), never_loading(released))
        .await
        .unwrap();
    let stopping = Instant::now();
    server.shutdown();
    tokio::time::timeout(PATIENCE, server.wait())
        .await
        .unwrap()
        .expect("stopped cleanly");
    assert!(
        stopping.elapsed() < PATIENCE / 2,
        "did not wait for the workers to load"
    );
    let _ = release.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_reports_a_stop_during_start_up_as_such() {
    let (release, released) = std_channel();
    let mut server = start_with(settings(&model_dir("bert_tiny")), never_loading(released))
        .await
        .unwrap();
    server.shutdown();
    let err = server.ready().await.unwrap_err();
    assert!(
        matches!(err, bertd::server::ServeError::StoppedBeforeReady),
        "{err}"
    );
    let _ = release.send(());
}

/// Lines the child writes to stderr, as they come.
fn stderr_lines(child: &mut std::process::Child) -> Receiver<String> {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn wait_for_line(lines: &Receiver<String>, needle: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no line with {needle:?}"));
        if line.contains(needle) {
            return;
        }
    }
}

#[test]
fn a_second_signal_ends_a_slow_drain_at_once_with_a_failure() {
    let addr = free_addr();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bertd"))
        .env_clear()
        .args(["serve", "--addr", &addr, "--model"])
        .arg(model_dir("bert_tiny"))
        // A queued call that waits a minute for company keeps the drain busy for its timeout.
        .env("BERTD_BATCHING__MAX_BATCH_DELAY_MS", "60000")
        .env("BERTD_BATCHING__MAX_BATCH_SIZE", "1000")
        .env("BERTD_SERVER__SHUTDOWN_TIMEOUT_MS", "60000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = stderr_lines(&mut child);
    wait_for_line(&lines, "serving");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // The call stays queued (and its connection open) until the server exits.
    let (_call, _channel) = runtime.block_on(async {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let call = tokio::spawn({
            let channel = channel.clone();
            async move {
                EncoderClient::new(channel)
                    .encode(encode_request("slow", vec![input("x")], pb::Pooling::Mean))
                    .await
            }
        });
        let started = Instant::now();
        while stats(&channel).await.inputs_queued == 0 {
            assert!(started.elapsed() < PATIENCE, "the call is queued");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (call.abort_handle(), channel)
    });
    let kill = |signal: &str| {
        let sent = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    kill("-TERM");
    wait_for_line(&lines, "shutting down");
    let second = Instant::now();
    kill("-INT");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(second.elapsed() < PATIENCE, "exits after the second signal");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "a cut drain is not a clean exit");
    assert!(
        second.elapsed() < Duration::from_secs(10),
        "exited at once, not after the 60 s drain"
    );
}
