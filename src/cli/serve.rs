//! `bertd serve` and `bertd config`.
use std::path::PathBuf;
use std::process::ExitCode;

use std::time::{Duration, Instant};

use anyhow::Context;

use bertd::config::{LogFormat, Overrides, Settings};
use bertd::engine::{CudaStreams, DType, DenseKernel, DeviceSpec};
use bertd::{server, telemetry};

/// Flags override the config file and the environment; every other setting is in the file
/// (see config/bertd.example.toml) or `BERTD_SECTION__KEY`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// A TOML or YAML config file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// HOST:PORT to listen on (server.addr).
    #[arg(long)]
    addr: Option<std::net::SocketAddr>,
    /// Model directory (model.dir); defaults to the installed all-MiniLM-L6-v2.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Devices, comma-separated: cpu, cuda, cuda:N (engine.devices).
    #[arg(long, value_delimiter = ',')]
    devices: Option<Vec<DeviceSpec>>,
    /// Workers (model replicas) per device (engine.workers_per_device).
    #[arg(long)]
    workers_per_device: Option<usize>,
    /// Precision (engine.dtype): fp16 needs CUDA; bf16 needs CUDA or a CPU with AVX512-BF16 or AMX.
    #[arg(long, value_enum)]
    dtype: Option<DType>,
    /// What computes the dense layers (engine.dense_kernel): auto is oneDNN on a CPU, libtorch's
    /// linear on CUDA.
    #[arg(long, value_enum)]
    dense_kernel: Option<DenseKernel>,
    /// Which CUDA stream each CUDA worker computes on (engine.cuda_streams): shared, or
    /// per-worker to let the workers of one GPU overlap.
    #[arg(long, value_enum)]
    cuda_streams: Option<CudaStreams>,
    /// libtorch CPU threads, split between CPU workers; 0: all cores (engine.cpu_threads).
    #[arg(long)]
    cpu_threads: Option<usize>,
    /// Padded tokens per forward pass (batching.max_batch_tokens).
    #[arg(long)]
    max_batch_tokens: Option<usize>,
    /// Inputs per forward pass (batching.max_batch_size).
    #[arg(long)]
    max_batch_size: Option<usize>,
    /// A forward pass's fixed cost in padded tokens: how much padding a batch may take on rather
    /// than be cut in two (batching.forward_cost_tokens).
    #[arg(long)]
    forward_cost_tokens: Option<usize>,
    /// Milliseconds a batch may wait for more inputs (batching.max_batch_delay_ms).
    #[arg(long)]
    max_batch_delay_ms: Option<u64>,
    /// Log filter, e.g. info or bertd=debug (log.level).
    #[arg(long)]
    log_level: Option<String>,
    /// Log lines as text or JSON (log.format).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// PEM certificate chain: serve TLS (server.tls.cert, with --tls-key).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (server.tls.key).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle: require client certificates it signed, mTLS (server.tls.client_ca).
    #[arg(long)]
    tls_client_ca: Option<PathBuf>,
    /// API keys, `NAME KEY` a line (auth.api_keys_file).
    #[arg(long)]
    api_keys_file: Option<PathBuf>,
}

