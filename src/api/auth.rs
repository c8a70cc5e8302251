//! Who is calling, decided before any handler runs: a tower layer over every service.
//!
//! - With API keys configured, a call needs `authorization: Bearer KEY` unless its service is
//!   open: health when `auth.health_open`, reflection when `auth.reflection` is open. A missing
//!   and a wrong key get the same UNAUTHENTICATED, so a caller cannot tell them apart.
//! - With mTLS, the client's certificate subject is known too.
//! - The caller (`Caller`: its key's quota, its subject) goes into the request's extensions for
//!   the handlers, which charge the key's quota per request (`charge`); the key's name and the
//!   subject go on the call's span. The key itself is never recorded anywhere.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use super::error::ApiError;
use crate::security::KeyStore;
use crate::security::quota::{Quota, QuotaError, QuotaHeld};
use crate::security::tls::client_subject;
use crate::telemetry::metrics::{KeyLabels, KeyRefusalLabels, RpcMetrics};

/// The one answer to a call without a valid key.
pub const UNAUTHENTICATED: &str = "missing or invalid API key: send `authorization: Bearer <key>`";

/// Who made a call, as far as the server knows.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The quota of the key the call presented (its name is the quota's).
    pub key: Option<Arc<Quota>>,
    /// The subject of the client's certificate, under mTLS.
    pub subject: Option<String>,
}

/// Which services a call may use without a key.
#[derive(Debug, Clone, Copy)]
pub struct OpenServices {
    pub health: bool,
    pub reflection: bool,
}

#[derive(Clone)]
pub struct Authenticate {
    keys: Arc<KeyStore>,
    open: OpenServices,
    metrics: Arc<RpcMetrics>,
}

impl Authenticate {
    pub fn new(keys: Arc<KeyStore>, open: OpenServices, metrics: Arc<RpcMetrics>) -> Self {
        Authenticate {
            keys,
            open,
            metrics,
        }
    }

    fn is_open(&self, path: &str) -> bool {
        let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
        match service {
            "grpc.health.v1.Health" => self.open.health,
            "grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection" => {
                self.open.reflection
            }
            _ => false,
        }
    }

    /// The caller of `request`, or `None` when it needs a key and has none in force.
    fn caller<B>(&self, request: &http::Request<B>) -> Option<Caller> {
        let subject = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs())
            .and_then(|certs| certs.first().and_then(client_subject));
        if !self.keys.enabled() || self.is_open(request.uri().path()) {
            return Some(Caller { key: None, subject });
        }
        let token = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|value| bearer(value.as_bytes()))?;
        let key = self.keys.check(token)?;
        Some(Caller {
            key: Some(key),
            subject,
        })
    }
}

/// The token of an `authorization: Bearer TOKEN` value (the scheme in any case).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    let scheme = value.get(..SCHEME.len())?;
    scheme
        .eq_ignore_ascii_case(SCHEME)
        .then(|| value[SCHEME.len()..].trim_ascii())
}

impl<S> Layer<S> for Authenticate {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Authenticate,
}

impl<S, B, R> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let Some(caller) = self.auth.caller(&request) else {
            self.auth.metrics.unauthenticated.inc();
            let response = Status::unauthenticated(UNAUTHENTICATED).into_http();
            return Box::pin(async move { Ok(response) });
        };
        // The call's span is current here (telemetry::rpc::Observe is the outer layer).
        let span = tracing::Span::current();
        if let Some(key) = &caller.key {
            span.record("bertd.api_key", &**key.name());
        }
        if let Some(subject) = &caller.subject {
            span.record("bertd.client_subject", subject.as_str());
        }
        request.extensions_mut().insert(caller);
        Box::pin(self.inner.call(request))
    }
}

/// What a request of `inputs` inputs holds of its caller's quota, if its caller has one.
pub type Charged = Option<QuotaHeld>;

/// Charges a unary request to its caller's key: at once, or RESOURCE_EXHAUSTED.
pub fn charge(
    caller: Option<&Caller>,
    inputs: usize,
    metrics: &RpcMetrics,
) -> Result<Charged, ApiError> {
    let Some(quota) = caller.and_then(|c| c.key.as_ref()) else {
        return Ok(None);
    };
    let held = quota
        .try_take(inputs)
        .map_err(|e| refused(quota, e, metrics))?;
    count(quota, inputs, metrics);
    Ok(Some(held))
}

/// Charges a stream's message to the stream's key, waiting for the key's quota.
pub async fn charge_waiting(
    quota: Option<&Arc<Quota>>,
    inputs: usize,
    metrics: &RpcMetrics,
) -> Result<Charged, ApiError> {
    let Some(quota) = quota else {
        return Ok(None);
    };
    let held = quota
        .take(inputs)
        .await
        .map_err(|e| refused(quota, e, metrics))?;
    count(quota, inputs, metrics);
    Ok(Some(held))
}

fn count(quota: &Quota, inputs: usize, metrics: &RpcMetrics) {
    metrics
        .key_inputs
        .get_or_create(&KeyLabels {
            key: quota.name().to_string(),
        })
        .inc_by(inputs as u64);
}

fn refused(quota: &Quota, error: QuotaError, metrics: &RpcMetrics) -> ApiError {
    let limit = match error {
        QuotaError::TooLarge { .. } => "too_large",
        QuotaError::InFlight { .. } => "inflight",
        QuotaError::Rate { .. } => "rate",
    };
    metrics
        .key_refusals
        .get_or_create(&KeyRefusalLabels {
            key: quota.name().to_string(),
            limit,
        })
        .inc();
    ApiError::resource_exhausted(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"BEARER abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
    }
}
