//! The gRPC edge: the services of `proto/bert/v1`, health and reflection, and the server's life
//! from start (NOT_SERVING while workers load and warm up, then SERVING) to a graceful stop
//! (NOT_SERVING, no new calls, in-flight calls drained within `server.shutdown_timeout_ms`).
mod classifier;
mod encoder;
mod error;
mod info;
mod limits;
pub mod proto;
mod request;
mod stream;
mod tokenizer;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::batch::{Scheduler, SchedulerConfig, Stats};
use crate::config::{ConfigError, Settings};
use crate::engine::DType;
use crate::engine::pool::{PoolConfig, WorkerPool};
use crate::model::{ModelError, ModelSpec};
use crate::tokenize::BertTokenizer;
pub use error::ApiError;
use proto::bert::v1::classifier_server::ClassifierServer;
use proto::bert::v1::encoder_server::EncoderServer;
use proto::bert::v1::model_server::ModelServer;
use proto::bert::v1::tokenizer_server::TokenizerServer;

/// The health-checked service names; "" stands for the server as a whole.
pub const SERVICES: [&str; 5] = [
    "",
    "bert.v1.Encoder",
    "bert.v1.Classifier",
    "bert.v1.Tokenizer",
    "bert.v1.Model",
];

/// What every handler reads.
pub struct AppState {
    pub settings: Settings,
    /// The model as served: its max_length capped by `limits.max_input_tokens`.
    pub spec: Arc<ModelSpec>,
    pub tokenizer: Arc<BertTokenizer>,
    pub scheduler: Arc<Scheduler>,
    pub devices: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// A running server.
pub struct ServerHandle {
    /// Where it listens (the real port when 0 was asked for).
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    stop: Option<oneshot::Sender<()>>,
    ready: watch::Receiver<bool>,
    /// The server's life; taken by `ready` when start-up fails, to report why.
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl ServerHandle {
    /// Waits until every worker has warmed up and health says SERVING; fails if start-up failed.
    pub async fn ready(&mut self) -> Result<(), ServeError> {
        if self.ready.wait_for(|r| *r).await.is_ok() {
            return Ok(());
        }
        // The lifecycle ended before it was ready: its result says why.
        let ended = match self.task.take() {
            Some(task) => task.await,
            None => Ok(Ok(())),
        };
        match ended {
            Ok(Err(e)) => Err(e),
            _ => Err(ServeError::Model(ModelError::Device {
                device: "worker".into(),
                reason: "the server stopped during start-up".into(),
            })),
        }
    }

    /// Starts a graceful stop (as SIGTERM does).
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for the server to end: after `shutdown`, once drained.
    pub async fn wait(self) -> Result<(), ServeError> {
        match self.task {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

async fn set_health(reporter: &HealthReporter, status: ServingStatus, has_classifier: bool) {
    for service in SERVICES {
        let status = if service == "bert.v1.Classifier" && !has_classifier {
            ServingStatus::NotServing
        } else {
            status
        };
        reporter.set_service_status(service, status).await;
    }
}

/// Loads the model's description and tokenizer, binds, and starts serving with health
/// NOT_SERVING; the workers load and warm up in the background (see `ServerHandle::ready`).
pub async fn start(settings: Settings) -> Result<ServerHandle, ServeError> {
    settings.validate()?;
    let addr = settings.addr()?;
    let devices = settings.devices()?;
    let dtype: DType = settings.dtype()?;

    let mut spec = ModelSpec::load(&settings.model.dir)?;
    spec.max_length = settings.max_input_tokens(spec.max_length)?;
    let spec = Arc::new(spec);
    let tokenizer = Arc::new(BertTokenizer::load(&spec)?);

    let stats = Arc::new(Stats::default());
    let b = &settings.batching;
    let scheduler = Arc::new(Scheduler::new(
        SchedulerConfig {
            max_batch_tokens: b.max_batch_tokens,
            max_batch_size: b.max_batch_size,
            max_batch_delay: settings.batch_delay(),
            queue_capacity: b.queue_capacity,
            stream_queue_capacity: b.stream_queue_capacity,
        },
        stats.clone(),
    ));
    let state = Arc::new(AppState {
        settings: settings.clone(),
        spec: spec.clone(),
        tokenizer,
        scheduler: scheduler.clone(),
        devices: devices
            .iter()
            .flat_map(|d| std::iter::repeat_n(d.to_string(), settings.engine.workers_per_device))
            .collect(),
    });

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let has_classifier = spec.classifier.is_some();
    set_health(&reporter, ServingStatus::NotServing, false).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let max_message = settings.server.max_message_bytes;
    let (stop_accepting, accepting_stopped) = oneshot::channel::<()>();
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(settings.server.max_concurrent_streams)
        .layer(limits::OversizeIsResourceExhausted)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            EncoderServer::new(encoder::EncoderService {
                state: state.clone(),
            })
            .max_decoding_message_size(max_message),
        )
        .add_service(
            ClassifierServer::new(classifier::ClassifierService {
                state: state.clone(),
            })
            .max_decoding_message_size(max_message),
        )
        .add_service(
            TokenizerServer::new(tokenizer::TokenizerService {
                state: state.clone(),
            })
            .max_decoding_message_size(max_message),
        )
        .add_service(ModelServer::new(info::ModelService {
            state: state.clone(),
        }));
    // Without TCP_NODELAY, Nagle's algorithm and delayed ACKs add ~40 ms to small responses.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = accepting_stopped.await;
    }));

    let (stop, stop_requested) = oneshot::channel::<()>();
    let (ready_tx, ready) = watch::channel(false);
    let pool_config = PoolConfig {
        devices,
        workers_per_device: settings.engine.workers_per_device,
        dtype,
        cpu_threads: settings.engine.cpu_threads,
    };
    let shutdown_timeout = settings.shutdown_timeout();
    let task = tokio::spawn(async move {
        let runtime = tokio::runtime::Handle::current();
        let pool_scheduler = scheduler.clone();
        let started = tokio::task::spawn_blocking(move || {
            WorkerPool::start(spec, &pool_config, pool_scheduler, runtime)
        });
        let pool = match started.await.expect("worker start-up does not panic") {
            Ok(pool) => pool,
            Err(e) => {
                tracing::error!(error = %e, "workers failed to start");
                let _ = stop_accepting.send(());
                let _ = server.await;
                return Err(e.into());
            }
        };
        set_health(&reporter, ServingStatus::Serving, has_classifier).await;
        let _ = ready_tx.send(true);
        tracing::info!(%addr, "serving");

        tokio::select! {
            _ = stop_requested => {}
            result = &mut server => {
                // The server ended by itself: a transport failure.
                scheduler.close();
                let _ = tokio::task::spawn_blocking(move || pool.join()).await;
                return result.expect("the server task does not panic").map_err(Into::into);
            }
        }
        tracing::info!("shutting down: no new calls, draining in-flight ones");
        set_health(&reporter, ServingStatus::NotServing, false).await;
        let _ = stop_accepting.send(());
        match tokio::time::timeout(shutdown_timeout, &mut server).await {
            Ok(result) => result.expect("the server task does not panic")?,
            Err(_) => {
                tracing::warn!(timeout = ?shutdown_timeout, "drain timed out; cutting remaining calls");
                server.abort();
            }
        }
        scheduler.close();
        let _ = tokio::task::spawn_blocking(move || pool.join()).await;
        tracing::info!("stopped");
        Ok(())
    });

    Ok(ServerHandle {
        addr,
        stats,
        stop: Some(stop),
        ready,
        task: Some(task),
    })
}