impl ServeArgs {
    fn settings(&self) -> anyhow::Result<Settings> {
        let mut overrides: Overrides = Vec::new();
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| config::Value::from(p.to_string_lossy().into_owned()))
        };
        let mut set = |key: &'static str, value: Option<config::Value>| {
            if let Some(v) = value {
                overrides.push((key, v));
            }
        };
        set("server.addr", self.addr.map(|a| a.to_string().into()));
        set("model.dir", path(&self.model));
        set(
            "engine.devices",
            self.devices
                .as_ref()
                .map(|d| d.iter().map(|d| d.to_string()).collect::<Vec<_>>().into()),
        );
        set(
            "engine.workers_per_device",
            self.workers_per_device.map(|v| (v as u64).into()),
        );
        set("engine.dtype", self.dtype.map(|d| d.to_string().into()));
        set(
            "engine.dense_kernel",
            self.dense_kernel.map(|k| k.to_string().into()),
        );
        set(
            "engine.cuda_streams",
            self.cuda_streams.map(|k| k.to_string().into()),
        );
        set(
            "engine.cpu_threads",
            self.cpu_threads.map(|v| (v as u64).into()),
        );
        set(
            "batching.max_batch_tokens",
            self.max_batch_tokens.map(|v| (v as u64).into()),
        );
        set(
            "batching.max_batch_size",
            self.max_batch_size.map(|v| (v as u64).into()),
        );
        set(
            "batching.forward_cost_tokens",
            self.forward_cost_tokens.map(|v| (v as u64).into()),
        );
        set(
            "batching.max_batch_delay_ms",
            self.max_batch_delay_ms.map(Into::into),
        );
        set("server.tls.cert", path(&self.tls_cert));
        set("server.tls.key", path(&self.tls_key));
        set("server.tls.client_ca", path(&self.tls_client_ca));
        set("auth.api_keys_file", path(&self.api_keys_file));
        set("log.level", self.log_level.clone().map(Into::into));
        set(
            "log.format",
            self.log_format.map(|f| {
                match f {
                    LogFormat::Text => "text",
                    LogFormat::Json => "json",
                }
                .into()
            }),
        );
        Ok(Settings::load(self.config.as_deref(), &overrides)?)
    }
}

pub fn print_config(args: ServeArgs) -> anyhow::Result<ExitCode> {
    print!("{}", args.settings()?.to_redacted_toml());
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM and SIGINT, as one stream of signals.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next SIGTERM or SIGINT.
    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Serves until SIGTERM or SIGINT, then drains: exit 0 after a clean drain. A signal during
/// start-up stops at once; a second signal during the drain exits at once, with a failure.
/// Spans not yet exported are flushed at the end, within what is left of the drain timeout.
pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let settings = args.settings()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let telemetry = {
        let _inside = runtime.enter();
        telemetry::init(&settings)?
    };
    tracing::info!(
        model = %settings.model.dir.display(),
        devices = ?settings.engine.devices,
        dtype = %settings.engine.dtype,
        dense_kernel = %settings.engine.dense_kernel,
        cuda_streams = %settings.engine.cuda_streams,
        traces = telemetry.exports_traces(),
        metrics = ?settings.telemetry.metrics_addr,
        "starting"
    );
    tracing::debug!(config = %settings.to_redacted_toml(), "effective configuration");
    let drain_timeout = settings.shutdown_timeout();
    let mut drain_started = None;
    let served = runtime.block_on(serve_until_signalled(settings, &mut drain_started));
    let flush_within = drain_started
        .map_or(drain_timeout, |at: Instant| {
            drain_timeout.saturating_sub(at.elapsed())
        })
        .max(MIN_FLUSH);
    runtime.block_on(async move {
        tokio::task::spawn_blocking(move || telemetry.shutdown(flush_within)).await
    })?;
    served
}

/// The least time given to flushing spans, even after a drain that took all its time.
const MIN_FLUSH: Duration = Duration::from_secs(1);

async fn serve_until_signalled(
    settings: Settings,
    drain_started: &mut Option<Instant>,
) -> anyhow::Result<ExitCode> {
    {
        let mut signals = Signals::new().context("installing signal handlers")?;
        let mut server = server::start(settings).await?;
        tracing::info!(addr = %server.addr, "listening; loading and warming up workers");
        let signalled = tokio::select! {
            ready = server.ready() => { ready?; false }
            _ = signals.next() => true,
        };
        if !signalled {
            signals.next().await;
        }
        *drain_started = Some(Instant::now());
        server.shutdown();
        tokio::select! {
            ended = server.wait() => ended?,
            _ = signals.next() => {
                tracing::warn!("a second signal: exiting without waiting for the drain");
                return Ok(ExitCode::FAILURE);
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
