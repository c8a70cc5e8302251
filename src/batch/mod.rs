//! The one queue between every client and the workers, and the scheduler that turns it into
//! batches.
//!
//! - Admission is bounded twice: unary calls (`Priority::Interactive`) share `queue_capacity`
//!   slots and are refused at once when they are gone; streams (`Priority::Bulk`) share
//!   `stream_queue_capacity` slots and wait for one. A slot is freed when its input leaves the
//!   queue, so the queue can never grow past the two capacities.
//! - A batch starts from the oldest interactive input (else the oldest bulk input), so unary
//!   calls are never starved by bulk streams, and is filled with queued inputs of similar
//!   length, within `max_batch_size` inputs and `max_batch_tokens` padded tokens.
//! - A batch that is not full waits at most `max_batch_delay` from its oldest input's arrival.
//! - Inputs whose caller has gone (its receiver was dropped) or whose deadline has passed are
//!   dropped before they are computed, and counted.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError, oneshot};

use crate::engine::{EngineError, Output, Task};
use crate::tokenize::Tokenized;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Unary calls: served first, refused when their queue share is full.
    Interactive,
    /// Streams: wait for room.
    Bulk,
}

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub max_batch_tokens: usize,
    pub max_batch_size: usize,
    pub max_batch_delay: Duration,
    pub queue_capacity: usize,
    pub stream_queue_capacity: usize,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum JobError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the deadline passed before the input was computed")]
    DeadlineExceeded,
    #[error("the server is shutting down")]
    ShuttingDown,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("the queue is full ({capacity} inputs)")]
    QueueFull { capacity: usize },
    #[error("the server is shutting down")]
    Closed,
}

pub type JobResult = Result<Output, JobError>;

/// Counters since start, read by Model.GetInfo and by tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub inputs_computed: AtomicU64,
    pub batches: AtomicU64,
    pub inputs_cancelled: AtomicU64,
    pub inputs_expired: AtomicU64,
    pub requests_rejected: AtomicU64,
}

impl Stats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// One input waiting for, or in, a batch.
pub struct Job {
    pub tokens: Tokenized,
    pub task: Task,
    reply: oneshot::Sender<JobResult>,
    deadline: Option<Instant>,
    enqueued: Instant,
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
}

/// An input as handed to `submit`.
pub struct NewJob {
    pub tokens: Tokenized,
    pub task: Task,
}

#[derive(Default)]
struct Queues {
    interactive: VecDeque<Job>,
    bulk: VecDeque<Job>,
    closed: bool,
}

impl Queues {
    fn len(&self) -> usize {
        self.interactive.len() + self.bulk.len()
    }
}

