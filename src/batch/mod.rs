//! The batch layer: the one queue between every client and the workers, the scheduler that
//! turns it into batches, and the workers' loop that runs them and replies.
//!
//! - Admission comes before any work: a request takes queue room for all its inputs (`admit`)
//!   before it is tokenized, and byte budgets (`budget`) bound what requests and their responses
//!   may hold. Unary calls (`Lane::Interactive`) share `queue_capacity` slots and are refused at
//!   once when they are gone; streams share `stream_queue_capacity` slots and wait for one. A
//!   slot is freed when its input leaves the queue, so the queue never grows past the two.
//! - Unary calls anchor batches first, but streams get `stream_share` of the batches while both
//!   wait, and streams take turns among themselves (`queue`).
//! - A batch that is not full waits at most `max_batch_delay` from its oldest input's arrival.
//! - Inputs whose caller has gone (its receiver was dropped) or whose deadline has passed are
//!   dropped before they are computed, and counted.
//! - When no worker can run (`pool`), the scheduler is marked unavailable: queued inputs fail at
//!   once and new ones are refused, rather than left to hang.
pub mod budget;
pub mod pool;
mod queue;
mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError, oneshot};
use tokio::time::Instant;

use tracing::Span;

use crate::engine::{EngineError, Output, Task};
use crate::telemetry::metrics::{BatchMetrics, LaneLabels};
use crate::tokenize::Tokenized;
use queue::{BatchLimits, Queues};

/// Identifies a stream's inputs in the queue, for round robin between streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamId(u64);

/// Which queue an input waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Unary calls: served first, refused when their queue share is full.
    Interactive,
    /// A stream: waits for room, and takes turns with the other streams.
    Stream(StreamId),
}

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub max_batch_tokens: usize,
    pub max_batch_size: usize,
    /// A forward pass's fixed cost in padded tokens (how batches are cut: `queue`).
    pub forward_cost_tokens: usize,
    pub max_batch_delay: Duration,
    pub queue_capacity: usize,
    pub stream_queue_capacity: usize,
    /// The share of batches anchored by streams while unary calls also wait (0 to 1).
    pub stream_share: f64,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum JobError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the deadline passed before the input was computed")]
    DeadlineExceeded,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("no worker can run: {0}")]
    Unavailable(String),
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SubmitError {
    #[error("the queue is full ({capacity} inputs)")]
    QueueFull { capacity: usize },
    #[error("the server is shutting down")]
    Closed,
    #[error("no worker can run: {0}")]
    Unavailable(String),
}

pub type JobResult = Result<Output, JobError>;

/// What the batch layer measures since start: counters read by Model.GetInfo, by the metrics
/// endpoint (the same atomics, see `server::metrics`) and by tests, and the histograms of queue
/// waits and batches.
#[derive(Debug, Default)]
pub struct Stats {
    /// Real (unpadded) tokens of the inputs computed.
    pub tokens_computed: AtomicU64,
    /// Workers running a batch now.
    pub busy_workers: AtomicU64,
    pub histograms: BatchMetrics,
    pub inputs_computed: AtomicU64,
    pub batches: AtomicU64,
    pub inputs_cancelled: AtomicU64,
    pub inputs_expired: AtomicU64,
    pub requests_rejected: AtomicU64,
    /// Inputs that failed on the model, alone (after their batch was split down to them).
    pub inputs_failed: AtomicU64,
    /// Failed batches that were split in halves to find the failing inputs.
    pub batches_split: AtomicU64,
    /// Workers started again after their replica broke or their thread died.
    pub worker_restarts: AtomicU64,
}

impl Stats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }
}

/// One input waiting for, or in, a batch.
pub struct Job {
    pub tokens: Tokenized,
    pub task: Task,
    reply: oneshot::Sender<JobResult>,
    deadline: Option<Instant>,
    enqueued: Instant,
    lane: Lane,
    /// Whether a broken replica gave it back already; it is not given back twice.
    requeued: bool,
    /// The span of the request it belongs to; its batch links to it.
    pub span: Span,
    /// The request's `queue` span, which ends when the last of its inputs leaves the queue.
    queued: Span,
    _slot: OwnedSemaphorePermit,
}

impl Job {
    /// Sends the result; a caller that has gone meanwhile simply does not get it.
    pub fn reply(self, result: JobResult) {
        let _ = self.reply.send(result);
    }

    fn is_abandoned(&self) -> bool {
        self.reply.is_closed()
    }

    fn is_expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| d <= now)
    }
}

/// An input as handed to `submit`.
pub struct NewJob {
    pub tokens: Tokenized,
    pub task: Task,
}

/// Queue room for one request's inputs, taken before any work is done for it.
pub struct Admission {
    lane: Lane,
    slots: OwnedSemaphorePermit,
}

impl Admission {
    pub fn lane(&self) -> Lane {
        self.lane
    }
}

#[derive(Default)]
struct State {
    queues: Queues,
    closed: bool,
    /// Why no worker can run, while none can.
    unavailable: Option<String>,
}

