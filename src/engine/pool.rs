//! The worker pool: one dedicated thread per model replica, each pulling batches from the
//! scheduler, running them on its device and replying to every input.
use std::sync::Arc;
use std::sync::mpsc::sync_channel;
use std::thread::JoinHandle;

use tch::Device;
use tokio::runtime::Handle;

use super::{DType, DeviceSpec, Engine, EngineInput};
use crate::batch::{JobError, Scheduler, Stats};
use crate::model::{Model, ModelError, ModelSpec};
use crate::tokenize::Tokenized;

pub struct PoolConfig {
    pub devices: Vec<DeviceSpec>,
    pub workers_per_device: usize,
    pub dtype: DType,
    /// CPU threads for libtorch, split evenly between CPU workers; 0: all cores.
    pub cpu_threads: usize,
}

pub struct WorkerPool {
    workers: Vec<JoinHandle<()>>,
}

/// A worker's warm-up: one batch of the largest size at a typical length, so that the first
/// real request does not pay for libtorch's lazy initialisation.
fn warm_up(engine: &Engine, max_batch_size: usize) -> Result<(), ModelError> {
    let spec = engine.model().spec();
    let len = spec.max_length.min(32);
    let tokens = Tokenized {
        ids: vec![0; len],
        type_ids: vec![0; len],
        original_length: len,
    };
    let task = super::Task::Embed(super::EmbedOptions {
        pooling: spec.default_pooling,
        normalize: spec.default_normalize,
        layer: spec.num_layers(),
        dimensions: None,
    });
    let inputs: Vec<EngineInput> = (0..max_batch_size.min(8))
        .map(|_| EngineInput {
            tokens: &tokens,
            task: &task,
        })
        .collect();
    engine
        .run(&inputs)
        .map(|_| ())
        .map_err(|e| ModelError::Device {
            device: DeviceSpec(engine.model().device()).to_string(),
            reason: format!("warm-up failed: {e}"),
        })
}

impl WorkerPool {
    /// Starts the workers and returns once every one has loaded its replica and warmed up, or
    /// with the first failure.
    pub fn start(
        spec: Arc<ModelSpec>,
        config: &PoolConfig,
        scheduler: Arc<Scheduler>,
        runtime: Handle,
    ) -> Result<WorkerPool, ModelError> {
        let cpu_workers = config.devices.iter().filter(|d| d.0 == Device::Cpu).count()
            * config.workers_per_device;
        let cores = match config.cpu_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let cpu_threads_each = (cores / cpu_workers.max(1)).max(1);

        let total = config.devices.len() * config.workers_per_device;
        let (ready_tx, ready_rx) = sync_channel::<Result<(), ModelError>>(total);
        let mut workers = Vec::with_capacity(total);
        for (index, device) in config
            .devices
            .iter()
            .flat_map(|d| std::iter::repeat_n(*d, config.workers_per_device))
            .enumerate()
        {
            device
                .check_available()
                .map_err(|reason| ModelError::Device {
                    device: device.to_string(),
                    reason,
                })?;
            let threads = if device.0 == Device::Cpu {
                cpu_threads_each
            } else {
                1
            };
            let (spec, scheduler, runtime, ready) = (
                spec.clone(),
                scheduler.clone(),
                runtime.clone(),
                ready_tx.clone(),
            );
            let kind = config.dtype.kind();
            let handle = std::thread::Builder::new()
                .name(format!("bertd-worker-{index}"))
                .spawn(move || {
                    tch::set_num_threads(threads as i32);
                    let engine = match Model::load(spec, device.0, kind).map(Engine::new) {
                        Ok(engine) => engine,
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                    let max_batch = scheduler.config().max_batch_size;
                    if let Err(e) = warm_up(&engine, max_batch) {
                        let _ = ready.send(Err(e));
                        return;
                    }
                    let _ = ready.send(Ok(()));
                    drop(ready);
                    tracing::info!(worker = index, %device, threads, "worker ready");
                    work(&engine, &scheduler, &runtime);
                })
                .expect("spawning a worker thread");
            workers.push(handle);
        }
        drop(ready_tx);
        for _ in 0..total {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    scheduler.close();
                    return Err(e);
                }
                Err(_) => {
                    scheduler.close();
                    return Err(ModelError::Device {
                        device: "worker".into(),
                        reason: "a worker thread ended during start-up".into(),
                    });
                }
            }
        }
        Ok(WorkerPool { workers })
    }

    /// Waits for every worker to finish; they do once the scheduler is closed and drained.
    pub fn join(self) {
        for worker in self.workers {
            let _ = worker.join();
        }
    }
}

fn work(engine: &Engine, scheduler: &Scheduler, runtime: &Handle) {
    let stats = scheduler.stats().clone();
    while let Some(batch) = runtime.block_on(scheduler.next_batch()) {
        // The API validates every input; anything the engine still refuses fails alone, and the
        // rest of the batch runs.
        let mut valid = Vec::with_capacity(batch.len());
        for (i, job) in batch.into_iter().enumerate() {
            let input = EngineInput {
                tokens: &job.tokens,
                task: &job.task,
            };
            match engine.check(i, &input) {
                Ok(()) => valid.push(job),
                Err(e) => job.reply(Err(JobError::Engine(e))),
            }
        }
        if valid.is_empty() {
            continue;
        }
        let inputs: Vec<EngineInput> = valid
            .iter()
            .map(|job| EngineInput {
                tokens: &job.tokens,
                task: &job.task,
            })
            .collect();
        let result = engine.run(&inputs);
        drop(inputs);
        Stats::add(&stats.batches, 1);
        match result {
            Ok(outputs) => {
                Stats::add(&stats.inputs_computed, outputs.len() as u64);
                for (job, output) in valid.into_iter().zip(outputs) {
                    job.reply(Ok(output));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "batch failed");
                for job in valid {
                    job.reply(Err(JobError::Engine(e.clone())));
                }
            }
        }
    }
}
