//! `bertd bench`: drives a running server with a corpus, as clients would, and reports what they
//! get: inputs/s, real tokens/s, latency percentiles, and from the server its padding ratio
//! (its metrics endpoint) and peak resident memory (its process). A measuring tool, not a test:
//! `bench/compare.sh` runs it beside the Python baselines on the same texts.
//!
//! - `--mode stream`: each of `--concurrency` clients streams its share of the corpus through one
//!   EncodeStream, `--inputs-per-request` a message; a message's latency runs from the moment the
//!   client hands it to gRPC to its response.
//! - `--mode unary`: each client sends its share as Encode calls, one at a time.
//! - `--inputs N`: each run sends N inputs, cycling through the corpus; requests are made as they
//!   are sent, so a run of millions costs the client no more memory than one of hundreds.
//! - `--pairs`: each input is a pair, a corpus line and the next (as a cross-encoder's query and
//!   passage come), for a model that takes pairs.
//!
//! With `--metrics`, each run also reports the server's mean forward time per batch, so that the
//! latency a client sees can be set against the compute inside it; with `--pid`, the server's
//! resident memory at the start of each run, its maximum during it (sampled every RSS_EVERY) and
//! at its end: flat under a long stream when the server's memory is bounded.
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
    /// Inputs per run, cycling through the corpus; defaults to the corpus once.
    #[arg(long)]
    inputs: Option<usize>,
    /// Send pairs of texts: each line with the next.
    #[arg(long)]
    pairs: bool,
    /// The server's metrics endpoint (HOST:PORT), for its padding ratio.
    #[arg(long)]
    metrics: Option<String>,
    /// The server's process id, for its peak resident memory; waiting for the server ends as
    /// soon as this process has exited.
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
    /// Tokens the server computed for the run's inputs (its responses' usage).
    tokens: u64,
    inputs_per_s: f64,
    tokens_per_s: f64,
    latency_ms_p50: f64,
    latency_ms_p90: f64,
    latency_ms_p99: f64,
    /// Real over padded tokens in the server's batches during the run.
    padding_ratio: Option<f64>,
    /// The server's mean forward time per batch during the run.
    forward_ms_mean: Option<f64>,
    /// The server's mean inputs per batch during the run: whether its batches fill.
    batch_inputs_mean: Option<f64>,
    /// The server's resident memory before the run, at most during it, and after it.
    server_rss_bytes_start: Option<u64>,
    server_rss_bytes_max: Option<u64>,
    server_rss_bytes_end: Option<u64>,
}

