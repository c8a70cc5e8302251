//! Trace export: OTLP over gRPC or HTTP/protobuf, batched off the request path.
//!
//! - The endpoint is `telemetry.otlp_endpoint`, else the standard `OTEL_EXPORTER_OTLP_ENDPOINT`
//!   (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); with neither, nothing is exported and no exporter
//!   exists.
//! - Spans queue in the SDK's batch processor (bounded: when the collector cannot keep up, spans
//!   are dropped, never requests slowed) and leave from its own thread; each export runs on the
//!   server's Tokio runtime, where the gRPC client lives.
//! - Export failures are logged as a warning at most once per `WARN_EVERY`, with the number of
//!   failures since the last warning: an unreachable collector costs a log line, nothing more.
//! - Sampling (`Linked`): a span with a parent follows its parent (so a client's decision holds
//!   through bertd); a batch span, which has no parent but links to the requests it served, is
//!   kept when any of them is; any other root span is kept with `telemetry.sampling_ratio`.
//! - Resource: `service.name` (`bertd`, or `OTEL_SERVICE_NAME`), `service.version`,
//!   `service.instance.id`, Kubernetes pod, namespace and node from the environment the chart
//!   sets through the downward API, and anything in `OTEL_RESOURCE_ATTRIBUTES`.
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::trace::{Link, SpanKind, TraceId};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::resource::{EnvResourceDetector, TelemetryResourceDetector};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SamplingDecision, SamplingResult,
    SdkTracerProvider, ShouldSample, SpanData, SpanExporter,
};
use tokio::runtime::Handle;

use crate::config::{OtlpProtocol, TelemetrySettings};

#[derive(Debug, thiserror::Error)]
#[error("telemetry.otlp_endpoint: {0}")]
pub struct TraceExportError(String);

/// The environment variables that name an OTLP endpoint when the config does not.
const ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// How often at most an export failure is logged.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Spans waiting for export; past it new spans are dropped.
const MAX_QUEUED_SPANS: usize = 8_192;

/// How long one export may take before it is abandoned.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The tracer provider, or `None` when no endpoint is set.
pub fn provider(
    settings: &TelemetrySettings,
    runtime: Handle,
) -> Result<Option<SdkTracerProvider>, TraceExportError> {
    let from_env = ENDPOINT_VARIABLES
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|e| !e.is_empty()));
    if settings.otlp_endpoint.is_none() && !from_env {
        return Ok(None);
    }
    let exporter = exporter(settings)?;
    // The batch settings come from the standard OTEL_BSP_* variables, with a larger queue than
    // the SDK's default unless OTEL_BSP_MAX_QUEUE_SIZE says otherwise.
    let mut batching = BatchConfigBuilder::default();
    if std::env::var_os("OTEL_BSP_MAX_QUEUE_SIZE").is_none() {
        batching = batching.with_max_queue_size(MAX_QUEUED_SPANS);
    }
    let processor = BatchSpanProcessor::builder(OnRuntime {
        inner: Arc::new(exporter),
        runtime,
        failures: Mutex::new(Failures::default()),
    })
    .with_batch_config(batching.build())
    .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Linked::new(settings.sampling_ratio))
            .with_resource(resource())
            .build(),
    ))
}

fn exporter(
    settings: &TelemetrySettings,
) -> Result<opentelemetry_otlp::SpanExporter, TraceExportError> {
    let error = |e: opentelemetry_otlp::ExporterBuildError| TraceExportError(e.to_string());
    let builder = opentelemetry_otlp::SpanExporter::builder();
    match settings.otlp_protocol {
        OtlpProtocol::Grpc => {
            let mut b = builder.with_tonic().with_timeout(EXPORT_TIMEOUT);
            if let Some(endpoint) = &settings.otlp_endpoint {
                b = b.with_endpoint(endpoint.clone());
            }
            b.build().map_err(error)
        }
        OtlpProtocol::HttpProtobuf => {
            let mut b = builder
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(EXPORT_TIMEOUT);
            if let Some(endpoint) = &settings.otlp_endpoint {
                b = b.with_endpoint(http_traces_url(endpoint));
            }
            b.build().map_err(error)
        }
    }
}

/// The configured endpoint is the collector's base URL, as in `OTEL_EXPORTER_OTLP_ENDPOINT`;
/// over HTTP, traces go to its `/v1/traces` unless a path is given.
fn http_traces_url(endpoint: &str) -> String {
    let after_scheme = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    match after_scheme.find('/') {
        Some(at) if after_scheme[at..] != *"/" => endpoint.to_string(),
        _ => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
    }
}

