//! `bertd bench`: drives a running server with a corpus, as clients would, and reports what they
//! get: inputs/s, real tokens/s, latency percentiles, and from the server its padding ratio
//! (its metrics endpoint) and peak resident memory (its process). A measuring tool, not a test:
//! `bench/compare.sh` runs it beside the Python baselines on the same texts.
//!
//! - `--mode stream`: each of `--concurrency` clients streams its share of the corpus through one
//!   EncodeStream, `--inputs-per-request` a message; a message's latency runs from the moment the
//!   client hands it to gRPC to its response.
//! - `--mode unary`: each client sends its share as Encode calls, one at a time.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use bertd::api::proto::bert::v1 as pb;
use bertd::api::proto::bert::v1::encoder_client::EncoderClient;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Stream,
    Unary,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// The server's URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    server: String,
    /// One input per line (bench/corpus.py writes a realistic one).
    #[arg(long)]
    corpus: PathBuf,
    #[arg(long, value_enum, default_value_t = Mode::Stream)]
    mode: Mode,
    /// Concurrent clients, comma-separated: one run for each.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    concurrency: Vec<usize>,
    /// Inputs per request message.
    #[arg(long, default_value_t = 16)]
    inputs_per_request: usize,
    /// The server's metrics endpoint (HOST:PORT), for its padding ratio.
    #[arg(long)]
    metrics: Option<String>,
    /// The server's process id, for its peak resident memory.
    #[arg(long)]
    pid: Option<u32>,
    /// Also write the results here, as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// How long to wait for the server to accept connections.
    #[arg(long, default_value_t = 120)]
    connect_timeout_s: u64,
}

/// What one run measured.
#[derive(Debug, serde::Serialize)]
struct Run {
    mode: Mode,
    concurrency: usize,
    inputs: usize,
    seconds: f64,
    inputs_per_s: f64,
    tokens_per_s: f64,
    latency_ms_p50: f64,
    latency_ms_p90: f64,
    latency_ms_p99: f64,
    /// Real over padded tokens in the server's batches during the run.
    padding_ratio: Option<f64>,
}

pub fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.corpus)
        .with_context(|| format!("--corpus {}", args.corpus.display()))?;
    let texts: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect();
    if texts.is_empty() {
        bail!("--corpus {}: no lines", args.corpus.display());
    }
    if args.inputs_per_request == 0 || args.concurrency.contains(&0) {
        bail!("--inputs-per-request and --concurrency must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let channel = connect(&args.server, Duration::from_secs(args.connect_timeout_s)).await?;
        let mut runs = Vec::new();
        for &concurrency in &args.concurrency {
            let before = match &args.metrics {
                Some(addr) => Some(padding(addr).await?),
                None => None,
            };
            let run = run(&args, &channel, &texts, concurrency).await?;
            let padding_ratio = match (&args.metrics, before) {
                (Some(addr), Some((real0, padded0))) => {
                    let (real, padded) = padding(addr).await?;
                    (padded > padded0).then(|| (real - real0) / (padded - padded0))
                }
                _ => None,
            };
            let run = Run {
                padding_ratio,
                ..run
            };
            eprintln!(
                "{:?} x{}: {:.1} inputs/s, {:.0} tokens/s, p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, padding ratio {}",
                run.mode,
                run.concurrency,
                run.inputs_per_s,
                run.tokens_per_s,
                run.latency_ms_p50,
                run.latency_ms_p90,
                run.latency_ms_p99,
                run.padding_ratio
                    .map_or("-".to_string(), |r| format!("{r:.3}"))
            );
            runs.push(run);
        }
        let peak_rss = args.pid.map(peak_resident_bytes).transpose()?;
        let report = json!({
            "server": args.server,
            "corpus": args.corpus,
            "inputs_per_request": args.inputs_per_request,
            "server_peak_rss_bytes": peak_rss,
            "runs": runs,
        });
        let text = serde_json::to_string_pretty(&report)?;
        if let Some(path) = &args.json {
            std::fs::write(path, format!("{text}\n"))
                .with_context(|| format!("--json {}", path.display()))?;
        }
        println!("{text}");
        Ok(ExitCode::SUCCESS)
    })
}

