//! `config.json` of a HuggingFace BERT checkpoint: the hyper-parameters the encoder is built from.
use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::ModelError;

/// The subset of `config.json` that determines the computation.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub model_type: Option<String>,
    #[serde(default)]
    pub architectures: Vec<String>,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: i64,
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: i64,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    pub position_embedding_type: Option<String>,
    /// Label names by class index, as strings ("0", "1", ...) in HuggingFace's JSON.
    pub id2label: Option<BTreeMap<String, String>>,
    pub problem_type: Option<String>,
}

fn default_hidden_act() -> String {
    "gelu".into()
}
fn default_max_position_embeddings() -> i64 {
    512
}
fn default_type_vocab_size() -> i64 {
    2
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}

/// The feed-forward activation, from `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiddenAct {
    /// Exact GELU (erf), HuggingFace's "gelu".
    Gelu,
    /// Tanh approximation: "gelu_new", "gelu_pytorch_tanh".
    GeluTanh,
    Relu,
}

/// Architectures whose encoder we serve. Heads other than sequence classification are not
/// computed; their tensors (`cls.*`) are known and skipped rather than reported as unexpected.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "BertModel",
    "BertForSequenceClassification",
    "BertForMaskedLM",
    "BertForPreTraining",
];

impl BertConfig {
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let config: BertConfig = serde_json::from_str(&text).map_err(|e| ModelError::Invalid {
            file: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ModelError> {
        let invalid = |reason: String| ModelError::Invalid {
            file: path.to_path_buf(),
            reason,
        };
        match self.model_type.as_deref() {
            Some("bert") => {}
            Some(other) => {
                return Err(invalid(format!(
                    "unsupported model_type {other:?}: only \"bert\" is supported"
                )));
            }
            None => {
                return Err(invalid(
                    "model_type is missing: only \"bert\" is supported".into(),
                ));
            }
        }
        if let Some(bad) = self
            .architectures
            .iter()
            .find(|a| !SUPPORTED_ARCHITECTURES.contains(&a.as_str()))
        {
            return Err(invalid(format!(
                "unsupported architecture {bad:?}: supported are {SUPPORTED_ARCHITECTURES:?}"
            )));
        }
        if let Some(kind) = self.position_embedding_type.as_deref()
            && kind != "absolute"
        {
            return Err(invalid(format!(
                "unsupported position_embedding_type {kind:?}: only \"absolute\" is supported"
            )));
        }
        self.activation().map_err(invalid)?;
        for (name, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if value <= 0 {
                return Err(invalid(format!("{name} must be positive, got {value}")));
            }
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(invalid(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        Ok(())
    }

    pub fn activation(&self) -> Result<HiddenAct, String> {
        match self.hidden_act.as_str() {
            "gelu" => Ok(HiddenAct::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(HiddenAct::GeluTanh),
            "relu" => Ok(HiddenAct::Relu),
            other => Err(format!(
                "unsupported hidden_act {other:?}: supported are gelu, gelu_new, gelu_pytorch_tanh, relu"
            )),
        }
    }

    pub fn is_classifier(&self) -> bool {
        self.architectures
            .iter()
            .any(|a| a == "BertForSequenceClassification")
    }

    /// Label names ordered by class index; `LABEL_i` where `id2label` is silent.
    pub fn labels(&self, num_labels: usize) -> Vec<String> {
        (0..num_labels)
            .map(|i| {
                self.id2label
                    .as_ref()
                    .and_then(|m| m.get(&i.to_string()).cloned())
                    .unwrap_or_else(|| format!("LABEL_{i}"))
            })
            .collect()
    }
}
