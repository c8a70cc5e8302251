//! Every call's server span and its place in the request metrics, as one tower layer around all
//! services (health and reflection too).
//!
//! - The span is named `service/method` and attributed per OpenTelemetry's RPC conventions
//!   (`rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`, `server.address`,
//!   `server.port`). Its parent is the W3C trace context (`traceparent`, `tracestate`, `baggage`)
//!   of the call's metadata, through the process's propagator, so a client's trace continues
//!   here. No other metadata is read.
//! - A call ends when its status is known: in the response headers (an error before any message),
//!   in the trailers at the end of the body, or, when the body is dropped before either, with
//!   CANCELLED (the client went away). Then it is counted by status code, its duration observed,
//!   and its span closed (once the tasks it spawned are done with it too).
//! - Method labels come from the descriptors of the served services; any other path is counted as
//!   `unknown`, so a client cannot make up series.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use opentelemetry::propagation::Extractor;
use prost::Message;
use tonic::Code;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::metrics::{CodeLabels, MethodLabels, RpcMetrics};

/// The gRPC methods served, by path (`/package.Service/Method`).
#[derive(Debug, Default)]
pub struct Methods {
    by_path: HashMap<String, MethodLabels>,
}

impl Methods {
    /// The methods of every service in these encoded `FileDescriptorSet`s.
    pub fn from_descriptor_sets(sets: &[&[u8]]) -> Result<Methods, prost::DecodeError> {
        let mut by_path = HashMap::new();
        for set in sets {
            let set = prost_types::FileDescriptorSet::decode(*set)?;
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let service_name = match package.as_str() {
                        "" => service.name().to_string(),
                        p => format!("{p}.{}", service.name()),
                    };
                    for method in service.method {
                        let labels = MethodLabels {
                            service: service_name.clone(),
                            method: method.name().to_string(),
                        };
                        by_path.insert(format!("/{service_name}/{}", method.name()), labels);
                    }
                }
            }
        }
        Ok(Methods { by_path })
    }

    /// The labels of the method at `path`; `unknown` for a path not served.
    pub fn labels(&self, path: &str) -> MethodLabels {
        self.by_path
            .get(path)
            .cloned()
            .unwrap_or_else(|| MethodLabels {
                service: "unknown".into(),
                method: "unknown".into(),
            })
    }
}

/// The layer: give it to `tonic::transport::Server::layer` before the others, so that calls they
/// refuse are observed too.
#[derive(Clone)]
pub struct Observe {
    shared: Arc<Shared>,
}

struct Shared {
    metrics: Arc<RpcMetrics>,
    methods: Methods,
    local: SocketAddr,
}

impl Observe {
    pub fn new(metrics: Arc<RpcMetrics>, methods: Methods, local: SocketAddr) -> Self {
        Observe {
            shared: Arc::new(Shared {
                metrics,
                methods,
                local,
            }),
        }
    }
}

impl<S> Layer<S> for Observe {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Observed<S> {
        Observed {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observed<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// Reads a propagator's fields from the call's headers (gRPC metadata).
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

impl<S, B, RB> Service<http::Request<B>> for Observed<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Body,
{
    type Response = http::Response<ObservedBody<RB>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let shared = self.shared.clone();
        let labels = shared.methods.labels(request.uri().path());
        let span = tracing::info_span!(
            "rpc",
            otel.name = %format_args!("{}/{}", labels.service, labels.method),
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = %labels.service,
            rpc.method = %labels.method,
            rpc.grpc.status_code = Empty,
            server.address = %shared.local.ip(),
            server.port = shared.local.port(),
            bertd.api_key = Empty,
            bertd.client_subject = Empty,
        );
        let parent = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&Headers(request.headers()))
        });
        // Fails only when traces are off, where there is nothing to continue.
        let _ = span.set_parent(parent);
        let record = Record {
            shared,
            labels,
            span: span.clone(),
            start: Instant::now(),
            done: false,
        };
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Box::pin(
            async move {
                let mut record = record;
                let response = future.await;
                match &response {
                    Ok(r) => {
                        if let Some(code) = status_of(r.headers()) {
                            record.finish(code);
                        }
                    }
                    Err(_) => record.finish(Code::Unknown),
                }
                response.map(|r| r.map(|body| ObservedBody { body, record }))
            }
            .instrument(span),
        )
    }
}

fn status_of(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?;
    let code: i32 = value.to_str().ok()?.parse().ok()?;
    Some(Code::from_i32(code))
}

/// A call in progress, finished once.
struct Record {
    shared: Arc<Shared>,
    labels: MethodLabels,
    span: tracing::Span,
    start: Instant,
    done: bool,
}

impl Record {
    fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let metrics = &self.shared.metrics;
        metrics
            .requests
            .get_or_create(&CodeLabels {
                service: self.labels.service.clone(),
                method: self.labels.method.clone(),
                code: code_name(code).into(),
            })
            .inc();
        metrics
            .duration
            .get_or_create(&self.labels)
            .observe(self.start.elapsed().as_secs_f64());
        self.span.record("rpc.grpc.status_code", code as i64);
        if is_server_error(code) {
            self.span.record("otel.status_code", "ERROR");
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        // Dropped before a status: the client reset the call or the connection went away.
        self.finish(Code::Cancelled);
    }
}

/// Codes that mark a server span as failed, per OpenTelemetry's gRPC conventions; the others
/// are the client's doing.
fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// The code's name as gRPC spells it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

pin_project_lite::pin_project! {
    /// A response body that finishes its call's record when the status goes out.
    pub struct ObservedBody<B> {
        #[pin]
        body: B,
        record: Record,
    }
}

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_of) {
                    this.record.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => this.record.finish(Code::Unknown),
            Poll::Ready(None) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_come_from_the_descriptors_and_anything_else_is_unknown() {
        let methods =
            Methods::from_descriptor_sets(&[tonic_health::pb::FILE_DESCRIPTOR_SET]).unwrap();
        let check = methods.labels("/grpc.health.v1.Health/Check");
        assert_eq!(
            (check.service.as_str(), check.method.as_str()),
            ("grpc.health.v1.Health", "Check")
        );
        let made_up = methods.labels("/grpc.health.v1.Health/Ch3ck");
        assert_eq!(
            (made_up.service.as_str(), made_up.method.as_str()),
            ("unknown", "unknown")
        );
    }

    #[test]
    fn code_names_are_the_ones_grpc_spells() {
        assert_eq!(code_name(Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
        assert_eq!(code_name(Code::from_i32(5)), "NOT_FOUND");
    }
}
