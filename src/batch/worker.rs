//! A worker's loop: take a batch, run it on the worker's replica, reply to every input.
//!
//! Failure rules (each input gets exactly one reply, and only what truly fails is failed):
//! - an input the replica refuses by itself (`check`) fails alone before the forward pass;
//! - a batch that fails (a libtorch error, a panic, running out of memory) is split in halves,
//!   and each half run again, down to single inputs: only an input that fails alone gets the
//!   error, and the rest of its batch is computed;
//! - a replica that reports itself broken stops the worker; the inputs it had not answered go
//!   back to the head of the queue for another worker (once), and the pool starts a new replica.
//!
//! Each batch is a span of its own (`batch`): it serves inputs of many calls, so rather than a
//! parent it has links to the spans of the requests it served, and each of those links back to
//! it. Every forward pass is a `forward` span under it.
use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use opentelemetry::trace::TraceContextExt;
use tokio::runtime::Handle;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{Job, JobError, Scheduler, Stats};
use crate::engine::{Compute, EngineError, EngineInput, Output};
use crate::panic_message;
use crate::telemetry::metrics::DeviceLabels;

/// Why a worker's loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerExit {
    /// The scheduler closed and its queue is drained.
    Closed,
    /// The replica cannot go on.
    Broken(String),
}

/// Runs batches on `compute`, the replica of a worker on `device`, until the scheduler closes or
/// the replica breaks.
pub fn work(
    compute: &dyn Compute,
    scheduler: &Scheduler,
    runtime: &Handle,
    device: &str,
) -> WorkerExit {
    while let Some(batch) = runtime.block_on(scheduler.next_batch()) {
        let stats = scheduler.stats();
        Stats::add(&stats.busy_workers, 1);
        let ran = run_batch(compute, scheduler, batch, device);
        Stats::sub(&stats.busy_workers, 1);
        if let Err(reason) = ran {
            return WorkerExit::Broken(reason);
        }
    }
    WorkerExit::Closed
}

/// The batch's span, linked both ways with the spans of the requests it serves.
fn batch_span(batch: &[Job], device: &str, real: usize, padded: usize) -> Span {
    let span = tracing::info_span!(
        parent: None,
        "batch",
        bertd.device = device,
        bertd.batch.inputs = batch.len(),
        bertd.batch.real_tokens = real,
        bertd.batch.padded_tokens = padded,
    );
    if span.is_disabled() {
        return span;
    }
    let mut requests = HashSet::new();
    let mut linked = Vec::new();
    for job in batch {
        if let Some(id) = job.span.id()
            && requests.insert(id)
        {
            let request = job.span.context().span().span_context().clone();
            span.add_link(request);
            linked.push(&job.span);
        }
    }
    // Links are set before the span starts, so sampling sees them; then each request links back.
    let own = span.context().span().span_context().clone();
    for request in linked {
        request.add_link(own.clone());
    }
    span
}

/// Runs one batch and replies to every input of it; `Err` when the replica broke, after its
/// unanswered inputs were given back to the scheduler.
pub fn run_batch(
    compute: &dyn Compute,
    scheduler: &Scheduler,
    batch: Vec<Job>,
    device: &str,
) -> Result<(), String> {
    let stats = scheduler.stats();
    let real: usize = batch.iter().map(|j| j.tokens.len()).sum();
    let longest = batch.iter().map(|j| j.tokens.len()).max().unwrap_or(0);
    let padded = longest * batch.len();
    let span = batch_span(&batch, device, real, padded);
    let _entered = span.enter();
    let labels = DeviceLabels {
        device: device.to_string(),
    };
    let h = &stats.histograms;
    h.batch_inputs
        .get_or_create(&labels)
        .observe(batch.len() as f64);
    h.batch_padded_tokens
        .get_or_create(&labels)
        .observe(padded as f64);
    if padded > 0 {
        h.batch_padding_ratio
            .get_or_create(&labels)
            .observe(real as f64 / padded as f64);
    }
    let forward_seconds = h.forward.get_or_create_owned(&labels);
    let mut valid = Vec::with_capacity(batch.len());
    for (index, job) in batch.into_iter().enumerate() {
        match compute.check(index, &input_of(&job)) {
            Ok(()) => valid.push(job),
            Err(e) => job.reply(Err(JobError::Engine(e))),
        }
    }
    // Parts still to run, the next one last; halves are pushed second half first, so inputs are
    // answered in batch order.
    let mut parts: Vec<Vec<Job>> = vec![valid];
    while let Some(mut part) = parts.pop() {
        if part.is_empty() {
            continue;
        }
        Stats::add(&stats.batches, 1);
        let forward = tracing::info_span!(
            "forward",
            bertd.device = device,
            bertd.batch.inputs = part.len()
        );
        let started = Instant::now();
        let ran = forward.in_scope(|| run_caught(compute, &part));
        forward_seconds.observe(started.elapsed().as_secs_f64());
        match ran {
            Ok(outputs) => {
                Stats::add(&stats.inputs_computed, outputs.len() as u64);
                let tokens: usize = part.iter().map(|j| j.tokens.len()).sum();
                Stats::add(&stats.tokens_computed, tokens as u64);
                for (job, output) in part.into_iter().zip(outputs) {
                    job.reply(Ok(output));
                }
            }
            Err(EngineError::Broken(reason)) => {
                tracing::error!(error = %reason, "the replica broke; its inputs go to another worker");
                let unanswered: Vec<Job> = parts.into_iter().rev().flatten().collect();
                scheduler.requeue(part.into_iter().chain(unanswered).collect(), &reason);
                return Err(reason);
            }
            Err(EngineError::InvalidInput { index, reason }) if index < part.len() => {
                let job = part.remove(index);
                job.reply(Err(JobError::Engine(EngineError::InvalidInput {
                    index,
                    reason,
                })));
                parts.push(part);
            }
            Err(error) if part.len() == 1 => {
                tracing::warn!(%error, "an input failed on the model alone");
                Stats::add(&stats.inputs_failed, 1);
                part.remove(0).reply(Err(JobError::Engine(error)));
            }
            Err(error) => {
                tracing::warn!(%error, inputs = part.len(), "a batch failed; running its halves");
                Stats::add(&stats.batches_split, 1);
                let second = part.split_off(part.len() / 2);
                parts.push(second);
                parts.push(part);
            }
        }
    }
    Ok(())
}

fn input_of(job: &Job) -> EngineInput<'_> {
    EngineInput {
        tokens: &job.tokens,
        task: &job.task,
    }
}

/// Runs a part, turning a panic into a failure of that part and checking that every input got
/// an output.
fn run_caught(compute: &dyn Compute, part: &[Job]) -> Result<Vec<Output>, EngineError> {
    let inputs: Vec<EngineInput> = part.iter().map(input_of).collect();
    let outputs = catch_unwind(AssertUnwindSafe(|| compute.run(&inputs)))
        .unwrap_or_else(|panic| Err(EngineError::Compute(panic_message(panic.as_ref()))))?;
    if outputs.len() != part.len() {
        return Err(EngineError::Compute(format!(
            "the replica returned {} outputs for {} inputs",
            outputs.len(),
            part.len()
        )));
    }
    Ok(outputs)
}