fn resource() -> Resource {
    let env = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
    };
    let mut attributes = vec![
        KeyValue::new("service.name", "bertd"),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("service.instance.id", instance_id()),
    ];
    for (key, names) in [
        ("k8s.pod.name", &["K8S_POD_NAME", "POD_NAME"][..]),
        (
            "k8s.namespace.name",
            &["K8S_NAMESPACE_NAME", "POD_NAMESPACE"],
        ),
        ("k8s.node.name", &["K8S_NODE_NAME", "NODE_NAME"]),
        ("k8s.pod.uid", &["K8S_POD_UID", "POD_UID"]),
    ] {
        if let Some(value) = env(names) {
            attributes.push(KeyValue::new(key, value));
        }
    }
    let mut builder = Resource::builder_empty()
        .with_detectors(&[Box::new(TelemetryResourceDetector)])
        .with_attributes(attributes)
        // OTEL_RESOURCE_ATTRIBUTES overrides the above; OTEL_SERVICE_NAME overrides both.
        .with_detectors(&[Box::new(EnvResourceDetector::new())]);
    if let Some(name) = env(&["OTEL_SERVICE_NAME"]) {
        builder = builder.with_service_name(name);
    }
    builder.build()
}

/// Unique per process: the pod's uid where Kubernetes gives it, else a random UUID.
fn instance_id() -> String {
    std::env::var("K8S_POD_UID")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/random/uuid")
                .ok()
                .map(|u| u.trim().to_string())
        })
        .unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
            format!("{host}-{}", std::process::id())
        })
}

/// Runs each export on the server's runtime and rate-limits the warnings of failed ones.
#[derive(Debug)]
struct OnRuntime<E> {
    inner: Arc<E>,
    runtime: Handle,
    failures: Mutex<Failures>,
}

#[derive(Debug, Default)]
struct Failures {
    since_warning: u64,
    last_warning: Option<Instant>,
}

impl<E: SpanExporter + 'static> OnRuntime<E> {
    fn failed(&self, spans: usize, error: &str) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        f.since_warning += 1;
        if f.last_warning.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            tracing::warn!(
                spans,
                failures = f.since_warning,
                error,
                "exporting spans failed; they are dropped (next warning in a minute at the earliest)"
            );
            f.since_warning = 0;
            f.last_warning = Some(Instant::now());
        }
    }
}

impl<E: SpanExporter + 'static> SpanExporter for OnRuntime<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let inner = self.inner.clone();
        let result = match self
            .runtime
            .spawn(async move { inner.export(batch).await })
            .await
        {
            Ok(result) => result,
            Err(e) => Err(OTelSdkError::InternalFailure(e.to_string())),
        };
        if let Err(error) = &result {
            self.failed(spans, &error.to_string());
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.since_warning > 0 {
            tracing::warn!(
                failures = f.since_warning,
                "more span exports failed since the last warning"
            );
        }
        drop(f);
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

/// Parent-based sampling with a ratio for roots, where a root that links to sampled spans (a
/// batch serving sampled requests) is sampled too.
#[derive(Debug, Clone)]
pub struct Linked {
    parent_based: Sampler,
    ratio: Sampler,
}

impl Linked {
    pub fn new(ratio: f64) -> Self {
        Linked {
            parent_based: Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))),
            ratio: Sampler::TraceIdRatioBased(ratio),
        }
    }
}

impl ShouldSample for Linked {
    fn should_sample(
        &self,
        parent_context: Option<&opentelemetry::Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        use opentelemetry::trace::TraceContextExt;
        let has_parent = parent_context.is_some_and(|c| c.has_active_span());
        if !has_parent && !links.is_empty() {
            let decision = if links.iter().any(|l| l.span_context.is_sampled()) {
                SamplingDecision::RecordAndSample
            } else {
                SamplingDecision::Drop
            };
            return SamplingResult {
                decision,
                attributes: Vec::new(),
                trace_state: Default::default(),
            };
        }
        let sampler = if has_parent {
            &self.parent_based
        } else {
            &self.ratio
        };
        sampler.should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_endpoint_gets_the_traces_path_unless_it_has_a_path() {
        for (given, used) in [
            ("http://collector:4318", "http://collector:4318/v1/traces"),
            ("http://collector:4318/", "http://collector:4318/v1/traces"),
            ("https://c/otlp/v1/traces", "https://c/otlp/v1/traces"),
        ] {
            assert_eq!(http_traces_url(given), used, "{given}");
        }
    }

    #[test]
    fn a_root_with_links_follows_them_whatever_the_ratio() {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceState};
        let link = |sampled: bool| {
            let flags = if sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            };
            Link::with_context(SpanContext::new(
                TraceId::from(7u128),
                SpanId::from(9u64),
                flags,
                true,
                TraceState::default(),
            ))
        };
        let decide = |ratio: f64, links: &[Link]| {
            Linked::new(ratio)
                .should_sample(
                    None,
                    TraceId::from(3u128),
                    "batch",
                    &SpanKind::Internal,
                    &[],
                    links,
                )
                .decision
        };
        assert_eq!(
            decide(0.0, &[link(false), link(true)]),
            SamplingDecision::RecordAndSample
        );
        assert_eq!(decide(1.0, &[link(false)]), SamplingDecision::Drop);
        assert_eq!(decide(1.0, &[]), SamplingDecision::RecordAndSample);
        assert_eq!(decide(0.0, &[]), SamplingDecision::Drop);
    }
}
