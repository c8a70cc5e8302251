//! A soak test, bounded in time and on loopback only: many concurrent clients mix unary calls
//! and streams, some cancel, some read slowly, some set short deadlines. Every response is
//! checked against the engine's own result for its input; no error is unexpected; resident
//! memory shows no trend; the queue and the byte budgets are empty at the end.
//!
//! `BERTD_SOAK_SECS` sets its length (default 20; `make soak` runs 600).
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bertd::api::proto::bert::v1 as pb;
use bertd::engine::{EmbedOptions, EngineInput, Output, Task};
use bertd::model::Pooling;
use bertd::tokenize::TextInput;
use common::grpc::*;
use common::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

const DEFAULT_SECS: u64 = 20;
const UNARY_CLIENTS: usize = 6;
const STREAM_CLIENTS: usize = 3;
const CANCELLING_CLIENTS: usize = 2;
const SLOW_READERS: usize = 2;
const DEADLINE_CLIENTS: usize = 1;
/// How far a response may be from the engine's result for the same input alone.
const TOLERANCE: f32 = 1e-4;
/// Resident memory may differ this much between the first and the last third of the run.
const MEMORY_DRIFT: u64 = 24 << 20;

/// The texts clients send, and what the engine computes for each alone.
struct Expected {
    texts: Vec<String>,
    embeddings: HashMap<String, Vec<f32>>,
}

