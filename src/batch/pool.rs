//! The worker pool: one dedicated thread per model replica, each running the worker loop, and a
//! supervisor that keeps them running.
//!
//! - Start-up: every worker loads its replica; the pool is ready when all have, and start-up
//!   fails with the first worker that cannot (a wrong device or dtype is the operator's to fix,
//!   not something to retry).
//! - After start-up, a worker whose replica broke or whose thread died is started again, after a
//!   backoff that doubles with each failure in a row (`restart_backoff` to
//!   `max_restart_backoff`), and counted in `Stats::worker_restarts`.
//! - While no worker runs and starting one again has failed, the scheduler is marked unavailable
//!   (queued inputs fail at once, new ones are refused) and the pool's status says so, for
//!   health; when one runs again, both recover. A worker that breaks is not enough: its inputs
//!   wait for the restart, which usually succeeds.
//! - The pool ends once the scheduler is closed and every worker has drained it; `join` waits
//!   for that within a bound.
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::watch;

use super::worker::{WorkerExit, work};
use super::{Scheduler, Stats};
use crate::engine::Compute;
use crate::panic_message;

/// Loads worker N's replica, on that worker's thread.
pub type LoadReplica = Arc<dyn Fn(usize) -> Result<Box<dyn Compute>, String> + Send + Sync>;

#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Each worker's device (`cpu`, `cuda:0`, ...): one worker each.
    pub devices: Vec<String>,
    pub restart_backoff: Duration,
    pub max_restart_backoff: Duration,
}

/// What the pool says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolStatus {
    /// Workers with a loaded replica, running the loop.
    pub running: usize,
    /// Whether every worker has loaded its replica once.
    pub started: bool,
    /// Why start-up failed, if it did.
    pub start_failure: Option<String>,
    /// The latest failure of a worker, for health and logs.
    pub last_failure: Option<String>,
    /// No worker runs and starting one again has failed: calls fail fast until one does.
    pub unavailable: bool,
    /// Whether every worker has ended.
    pub ended: bool,
}

enum Event {
    Loaded(usize),
    LoadFailed(usize, String),
    Exited(usize, WorkerExit),
}

pub struct WorkerPool {
    status: watch::Receiver<PoolStatus>,
    supervisor: Option<JoinHandle<()>>,
    /// Disconnected when the supervisor ends.
    done: Receiver<()>,
}

impl WorkerPool {
    /// Starts the workers and their supervisor; see `ready` for when they are up.
    pub fn start(
        config: PoolConfig,
        load: LoadReplica,
        scheduler: Arc<Scheduler>,
        runtime: Handle,
    ) -> WorkerPool {
        let (status_tx, status) = watch::channel(PoolStatus::default());
        let (done_tx, done) = channel::<()>();
        let supervisor = std::thread::Builder::new()
            .name("bertd-supervisor".into())
            .spawn(move || {
                Supervisor {
                    config,
                    load,
                    scheduler,
                    runtime,
                    status: status_tx,
                    events: channel(),
                    _done: done_tx,
                }
                .run()
            })
            .expect("spawning the supervisor thread");
        WorkerPool {
            status,
            supervisor: Some(supervisor),
            done,
        }
    }

    /// The pool's status as it changes.
    pub fn status(&self) -> watch::Receiver<PoolStatus> {
        self.status.clone()
    }

    /// Waits until every worker has loaded its replica, or fails with the first that could not.
    pub async fn ready(&mut self) -> Result<(), String> {
        let status = self
            .status
            .wait_for(|s| s.started || s.start_failure.is_some())
            .await
            .map_err(|_| "the worker pool stopped during start-up".to_string())?;
        match &status.start_failure {
            Some(failure) => Err(failure.clone()),
            None => Ok(()),
        }
    }

    /// Waits, at most `timeout`, for every worker to end (they do once the scheduler is closed
    /// and drained); false when some did not in time.
    pub fn join(mut self, timeout: Duration) -> bool {
        match self.done.recv_timeout(timeout) {
            Err(RecvTimeoutError::Timeout) => false,
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                if let Some(supervisor) = self.supervisor.take() {
                    let _ = supervisor.join();
                }
                true
            }
        }
    }
}

struct Supervisor {
    config: PoolConfig,
    load: LoadReplica,
    scheduler: Arc<Scheduler>,
    runtime: Handle,
    status: watch::Sender<PoolStatus>,
    events: (Sender<Event>, Receiver<Event>),
    _done: Sender<()>,
}

