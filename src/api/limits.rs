//! A layer that makes tonic's answer to an oversized unary request RESOURCE_EXHAUSTED (gRPC's
//! code for a message over the receive limit) instead of OUT_OF_RANGE.
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderValue;
use tower::{Layer, Service};

#[derive(Debug, Clone, Copy, Default)]
pub struct OversizeIsResourceExhausted;

impl<S> Layer<S> for OversizeIsResourceExhausted {
    type Service = OversizeService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        OversizeService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct OversizeService<S> {
    inner: S,
}

impl<S, Req, Body> Service<http::Request<Req>> for OversizeService<S>
where
    S: Service<http::Request<Req>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Req>) -> Self::Future {
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            let headers = response.headers_mut();
            let oversized = headers.get("grpc-status").is_some_and(|s| s == "11")
                && headers
                    .get("grpc-message")
                    .and_then(|m| m.to_str().ok())
                    .is_some_and(|m| m.replace("%20", " ").contains("message length too large"));
            if oversized {
                headers.insert("grpc-status", HeaderValue::from_static("8"));
            }
            Ok(response)
        })
    }
}
