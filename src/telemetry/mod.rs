//! What bertd tells its operator: log lines, traces and metrics.
//!
//! - **Logs** go to stderr as text or JSON (`log.*`). A line written inside a traced span carries
//!   that span's `trace_id` and `span_id`, so logs and traces join (`logs`).
//! - **Traces** are off unless an OTLP endpoint is set (`telemetry.otlp_endpoint`, or the
//!   standard `OTEL_EXPORTER_OTLP_ENDPOINT`). Spans are `tracing` spans of bertd's own code,
//!   exported through OpenTelemetry in batches from a thread of their own, so a request never
//!   waits for the collector; a collector that is down costs a rate-limited warning (`traces`).
//!   Each call's span continues the client's W3C trace context (`rpc`).
//! - **Metrics** are served in the Prometheus text format on `telemetry.metrics_addr`
//!   (`metrics`); the server registers what it measures there.
//!
//! `init` installs the process-wide subscriber and propagator once, for `bertd serve`; the server
//! itself only creates spans and records metrics, so tests can run many servers in one process.
mod logs;
pub mod metrics;
pub mod rpc;
mod traces;

use std::io::IsTerminal;
use std::time::Duration;

use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::fmt::format::{self, JsonFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::{LogFormat, Settings};
pub use logs::{SubscriberHandle, WithTraceIds};
pub use traces::TraceExportError;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("log.level {level:?}: {source}")]
    LogLevel {
        level: String,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error(transparent)]
    Traces(#[from] TraceExportError),
    #[error("a global tracing subscriber is already installed: {0}")]
    AlreadyInstalled(String),
}

/// What `init` installed; `shutdown` flushes the spans not yet exported.
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exports_traces(&self) -> bool {
        self.traces.is_some()
    }

    /// Exports what is still buffered and stops the exporter, within `timeout`. Blocks: call it
    /// off the async runtime (the export itself runs on the runtime, which must still be alive).
    pub fn shutdown(self, timeout: Duration) {
        if let Some(provider) = self.traces
            && let Err(error) = provider.shutdown_with_timeout(timeout)
        {
            tracing::warn!(%error, ?timeout, "spans not exported before the end");
        }
    }
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Installs logging and, when an endpoint is set, trace export, for the whole process. Must run
/// inside the Tokio runtime that will serve (the exporter's client lives on it).
pub fn init(settings: &Settings) -> Result<Telemetry, TelemetryError> {
    let filter =
        EnvFilter::try_new(&settings.log.level).map_err(|source| TelemetryError::LogLevel {
            level: settings.log.level.clone(),
            source,
        })?;
    // Colours only for a person at a terminal, not in files and log collectors.
    let ansi = std::io::stderr().is_terminal();
    let handle = SubscriberHandle::default();
    let logs: BoxedLayer = match settings.log.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(WithTraceIds::json(format().json(), handle.clone()))
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .event_format(WithTraceIds::text(format().with_ansi(ansi), handle.clone()))
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    let mut layers = vec![logs];
    let traces = traces::provider(&settings.telemetry, tokio::runtime::Handle::current())?;
    if let Some(provider) = &traces {
        use opentelemetry::trace::TracerProvider;
        // bertd's own spans only: the exporter's client (tonic, hyper, h2) is never traced, so
        // exporting cannot feed itself.
        let ours = Targets::new().with_target(env!("CARGO_CRATE_NAME"), tracing::Level::INFO);
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("bertd"))
                .with_filter(ours)
                .boxed(),
        );
    }
    let subscriber = tracing::Dispatch::new(tracing_subscriber::registry().with(layers));
    let _ = handle.set(subscriber.downgrade());
    // Also routes the `log` crate's records into the subscriber.
    subscriber
        .try_init()
        .map_err(|e| TelemetryError::AlreadyInstalled(e.to_string()))?;
    opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));
    Ok(Telemetry { traces })
}

fn format() -> format::Format {
    format::Format::default()
}
