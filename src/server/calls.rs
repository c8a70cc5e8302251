//! A cap on calls open at once over all connections (`server.max_concurrent_calls`). A call over
//! the cap is shed at once with RESOURCE_EXHAUSTED rather than queued, so overload costs no
//! work; health checks are exempt, so probes still see the server under load. A call holds its
//! place until its response body ends, which for a stream is when the stream ends.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

#[derive(Debug, Clone)]
pub struct CallLimit {
    places: Arc<Semaphore>,
    max: usize,
}

impl CallLimit {
    pub fn new(max: usize) -> Self {
        CallLimit {
            places: Arc::new(Semaphore::new(max)),
            max,
        }
    }
}

impl<S> Layer<S> for CallLimit {
    type Service = CallLimitService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CallLimitService {
            inner,
            limit: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CallLimitService<S> {
    inner: S,
    limit: CallLimit,
}

/// Calls to these paths are never shed.
const EXEMPT: &str = "/grpc.health.v1.Health/";

impl<S, Req> Service<http::Request<Req>> for CallLimitService<S>
where
    S: Service<http::Request<Req>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Req>) -> Self::Future {
        let place = if request.uri().path().starts_with(EXEMPT) {
            None
        } else {
            match self.limit.places.clone().try_acquire_owned() {
                Ok(place) => Some(place),
                Err(_) => {
                    let status = tonic::Status::resource_exhausted(format!(
                        "{} calls are open, the most this server takes at once (server.max_concurrent_calls); retry later",
                        self.limit.max
                    ));
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            }
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(match place {
                None => response,
                Some(place) => response.map(|body| {
                    tonic::body::Body::new(HoldingBody {
                        inner: body,
                        _place: place,
                    })
                }),
            })
        })
    }
}

/// A response body that holds its call's place until it is dropped.
struct HoldingBody {
    inner: tonic::body::Body,
    _place: OwnedSemaphorePermit,
}

impl Body for HoldingBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