impl Supervisor {
    fn run(self) {
        let workers = self.config.devices.len();
        for index in 0..workers {
            self.spawn(index);
        }
        let mut loaded_once = vec![false; workers];
        let mut failures_in_a_row = vec![0u32; workers];
        let mut restart_at: Vec<Option<Instant>> = vec![None; workers];
        let mut ended = 0;
        while ended < workers {
            let next_restart = restart_at.iter().flatten().min().copied();
            let event = match next_restart {
                Some(at) => match self
                    .events
                    .1
                    .recv_timeout(at.saturating_duration_since(Instant::now()))
                {
                    Ok(event) => Some(event),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                },
                None => match self.events.1.recv() {
                    Ok(event) => Some(event),
                    Err(_) => return,
                },
            };
            match event {
                None => {
                    let now = Instant::now();
                    for (index, at) in restart_at.iter_mut().enumerate() {
                        if at.is_some_and(|at| at <= now) {
                            *at = None;
                            if self.scheduler.is_closed() {
                                ended += 1;
                            } else {
                                Stats::add(&self.scheduler.stats().worker_restarts, 1);
                                self.spawn(index);
                            }
                        }
                    }
                }
                Some(Event::Loaded(index)) => {
                    loaded_once[index] = true;
                    failures_in_a_row[index] = 0;
                    // The scheduler first: whoever sees the status sees a scheduler that agrees.
                    self.scheduler.set_available();
                    self.status.send_modify(|s| {
                        s.running += 1;
                        s.started |= loaded_once.iter().all(|&l| l);
                        s.unavailable = false;
                    });
                }
                Some(Event::LoadFailed(index, reason)) if !loaded_once[index] => {
                    // Start-up failed: nothing to retry, the configuration is at fault.
                    tracing::error!(worker = index, error = %reason, "a worker could not start");
                    self.scheduler.close();
                    self.status.send_modify(|s| {
                        s.start_failure.get_or_insert(reason);
                    });
                    ended += 1;
                }
                Some(Event::LoadFailed(index, reason)) => {
                    tracing::error!(worker = index, error = %reason, "a worker could not start again");
                    self.failed(index, reason, true, &mut failures_in_a_row, &mut restart_at);
                }
                Some(Event::Exited(_, WorkerExit::Closed)) => {
                    self.status.send_modify(|s| s.running -= 1);
                    ended += 1;
                }
                Some(Event::Exited(index, WorkerExit::Broken(reason))) => {
                    tracing::error!(worker = index, error = %reason, "a worker stopped; starting it again");
                    self.status.send_modify(|s| s.running -= 1);
                    self.failed(
                        index,
                        reason,
                        false,
                        &mut failures_in_a_row,
                        &mut restart_at,
                    );
                }
            }
        }
        self.status.send_modify(|s| s.ended = true);
    }

    /// Worker `index` is down: schedules its restart, and marks the scheduler unavailable when no
    /// worker runs and a restart has failed.
    fn failed(
        &self,
        index: usize,
        reason: String,
        restart_failed: bool,
        failures_in_a_row: &mut [u32],
        restart_at: &mut [Option<Instant>],
    ) {
        let backoff = self
            .config
            .restart_backoff
            .saturating_mul(2u32.saturating_pow(failures_in_a_row[index]))
            .min(self.config.max_restart_backoff);
        failures_in_a_row[index] = failures_in_a_row[index].saturating_add(1);
        restart_at[index] = Some(Instant::now() + backoff);
        let unavailable = restart_failed && self.status.borrow().running == 0;
        // The scheduler first: whoever sees the status sees a scheduler that agrees.
        if unavailable {
            self.scheduler.set_unavailable(reason.clone());
        }
        self.status.send_modify(|s| {
            s.last_failure = Some(reason);
            s.unavailable |= unavailable;
        });
    }

    fn spawn(&self, index: usize) {
        let device = self.config.devices[index].clone();
        let (load, scheduler, runtime, events) = (
            self.load.clone(),
            self.scheduler.clone(),
            self.runtime.clone(),
            self.events.0.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name(format!("bertd-worker-{index}"))
            .spawn(move || {
                let replica = match catch_unwind(AssertUnwindSafe(|| load(index))) {
                    Ok(Ok(replica)) => replica,
                    Ok(Err(reason)) => {
                        let _ = events.send(Event::LoadFailed(index, reason));
                        return;
                    }
                    Err(panic) => {
                        let reason = panic_message(panic.as_ref());
                        let _ = events.send(Event::LoadFailed(index, reason));
                        return;
                    }
                };
                let _ = events.send(Event::Loaded(index));
                let exit = catch_unwind(AssertUnwindSafe(|| {
                    work(replica.as_ref(), &scheduler, &runtime, &device)
                }))
                .unwrap_or_else(|panic| {
                    WorkerExit::Broken(format!(
                        "the worker thread panicked: {}",
                        panic_message(panic.as_ref())
                    ))
                });
                drop(replica);
                let _ = events.send(Event::Exited(index, exit));
            });
        if let Err(e) = spawned {
            let _ = self
                .events
                .0
                .send(Event::LoadFailed(index, format!("spawning a thread: {e}")));
        }
    }
}