/// How often the server's resident memory is read during a run.
const RSS_EVERY: Duration = Duration::from_millis(250);

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
    if args.inputs_per_request == 0 || args.concurrency.contains(&0) || args.inputs == Some(0) {
        bail!("--inputs-per-request, --concurrency and --inputs must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let plan = Plan {
        texts: texts.into(),
        per_request: args.inputs_per_request,
        total: 0,
        pairs: args.pairs,
    };
    runtime.block_on(async {
        let timeout = Duration::from_secs(args.connect_timeout_s);
        let channel = connect(&args.server, timeout, args.pid).await?;
        let mut runs = Vec::new();
        for &concurrency in &args.concurrency {
            runs.push(measure(&args, &channel, &plan, concurrency).await?);
        }
        let peak_rss = args
            .pid
            .map(|pid| status_bytes(pid, "VmHWM:"))
            .transpose()?;
        let report = json!({
            "server": args.server,
            "corpus": args.corpus,
            "inputs_per_request": args.inputs_per_request,
            "pairs": args.pairs,
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

/// One run, with what the server's metrics and process say about it.
async fn measure(
    args: &BenchArgs,
    channel: &Channel,
    plan: &Plan,
    concurrency: usize,
) -> anyhow::Result<Run> {
    // One short warm-up call, so the run does not pay for the first connection's set-up.
    let warm_up = Plan {
        total: 1,
        per_request: 1,
        ..plan.clone()
    };
    unary_client(channel.clone(), warm_up.share(0, 1)).await?;
    let plan = Plan {
        total: args.inputs.unwrap_or(plan.texts.len()),
        ..plan.clone()
    };
    let before = match &args.metrics {
        Some(addr) => Some(Counters::scrape(addr).await?),
        None => None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let sampler = args.pid.map(|pid| tokio::spawn(sample_rss(pid, stopped)));
    let run = run(args.mode, channel, &plan, concurrency).await?;
    let _ = stop.send(());
    let rss = match sampler {
        Some(task) => Some(task.await??),
        None => None,
    };
    let batches = match (&args.metrics, before) {
        (Some(addr), Some(before)) => Counters::scrape(addr).await?.since(&before),
        _ => Batches::default(),
    };
    let run = Run {
        padding_ratio: batches.padding_ratio,
        forward_ms_mean: batches.forward_ms_mean,
        batch_inputs_mean: batches.inputs_mean,
        server_rss_bytes_start: rss.map(|r| r.0),
        server_rss_bytes_max: rss.map(|r| r.1),
        server_rss_bytes_end: rss.map(|r| r.2),
        ..run
    };
    let shown = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    eprintln!(
        "{:?} x{}: {:.1} inputs/s, {:.0} tokens/s, p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, padding ratio {}, forward {} ms/batch, {} inputs/batch, RSS max {} MiB",
        run.mode,
        run.concurrency,
        run.inputs_per_s,
        run.tokens_per_s,
        run.latency_ms_p50,
        run.latency_ms_p90,
        run.latency_ms_p99,
        shown(run.padding_ratio),
        shown(run.forward_ms_mean),
        shown(run.batch_inputs_mean),
        run.server_rss_bytes_max
            .map_or("-".to_string(), |b| (b >> 20).to_string()),
    );
    Ok(run)
}

/// A channel to the server once its health says SERVING (it may still be loading its model).
/// Given the server's process (`pid`), it stops waiting as soon as that process has exited: a
/// server that failed to start is reported at once, not after the whole timeout.
async fn connect(url: &str, timeout: Duration, pid: Option<u32>) -> anyhow::Result<Channel> {
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
        if let Some(pid) = pid.filter(|&pid| !running(pid)) {
            bail!("the server's process ({pid}) exited before {url} was SERVING: {last}");
        }
        if Instant::now() >= deadline {
            bail!("{url} was not SERVING within {timeout:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The inputs of a run: `total` of them, cycling through the corpus, `per_request` a message;
/// with `pairs`, each line paired with the next.
#[derive(Clone)]
struct Plan {
    texts: Arc<[String]>,
    per_request: usize,
    total: usize,
    pairs: bool,
}

impl Plan {
    /// The messages of client `client` of `clients`: the run's messages dealt out in turn.
    fn share(&self, client: usize, clients: usize) -> Share {
        Share {
            plan: self.clone(),
            next: client,
            step: clients,
        }
    }

    /// Message `i`: the run's inputs from `i * per_request`, cycling through the corpus.
    fn message(&self, i: usize) -> pb::EncodeRequest {
        let first = i * self.per_request;
        let last = (first + self.per_request).min(self.total);
        pb::EncodeRequest {
            id: i.to_string(),
            inputs: (first..last)
                .map(|n| pb::TextInput {
                    text: self.texts[n % self.texts.len()].clone(),
                    text_pair: self
                        .pairs
                        .then(|| self.texts[(n + 1) % self.texts.len()].clone()),
                })
                .collect(),
            options: None,
        }
    }
}

/// A client's messages, made as they are sent.
struct Share {
    plan: Plan,
    next: usize,
    step: usize,
}

impl Iterator for Share {
    type Item = pb::EncodeRequest;

    fn next(&mut self) -> Option<pb::EncodeRequest> {
        let i = self.next;
        if i * self.plan.per_request >= self.plan.total {
            return None;
        }
        self.next += self.step;
        Some(self.plan.message(i))
    }
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

async fn stream_client(channel: Channel, requests: Share) -> anyhow::Result<Seen> {
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

async fn unary_client(channel: Channel, requests: Share) -> anyhow::Result<Seen> {
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

/// What the clients see of one run.
async fn run(
    mode: Mode,
    channel: &Channel,
    plan: &Plan,
    concurrency: usize,
) -> anyhow::Result<Run> {
    let start = Instant::now();
    let clients: Vec<_> = (0..concurrency)
        .map(|client| {
            let channel = channel.clone();
            let share = plan.share(client, concurrency);
            match mode {
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
    if all.inputs != plan.total {
        bail!("{} of {} inputs answered", all.inputs, plan.total);
    }
    all.latencies.sort();
    let percentile = |p: usize| {
        let at = (all.latencies.len() * p / 100).min(all.latencies.len() - 1);
        all.latencies[at].as_secs_f64() * 1e3
    };
    Ok(Run {
        mode,
        concurrency,
        inputs: all.inputs,
        seconds,
        tokens: all.tokens,
        inputs_per_s: all.inputs as f64 / seconds,
        tokens_per_s: all.tokens as f64 / seconds,
        latency_ms_p50: percentile(50),
        latency_ms_p90: percentile(90),
        latency_ms_p99: percentile(99),
        padding_ratio: None,
        forward_ms_mean: None,
        batch_inputs_mean: None,
        server_rss_bytes_start: None,
        server_rss_bytes_max: None,
        server_rss_bytes_end: None,
    })
}

/// What the server has counted so far, from its metrics endpoint.
struct Counters {
    real_tokens: f64,
    padded_tokens: f64,
    forward_seconds: f64,
    forwards: f64,
    batch_inputs: f64,
    batches: f64,
}

/// The server's batches during a run, from its counters before and after (`None`: no batch).
#[derive(Default)]
struct Batches {
    /// Real over padded tokens.
    padding_ratio: Option<f64>,
    forward_ms_mean: Option<f64>,
    inputs_mean: Option<f64>,
}

impl Counters {
    async fn scrape(addr: &str) -> anyhow::Result<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("--metrics {addr}"))?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: bertd\r\nConnection: close\r\n\r\n")
            .await?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await?;
        // Summed over label sets (devices): `name{...} value` or `name value`.
        let sum = |name: &str| -> f64 {
            body.lines()
                .filter(|l| {
                    l.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        Ok(Self {
            real_tokens: sum("bertd_tokens_computed_total"),
            padded_tokens: sum("bertd_batch_padded_tokens_sum"),
            forward_seconds: sum("bertd_batch_forward_duration_seconds_sum"),
            // A failed batch's halves each count as a forward, not as a batch.
            forwards: sum("bertd_batch_forward_duration_seconds_count"),
            batch_inputs: sum("bertd_batch_size_inputs_sum"),
            batches: sum("bertd_batch_size_inputs_count"),
        })
    }

    /// What the server's batches were since `before`.
    fn since(&self, before: &Self) -> Batches {
        let padded = self.padded_tokens - before.padded_tokens;
        let forwards = self.forwards - before.forwards;
        let batches = self.batches - before.batches;
        Batches {
            padding_ratio: (padded > 0.0).then(|| (self.real_tokens - before.real_tokens) / padded),
            forward_ms_mean: (forwards > 0.0)
                .then(|| (self.forward_seconds - before.forward_seconds) / forwards * 1e3),
            inputs_mean: (batches > 0.0)
                .then(|| (self.batch_inputs - before.batch_inputs) / batches),
        }
    }
}

/// The server's resident memory before, at most during, and after the run (until `stop`).
async fn sample_rss(
    pid: u32,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<(u64, u64, u64)> {
    let start = status_bytes(pid, "VmRSS:")?;
    let mut max = start;
    let mut tick = tokio::time::interval(RSS_EVERY);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => max = max.max(status_bytes(pid, "VmRSS:")?),
        }
    }
    let end = status_bytes(pid, "VmRSS:")?;
    Ok((start, max.max(end), end))
}

/// Whether process `pid` is still running: neither gone nor a zombie (a server that has exited
/// stays one until its parent, such as a benchmark script, waits for it).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("State:"))
            .is_some_and(|state| !matches!(state.trim_start().chars().next(), Some('Z' | 'X')))
    })
}

/// A memory figure of the process from /proc/PID/status (`field`: VmRSS:, VmHWM:), in bytes.
fn status_bytes(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("--pid {pid}: {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .with_context(|| format!("--pid {pid}: no {field} in {path}"))
}
