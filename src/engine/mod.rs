//! The engine: compute only. A batch of tokenized inputs in, one output per input out. Padding
//! is done once per batch, the encoder runs once (up to the deepest layer any input needs), and
//! each input's result is cut back out. A worker thread owns one `Engine` (tch tensors are not
//! Sync); the batch layer drives it through the small `Compute` trait, so its rules for failures
//! are tested with a fake.
pub mod cuda;
pub mod device;
pub mod options;
pub mod replica;

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use tch::{Device, Kind, Tensor};

pub use device::{CudaStreams, DType, DenseKernel, DeviceSpec, cpu_has_amx_bf16, cpu_has_bf16};

use crate::model::bert::HiddenStates;
use crate::model::heads::{l2_normalize, pool as pool_hidden};
use crate::model::{Model, Pooling, ScoreActivation};
use crate::panic_message;
use crate::tokenize::Tokenized;

/// How one input's embedding is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EmbedOptions {
    pub pooling: Pooling,
    pub normalize: bool,
    /// Resolved hidden-state index: 0 is the embedding output, `num_layers` the last layer.
    pub layer: usize,
    /// Keep only the leading dimensions (Matryoshka-style); normalisation comes after the cut.
    pub dimensions: Option<usize>,
}

/// How one input's classification scores are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassifyOptions {
    pub activation: ScoreActivation,
    /// Only the best `top_k` labels; all of them when `None`.
    pub top_k: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Embed(EmbedOptions),
    Classify(ClassifyOptions),
}

/// One input of a batch.
#[derive(Debug, Clone, Copy)]
pub struct EngineInput<'a> {
    pub tokens: &'a Tokenized,
    pub task: &'a Task,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LabelScore {
    pub index: usize,
    pub label: String,
    pub score: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Embedding(Vec<f32>),
    /// One vector of `dim` values per token, row after row.
    TokenEmbeddings {
        dim: usize,
        values: Vec<f32>,
    },
    /// Labels by descending score.
    Scores(Vec<LabelScore>),
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    /// One input is not something this model can compute; the rest of its batch can run.
    #[error("input {index}: {reason}")]
    InvalidInput { index: usize, reason: String },
    /// This batch failed (a libtorch error, a panic, out of memory); the replica is still usable,
    /// and smaller batches may succeed.
    #[error("the model failed on this batch: {0}")]
    Compute(String),
    /// The replica cannot compute any more (a sticky device error): its worker must start a new
    /// one. The batch itself is not at fault.
    #[error("the model replica is broken: {0}")]
    Broken(String),
}

/// What the batch layer needs of a model replica.
pub trait Compute {
    /// Checks one input alone, so that a bad input fails by itself before a forward pass.
    fn check(&self, index: usize, input: &EngineInput) -> Result<(), EngineError>;
    /// Runs one batch: one output per input, in order.
    fn run(&self, batch: &[EngineInput]) -> Result<Vec<Output>, EngineError>;
}

/// libtorch reports CUDA failures that poison the context (an illegal memory access, a device-side
/// assertion) as "CUDA error: ..."; running out of memory is reported apart and is not sticky.
fn is_sticky_device_error(message: &str) -> bool {
    message.contains("CUDA error") && !message.contains("out of memory")
}

pub struct Engine {
    model: Model,
}

impl Compute for Engine {
    fn check(&self, index: usize, input: &EngineInput) -> Result<(), EngineError> {
        Engine::check(self, index, input)
    }

    fn run(&self, batch: &[EngineInput]) -> Result<Vec<Output>, EngineError> {
        Engine::run(self, batch)
    }
}