pub struct Scheduler {
    config: SchedulerConfig,
    state: Mutex<State>,
    work_arrived: Notify,
    interactive_slots: Arc<Semaphore>,
    stream_slots: Arc<Semaphore>,
    next_stream: AtomicU64,
    stats: Arc<Stats>,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, stats: Arc<Stats>) -> Self {
        Scheduler {
            interactive_slots: Arc::new(Semaphore::new(config.queue_capacity)),
            stream_slots: Arc::new(Semaphore::new(config.stream_queue_capacity)),
            config,
            state: Mutex::default(),
            work_arrived: Notify::new(),
            next_stream: AtomicU64::new(0),
            stats,
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// A new stream's lane.
    pub fn stream_lane(&self) -> Lane {
        Lane::Stream(StreamId(self.next_stream.fetch_add(1, Ordering::Relaxed)))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The lock is never held across a panic that could poison it with broken invariants:
        // every critical section only moves jobs between queues.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refusal(&self) -> Option<SubmitError> {
        let state = self.state();
        if state.closed {
            Some(SubmitError::Closed)
        } else {
            state.unavailable.clone().map(SubmitError::Unavailable)
        }
    }

    /// Room for `inputs` inputs of a unary call, now or never.
    pub fn try_admit(&self, inputs: usize) -> Result<Admission, SubmitError> {
        if let Some(refusal) = self.refusal() {
            return Err(refusal);
        }
        let n = inputs.min(self.config.queue_capacity) as u32;
        match self.interactive_slots.clone().try_acquire_many_owned(n) {
            Ok(slots) => Ok(Admission {
                lane: Lane::Interactive,
                slots,
            }),
            Err(TryAcquireError::NoPermits) => {
                Stats::add(&self.stats.requests_rejected, 1);
                Err(SubmitError::QueueFull {
                    capacity: self.config.queue_capacity,
                })
            }
            Err(TryAcquireError::Closed) => Err(SubmitError::Closed),
        }
    }

    /// Room for `inputs` inputs of a stream's request, waiting for it.
    pub async fn admit(&self, lane: Lane, inputs: usize) -> Result<Admission, SubmitError> {
        if let Some(refusal) = self.refusal() {
            return Err(refusal);
        }
        let n = inputs.min(self.config.stream_queue_capacity) as u32;
        let slots = self
            .stream_slots
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| SubmitError::Closed)?;
        Ok(Admission { lane, slots })
    }

    /// Queues the inputs of one admitted request, all or none, and returns one receiver per
    /// input. Slots the request turned out not to need are given back.
    pub fn submit(
        &self,
        admission: Admission,
        jobs: Vec<NewJob>,
        deadline: Option<Instant>,
    ) -> Result<Vec<oneshot::Receiver<JobResult>>, SubmitError> {
        let Admission { lane, mut slots } = admission;
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        if slots.num_permits() < jobs.len() {
            return Err(SubmitError::QueueFull {
                capacity: slots.num_permits(),
            });
        }
        // One slot per input, each freed when its input leaves the queue; the last input holds
        // whatever the request was admitted for beyond that.
        let mut per_input: Vec<OwnedSemaphorePermit> = (1..jobs.len())
            .map(|_| slots.split(1).expect("a slot per input"))
            .collect();
        per_input.push(slots);
        let now = Instant::now();
        // Called within the request's span: the queue span is its child, and its inputs carry it.
        let span = Span::current();
        let queue_span = tracing::info_span!("queue", bertd.inputs = jobs.len());
        let mut receivers = Vec::with_capacity(jobs.len());
        let mut queued = Vec::with_capacity(jobs.len());
        for (job, slot) in jobs.into_iter().zip(per_input) {
            let (tx, rx) = oneshot::channel();
            receivers.push(rx);
            queued.push(Job {
                tokens: job.tokens,
                task: job.task,
                reply: tx,
                deadline,
                enqueued: now,
                lane,
                requeued: false,
                span: span.clone(),
                queued: queue_span.clone(),
                _slot: slot,
            });
        }
        {
            let mut state = self.state();
            if state.closed {
                return Err(SubmitError::Closed);
            }
            if let Some(reason) = &state.unavailable {
                return Err(SubmitError::Unavailable(reason.clone()));
            }
            for job in queued {
                state.queues.push(job);
            }
        }
        self.work_arrived.notify_waiters();
        Ok(receivers)
    }

    /// Gives back the inputs of a batch whose replica broke, ahead of everything queued, for
    /// another worker. An input given back once already fails instead: it may be what breaks
    /// replicas.
    pub fn requeue(&self, jobs: Vec<Job>, reason: &str) {
        let (again, failed): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| !j.requeued);
        for job in failed {
            Stats::add(&self.stats.inputs_failed, 1);
            job.reply(Err(JobError::Engine(EngineError::Compute(format!(
                "two model replicas broke while computing it: {reason}"
            )))));
        }
        let mut state = self.state();
        if let Some(reason) = state.unavailable.clone() {
            drop(state);
            for job in again {
                job.reply(Err(JobError::Unavailable(reason.clone())));
            }
            return;
        }
        state.queues.push_front(
            again
                .into_iter()
                .map(|mut j| {
                    j.requeued = true;
                    j
                })
                .collect(),
        );
        drop(state);
        self.work_arrived.notify_waiters();
    }

    /// Stops admission. Queued inputs are still handed out; `next_batch` returns `None` once the
    /// queue is empty.
    pub fn close(&self) {
        self.state().closed = true;
        self.interactive_slots.close();
        self.stream_slots.close();
        self.work_arrived.notify_waiters();
    }

    pub fn is_closed(&self) -> bool {
        self.state().closed
    }

    /// Fails every queued input with `error` (at the end of a drain that ran out of time).
    pub fn fail_queued(&self, error: JobError) {
        let jobs = self.take_all();
        for job in jobs {
            job.reply(Err(error.clone()));
        }
    }

    fn take_all(&self) -> Vec<Job> {
        let mut jobs = Vec::new();
        self.state().queues.retain(|_| false, |job| jobs.push(job));
        jobs
    }

    /// No worker can run: queued inputs fail now with `reason`, and new ones are refused until
    /// `set_available`.
    pub fn set_unavailable(&self, reason: String) {
        let jobs = {
            let mut state = self.state();
            state.unavailable = Some(reason.clone());
            let mut jobs = Vec::new();
            state.queues.retain(|_| false, |job| jobs.push(job));
            jobs
        };
        for job in jobs {
            job.reply(Err(JobError::Unavailable(reason.clone())));
        }
    }

    /// A worker runs again.
    pub fn set_available(&self) {
        self.state().unavailable = None;
    }

    /// Inputs queued now.
    pub fn queued(&self) -> usize {
        self.state().queues.len()
    }

    /// The next batch, waiting for work and for company as configured; `None` after `close`
    /// once everything queued has been handed out.
    pub async fn next_batch(&self) -> Option<Vec<Job>> {
        loop {
            let notified = self.work_arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait_until = {
                let mut state = self.state();
                self.drop_dead(&mut state.queues);
                match state.queues.oldest_arrival() {
                    None if state.closed => return None,
                    None => None,
                    Some(oldest) => {
                        let due = oldest + self.config.max_batch_delay;
                        if state.closed || Instant::now() >= due || self.can_fill(&state.queues) {
                            let batch = state.queues.take_batch(self.limits());
                            drop(state);
                            return Some(self.leave_queue(batch));
                        }
                        Some(due)
                    }
                }
            };
            match wait_until {
                None => notified.await,
                Some(due) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(due) => {}
                    }
                }
            }
        }
    }

    /// Inputs taken for a batch leave the queue: their wait is measured and their request's
    /// queue span ends with the last of them.
    fn leave_queue(&self, mut batch: Vec<Job>) -> Vec<Job> {
        let now = Instant::now();
        let waits = &self.stats.histograms.queue_wait;
        let unary = waits.get_or_create_owned(&LaneLabels { lane: "unary" });
        let stream = waits.get_or_create_owned(&LaneLabels { lane: "stream" });
        for job in &mut batch {
            let waited = now.saturating_duration_since(job.enqueued).as_secs_f64();
            match job.lane {
                Lane::Interactive => unary.observe(waited),
                Lane::Stream(_) => stream.observe(waited),
            }
            job.queued = Span::none();
        }
        batch
    }

    /// Inputs queued now: (unary, streams).
    pub fn queued_by_lane(&self) -> (usize, usize) {
        let state = self.state();
        let unary = state.queues.interactive.len();
        (unary, state.queues.len() - unary)
    }

    fn limits(&self) -> BatchLimits {
        BatchLimits {
            max_batch_size: self.config.max_batch_size,
            max_batch_tokens: self.config.max_batch_tokens,
            // Candidates: enough of the oldest inputs for good length groups. Sorting 1,000
            // lengths costs microseconds against a forward pass of milliseconds. Measured
            // (BENCHMARKS.md): streams reached 81-87% of the engine's rate with 4 batches' worth,
            // 84-90% with 16.
            window: 16 * self.config.max_batch_size,
            forward_cost_tokens: self.config.forward_cost_tokens,
            stream_share: self.config.stream_share,
        }
    }

    /// Whether waiting could not make the next batch any bigger.
    fn can_fill(&self, queues: &Queues) -> bool {
        if queues.len() >= self.config.max_batch_size {
            return true;
        }
        let tokens: usize = queues.all_jobs().map(|j| j.tokens.len()).sum();
        tokens >= self.config.max_batch_tokens
    }

    /// Drops inputs nobody waits for any more, and fails those past their deadline.
    fn drop_dead(&self, queues: &mut Queues) {
        let now = Instant::now();
        queues.retain(
            |job| !job.is_abandoned() && !job.is_expired(now),
            |job| {
                if job.is_abandoned() {
                    Stats::add(&self.stats.inputs_cancelled, 1);
                } else {
                    Stats::add(&self.stats.inputs_expired, 1);
                    job.reply(Err(JobError::DeadlineExceeded));
                }
            },
        );
    }
}

#[cfg(test)]
mod tests;
