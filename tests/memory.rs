//! Memory bounded in bytes, measured on the real binary from /proc: clients that send and never
//! read cannot grow the server past what its byte budgets allow.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bertd::api::proto::bert::v1 as pb;
use common::free_addr;
use common::grpc::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const PATIENCE: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;

/// The budgets under test: small, so that a breach shows.
const STREAM_WINDOW_BYTES: u64 = 4 * MIB;
const STREAM_INFLIGHT_BYTES: u64 = 16 * MIB;
/// What a stream has handed to the transport and no longer counts: the response tonic is
/// encoding and HTTP/2's send buffer, about two 400 KB responses here.
const HANDED_OVER_PER_STREAM: u64 = MIB;
/// What the allocator keeps of freed memory (per-thread arenas), and libtorch's buffers for the
/// largest batch, measured at 40-60 MiB on the development machine.
const SLACK: u64 = 96 * MIB;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real binary on the default model (384 dimensions: large token embeddings).
fn start() -> (Server, String) {
    let addr = free_addr();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bertd"))
        .env_clear()
        // Batches of at most 16 inputs: the warm-up reaches the largest batch shape, so libtorch's
        // buffers for it are part of the baseline.
        .args([
            "serve",
            "--addr",
            &addr,
            "--cpu-threads",
            "2",
            "--max-batch-size",
            "16",
        ])
        .env(
            "BERTD_BATCHING__STREAM_WINDOW_BYTES",
            STREAM_WINDOW_BYTES.to_string(),
        )
        .env(
            "BERTD_LIMITS__STREAM_INFLIGHT_BYTES",
            STREAM_INFLIGHT_BYTES.to_string(),
        )
        // A fixed mmap threshold: glibc then returns every freed large block (messages,
        // activations) to the system at once, so resident memory measures what is live rather
        // than what the allocator keeps for later.
        .env("MALLOC_MMAP_THRESHOLD_", "65536")
        // MKL keeps per-thread buffers for later products unless told not to.
        .env("MKL_DISABLE_FAST_MM", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut lines = stderr.lines();
    let started = Instant::now();
    loop {
        let line = lines.next().expect("the server logs").unwrap();
        if line.contains("serving") {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "the server starts");
    }
    // Keep draining stderr so the server never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    (Server(child), addr)
}

async fn connect(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A text of about 250 words: 256 tokens once truncated.
fn long_text() -> String {
    "the quick brown fox jumps over the lazy dog ".repeat(28)
}

fn tokens_request(id: usize) -> pb::EncodeRequest {
    encode_request(
        id.to_string(),
        vec![input(&long_text())],
        pb::Pooling::Tokens,
    )
}

/// Waits until the server computes nothing more (every window is full), or gives up.
async fn until_computing_stops(observer: &Channel) -> u64 {
    let started = Instant::now();
    let mut last = stats(observer).await.inputs_computed;
    loop {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let now = stats(observer).await.inputs_computed;
        if now == last || started.elapsed() > PATIENCE {
            return now;
        }
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_hold_no_more_than_the_stream_budgets() {
    const STREAMS: u64 = 8;
    let (server, addr) = start();
    let pid = server.0.id();
    let observer = connect(&addr).await;

    // Warm up with the same shapes, read in full, so caches are part of the baseline.
    let warm: Vec<pb::EncodeRequest> = (0..64).map(tokens_request).collect();
    let mut read = EncoderClient::new(connect(&addr).await)
        .encode_stream(tokio_stream::iter(warm))
        .await
        .unwrap()
        .into_inner();
    while read.message().await.unwrap().is_some() {}
    let baseline = resident_bytes(pid);

    // Streams over two connections that send token-embedding requests and never read.
    let connections = [connect(&addr).await, connect(&addr).await];
    let mut unread = Vec::new();
    let mut feeders = Vec::new();
    for s in 0..STREAMS as usize {
        let (tx, rx) = mpsc::channel(1);
        feeders.push(tokio::spawn(async move {
            for i in 0..100_000 {
                if tx.send(tokens_request(i)).await.is_err() {
                    return;
                }
            }
        }));
        let responses = EncoderClient::new(connections[s % 2].clone())
            .encode_stream(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        unread.push(responses);
    }
    let computed = until_computing_stops(&observer).await;
    let grown = resident_bytes(pid).saturating_sub(baseline);
    let bound = STREAM_INFLIGHT_BYTES + STREAMS * HANDED_OVER_PER_STREAM + SLACK;
    println!(
        "{STREAMS} unread streams: {computed} inputs computed, resident memory grew {} MiB (bound {} MiB)",
        grown / MIB,
        bound / MIB
    );
    assert!(
        computed > 32,
        "the streams were served until their windows filled"
    );
    assert!(
        grown <= bound,
        "grew {grown} bytes, more than {bound}: the budgets do not hold"
    );
    assert!(
        feeders.iter().all(|f| !f.is_finished()),
        "the server stopped reading the streams"
    );

    drop(unread);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_messages_with_huge_ids_hold_only_the_echoed_part() {
    let (server, addr) = start();
    let pid = server.0.id();
    let warm = EncoderClient::new(connect(&addr).await)
        .encode(tokens_request(0))
        .await;
    assert!(warm.is_ok());
    let baseline = resident_bytes(pid);
    // Large ids in unread messages: refused, and echoed only up to the id limit.
    let (tx, rx) = mpsc::channel(1);
    let big_ids = tokio::spawn(async move {
        for i in 0..64 {
            let id = format!("{i:03}").repeat(1 << 20); // 3 MiB
            let request = encode_request(id, vec![input("x")], pb::Pooling::Mean);
            if tx.send(request).await.is_err() {
                return;
            }
        }
    });
    let _unread_ids = EncoderClient::new(connect(&addr).await)
        .encode_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(PATIENCE, big_ids)
        .await
        .unwrap()
        .unwrap();
    let grown = resident_bytes(pid).saturating_sub(baseline);
    println!(
        "64 unread messages with 3 MiB ids: resident memory grew {} MiB",
        grown / MIB
    );
    // Each message is read, refused and dropped; its response echoes 256 bytes of the id.
    assert!(grown <= SLACK, "grew {grown} bytes with big ids");
}
