//! What a model directory says about the model, read once and shared by the tokenizer and every
//! replica: config, maximum length, pooling and normalisation defaults, labels.
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ModelError;
use super::config::BertConfig;
use super::heads::{Pooling, ScoreActivation};

#[derive(Debug, Clone)]
pub struct ClassifierSpec {
    /// Label names by class index.
    pub labels: Vec<String>,
    /// From `problem_type`; a call may override it.
    pub activation: ScoreActivation,
}

#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub dir: PathBuf,
    pub name: String,
    pub config: BertConfig,
    /// Longest token sequence, special tokens included.
    pub max_length: usize,
    pub default_pooling: Pooling,
    pub default_normalize: bool,
    pub classifier: Option<ClassifierSpec>,
}

#[derive(Deserialize)]
struct SentenceTransformersModule {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::Invalid {
        file: path.to_path_buf(),
        reason: e.to_string(),
    })
}

impl ModelSpec {
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        if !dir.is_dir() {
            return Err(ModelError::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "model directory not found"),
            ));
        }
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        let (default_pooling, default_normalize) = read_sentence_transformers_defaults(dir)?;

        let mut max_length = config.max_position_embeddings as usize;
        let st_config = dir.join("sentence_bert_config.json");
        if st_config.exists() {
            let st: SentenceBertConfig = read_json(&st_config)?;
            if let Some(n) = st.max_seq_length {
                max_length = max_length.min(n);
            }
        }

        let classifier = if config.is_classifier() {
            let num_labels = config.id2label.as_ref().map_or(0, |m| m.len());
            if num_labels == 0 {
                return Err(ModelError::Invalid {
                    file: dir.join("config.json"),
                    reason: "BertForSequenceClassification without id2label".into(),
                });
            }
            let activation =
                ScoreActivation::from_problem_type(config.problem_type.as_deref(), num_labels)
                    .map_err(|reason| ModelError::Invalid {
                        file: dir.join("config.json"),
                        reason,
                    })?;
            Some(ClassifierSpec {
                labels: config.labels(num_labels),
                activation,
            })
        } else {
            None
        };

        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Packaged models live in a folder named "model": the package's name says more.
        let name = if name == "model" {
            dir.parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or(name)
        } else {
            name
        };

        Ok(ModelSpec {
            dir: dir.to_path_buf(),
            name,
            config,
            max_length,
            default_pooling,
            default_normalize,
            classifier,
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size as usize
    }

    pub fn num_layers(&self) -> usize {
        self.config.num_hidden_layers as usize
    }

    /// Resolves a layer index as HuggingFace's `hidden_states`: 0 is the embedding output,
    /// `num_layers` the last layer, and negative indices count from the end (-1 is the last).
    pub fn resolve_layer(&self, layer: i64) -> Option<usize> {
        let n = self.num_layers() as i64;
        let resolved = if layer < 0 { n + 1 + layer } else { layer };
        (0..=n).contains(&resolved).then_some(resolved as usize)
    }
}

/// Pooling and normalisation from sentence-transformers' `modules.json`; mean pooling without
/// normalisation for a plain checkpoint.
fn read_sentence_transformers_defaults(dir: &Path) -> Result<(Pooling, bool), ModelError> {
    let modules_file = dir.join("modules.json");
    if !modules_file.exists() {
        return Ok((Pooling::Mean, false));
    }
    let modules: Vec<SentenceTransformersModule> = read_json(&modules_file)?;
    let mut pooling = Pooling::Mean;
    let mut normalize = false;
    for module in &modules {
        match module.kind.rsplit('.').next().unwrap_or_default() {
            "Transformer" => {}
            "Normalize" => normalize = true,
            "Pooling" => {
                let file = dir.join(&module.path).join("config.json");
                let config: PoolingConfig = read_json(&file)?;
                let modes = [
                    (config.pooling_mode_cls_token, Pooling::Cls),
                    (config.pooling_mode_mean_tokens, Pooling::Mean),
                    (config.pooling_mode_max_tokens, Pooling::Max),
                ];
                let chosen: Vec<Pooling> = modes
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, p)| *p)
                    .collect();
                if config.pooling_mode_mean_sqrt_len_tokens || chosen.len() != 1 {
                    return Err(ModelError::Invalid {
                        file,
                        reason:
                            "unsupported pooling: exactly one of cls, mean or max tokens must be on"
                                .into(),
                    });
                }
                pooling = chosen[0];
            }
            other => {
                return Err(ModelError::Invalid {
                    file: modules_file,
                    reason: format!(
                        "unsupported sentence-transformers module {other:?} ({}): only Transformer, \
                         Pooling and Normalize are served",
                        module.kind
                    ),
                });
            }
        }
    }
    Ok((pooling, normalize))
}
