//! A worker's loop: take a batch, run it on the worker's replica, reply to every input.
//!
//! Failure rules (each input gets exactly one reply, and only what truly fails is failed):
//! - an input the replica refuses by itself (`check`) fails alone before the forward pass;
//! - a batch that fails (a libtorch error, a panic, running out of memory) is split in halves,
//!   and each half run again, down to single inputs: only an input that fails alone gets the
//!   error, and the rest of its batch is computed;
//! - a replica that reports itself broken stops the worker; the inputs it had not answered go
//!   back to the head of the queue for another worker (once), and the pool starts a new replica.
use std::panic::{AssertUnwindSafe, catch_unwind};

use tokio::runtime::Handle;

use super::{Job, JobError, Scheduler, Stats};
use crate::engine::{Compute, EngineError, EngineInput, Output};
use crate::panic_message;

/// Why a worker's loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerExit {
    /// The scheduler closed and its queue is drained.
    Closed,
    /// The replica cannot go on.
    Broken(String),
}

pub fn work(compute: &dyn Compute, scheduler: &Scheduler, runtime: &Handle) -> WorkerExit {
    while let Some(batch) = runtime.block_on(scheduler.next_batch()) {
        if let Err(reason) = run_batch(compute, scheduler, batch) {
            return WorkerExit::Broken(reason);
        }
    }
    WorkerExit::Closed
}

/// Runs one batch and replies to every input of it; `Err` when the replica broke, after its
/// unanswered inputs were given back to the scheduler.
pub fn run_batch(
    compute: &dyn Compute,
    scheduler: &Scheduler,
    batch: Vec<Job>,
) -> Result<(), String> {
    let stats = scheduler.stats();
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
        match run_caught(compute, &part) {
            Ok(outputs) => {
                Stats::add(&stats.inputs_computed, outputs.len() as u64);
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
