//! Where workers get their model replicas: which device worker N runs on, how many CPU threads
//! it may use, loading the weights there and warming the replica up, so that the first real
//! request does not pay for libtorch's lazy initialisation.
use std::sync::Arc;

use tch::Device;

use super::{
    CudaStreams, DType, DenseKernel, DeviceSpec, EmbedOptions, Engine, EngineInput, Task,
    cpu_has_amx_bf16, cuda,
};
use crate::model::{Model, ModelError, ModelSpec};
use crate::tokenize::Tokenized;

/// How the replicas of one model are laid out over the devices.
#[derive(Debug, Clone)]
pub struct ReplicaPlan {
    pub spec: Arc<ModelSpec>,
    pub devices: Vec<DeviceSpec>,
    pub workers_per_device: usize,
    pub dtype: DType,
    pub dense_kernel: DenseKernel,
    /// Which stream a CUDA worker computes on.
    pub cuda_streams: CudaStreams,
    /// CPU threads for libtorch, split evenly between CPU workers; 0: all cores.
    pub cpu_threads: usize,
    /// Inputs in the warm-up batch.
    pub warm_up_batch: usize,
    /// The most tokens a batch holds (the token budget): how far the warm-up builds kernels.
    pub warm_up_tokens: usize,
}

impl ReplicaPlan {
    /// Workers in all.
    pub fn workers(&self) -> usize {
        self.devices.len() * self.workers_per_device
    }

    /// The device of worker `index`.
    pub fn device(&self, index: usize) -> DeviceSpec {
        self.devices[index / self.workers_per_device.max(1) % self.devices.len()]
    }

    /// Every worker's device, in worker order.
    pub fn worker_devices(&self) -> Vec<DeviceSpec> {
        (0..self.workers()).map(|i| self.device(i)).collect()
    }

    fn threads(&self, device: DeviceSpec) -> usize {
        if device.0 != Device::Cpu {
            return 1;
        }
        let cpu_workers =
            self.devices.iter().filter(|d| d.0 == Device::Cpu).count() * self.workers_per_device;
        (cpu_cores(self.cpu_threads) / cpu_workers.max(1)).max(1)
    }

    /// Loads and warms up worker `index`'s replica. Called on the worker's own thread: libtorch's
    /// thread count is per thread.
    pub fn load(&self, index: usize) -> Result<Engine, ModelError> {
        let device = self.device(index);
        device
            .check_available()
            .map_err(|reason| ModelError::Device {
                device: device.to_string(),
                reason,
            })?;
        // Before the weights load, so that everything of this replica is on its stream.
        cuda::choose_stream(self.cuda_streams, device.0).map_err(|reason| ModelError::Device {
            device: device.to_string(),
            reason: format!("no stream of its own: {reason}"),
        })?;
        let threads = self.threads(device);
        set_thread_count(threads);
        if self.dtype == DType::Bf16 && device.0 == Device::Cpu && !cpu_has_amx_bf16() {
            tracing::warn!(
                worker = index,
                "bf16 on a CPU with AVX512-BF16 but no AMX ran at about 0.6x fp32's throughput when measured (BENCHMARKS.md); fp32 is likely faster here"
            );
        }
        let kernel = self
            .dense_kernel
            .resolve(device)
            .map_err(|reason| ModelError::Device {
                device: device.to_string(),
                reason,
            })?;
        let model = Model::load(self.spec.clone(), device.0, self.dtype.kind(), kernel)?;
        let engine = Engine::new(model);
        warm_up(&engine, self.warm_up_batch, self.warm_up_tokens).map_err(|e| {
            ModelError::Device {
                device: device.to_string(),
                reason: format!("warm-up failed: {e}"),
            }
        })?;
        tracing::info!(worker = index, %device, threads, ?kernel, "replica ready");
        Ok(engine)
    }
}

