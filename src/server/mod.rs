//! The server's life: wiring the layers together, then start → ready → serve → drain → end.
//!
//! `run` takes a bound listener and a shutdown future and knows no signals (the command line
//! turns SIGTERM into that future), so tests drive the whole life in-process. Its phases:
//! - **start**: health says NOT_SERVING while the workers load their replicas and warm up; a
//!   shutdown now ends the server at once, leaving loading threads behind;
//! - **serve**: health says SERVING while at least one worker runs (the pool restarts failed
//!   ones; while none runs, NOT_SERVING and calls fail fast with UNAVAILABLE);
//! - **drain**, on shutdown: health turns NOT_SERVING, connections are asked to go away (GOAWAY),
//!   no new calls are accepted, streams stop reading and end after answering what they had
//!   admitted, health Watch streams end. Calls get `server.shutdown_timeout_ms` to finish;
//!   then what is still queued fails with UNAVAILABLE, and whatever remains is cut after a short
//!   grace. Workers are joined within a bound;
//! - **end**: `Ok` after a drain, an error when start-up or the transport failed.
mod calls;
mod incoming;
mod metrics;
mod security;

use security::Security;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use crate::api::limits::OversizeIsResourceExhausted;
use crate::api::{self, AppState, Budgets, DrainingHealth, SERVICES};
use crate::batch::budget::ByteBudget;
use crate::batch::pool::{LoadReplica, PoolConfig, PoolStatus, WorkerPool};
use crate::batch::{JobError, Scheduler, SchedulerConfig, Stats};
use crate::config::{ConfigError, ReflectionAccess, Settings};
use crate::engine::Compute;
use crate::engine::replica::ReplicaPlan;
use crate::model::{ModelError, ModelSpec};
use crate::telemetry::metrics::RpcMetrics;
use crate::telemetry::rpc::{Methods, Observe};
use crate::tokenize::BertTokenizer;
use crate::tokenize::pool::TokenizePool;

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
    #[error("starting the tokenizer threads: {0}")]
    Threads(std::io::Error),
    #[error("workers failed to start: {0}")]
    Workers(String),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("reading the served descriptors: {0}")]
    Descriptors(#[from] prost::DecodeError),
    #[error(transparent)]
    Security(#[from] security::SecurityError),
    #[error("the server was stopped before it was ready")]
    StoppedBeforeReady,
    #[error("the server's life ended in a panic: {0}")]
    Panicked(String),
}

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Serving,
    Draining,
}

/// Makes the workers' replicas from the plan; the default loads the model with `ReplicaPlan`.
pub type Replicas = Box<dyn FnOnce(ReplicaPlan) -> LoadReplica + Send>;

/// The model's own replicas.
pub fn engine_replicas() -> Replicas {
    Box::new(|plan: ReplicaPlan| -> LoadReplica {
        Arc::new(move |index| {
            plan.load(index)
                .map(|engine| Box::new(engine) as Box<dyn Compute>)
                .map_err(|e| e.to_string())
        })
    })
}