fn expected() -> Expected {
    let (tokenizer, engine) = load(&model_dir("bert_tiny"));
    let words = [
        "server", "stream", "batch", "token", "model", "vector", "query", "the", "a", "of",
    ];
    let texts: Vec<String> = (0..64)
        .map(|i| {
            (0..(3 + i % 40))
                .map(|j| words[(i * 7 + j * 3) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let task = Task::Embed(EmbedOptions {
        pooling: Pooling::Mean,
        normalize: false,
        layer: 3,
        dimensions: None,
    });
    let embeddings = texts
        .iter()
        .map(|t| {
            let tokens = tokenizer.encode(&TextInput::single(t), true).unwrap();
            let output = engine
                .run(&[EngineInput {
                    tokens: &tokens,
                    task: &task,
                }])
                .unwrap();
            let Output::Embedding(v) = &output[0] else {
                unreachable!()
            };
            (t.clone(), v.clone())
        })
        .collect();
    Expected { texts, embeddings }
}

/// What every client shares.
#[derive(Clone)]
struct Ctx {
    expected: Arc<Expected>,
    counts: Arc<Counts>,
    stop: CancellationToken,
}

#[derive(Default)]
struct Counts {
    calls: AtomicU64,
    stream_messages: AtomicU64,
    inputs: AtomicU64,
    cancelled_streams: AtomicU64,
    deadline_errors: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// A request of 1 to 8 of the texts, picked by `seed`.
fn request(expected: &Expected, seed: usize) -> pb::EncodeRequest {
    let n = 1 + seed % 8;
    let inputs = (0..n)
        .map(|k| input(&expected.texts[(seed * 31 + k * 17) % expected.texts.len()]))
        .collect();
    encode_request(seed.to_string(), inputs, pb::Pooling::Mean)
}

fn verify(expected: &Expected, request: &pb::EncodeRequest, response: &pb::EncodeResponse) {
    assert_eq!(response.id, request.id);
    assert!(response.error.is_none(), "{:?}", response.error);
    assert_eq!(response.results.len(), request.inputs.len());
    for (input, result) in request.inputs.iter().zip(&response.results) {
        let want = &expected.embeddings[&input.text];
        let diff = max_abs_diff(&result.embedding, want);
        assert!(diff <= TOLERANCE, "{:?}: off by {diff}", input.text);
    }
}

async fn unary_client(channel: Channel, ctx: Ctx, seed: usize) {
    let Ctx {
        expected,
        counts,
        stop,
    } = ctx;
    let mut client = EncoderClient::new(channel);
    let mut i = seed * 1_000_003;
    while !stop.is_cancelled() {
        let request = request(&expected, i);
        let response = client.encode(request.clone()).await.unwrap().into_inner();
        verify(&expected, &request, &response);
        add(&counts.calls, 1);
        add(&counts.inputs, request.inputs.len() as u64);
        i += 1;
    }
}

/// Streams of 200 requests, read in full, one after another.
async fn stream_client(channel: Channel, ctx: Ctx, seed: usize) {
    let Ctx {
        expected,
        counts,
        stop,
    } = ctx;
    let mut round = 0;
    while !stop.is_cancelled() {
        let requests: Vec<pb::EncodeRequest> = (0..200)
            .map(|i| request(&expected, seed * 7_919 + round * 200 + i))
            .collect();
        let mut responses = EncoderClient::new(channel.clone())
            .encode_stream(tokio_stream::iter(requests.clone()))
            .await
            .unwrap()
            .into_inner();
        for request in &requests {
            let response = responses
                .message()
                .await
                .unwrap()
                .expect("one response per request");
            verify(&expected, request, &response);
            add(&counts.stream_messages, 1);
            add(&counts.inputs, request.inputs.len() as u64);
        }
        assert!(responses.message().await.unwrap().is_none());
        add(&counts.calls, 1);
        round += 1;
    }
}

/// Streams that send 100 requests, read 10 responses and leave.
async fn cancelling_client(channel: Channel, ctx: Ctx, seed: usize) {
    let Ctx {
        expected,
        counts,
        stop,
    } = ctx;
    let mut round = 0;
    while !stop.is_cancelled() {
        let requests: Vec<pb::EncodeRequest> = (0..100)
            .map(|i| request(&expected, seed * 104_729 + round * 100 + i))
            .collect();
        let mut responses = EncoderClient::new(channel.clone())
            .encode_stream(tokio_stream::iter(requests.clone()))
            .await
            .unwrap()
            .into_inner();
        for request in &requests[..10] {
            let response = responses.message().await.unwrap().unwrap();
            verify(&expected, request, &response);
        }
        drop(responses);
        add(&counts.cancelled_streams, 1);
        round += 1;
    }
}

/// A stream whose client reads one response every few milliseconds, checking each as it comes
/// (the requests sent and not yet answered wait in a queue, so the client's memory stays flat).
async fn slow_reader(channel: Channel, ctx: Ctx, seed: usize) {
    let Ctx {
        expected,
        counts,
        stop,
    } = ctx;
    let (tx, rx) = mpsc::channel(4);
    let unanswered = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
    let feeder = tokio::spawn({
        let (expected, unanswered) = (expected.clone(), unanswered.clone());
        async move {
            for i in 0.. {
                let request = request(&expected, seed * 15_485_863 + i);
                unanswered.lock().unwrap().push_back(request.clone());
                if tx.send(request).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut responses = EncoderClient::new(channel)
        .encode_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    while !stop.is_cancelled() {
        let response = responses.message().await.unwrap().unwrap();
        let request = unanswered
            .lock()
            .unwrap()
            .pop_front()
            .expect("a request per response");
        verify(&expected, &request, &response);
        add(&counts.stream_messages, 1);
        add(&counts.inputs, request.inputs.len() as u64);
        // The slowness is the point: this client reads at its own pace.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(responses);
    feeder.abort();
}

/// Unary calls of 8 inputs with deadlines of a few milliseconds: some run out, which is expected.
async fn deadline_client(channel: Channel, ctx: Ctx, _seed: usize) {
    let Ctx {
        expected,
        counts,
        stop,
    } = ctx;
    let mut client = EncoderClient::new(channel);
    let mut i = 0usize;
    while !stop.is_cancelled() {
        let body = request(&expected, i * 8 + 7);
        let mut call = tonic::Request::new(body.clone());
        call.set_timeout(Duration::from_millis(2 + (i % 20) as u64));
        match client.encode(call).await {
            Ok(response) => {
                verify(&expected, &body, response.get_ref());
                add(&counts.inputs, body.inputs.len() as u64);
            }
            Err(status) if matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled) => {
                add(&counts.deadline_errors, 1);
            }
            Err(status) => panic!("unexpected {status:?}"),
        }
        add(&counts.calls, 1);
        i += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_mixed_clients_for_a_while_get_exact_results_and_leave_nothing_behind() {
    let secs: u64 = std::env::var("BERTD_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SECS);
    let expected = Arc::new(expected());
    let mut s = settings(&model_dir("bert_tiny"));
    s.engine.cpu_threads = 2;
    let server = serve(s).await;
    let counts = Arc::new(Counts::default());
    let stop = CancellationToken::new();
    let mut clients = Vec::new();
    // Clients spread over a few connections, as real ones are.
    let mut connections = Vec::new();
    for _ in 0..4 {
        // Clients that cancel calls make their own HTTP/2 library reset streams; h2 allows 1,024
        // of those per connection by default (a guard against a hostile server), which a long
        // soak exceeds. The guard is the client's, so these clients lift it.
        let connection = Channel::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .http2_max_local_error_reset_streams(None)
            .connect()
            .await
            .unwrap();
        connections.push(connection);
    }
    let mut next = 0;
    let mut connection = || {
        next += 1;
        connections[next % connections.len()].clone()
    };
    let ctx = Ctx {
        expected: expected.clone(),
        counts: counts.clone(),
        stop: stop.clone(),
    };
    for seed in 0..UNARY_CLIENTS {
        clients.push(tokio::spawn(unary_client(connection(), ctx.clone(), seed)));
    }
    for seed in 0..STREAM_CLIENTS {
        clients.push(tokio::spawn(stream_client(connection(), ctx.clone(), seed)));
    }
    for seed in 0..CANCELLING_CLIENTS {
        clients.push(tokio::spawn(cancelling_client(
            connection(),
            ctx.clone(),
            seed,
        )));
    }
    for seed in 0..SLOW_READERS {
        clients.push(tokio::spawn(slow_reader(connection(), ctx.clone(), seed)));
    }
    for seed in 0..DEADLINE_CLIENTS {
        clients.push(tokio::spawn(deadline_client(
            connection(),
            ctx.clone(),
            seed,
        )));
    }

    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push(resident_bytes(std::process::id()));
        assert!(
            clients.iter().all(|c| !c.is_finished()),
            "a client stopped early (an unexpected error)"
        );
    }
    stop.cancel();
    for client in clients {
        tokio::time::timeout(Duration::from_secs(60), client)
            .await
            .expect("clients end once stopped")
            .expect("no client saw an unexpected error");
    }
    let elapsed = started.elapsed().as_secs_f64();

    // Nothing left behind.
    let observer = channel(&server).await;
    let settled = Instant::now();
    let end = loop {
        let now = stats(&observer).await;
        if now.inputs_queued == 0 && now.bytes_in_flight == 0 {
            break now;
        }
        assert!(
            settled.elapsed() < Duration::from_secs(10),
            "the server settles: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(end.inputs_failed, 0, "{end:?}");

    // No trend in resident memory: the last third is not above the first (after warm-up).
    let third = samples.len() / 3;
    let mean = |s: &[u64]| s.iter().sum::<u64>() / s.len().max(1) as u64;
    let (early, late) = (
        mean(&samples[..third.max(1)]),
        mean(&samples[samples.len() - third.max(1)..]),
    );
    assert!(
        late <= early + MEMORY_DRIFT,
        "resident memory went from {} MiB to {} MiB",
        early >> 20,
        late >> 20
    );

    let c = &counts;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "soak {elapsed:.0} s, {} clients: {:.0} calls/s, {:.0} stream messages/s, {:.0} inputs/s; {} streams cancelled, {} deadlines missed; {} cancelled and {} expired inputs dropped; resident {} -> {} MiB",
        UNARY_CLIENTS + STREAM_CLIENTS + CANCELLING_CLIENTS + SLOW_READERS + DEADLINE_CLIENTS,
        get(&c.calls) as f64 / elapsed,
        get(&c.stream_messages) as f64 / elapsed,
        get(&c.inputs) as f64 / elapsed,
        get(&c.cancelled_streams),
        get(&c.deadline_errors),
        end.inputs_cancelled,
        end.inputs_expired,
        early >> 20,
        late >> 20,
    );
}