/// The CPU threads libtorch's workers share: `cpu_threads` (engine.cpu_threads), 0 meaning every
/// core.
pub fn cpu_cores(cpu_threads: usize) -> usize {
    match cpu_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Sets libtorch's thread count for the calling thread, so that it sticks. ATen gives a thread
/// its count at the thread's first parallel operation, from the count any thread set last: a
/// CUDA worker's 1 set meanwhile would leave a CPU worker computing on one core. Reading the
/// count first makes that first initialisation happen now, before this thread's own count.
fn set_thread_count(threads: usize) {
    tch::get_num_threads();
    tch::set_num_threads(threads as i32);
}

/// One batch at a typical length, then one batch of each token count the model asks to warm up
/// (`Model::warm_up_tokens`: each row bucket up to `max_tokens`, the token budget, in bf16).
fn warm_up(engine: &Engine, batch: usize, max_tokens: usize) -> Result<(), super::EngineError> {
    let spec = engine.model().spec();
    run_warm_up_batch(engine, batch.clamp(1, 8), spec.max_length.min(32))?;
    let counts = engine.model().warm_up_tokens(max_tokens as i64);
    for tokens in counts {
        let (inputs, len) = batch_of(tokens as usize, spec.max_length);
        run_warm_up_batch(engine, inputs, len)?;
    }
    Ok(())
}

/// A batch (inputs, tokens each) of exactly `tokens` tokens, its inputs as long as a model's
/// `max_length` allows: `len` is the greatest divisor of `tokens` up to it.
fn batch_of(tokens: usize, max_length: usize) -> (usize, usize) {
    let len = (1..=max_length.min(tokens))
        .rev()
        .find(|&len| tokens.is_multiple_of(len))
        .unwrap_or(1);
    (tokens / len, len)
}

/// `inputs` inputs of `len` tokens each through the model.
fn run_warm_up_batch(engine: &Engine, inputs: usize, len: usize) -> Result<(), super::EngineError> {
    let spec = engine.model().spec();
    let tokens = Tokenized {
        ids: vec![0; len],
        type_ids: vec![0; len],
        original_length: len,
    };
    let task = Task::Embed(EmbedOptions {
        pooling: spec.default_pooling,
        normalize: spec.default_normalize,
        layer: spec.num_layers(),
        dimensions: None,
    });
    let inputs: Vec<EngineInput> = (0..inputs)
        .map(|_| EngineInput {
            tokens: &tokens,
            task: &task,
        })
        .collect();
    engine.run(&inputs).map(|_| ())
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::thread;

    use tch::{Kind, Tensor};

    use super::{batch_of, set_thread_count};

    /// A model's longest input.
    const MAX_LENGTH: usize = 512;

    #[test]
    fn a_warm_up_batch_has_exactly_its_tokens_in_inputs_no_longer_than_the_models_longest() {
        for tokens in [1, 7, 16, 512, 544, 1_000, 1_024, 1_009] {
            let (inputs, len) = batch_of(tokens, MAX_LENGTH);
            assert_eq!(inputs * len, tokens);
            assert!((1..=MAX_LENGTH).contains(&len));
        }
        assert_eq!(batch_of(1_024, MAX_LENGTH), (2, MAX_LENGTH));
        assert_eq!(batch_of(544, MAX_LENGTH), (2, 272));
    }

    /// Elements enough for ATen to split a reduction between threads.
    const PARALLEL_ELEMENTS: i64 = 1 << 20;

    #[test]
    fn a_workers_thread_count_holds_when_another_worker_sets_its_own_before_it_computes() {
        let (was_set, wait_for_set) = mpsc::channel();
        let (other_set, wait_for_other) = mpsc::channel();
        let worker = thread::spawn(move || {
            set_thread_count(2);
            was_set.send(()).unwrap();
            wait_for_other.recv().unwrap();
            // Its first parallel operation, after the other worker set 1.
            let _ =
                Tensor::ones([PARALLEL_ELEMENTS], (Kind::Float, tch::Device::Cpu)).sum(Kind::Float);
            tch::get_num_threads()
        });
        wait_for_set.recv().unwrap();
        thread::spawn(|| set_thread_count(1)).join().unwrap();
        other_set.send(()).unwrap();
        assert_eq!(worker.join().unwrap(), 2);
    }
}
