//! `grpc.health.v1.Health` that ends its Watch streams when the server drains. tonic-health's
//! own service keeps a Watch open for as long as the client stays; a drain would then wait for
//! every watching probe until its timeout. This wraps it: Check is unchanged, and every Watch
//! stream ends, with NOT_SERVING as its last update, once draining starts.
use std::pin::Pin;

use futures_util::StreamExt;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::HealthService;

pub struct DrainingHealth {
    inner: HealthService,
    draining: CancellationToken,
}

impl DrainingHealth {
    pub fn new(inner: HealthService, draining: CancellationToken) -> Self {
        DrainingHealth { inner, draining }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for DrainingHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let updates = self.inner.watch(request).await?.into_inner();
        let draining = self.draining.clone();
        // The updates until draining starts, then NOT_SERVING (which the client may have seen
        // already: a repeat is harmless), then the end of the stream.
        let last = HealthCheckResponse {
            status: ServingStatus::NotServing as i32,
        };
        let stream = updates
            .take_until(async move { draining.cancelled().await })
            .chain(tokio_stream::once(Ok(last)));
        Ok(Response::new(Box::pin(stream)))
    }
}