pub struct Scheduler {
    config: SchedulerConfig,
    queues: Mutex<Queues>,
    work_arrived: Notify,
    interactive_slots: Arc<Semaphore>,
    bulk_slots: Arc<Semaphore>,
    stats: Arc<Stats>,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, stats: Arc<Stats>) -> Self {
        Scheduler {
            interactive_slots: Arc::new(Semaphore::new(config.queue_capacity)),
            bulk_slots: Arc::new(Semaphore::new(config.stream_queue_capacity)),
            config,
            queues: Mutex::default(),
            work_arrived: Notify::new(),
            stats,
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Queues the inputs of one request, all or none, and returns one receiver per input.
    /// Interactive requests are refused at once when the queue has no room; bulk requests wait.
    pub async fn submit(
        &self,
        jobs: Vec<NewJob>,
        priority: Priority,
        deadline: Option<Instant>,
    ) -> Result<Vec<oneshot::Receiver<JobResult>>, SubmitError> {
        let n = jobs.len() as u32;
        let mut slots = match priority {
            Priority::Interactive => {
                match self.interactive_slots.clone().try_acquire_many_owned(n) {
                    Ok(slots) => slots,
                    Err(TryAcquireError::NoPermits) => {
                        Stats::add(&self.stats.requests_rejected, 1);
                        return Err(SubmitError::QueueFull {
                            capacity: self.config.queue_capacity,
                        });
                    }
                    Err(TryAcquireError::Closed) => return Err(SubmitError::Closed),
                }
            }
            Priority::Bulk => self
                .bulk_slots
                .clone()
                .acquire_many_owned(n)
                .await
                .map_err(|_| SubmitError::Closed)?,
        };
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        // One slot per input, each freed when its input leaves the queue.
        let mut per_input: Vec<OwnedSemaphorePermit> = (1..n)
            .map(|_| slots.split(1).expect("a slot per input"))
            .collect();
        per_input.push(slots);
        let now = Instant::now();
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
                _slot: slot,
            });
        }
        {
            let mut queues = self.queues.lock().expect("queue lock");
            if queues.closed {
                return Err(SubmitError::Closed);
            }
            let queue = match priority {
                Priority::Interactive => &mut queues.interactive,
                Priority::Bulk => &mut queues.bulk,
            };
            queue.extend(queued);
        }
        self.work_arrived.notify_waiters();
        Ok(receivers)
    }

    /// Stops admission. Queued inputs are still handed out; `next_batch` returns `None` once the
    /// queue is empty.
    pub fn close(&self) {
        self.queues.lock().expect("queue lock").closed = true;
        self.interactive_slots.close();
        self.bulk_slots.close();
        self.work_arrived.notify_waiters();
    }

    /// Inputs queued now.
    pub fn queued(&self) -> usize {
        self.queues.lock().expect("queue lock").len()
    }

    /// The next batch, waiting for work and for company as configured; `None` after `close`
    /// once everything queued has been handed out.
    pub async fn next_batch(&self) -> Option<Vec<Job>> {
        loop {
            let notified = self.work_arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait_until = {
                let mut queues = self.queues.lock().expect("queue lock");
                self.drop_dead(&mut queues);
                if queues.len() == 0 {
                    if queues.closed {
                        return None;
                    }
                    None
                } else {
                    let oldest = self.anchor_arrival(&queues);
                    let due = oldest + self.config.max_batch_delay;
                    if queues.closed || Instant::now() >= due || self.can_fill(&queues) {
                        return Some(self.take_batch(&mut queues));
                    }
                    Some(due)
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

    fn anchor_arrival(&self, queues: &Queues) -> Instant {
        queues
            .interactive
            .front()
            .or(queues.bulk.front())
            .map(|j| j.enqueued)
            .expect("not empty")
    }

    /// Whether waiting could not make the next batch any bigger.
    fn can_fill(&self, queues: &Queues) -> bool {
        if queues.len() >= self.config.max_batch_size {
            return true;
        }
        let tokens: usize = queues
            .interactive
            .iter()
            .chain(queues.bulk.iter())
            .map(|j| j.tokens.len())
            .sum();
        tokens >= self.config.max_batch_tokens
    }

    /// Drops inputs nobody waits for any more, and fails those past their deadline.
    fn drop_dead(&self, queues: &mut Queues) {
        let now = Instant::now();
        for queue in [&mut queues.interactive, &mut queues.bulk] {
            if !queue
                .iter()
                .any(|j| j.is_abandoned() || j.deadline.is_some_and(|d| d <= now))
            {
                continue;
            }
            for job in std::mem::take(queue) {
                if job.is_abandoned() {
                    Stats::add(&self.stats.inputs_cancelled, 1);
                } else if job.deadline.is_some_and(|d| d <= now) {
                    Stats::add(&self.stats.inputs_expired, 1);
                    job.reply(Err(JobError::DeadlineExceeded));
                } else {
                    queue.push_back(job);
                }
            }
        }
    }

    /// Takes the anchor (the oldest interactive input, else the oldest bulk one) and the queued
    /// inputs closest to it in length, within the batch limits.
    fn take_batch(&self, queues: &mut Queues) -> Vec<Job> {
        // Candidates: the oldest inputs, enough of them for good length groups. Sorting 1,000
        // lengths costs microseconds against a forward pass of milliseconds. Measured (BENCHMARKS.md):
        // streams reached 81-87% of the engine's rate with 4 batches' worth, 84-90% with 16.
        let window = 16 * self.config.max_batch_size;
        let anchor_interactive = !queues.interactive.is_empty();
        let from_interactive = queues.interactive.len().min(window);
        let from_bulk = queues.bulk.len().min(window - from_interactive);
        // Candidates: (queue, position, length), the anchor first.
        let mut candidates: Vec<(bool, usize, usize)> =
            Vec::with_capacity(from_interactive + from_bulk);
        candidates
            .extend((0..from_interactive).map(|i| (true, i, queues.interactive[i].tokens.len())));
        candidates.extend((0..from_bulk).map(|i| (false, i, queues.bulk[i].tokens.len())));
        let anchor = candidates[0];
        debug_assert_eq!(anchor.0, anchor_interactive);
        candidates.sort_by_key(|&(interactive, pos, len)| (len, !interactive, pos));
        let at = candidates
            .iter()
            .position(|c| *c == anchor)
            .expect("anchor is a candidate");

        // Grow a run of the sorted candidates around the anchor, nearest length first.
        let (mut lo, mut hi) = (at, at);
        let fits = |lo: usize, hi: usize| {
            let count = hi - lo + 1;
            count <= self.config.max_batch_size
                && candidates[hi].2 * count <= self.config.max_batch_tokens
        };
        loop {
            let left = (lo > 0 && fits(lo - 1, hi)).then(|| anchor.2 - candidates[lo - 1].2);
            let right = (hi + 1 < candidates.len() && fits(lo, hi + 1))
                .then(|| candidates[hi + 1].2 - anchor.2);
            match (left, right) {
                (Some(l), Some(r)) if l <= r => lo -= 1,
                (Some(_), None) => lo -= 1,
                (_, Some(_)) => hi += 1,
                (None, None) => break,
            }
        }

        let mut chosen_interactive = vec![false; from_interactive];
        let mut chosen_bulk = vec![false; from_bulk];
        for &(interactive, pos, _) in &candidates[lo..=hi] {
            if interactive {
                chosen_interactive[pos] = true;
            } else {
                chosen_bulk[pos] = true;
            }
        }
        let mut batch = Vec::with_capacity(hi - lo + 1);
        take_chosen(&mut queues.interactive, &chosen_interactive, &mut batch);
        take_chosen(&mut queues.bulk, &chosen_bulk, &mut batch);
        batch
    }
}

/// Moves the chosen jobs among the first `chosen.len()` of `queue` into `batch`, keeping the
/// order of the rest.
fn take_chosen(queue: &mut VecDeque<Job>, chosen: &[bool], batch: &mut Vec<Job>) {
    let head: Vec<Job> = queue.drain(..chosen.len()).collect();
    let mut kept = Vec::new();
    for (job, &take) in head.into_iter().zip(chosen) {
        if take {
            batch.push(job);
        } else {
            kept.push(job);
        }
    }
    for job in kept.into_iter().rev() {
        queue.push_front(job);
    }
}

#[cfg(test)]
mod tests;