/// A running server.
pub struct ServerHandle {
    /// Where it listens (the real port when 0 was asked for).
    pub addr: SocketAddr,
    /// Where /metrics is served, when `telemetry.metrics_addr` is set (the real port when 0 was
    /// asked for).
    pub metrics_addr: Option<SocketAddr>,
    pub stats: Arc<Stats>,
    stop: Option<oneshot::Sender<()>>,
    phase: watch::Receiver<Phase>,
    /// The server's life; taken by `ready` when start-up fails, to report why.
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl ServerHandle {
    /// Waits until every worker has warmed up and health says SERVING; fails if start-up did.
    pub async fn ready(&mut self) -> Result<(), ServeError> {
        let reached = self
            .phase
            .wait_for(|p| *p != Phase::Starting)
            .await
            .map(|p| *p);
        match reached {
            Ok(Phase::Serving) => Ok(()),
            Ok(_) => Err(ServeError::StoppedBeforeReady),
            // The server's life ended during start-up: its result says why.
            Err(_) => match self.task.take() {
                Some(task) => match task.await {
                    Ok(Ok(())) => Err(ServeError::StoppedBeforeReady),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(ServeError::Panicked(e.to_string())),
                },
                None => Err(ServeError::StoppedBeforeReady),
            },
        }
    }

    /// The phase now.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Starts a graceful stop (as SIGTERM does).
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for the server to end: after `shutdown`, once drained. After a failed `ready`,
    /// which has reported the failure, there is nothing left to wait for.
    pub async fn wait(self) -> Result<(), ServeError> {
        match self.task {
            Some(task) => task
                .await
                .unwrap_or_else(|e| Err(ServeError::Panicked(e.to_string()))),
            None => Err(ServeError::StoppedBeforeReady),
        }
    }
}

/// Starts the server on the model's own replicas (see `start_with`).
pub async fn start(settings: Settings) -> Result<ServerHandle, ServeError> {
    start_with(settings, engine_replicas()).await
}

/// Checks the settings, reads the model's description and tokenizer, binds, and runs the server
/// in the background until `ServerHandle::shutdown`. Workers get their replicas from `replicas`.
pub async fn start_with(
    settings: Settings,
    replicas: Replicas,
) -> Result<ServerHandle, ServeError> {
    let addr = settings.server.addr;
    let mut parts = Parts::load(settings, replicas)?;
    let listener = bind(addr).await?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    let metrics_addr = parts.bind_metrics().await?;
    let stats = parts.stats.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let (phase_tx, phase) = watch::channel(Phase::Starting);
    let task = tokio::spawn(run(
        listener,
        parts,
        async {
            let _ = stopped.await;
        },
        phase_tx,
    ));
    Ok(ServerHandle {
        addr,
        metrics_addr,
        stats,
        stop: Some(stop),
        phase,
        task: Some(task),
    })
}

/// What the server is made of, before it runs.
pub struct Parts {
    settings: Settings,
    spec: Arc<ModelSpec>,
    tokenizer: Arc<BertTokenizer>,
    stats: Arc<Stats>,
    replicas: Replicas,
    metrics: Option<TcpListener>,
    security: Security,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

impl Parts {
    /// Reads the model's description and tokenizer (the weights are the workers' to load).
    pub fn load(mut settings: Settings, replicas: Replicas) -> Result<Parts, ServeError> {
        settings.validate()?;
        let mut spec = ModelSpec::load(&settings.model.dir)?;
        settings.fit_default_batch_tokens(spec.max_length);
        spec.max_length = settings.max_input_tokens(spec.max_length)?;
        let spec = Arc::new(spec);
        let tokenizer = Arc::new(BertTokenizer::load(&spec)?);
        let security = Security::load(&settings)?;
        Ok(Parts {
            security,
            settings,
            spec,
            tokenizer,
            stats: Arc::new(Stats::default()),
            replicas,
            metrics: None,
        })
    }

