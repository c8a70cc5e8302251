//! BERT in tch: what a model directory holds (`ModelSpec`), how its weights are read (`weights`),
//! the encoder itself (`bert`) and what is computed on top of it (`heads`).
pub mod bert;
pub mod config;
pub mod heads;
mod onednn;
pub mod spec;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use bert::{BertModel, HiddenStates, Linear};
pub use config::BertConfig;
pub use heads::{Pooling, ScoreActivation};
pub use spec::{ClassifierSpec, ModelSpec};
use weights::Weights;

/// What computes the dense layers (the products that are 70-75% of a CPU forward).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearKernel {
    /// libtorch's `linear`: MKL's sgemm on a CPU, cuBLAS on CUDA.
    Aten,
    /// libtorch's oneDNN inner product with each weight packed once at load and the
    /// feed-forward activation fused into its product. CPU only.
    OneDnn,
}

/// The row bucket ([`bert`]'s `Rows`) of a model computing in `kind` with `kernel`: 16 (an AMX
/// tile's rows) where oneDNN computes in bf16, whose kernels take 6-10 ms each to build; none
/// elsewhere. fp32's oneDNN kernels build in about 1 ms and cuBLAS needs no building, so there
/// padding rows would cost more than they save.
pub fn row_bucket(kernel: LinearKernel, kind: Kind) -> i64 {
    match (kernel, kind) {
        (LinearKernel::OneDnn, Kind::BFloat16) => 16,
        _ => 1,
    }
}

impl LinearKernel {
    /// Whether `OneDnn` can compute on `device`: a CPU, with a libtorch that has the oneDNN
    /// operators it calls.
    pub fn onednn_runs_on(device: Device) -> bool {
        device == Device::Cpu && onednn::available()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {reason}")]
    Invalid { file: PathBuf, reason: String },
    #[error("{file}: {}", describe_tensor_problems(missing, misshapen, unexpected))]
    Tensors {
        file: PathBuf,
        missing: Vec<String>,
        misshapen: Vec<String>,
        unexpected: Vec<String>,
    },
    #[error("device {device}: {reason}")]
    Device { device: String, reason: String },
}

impl ModelError {
    pub(crate) fn io(file: &Path, source: std::io::Error) -> Self {
        ModelError::Io {
            file: file.to_path_buf(),
            source,
        }
    }
}

fn describe_tensor_problems(
    missing: &[String],
    misshapen: &[String],
    unexpected: &[String],
) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing tensors: {}", missing.join(", ")));
    }
    if !misshapen.is_empty() {
        parts.push(format!("shape mismatches: {}", misshapen.join("; ")));
    }
    if !unexpected.is_empty() {
        parts.push(format!("unexpected tensors: {}", unexpected.join(", ")));
    }
    parts.join("; ")
}

/// One replica of the model on one device: owned by one worker thread (tch tensors are not Sync).
pub struct Model {
    spec: Arc<ModelSpec>,
    bert: BertModel,
    classifier: Option<Linear>,
    device: Device,
    kind: Kind,
}

impl Model {
    /// `kernel` must be `Aten` on a CUDA device; the engine's `DenseKernel` resolves it so.
    pub fn load(
        spec: Arc<ModelSpec>,
        device: Device,
        kind: Kind,
        kernel: LinearKernel,
    ) -> Result<Self, ModelError> {
        if kernel == LinearKernel::OneDnn && !LinearKernel::onednn_runs_on(device) {
            return Err(ModelError::Device {
                device: match device {
                    Device::Cuda(n) => format!("cuda:{n}"),
                    _ => "cpu".into(),
                },
                reason: "the oneDNN dense kernel runs only on a CPU whose libtorch has oneDNN"
                    .into(),
            });
        }
        let weights = Weights::load(&spec.dir, device, kind)?;
        let config = &spec.config;
        let bert = BertModel::load(&weights.encoder(), config, kernel, row_bucket(kernel, kind));
        let classifier = spec.classifier.as_ref().map(|c| {
            Linear::load(
                &weights.root().sub("classifier"),
                config.hidden_size,
                c.labels.len() as i64,
                kernel,
            )
        });
        weights.finish()?;
        if classifier.is_some() && bert.pooler.is_none() {
            return Err(ModelError::Invalid {
                file: spec.dir.clone(),
                reason: "a sequence classifier needs the pooler (pooler.dense.*), which is absent"
                    .into(),
            });
        }
        Ok(Model {
            spec,
            bert,
            classifier,
            device,
            kind,
        })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn num_layers(&self) -> usize {
        self.bert.num_layers()
    }

    /// A forward's dense layers compute a multiple of this many rows (1: exactly its tokens).
    pub fn row_bucket(&self) -> i64 {
        self.bert.row_bucket()
    }

    pub fn encode(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        keep: &[usize],
    ) -> HiddenStates {
        self.bert
            .forward(input_ids, token_type_ids, attention_mask, keep)
    }

    /// Classification logits [batch, labels] from the last hidden state.
    pub fn classify_logits(&self, last_hidden: &Tensor) -> Option<Tensor> {
        let pooler = self.bert.pooler.as_ref()?;
        let classifier = self.classifier.as_ref()?;
        Some(classifier.forward(&pooler.forward(last_hidden)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three inputs of five tokens: 15 rows, a multiple of none of the buckets.
    const BATCH: i64 = 3;
    const SEQ: i64 = 5;
    const BUCKETS: [i64; 3] = [16, 7, 64];
    /// What a different row count may change in an fp32 product's rounding.
    const TOLERANCE: f64 = 1e-6;

    #[test]
    fn padding_the_rows_to_a_bucket_leaves_every_hidden_state_unchanged() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/bert_tiny");
        let spec = Arc::new(ModelSpec::load(&dir).unwrap());
        tch::manual_seed(11);
        let input_ids = Tensor::randint(
            spec.config.vocab_size,
            [BATCH, SEQ],
            (Kind::Int64, Device::Cpu),
        );
        let token_type_ids = input_ids.zeros_like();
        // The second input is two tokens shorter, the third four: padding keys as well as rows.
        let attention_mask = Tensor::from_slice2(&[[1i64; 5], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]);
        let keep: Vec<usize> = (0..=spec.num_layers()).collect();
        let mut kernels = vec![LinearKernel::Aten];
        if LinearKernel::onednn_runs_on(Device::Cpu) {
            kernels.push(LinearKernel::OneDnn);
        }
        for kernel in kernels {
            let exact = Model::load(spec.clone(), Device::Cpu, Kind::Float, kernel).unwrap();
            assert_eq!(exact.row_bucket(), 1, "fp32 pads no rows");
            let expected = exact.encode(&input_ids, &token_type_ids, &attention_mask, &keep);
            for bucket in BUCKETS {
                let mut padded =
                    Model::load(spec.clone(), Device::Cpu, Kind::Float, kernel).unwrap();
                padded.bert.set_row_bucket(bucket);
                let got = padded.encode(&input_ids, &token_type_ids, &attention_mask, &keep);
                for &layer in &keep {
                    let (want, have) = (expected.get(layer), got.get(layer));
                    assert_eq!(have.size(), [BATCH, SEQ, spec.config.hidden_size]);
                    let difference = (want - have).abs().max().double_value(&[]);
                    assert!(
                        difference < TOLERANCE,
                        "{kernel:?}, bucket {bucket}, hidden state {layer}: {difference}"
                    );
                }
            }
        }
    }
}
