//! Metrics in the Prometheus text format, on their own HTTP port (`telemetry.metrics_addr`),
//! beside `GET /health`: the server's overall gRPC health as an HTTP status, for probes that
//! cannot speak gRPC over TLS (Kubernetes' gRPC probe has no TLS).
//!
//! Built on `prometheus-client`, the OpenMetrics reference implementation for Rust, maintained
//! under the Prometheus organisation: its metrics are plain atomics updated in place (no global
//! registry, no exporter thread, nothing an idle server pays for), and a `Collector` reads
//! values at scrape time, which lets the counters `Model.GetInfo` reports be encoded from the
//! very same atomics. OpenTelemetry metrics with a Prometheus exporter would add a second,
//! aggregating copy of every number.
//!
//! Names carry their unit (`_seconds`, `_bytes`, `_inputs`, `_tokens`, `_ratio`); counters end
//! in `_total` on the wire. Label values come from fixed sets (method names from the served
//! descriptors, status codes, lanes, devices), never from what a client sends, so a client
//! cannot grow the number of series.
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets, linear_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A histogram family with the same buckets for every label set.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Durations from 100 µs to about 52 s, doubling.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 20))
}

/// Inputs in a batch: 1 to 1,024, doubling.
fn inputs() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

/// Padded tokens in a batch: 16 to 65,536, doubling.
fn tokens() -> Histogram {
    Histogram::new(exponential_buckets(16.0, 2.0, 13))
}

/// Real over padded tokens: 0.1 to 1.0.
fn ratio() -> Histogram {
    Histogram::new(linear_buckets(0.1, 0.1, 10))
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub service: String,
    pub method: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub service: String,
    pub method: String,
    /// The gRPC status code's name, e.g. `OK`, `RESOURCE_EXHAUSTED`.
    pub code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabels {
    /// `unary` or `stream`.
    pub lane: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabels {
    /// `cpu`, `cuda:0`, ...
    pub device: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    /// The API key's name (never the key).
    pub key: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyRefusalLabels {
    pub key: String,
    /// `inflight`, `rate` or `too_large`.
    pub limit: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// The setting that names the files: `server.tls`, `auth.api_keys_file`.
    pub what: &'static str,
    /// `ok`, or `failed` (the previous contents stay in force).
    pub outcome: &'static str,
}

/// What the gRPC edge measures (and the reloads of the files that secure it).
#[derive(Debug)]
pub struct RpcMetrics {
    pub requests: Family<CodeLabels, Counter>,
    pub duration: HistogramFamily<MethodLabels>,
    pub messages_received: Family<MethodLabels, Counter>,
    pub messages_sent: Family<MethodLabels, Counter>,
    pub tokenize: Histogram,
    pub streams: Gauge,
    pub key_inputs: Family<KeyLabels, Counter>,
    pub key_refusals: Family<KeyRefusalLabels, Counter>,
    pub unauthenticated: Counter,
    pub reloads: Family<ReloadLabels, Counter>,
}

impl Default for RpcMetrics {
    fn default() -> Self {
        RpcMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(seconds),
            messages_received: Family::default(),
            messages_sent: Family::default(),
            tokenize: seconds(),
            streams: Gauge::default(),
            key_inputs: Family::default(),
            key_refusals: Family::default(),
            unauthenticated: Counter::default(),
            reloads: Family::default(),
        }
    }
}

impl RpcMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "bertd_grpc_requests",
            "Calls finished, by service, method and gRPC status code (CANCELLED: the client went away)",
            self.requests.clone(),
        );
        registry.register(
            "bertd_grpc_request_duration_seconds",
            "Time from a call's headers to its status, end to end (a stream: its whole life)",
            self.duration.clone(),
        );
        registry.register(
            "bertd_grpc_stream_messages_received",
            "Request messages read from streams",
            self.messages_received.clone(),
        );
        registry.register(
            "bertd_grpc_stream_messages_sent",
            "Response messages handed to the transport on streams",
            self.messages_sent.clone(),
        );
        registry.register(
            "bertd_tokenize_duration_seconds",
            "Time to tokenize one request's inputs, on the tokenizer pool",
            self.tokenize.clone(),
        );
        registry.register(
            "bertd_streams_in_flight",
            "Encode and classify streams open now",
            self.streams.clone(),
        );
        registry.register(
            "bertd_api_key_inputs",
            "Inputs admitted, by API key name",
            self.key_inputs.clone(),
        );
        registry.register(
            "bertd_api_key_refusals",
            "Requests refused by an API key's limits, by key name and limit (inflight, rate, too_large)",
            self.key_refusals.clone(),
        );
        registry.register(
            "bertd_unauthenticated_calls",
            "Calls refused for a missing or invalid API key",
            self.unauthenticated.clone(),
        );
        registry.register(
            "bertd_reloads",
            "Files read again after they changed, by what (server.tls, auth.api_keys_file) and outcome (ok; failed: the previous contents stay in force)",
            self.reloads.clone(),
        );
    }
}

