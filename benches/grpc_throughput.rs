//! End to end through gRPC on the default model (all-MiniLM-L6-v2, CPU), against the engine's own
//! forward throughput on the same inputs: how close the scheduler keeps the workers to their
//! limit. Also the latency of one short text on an idle server. Run with `make bench`.
//!
//! The server runs in this process on 127.0.0.1 with its default settings (the client shares the
//! machine's cores with it, as a co-located client would).
//! Options: `--inputs N` (default 2048), `--latency-calls N` (default 200), `--cpu-threads N`
//! (the server's engine.cpu_threads; default: all cores).
//!
//! Last, mixed load: a stream of 512 sentences (16 a message) while one client sends one short
//! text at a time (its latency), then while four clients flood unary calls of 16 sentences, for
//! three values of `batching.stream_share` (how the share divides the server).
use std::time::{Duration, Instant};

use bertd::api::proto::bert::v1 as pb;
use bertd::api::proto::bert::v1::encoder_client::EncoderClient;
use bertd::config::Settings;
use bertd::engine::EngineInput;
use bertd::tokenize::{TextInput, Tokenized};
use tonic::transport::Channel;

mod common;
use common::{LATENCY_TEXT, arg, corpus, default_engine, latency, stream_rate};

/// The engine alone: sentences/s on batches of `batch` inputs sorted by length, as the scheduler
/// would form them, and the p50 and p99 of one forward pass of the short latency text.
fn engine_rate(texts: &[String], batch: usize, calls: usize) -> (f64, Duration, Duration) {
    let (_, tokenizer, engine, task) = default_engine();
    let mut tokens: Vec<Tokenized> = texts
        .iter()
        .map(|t| {
            tokenizer
                .encode(&TextInput::single(t.as_str()), true)
                .unwrap()
        })
        .collect();
    tokens.sort_by_key(Tokenized::len);
    let run = |tokens: &[Tokenized]| {
        for chunk in tokens.chunks(batch) {
            let inputs: Vec<EngineInput> = chunk
                .iter()
                .map(|t| EngineInput {
                    tokens: t,
                    task: &task,
                })
                .collect();
            engine.run(&inputs).unwrap();
        }
    };
    run(&tokens[..batch.min(tokens.len())]); // warm-up
    let start = Instant::now();
    run(&tokens);
    let rate = texts.len() as f64 / start.elapsed().as_secs_f64();
    let short = tokenizer
        .encode(&TextInput::single(LATENCY_TEXT), true)
        .unwrap();
    let mut times: Vec<Duration> = (0..calls)
        .map(|_| {
            let start = Instant::now();
            run(std::slice::from_ref(&short));
            start.elapsed()
        })
        .collect();
    times.sort();
    (rate, times[calls / 2], times[calls * 99 / 100])
}

/// A bulk stream, `flooders_count` unary clients that flood the server and one that measures
/// latency, all at once. Returns the stream's and the flood's inputs/s and the latency client's
/// p50 and p99.
async fn mixed(
    channel: Channel,
    texts: &[String],
    flooders_count: usize,
) -> (f64, f64, Duration, Duration) {
    const PER_CALL: usize = 16;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut flooders = Vec::new();
    for f in 0..flooders_count {
        let (channel, stop) = (channel.clone(), stop.clone());
        let texts: Vec<String> = texts.to_vec();
        flooders.push(tokio::spawn(async move {
            let mut client = EncoderClient::new(channel);
            let mut inputs = 0;
            let mut i = f * 997;
            while !stop.is_cancelled() {
                let request = pb::EncodeRequest {
                    id: i.to_string(),
                    inputs: (0..PER_CALL)
                        .map(|k| pb::TextInput {
                            text: texts[(i + k) % texts.len()].clone(),
                            text_pair: None,
                        })
                        .collect(),
                    options: None,
                };
                client.encode(request).await.unwrap();
                inputs += PER_CALL;
                i += PER_CALL;
            }
            inputs
        }));
    }
    let latency_client = tokio::spawn({
        let (channel, stop) = (channel.clone(), stop.clone());
        async move {
            let mut client = EncoderClient::new(channel);
            let mut times = Vec::new();
            while !stop.is_cancelled() {
                let request = pb::EncodeRequest {
                    id: "latency".into(),
                    inputs: vec![pb::TextInput {
                        text: LATENCY_TEXT.into(),
                        text_pair: None,
                    }],
                    options: None,
                };
                let start = Instant::now();
                client.encode(request).await.unwrap();
                times.push(start.elapsed());
            }
            times.sort();
            (times[times.len() / 2], times[times.len() * 99 / 100])
        }
    });
    let start = Instant::now();
    let stream_rate = stream_rate(channel, texts, PER_CALL).await;
    let elapsed = start.elapsed().as_secs_f64();
    stop.cancel();
    let mut flooded = 0;
    for flooder in flooders {
        flooded += flooder.await.unwrap();
    }
    let (p50, p99) = latency_client.await.unwrap();
    (stream_rate, flooded as f64 / elapsed, p50, p99)
}