/// A channel to the server once its health says SERVING (it may still be loading its model).
async fn connect(url: &str, timeout: Duration) -> anyhow::Result<Channel> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let endpoint =
        Channel::from_shared(url.to_string()).with_context(|| format!("--server {url}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        let last = match endpoint.connect().await {
            Ok(channel) => {
                let health = HealthClient::new(channel.clone())
                    .check(HealthCheckRequest::default())
                    .await;
                match health.map(|h| h.into_inner().status) {
                    Ok(1) => return Ok(channel),
                    Ok(status) => format!("health status {status}"),
                    Err(e) => e.to_string(),
                }
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            bail!("{url} was not SERVING within {timeout:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each client's requests: the corpus cut into messages, dealt out in turn.
fn requests(texts: &[String], per_request: usize, clients: usize) -> Vec<Vec<pb::EncodeRequest>> {
    let mut shares: Vec<Vec<pb::EncodeRequest>> = (0..clients).map(|_| Vec::new()).collect();
    for (i, chunk) in texts.chunks(per_request).enumerate() {
        shares[i % clients].push(pb::EncodeRequest {
            id: i.to_string(),
            inputs: chunk
                .iter()
                .map(|t| pb::TextInput {
                    text: t.clone(),
                    text_pair: None,
                })
                .collect(),
            options: None,
        });
    }
    shares
}

/// What one client saw: inputs and tokens answered, and each message's latency.
#[derive(Default)]
struct Seen {
    inputs: usize,
    tokens: u64,
    latencies: Vec<Duration>,
}

fn count(seen: &mut Seen, response: &pb::EncodeResponse) {
    seen.inputs += response.results.len();
    seen.tokens += response
        .results
        .iter()
        .map(|r| r.usage.map_or(0, |u| u.tokens as u64))
        .sum::<u64>();
}

async fn stream_client(channel: Channel, requests: Vec<pb::EncodeRequest>) -> anyhow::Result<Seen> {
    let sent: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let stamps = sent.clone();
    let outbound = tokio_stream::iter(requests).map(move |r| {
        stamps.lock().unwrap().push(Instant::now());
        r
    });
    let mut responses = EncoderClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .encode_stream(outbound)
        .await?
        .into_inner();
    let mut seen = Seen::default();
    let mut index = 0;
    while let Some(response) = responses.next().await {
        let response = response?;
        if let Some(error) = &response.error {
            bail!("request {}: {}", response.id, error.message);
        }
        let at = sent.lock().unwrap()[index];
        seen.latencies.push(at.elapsed());
        index += 1;
        count(&mut seen, &response);
    }
    Ok(seen)
}

async fn unary_client(channel: Channel, requests: Vec<pb::EncodeRequest>) -> anyhow::Result<Seen> {
    let mut client = EncoderClient::new(channel).max_decoding_message_size(64 << 20);
    let mut seen = Seen::default();
    for request in requests {
        let start = Instant::now();
        let response = client.encode(request).await?.into_inner();
        seen.latencies.push(start.elapsed());
        count(&mut seen, &response);
    }
    Ok(seen)
}

async fn run(
    args: &BenchArgs,
    channel: &Channel,
    texts: &[String],
    concurrency: usize,
) -> anyhow::Result<Run> {
    // One short warm-up call, so the run does not pay for the first connection's set-up.
    unary_client(channel.clone(), requests(&texts[..1], 1, 1).remove(0)).await?;
    let shares = requests(texts, args.inputs_per_request, concurrency);
    let start = Instant::now();
    let clients: Vec<_> = shares
        .into_iter()
        .map(|share| {
            let channel = channel.clone();
            match args.mode {
                Mode::Stream => tokio::spawn(stream_client(channel, share)),
                Mode::Unary => tokio::spawn(unary_client(channel, share)),
            }
        })
        .collect();
    let mut all = Seen::default();
    for client in clients {
        let seen = client.await??;
        all.inputs += seen.inputs;
        all.tokens += seen.tokens;
        all.latencies.extend(seen.latencies);
    }
    let seconds = start.elapsed().as_secs_f64();
    if all.inputs != texts.len() {
        bail!("{} of {} inputs answered", all.inputs, texts.len());
    }
    all.latencies.sort();
    let percentile = |p: usize| {
        let at = (all.latencies.len() * p / 100).min(all.latencies.len() - 1);
        all.latencies[at].as_secs_f64() * 1e3
    };
    Ok(Run {
        mode: args.mode,
        concurrency,
        inputs: all.inputs,
        seconds,
        inputs_per_s: all.inputs as f64 / seconds,
        tokens_per_s: all.tokens as f64 / seconds,
        latency_ms_p50: percentile(50),
        latency_ms_p90: percentile(90),
        latency_ms_p99: percentile(99),
        padding_ratio: None,
    })
}

/// Real and padded tokens the server has computed, from its metrics endpoint.
async fn padding(addr: &str) -> anyhow::Result<(f64, f64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("--metrics {addr}"))?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: bertd\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    let sum = |prefix: &str| -> f64 {
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Ok((
        sum("bertd_tokens_computed_total "),
        sum("bertd_batch_padded_tokens_sum"),
    ))
}

/// The process's peak resident memory (VmHWM), in bytes.
fn peak_resident_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("--pid {pid}: {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .with_context(|| format!("--pid {pid}: no VmHWM in {path}"))
}