/// What the batch layer measures, per input and per batch.
#[derive(Debug)]
pub struct BatchMetrics {
    pub queue_wait: HistogramFamily<LaneLabels>,
    pub forward: HistogramFamily<DeviceLabels>,
    pub batch_inputs: HistogramFamily<DeviceLabels>,
    pub batch_padded_tokens: HistogramFamily<DeviceLabels>,
    pub batch_padding_ratio: HistogramFamily<DeviceLabels>,
}

impl Default for BatchMetrics {
    fn default() -> Self {
        BatchMetrics {
            queue_wait: Family::new_with_constructor(seconds),
            forward: Family::new_with_constructor(seconds),
            batch_inputs: Family::new_with_constructor(inputs),
            batch_padded_tokens: Family::new_with_constructor(tokens),
            batch_padding_ratio: Family::new_with_constructor(ratio),
        }
    }
}

impl BatchMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "bertd_queue_wait_seconds",
            "Time an input waited in the queue before a worker took its batch, by lane",
            self.queue_wait.clone(),
        );
        registry.register(
            "bertd_batch_forward_duration_seconds",
            "Time of one forward pass, by device (a failed batch's halves each count)",
            self.forward.clone(),
        );
        registry.register(
            "bertd_batch_size_inputs",
            "Inputs per batch, by device",
            self.batch_inputs.clone(),
        );
        registry.register(
            "bertd_batch_padded_tokens",
            "Tokens per batch with padding (inputs x longest input), by device",
            self.batch_padded_tokens.clone(),
        );
        registry.register(
            "bertd_batch_padding_ratio",
            "Real over padded tokens per batch, by device (1: no padding)",
            self.batch_padding_ratio.clone(),
        );
    }
}

/// The content type of the text exposition `prometheus-client` writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `GET /metrics` and `GET /health` on `listener` until `stop` is cancelled. `serving`
/// is what the gRPC health service says of the whole server (service ""): `/health` answers 200
/// while it is true, 503 otherwise (starting, no worker running, draining).
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    serving: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "metrics: accepting a connection failed");
                continue;
            }
        };
        let registry = registry.clone();
        let serving = serving.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let serving = *serving.borrow();
                scrape(request, registry.clone(), serving)
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = connection => {}
            }
        });
    }
}

async fn scrape(
    request: Request<Incoming>,
    registry: Arc<Registry>,
    serving: bool,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let respond = |status, content_type, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(content_type),
        );
        Ok(response)
    };
    const TEXT: &str = "text/plain";
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, &registry) {
                Ok(()) => respond(StatusCode::OK, OPENMETRICS, body),
                Err(_) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    "encoding the metrics failed\n".into(),
                ),
            }
        }
        (&Method::GET, "/health") if serving => respond(StatusCode::OK, TEXT, "SERVING\n".into()),
        (&Method::GET, "/health") => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "NOT_SERVING\n".into(),
        ),
        (_, "/metrics" | "/health") => {
            respond(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET only\n".into())
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            TEXT,
            "see /metrics or /health\n".into(),
        ),
    }
}
