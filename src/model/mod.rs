//! BERT in tch: what a model directory holds (`ModelSpec`), how its weights are read (`weights`),
//! the encoder itself (`bert`) and what is computed on top of it (`heads`).
pub mod bert;
pub mod config;
pub mod heads;
mod onednn;
pub mod rows;
pub mod spec;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use bert::{BertModel, HiddenStates, Linear};
pub use config::BertConfig;
pub use heads::{Pooling, ScoreActivation};
pub use rows::RowBuckets;
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

/// An AMX tile's rows: bf16's row buckets are whole tiles.
const AMX_TILE_ROWS: i64 = 16;

/// How a model computing in `kind` with `kernel` rounds its dense layers' row counts
/// ([`RowBuckets`]): geometric buckets wherever oneDNN builds kernels per row count, of whole AMX
/// tiles in bf16; exact counts where MKL or cuBLAS compute, which build nothing per count.
pub fn row_buckets(kernel: LinearKernel, kind: Kind) -> RowBuckets {
    match (kernel, kind) {
        (LinearKernel::OneDnn, Kind::BFloat16) => RowBuckets::Geometric {
            min_step: AMX_TILE_ROWS,
        },
        (LinearKernel::OneDnn, _) => RowBuckets::Geometric { min_step: 1 },
        (LinearKernel::Aten, _) => RowBuckets::Exact,
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
        let bert = BertModel::load(
            &weights.encoder(),
            config,
            kernel,
            row_buckets(kernel, kind),
        );
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

    /// Token counts, one per row bucket up to `max_tokens`, that the engine runs before traffic
    /// so that oneDNN builds their kernels then: every bucket in bf16, whose kernels take 6-10
    /// ms each to build (against about 1 ms to compute a product of 1,024 rows), which the first
    /// minutes of traffic would otherwise pay (BENCHMARKS.md); none elsewhere. fp32's kernels
    /// build in about 1 ms at their first use, which costs less than warming 112 buckets would
    /// at every start; cuBLAS and MKL build none.
    pub fn warm_up_tokens(&self, max_tokens: i64) -> Vec<i64> {
        match self.kind {
            Kind::BFloat16 => self.bert.row_buckets().representatives(max_tokens),
            _ => Vec::new(),
        }
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

    /// Three inputs of five tokens: 15 rows, a multiple of none of the buckets' steps.
    const BATCH: i64 = 3;
    const SEQ: i64 = 5;
    const MIN_STEPS: [i64; 3] = [AMX_TILE_ROWS, 7, 64];
    /// What a different row count may change in an fp32 product's rounding.
    const TOLERANCE: f64 = 1e-6;

    /// The CPU's default token budget, and its row buckets in bf16 (`rows`).
    const MAX_TOKENS: i64 = 1_024;
    const BF16_BUCKETS: usize = 48;

    fn tiny_spec() -> Arc<ModelSpec> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/bert_tiny");
        Arc::new(ModelSpec::load(&dir).unwrap())
    }

    #[test]
    fn onednn_rounds_rows_to_buckets_and_warms_them_up_only_in_bf16() {
        assert_eq!(
            row_buckets(LinearKernel::Aten, Kind::Float),
            RowBuckets::Exact
        );
        assert_eq!(
            row_buckets(LinearKernel::Aten, Kind::BFloat16),
            RowBuckets::Exact
        );
        if !LinearKernel::onednn_runs_on(Device::Cpu) {
            return;
        }
        let fp32 =
            Model::load(tiny_spec(), Device::Cpu, Kind::Float, LinearKernel::OneDnn).unwrap();
        assert_eq!(
            fp32.bert.row_buckets(),
            RowBuckets::Geometric { min_step: 1 }
        );
        assert!(fp32.warm_up_tokens(MAX_TOKENS).is_empty());
        let bf16 = Model::load(
            tiny_spec(),
            Device::Cpu,
            Kind::BFloat16,
            LinearKernel::OneDnn,
        )
        .unwrap();
        assert_eq!(
            bf16.bert.row_buckets(),
            RowBuckets::Geometric {
                min_step: AMX_TILE_ROWS
            }
        );
        let warmed = bf16.warm_up_tokens(MAX_TOKENS);
        assert_eq!(warmed.len(), BF16_BUCKETS);
        assert_eq!(warmed, bf16.bert.row_buckets().representatives(MAX_TOKENS));
    }

    #[test]
    fn padding_the_rows_to_a_bucket_leaves_every_hidden_state_unchanged() {
        let spec = tiny_spec();
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
            let mut exact = Model::load(spec.clone(), Device::Cpu, Kind::Float, kernel).unwrap();
            exact.bert.set_row_buckets(RowBuckets::Exact);
            let expected = exact.encode(&input_ids, &token_type_ids, &attention_mask, &keep);
            for min_step in MIN_STEPS {
                let buckets = RowBuckets::Geometric { min_step };
                assert!(buckets.rows(BATCH * SEQ) > BATCH * SEQ, "{buckets:?} pads");
                let mut padded =
                    Model::load(spec.clone(), Device::Cpu, Kind::Float, kernel).unwrap();
                padded.bert.set_row_buckets(buckets);
                let got = padded.encode(&input_ids, &token_type_ids, &attention_mask, &keep);
                for &layer in &keep {
                    let (want, have) = (expected.get(layer), got.get(layer));
                    assert_eq!(have.size(), [BATCH, SEQ, spec.config.hidden_size]);
                    let difference = (want - have).abs().max().double_value(&[]);
                    assert!(
                        difference < TOLERANCE,
                        "{kernel:?}, {buckets:?}, hidden state {layer}: {difference}"
                    );
                }
            }
        }
    }
}