impl Engine {
    pub fn new(model: Model) -> Self {
        Engine { model }
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Checks what the batch asks for against the model, so that bad input fails by itself
    /// before a forward pass.
    pub fn check(&self, index: usize, input: &EngineInput) -> Result<(), EngineError> {
        let spec = self.model.spec();
        let invalid = |reason: String| EngineError::InvalidInput { index, reason };
        if input.tokens.is_empty() {
            return Err(invalid("no tokens".into()));
        }
        if input.tokens.len() > spec.max_length {
            return Err(invalid(format!(
                "{} tokens exceed the maximum length {}",
                input.tokens.len(),
                spec.max_length
            )));
        }
        match input.task {
            Task::Embed(options) => {
                if options.layer > self.model.num_layers() {
                    return Err(invalid(format!(
                        "layer {} is past the last layer {}",
                        options.layer,
                        self.model.num_layers()
                    )));
                }
                if let Some(d) = options.dimensions
                    && (d == 0 || d > spec.hidden_size())
                {
                    return Err(invalid(format!(
                        "dimensions {d} must be between 1 and {}",
                        spec.hidden_size()
                    )));
                }
            }
            Task::Classify(_) if spec.classifier.is_none() => {
                return Err(invalid("the model has no classification head".into()));
            }
            Task::Classify(_) => {}
        }
        Ok(())
    }

    /// Runs one batch. A libtorch failure fails the batch with an error, never the thread.
    pub fn run(&self, batch: &[EngineInput]) -> Result<Vec<Output>, EngineError> {
        for (index, input) in batch.iter().enumerate() {
            self.check(index, input)?;
        }
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let _no_grad = tch::no_grad_guard();
        catch_unwind(AssertUnwindSafe(|| self.forward(batch))).map_err(|panic| {
            let message = panic_message(panic.as_ref());
            if is_sticky_device_error(&message) {
                EngineError::Broken(message)
            } else {
                EngineError::Compute(message)
            }
        })
    }

    fn forward(&self, batch: &[EngineInput]) -> Vec<Output> {
        let device = self.model.device();
        let batch_size = batch.len() as i64;
        let width = batch.iter().map(|i| i.tokens.len()).max().unwrap_or(0);
        let mut ids = vec![0i64; batch.len() * width];
        let mut types = vec![0i64; batch.len() * width];
        let mut mask = vec![0i64; batch.len() * width];
        for (row, input) in batch.iter().enumerate() {
            let start = row * width;
            let n = input.tokens.len();
            ids[start..start + n].copy_from_slice(&input.tokens.ids);
            types[start..start + n].copy_from_slice(&input.tokens.type_ids);
            mask[start..start + n].fill(1);
        }
        let shape = [batch_size, width as i64];
        // On a GPU, queued on the worker's stream through page-locked memory (`cuda::upload`).
        let to_device = |v: &[i64]| cuda::upload(&Tensor::from_slice(v).view(shape), device);
        let (ids, types, mask) = (to_device(&ids), to_device(&types), to_device(&mask));

        let last = self.model.num_layers();
        let mut keep: Vec<usize> = batch
            .iter()
            .map(|i| match i.task {
                Task::Embed(o) => o.layer,
                Task::Classify(_) => last,
            })
            .collect();
        keep.sort_unstable();
        keep.dedup();
        let states = self.model.encode(&ids, &types, &mask, &keep);

        let mut outputs: Vec<Option<Output>> = vec![None; batch.len()];
        self.embed_outputs(batch, &states, &mask, &mut outputs);
        self.classify_outputs(batch, &states, &mut outputs);
        outputs
            .into_iter()
            .map(|o| o.expect("every input has a task"))
            .collect()
    }

    /// Sentence and token embeddings, computed once per distinct option set in the batch.
    fn embed_outputs(
        &self,
        batch: &[EngineInput],
        states: &HiddenStates,
        mask: &Tensor,
        outputs: &mut [Option<Output>],
    ) {
        let mut groups: HashMap<EmbedOptions, Vec<usize>> = HashMap::new();
        for (row, input) in batch.iter().enumerate() {
            if let Task::Embed(options) = input.task {
                groups.entry(*options).or_default().push(row);
            }
        }
        for (options, rows) in groups {
            let hidden = states.get(options.layer).to_kind(Kind::Float);
            let dim = options.dimensions.unwrap_or(hidden.size()[2] as usize);
            if options.pooling == Pooling::Tokens {
                let mut tokens = hidden.narrow(2, 0, dim as i64);
                if options.normalize {
                    tokens = l2_normalize(&tokens);
                }
                let values = to_host(&tokens);
                let width = tokens.size()[1] as usize;
                for row in rows {
                    let start = row * width * dim;
                    let n = batch[row].tokens.len();
                    outputs[row] = Some(Output::TokenEmbeddings {
                        dim,
                        values: values[start..start + n * dim].to_vec(),
                    });
                }
            } else {
                let mut pooled =
                    pool_hidden(&hidden, mask, options.pooling).narrow(1, 0, dim as i64);
                if options.normalize {
                    pooled = l2_normalize(&pooled);
                }
                let values = to_host(&pooled);
                for row in rows {
                    outputs[row] = Some(Output::Embedding(
                        values[row * dim..(row + 1) * dim].to_vec(),
                    ));
                }
            }
        }
    }

    fn classify_outputs(
        &self,
        batch: &[EngineInput],
        states: &HiddenStates,
        outputs: &mut [Option<Output>],
    ) {
        let rows: Vec<usize> = (0..batch.len())
            .filter(|&r| matches!(batch[r].task, Task::Classify(_)))
            .collect();
        if rows.is_empty() {
            return;
        }
        let spec = self.model.spec();
        let labels = &spec.classifier.as_ref().expect("checked").labels;
        let last = states.get(self.model.num_layers());
        let logits = self.model.classify_logits(last).expect("checked");
        let mut by_activation: HashMap<ScoreActivation, Vec<f32>> = HashMap::new();
        for row in rows {
            let Task::Classify(options) = batch[row].task else {
                unreachable!()
            };
            let scores = by_activation
                .entry(options.activation)
                .or_insert_with(|| to_host(&options.activation.apply(&logits)));
            let n = labels.len();
            let mut ranked: Vec<LabelScore> = scores[row * n..(row + 1) * n]
                .iter()
                .enumerate()
                .map(|(index, &score)| LabelScore {
                    index,
                    label: labels[index].clone(),
                    score,
                })
                .collect();
            ranked.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
            if let Some(k) = options.top_k {
                ranked.truncate(k);
            }
            outputs[row] = Some(Output::Scores(ranked));
        }
    }
}

/// A tensor's values as fp32 on the host, in row-major order.
fn to_host(t: &Tensor) -> Vec<f32> {
    let flat = t
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous()
        .view([-1]);
    Vec::<f32>::try_from(&flat).expect("an fp32 CPU tensor converts")
}