async fn start_server(delay_ms: u64) -> (bertd::server::ServerHandle, Channel) {
    start_with(delay_ms, Settings::default().batching.stream_share).await
}

async fn start_with(delay_ms: u64, stream_share: f64) -> (bertd::server::ServerHandle, Channel) {
    let mut settings = Settings::default();
    settings.server.addr = "127.0.0.1:0".parse().unwrap();
    settings.batching.max_batch_delay_ms = delay_ms;
    settings.batching.stream_share = stream_share;
    if let Some(threads) = arg("--cpu-threads") {
        settings.engine.cpu_threads = threads;
    }
    let mut server = bertd::server::start(settings).await.unwrap();
    server.ready().await.unwrap();
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (server, channel)
}

fn main() {
    let n: usize = arg("--inputs").unwrap_or(2048);
    let calls: usize = arg("--latency-calls").unwrap_or(200);
    let texts = corpus(n);
    let batch = Settings::default().max_batch_size();
    println!("{n} sentences (arrival order for gRPC; sorted batches of {batch} for the engine)");
    let (engine, engine_p50, engine_p99) = engine_rate(&texts, batch, calls);
    println!("| path | sentences/s | of engine |");
    println!("|---|---|---|");
    println!("| engine forward, sorted batches of {batch} | {engine:.0} | 100% |");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (mut server, channel) =
            start_server(Settings::default().batching.max_batch_delay_ms).await;
        for per_request in [1, 16] {
            let rate = stream_rate(channel.clone(), &texts, per_request).await;
            println!(
                "| EncodeStream, {per_request} input(s) per message | {rate:.0} | {:.0}% |",
                100.0 * rate / engine
            );
        }
        let (p50, p99) = latency(channel.clone(), calls).await;
        println!();
        println!("| idle server, one short text, unary Encode | p50 | p99 |");
        println!("|---|---|---|");
        println!(
            "| engine forward alone (no gRPC, no queue) | {:.2} ms | {:.2} ms |",
            engine_p50.as_secs_f64() * 1e3,
            engine_p99.as_secs_f64() * 1e3
        );
        println!(
            "| max_batch_delay_ms = 0 (default) | {:.2} ms | {:.2} ms |",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
        server.shutdown();
        server.wait().await.unwrap();

        let (mut server, channel) = start_server(2).await;
        let (p50, p99) = latency(channel, calls).await;
        println!(
            "| max_batch_delay_ms = 2 | {:.2} ms | {:.2} ms |",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
        server.shutdown();
        server.wait().await.unwrap();

        let bulk = &texts[..texts.len().min(512)];
        println!();
        println!("| a bulk stream and one interactive client | stream inputs/s | short unary call p50 | p99 |");
        println!("|---|---|---|---|");
        let (mut server, channel) = start_server(0).await;
        let (stream, _, p50, p99) = mixed(channel, bulk, 0).await;
        println!(
            "| default settings | {stream:.0} | {:.2} ms | {:.2} ms |",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
        server.shutdown();
        server.wait().await.unwrap();

        println!();
        println!("| a bulk stream under a flood of 4 unary clients: stream_share | stream inputs/s | unary flood inputs/s |");
        println!("|---|---|---|");
        for share in [0.1, 0.25, 0.5] {
            let (mut server, channel) = start_with(0, share).await;
            let (stream, flood, _, _) = mixed(channel, bulk, 4).await;
            println!("| {share} | {stream:.0} | {flood:.0} |");
            server.shutdown();
            server.wait().await.unwrap();
        }
    });
}
