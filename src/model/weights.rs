//! Reading a checkpoint's tensors from safetensors (one file or shards with an index) and handing
//! them out by name, while recording every tensor that is missing, misshapen or never used, so that
//! one error can list all that is wrong with a checkpoint.
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use super::ModelError;

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

/// Tensors present in checkpoints that hold no weights we compute with, skipped knowingly.
fn is_ignored(name: &str) -> bool {
    // A registered buffer (0..max_len) that older transformers versions saved.
    name.ends_with("embeddings.position_ids")
        // Pre-training / masked-LM heads: not served.
        || name.starts_with("cls.")
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

pub struct Weights {
    tensors: HashMap<String, Tensor>,
    /// "bert." for `BertFor...` checkpoints, "" for `BertModel` / sentence-transformers.
    encoder_prefix: &'static str,
    source: PathBuf,
    device: Device,
    kind: Kind,
    used: RefCell<BTreeSet<String>>,
    missing: RefCell<Vec<String>>,
    misshapen: RefCell<Vec<String>>,
}

impl Weights {
    /// Loads every tensor of the checkpoint in `dir` (to the CPU first; `get` moves each one).
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self, ModelError> {
        let single = dir.join(SINGLE_FILE);
        let index = dir.join(INDEX_FILE);
        let (files, source) = if single.exists() {
            (vec![single.clone()], single)
        } else if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
            let parsed: ShardIndex =
                serde_json::from_str(&text).map_err(|e| ModelError::Invalid {
                    file: index.clone(),
                    reason: e.to_string(),
                })?;
            let shards: BTreeSet<&String> = parsed.weight_map.values().collect();
            (shards.into_iter().map(|s| dir.join(s)).collect(), index)
        } else {
            return Err(ModelError::Invalid {
                file: dir.to_path_buf(),
                reason: format!("no weights: neither {SINGLE_FILE} nor {INDEX_FILE} is there"),
            });
        };

        let mut tensors = HashMap::new();
        for file in &files {
            if !file.exists() {
                return Err(ModelError::io(
                    file,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "shard named in the index"),
                ));
            }
            let read = Tensor::read_safetensors(file).map_err(|e| ModelError::Invalid {
                file: file.clone(),
                reason: format!("unreadable safetensors: {e}"),
            })?;
            tensors.extend(read);
        }

        let encoder_prefix = if tensors.contains_key("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else if tensors.contains_key("embeddings.word_embeddings.weight") {
            ""
        } else {
            return Err(ModelError::Invalid {
                file: source,
                reason:
                    "no BERT encoder in it: expected the tensor embeddings.word_embeddings.weight \
                         (or bert.embeddings.word_embeddings.weight)"
                        .into(),
            });
        };

        Ok(Weights {
            tensors,
            encoder_prefix,
            source,
            device,
            kind,
            used: RefCell::default(),
            missing: RefCell::default(),
            misshapen: RefCell::default(),
        })
    }

    /// A view on the encoder's tensors (`embeddings.*`, `encoder.*`, `pooler.*`).
    pub fn encoder(&self) -> Scope<'_> {
        Scope {
            weights: self,
            prefix: self.encoder_prefix.to_string(),
        }
    }

    /// A view on tensors outside the encoder (`classifier.*`).
    pub fn root(&self) -> Scope<'_> {
        Scope {
            weights: self,
            prefix: String::new(),
        }
    }

    fn fetch(&self, name: &str, shape: &[i64]) -> Tensor {
        let Some(tensor) = self.tensors.get(name) else {
            self.missing.borrow_mut().push(name.to_string());
            return Tensor::zeros(shape, (self.kind, self.device));
        };
        self.used.borrow_mut().insert(name.to_string());
        if tensor.size() != shape {
            self.misshapen.borrow_mut().push(format!(
                "{name}: expected {shape:?}, found {:?}",
                tensor.size()
            ));
            return Tensor::zeros(shape, (self.kind, self.device));
        }
        tensor.to_device(self.device).to_kind(self.kind)
    }

    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Fails with every missing, misshapen and unexpected tensor, or succeeds when each tensor of
    /// the checkpoint was used (or is one we knowingly skip).
    pub fn finish(self) -> Result<(), ModelError> {
        let used = self.used.into_inner();
        let mut unexpected: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| !used.contains(*k) && !is_ignored(k))
            .cloned()
            .collect();
        unexpected.sort();
        let missing = self.missing.into_inner();
        let misshapen = self.misshapen.into_inner();
        if missing.is_empty() && misshapen.is_empty() && unexpected.is_empty() {
            return Ok(());
        }
        Err(ModelError::Tensors {
            file: self.source,
            missing,
            misshapen,
            unexpected,
        })
    }
}

/// Tensor names below a key prefix, mirroring the checkpoint's module tree.
#[derive(Clone)]
pub struct Scope<'a> {
    weights: &'a Weights,
    prefix: String,
}

impl<'a> Scope<'a> {
    pub fn sub(&self, name: impl std::fmt::Display) -> Scope<'a> {
        Scope {
            weights: self.weights,
            prefix: format!("{}{}.", self.prefix, name),
        }
    }

    /// The checkpoint's full name for the tensor `name` in this scope.
    pub fn name(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }

    /// The tensor `name` with the given shape; a missing or misshapen one is recorded for
    /// `Weights::finish` and stands in as zeros meanwhile.
    pub fn get(&self, name: &str, shape: &[i64]) -> Tensor {
        self.weights.fetch(&self.name(name), shape)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.weights.contains(&self.name(name))
    }

    /// The leading dimension of `name` if present (the size a head was trained with).
    pub fn rows_of(&self, name: &str) -> Option<i64> {
        self.weights
            .tensors
            .get(&self.name(name))
            .and_then(|t| t.size().first().copied())
    }
}