    /// Binds the metrics endpoint's listener, when `telemetry.metrics_addr` is set (`run` does
    /// it otherwise); returns where it listens.
    pub async fn bind_metrics(&mut self) -> Result<Option<SocketAddr>, ServeError> {
        if self.metrics.is_none()
            && let Some(addr) = self.settings.telemetry.metrics_addr
        {
            self.metrics = Some(bind(addr).await?);
        }
        self.metrics
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()
            .map_err(|source| ServeError::Bind {
                addr: self
                    .settings
                    .telemetry
                    .metrics_addr
                    .unwrap_or(self.settings.server.addr),
                source,
            })
    }
}

/// How long calls still running when the drain timed out get to send what queued work failed
/// with, before they are cut.
const FLUSH_GRACE: Duration = Duration::from_millis(500);

/// How long the workers get to finish the batches they hold, after the drain.
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves on `listener` until `shutdown` resolves, then drains. See the module's docs.
pub async fn run(
    listener: TcpListener,
    parts: Parts,
    shutdown: impl Future<Output = ()>,
    phase: watch::Sender<Phase>,
) -> Result<(), ServeError> {
    let mut parts = parts;
    parts.bind_metrics().await?;
    let Parts {
        settings,
        spec,
        tokenizer,
        stats,
        replicas,
        metrics: metrics_listener,
        security,
    } = parts;
    let local = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: settings.server.addr,
        source,
    })?;
    let b = &settings.batching;
    let scheduler = Arc::new(Scheduler::new(
        SchedulerConfig {
            max_batch_tokens: settings.max_batch_tokens(),
            max_batch_size: settings.max_batch_size(),
            forward_cost_tokens: settings.forward_cost_tokens(),
            max_batch_delay: settings.batch_delay(),
            queue_capacity: b.queue_capacity,
            stream_queue_capacity: b.stream_queue_capacity,
            stream_share: b.stream_share,
        },
        stats,
    ));
    let plan = ReplicaPlan {
        spec: spec.clone(),
        devices: settings.engine.devices.clone(),
        workers_per_device: settings.engine.workers_per_device(),
        dtype: settings.engine.dtype,
        dense_kernel: settings.engine.dense_kernel,
        cuda_streams: settings.engine.cuda_streams,
        cpu_threads: settings.engine.cpu_threads,
        warm_up_batch: settings.max_batch_size(),
        warm_up_tokens: settings.max_batch_tokens(),
    };
    let devices: Vec<String> = plan
        .worker_devices()
        .iter()
        .map(|d| d.to_string())
        .collect();
    let mut pool = WorkerPool::start(
        PoolConfig {
            devices: devices.clone(),
            restart_backoff: Duration::from_millis(settings.engine.restart_backoff_ms),
            max_restart_backoff: Duration::from_millis(settings.engine.max_restart_backoff_ms),
        },
        replicas(plan),
        scheduler.clone(),
        tokio::runtime::Handle::current(),
    );
    let tokenize_threads = match settings.tokenization.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let draining = CancellationToken::new();
    let state = Arc::new(AppState {
        budgets: Budgets {
            unary: ByteBudget::new(
                "limits.unary_inflight_bytes",
                settings.limits.unary_inflight_bytes,
            ),
            streams: ByteBudget::new(
                "limits.stream_inflight_bytes",
                settings.limits.stream_inflight_bytes,
            ),
        },
        tokenize_pool: TokenizePool::new(tokenize_threads, 4 * tokenize_threads)
            .map_err(ServeError::Threads)?,
        settings: settings.clone(),
        spec: spec.clone(),
        tokenizer,
        scheduler: scheduler.clone(),
        devices,
        pool_status: pool.status(),
        draining: draining.clone(),
        metrics: Arc::new(RpcMetrics::default()),
    });
    let (health, health_service) = Health::new(&draining, spec.classifier.is_some());
    health.set(ServingStatus::NotServing).await;
    let stop_metrics = CancellationToken::new();
    if let Some(listener) = metrics_listener {
        let registry = Arc::new(metrics::registry(&state));
        tokio::spawn(crate::telemetry::metrics::serve(
            listener,
            registry,
            health.serving.subscribe(),
            stop_metrics.clone(),
        ));
    }
    // Stops the metrics endpoint however `run` ends.
    let _stop_metrics = stop_metrics.drop_guard();
    security.warn_if_exposed(local);
    let stop_reloading = CancellationToken::new();
    security.keep_reloaded(&stop_reloading, &state.metrics);
    let _stop_reloading = stop_reloading.drop_guard();
    let reflection_access = security.reflection(local);
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(api::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let server = &settings.server;
    let ms = Settings::optional_ms;
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(server.max_concurrent_streams)
        .http2_keepalive_interval(ms(server.http2_keepalive_interval_ms))
        .http2_keepalive_timeout(ms(server.http2_keepalive_timeout_ms));
    if let Some(age) = ms(server.max_connection_age_ms) {
        builder = builder
            .max_connection_age(age)
            .max_connection_age_grace(Duration::from_millis(server.max_connection_age_grace_ms));
    }
    let methods = Methods::from_descriptor_sets(&[
        api::proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    ])?;
    // Outermost first: the call's span, then who calls (before the call takes a place).
    let mut router = builder
        .layer(Observe::new(state.metrics.clone(), methods, local))
        .layer(security.authenticate(reflection_access, state.metrics.clone()))
        .layer(calls::CallLimit::new(server.max_concurrent_calls))
        .layer(OversizeIsResourceExhausted)
        .add_routes(api::routes(&state))
        .add_service(health_service);
    if reflection_access != ReflectionAccess::Off {
        router = router.add_service(reflection);
    }
    let stop_accepting = CancellationToken::new();
    let accepting = stop_accepting.clone();
    let connections = incoming::incoming(listener, server.max_connections);
    let stopped = async move { accepting.cancelled().await };
    let mut serving = match &security.tls {
        None => tokio::spawn(router.serve_with_incoming_shutdown(connections, stopped)),
        Some(tls) => tokio::spawn(router.serve_with_incoming_shutdown(
            incoming::tls(connections, tls.certificates.clone()),
            stopped,
        )),
    };

    // Start: until the workers are up, a shutdown ends the server at once.
    tokio::pin!(shutdown);
    tokio::select! {
        ready = pool.ready() => {
            if let Err(e) = ready {
                tracing::error!(error = %e, "workers failed to start");
                stop_accepting.cancel();
                let _ = serving.await;
                return Err(ServeError::Workers(e));
            }
        }
        _ = &mut shutdown => {
            tracing::info!("stopped during start-up");
            let _ = phase.send(Phase::Draining);
            scheduler.close();
            stop_accepting.cancel();
            draining.cancel();
            let _ = tokio::time::timeout(FLUSH_GRACE, &mut serving).await;
            serving.abort();
            return Ok(());
        }
        ended = &mut serving => {
            scheduler.close();
            return transport_ended(ended);
        }
    }

    health.set(ServingStatus::Serving).await;
    let _ = phase.send(Phase::Serving);
    tracing::info!(addr = %settings.server.addr, "serving");
    let follower = tokio::spawn(follow_workers(pool.status(), health.clone()));

    tokio::select! {
        _ = &mut shutdown => {}
        ended = &mut serving => {
            follower.abort();
            scheduler.close();
            return transport_ended(ended);
        }
    }

    // Drain.
    tracing::info!("shutting down: no new calls, draining in-flight ones");
    let _ = phase.send(Phase::Draining);
    follower.abort();
    health.set(ServingStatus::NotServing).await;
    stop_accepting.cancel();
    draining.cancel();
    let timeout = settings.shutdown_timeout();
    if tokio::time::timeout(timeout, &mut serving).await.is_err() {
        tracing::warn!(
            ?timeout,
            queued = scheduler.queued(),
            "the drain timed out; queued inputs fail with UNAVAILABLE"
        );
        scheduler.fail_queued(JobError::ShuttingDown);
        if tokio::time::timeout(FLUSH_GRACE, &mut serving)
            .await
            .is_err()
        {
            tracing::warn!("cutting the calls that remain");
            serving.abort();
        }
    }
    scheduler.close();
    let joined = tokio::task::spawn_blocking(move || pool.join(JOIN_TIMEOUT))
        .await
        .unwrap_or(false);
    if !joined {
        tracing::warn!(timeout = ?JOIN_TIMEOUT, "workers still busy; leaving them");
    }
    tracing::info!("stopped");
    Ok(())
}

fn transport_ended(
    ended: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), ServeError> {
    match ended {
        Ok(result) => result.map_err(Into::into),
        Err(e) => Err(ServeError::Panicked(e.to_string())),
    }
}

/// What the server says of its health, in one place: to the gRPC health service, and to the
/// metrics port's `/health` through `serving` (the whole server's status, service "").
#[derive(Clone)]
struct Health {
    reporter: HealthReporter,
    serving: watch::Sender<bool>,
    has_classifier: bool,
}

impl Health {
    /// The health and the service that answers from it, whose Watch streams end when the server
    /// drains.
    fn new(
        draining: &CancellationToken,
        has_classifier: bool,
    ) -> (Self, HealthServer<DrainingHealth>) {
        let reporter = HealthReporter::new();
        let service = HealthService::from_health_reporter(reporter.clone());
        let server = HealthServer::new(DrainingHealth::new(service, draining.clone()));
        let health = Health {
            reporter,
            serving: watch::Sender::new(false),
            has_classifier,
        };
        (health, server)
    }

    /// Every service takes `status`, but Classifier stays NOT_SERVING without a classifier.
    /// `/health` changes first, so whoever sees the gRPC status change sees it there too.
    async fn set(&self, status: ServingStatus) {
        self.serving.send_replace(status == ServingStatus::Serving);
        for service in SERVICES {
            let status = if service == "bert.v1.Classifier" && !self.has_classifier {
                ServingStatus::NotServing
            } else {
                status
            };
            self.reporter.set_service_status(service, status).await;
        }
    }
}

/// Health follows the workers while serving: NOT_SERVING while no worker can run.
async fn follow_workers(mut status: watch::Receiver<PoolStatus>, health: Health) {
    let mut serving = true;
    while status.changed().await.is_ok() {
        let available = !status.borrow_and_update().unavailable;
        if available != serving {
            serving = available;
            let status = if available {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            tracing::warn!(health = ?status, "health follows the workers");
            health.set(status).await;
        }
    }
}
