//! What a caller asks for, resolved once against the model's defaults into a `Task`. The gRPC
//! edge and the command line both describe a call with these types and report an `OptionError`
//! in their own words (`options.layer` there, `--layer` here), so the rules live in one place.
use super::{ClassifyOptions, EmbedOptions, Task};
use crate::model::{ModelSpec, Pooling, ScoreActivation};

/// An embedding as asked for; `None` takes the model's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbedRequest {
    pub pooling: Option<Pooling>,
    pub normalize: Option<bool>,
    /// HuggingFace's `hidden_states` index; negative counts from the end. Default: the last.
    pub layer: Option<i64>,
    pub dimensions: Option<u64>,
}

/// Classification as asked for; `None` takes the model's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassifyRequest {
    pub activation: Option<ScoreActivation>,
    pub top_k: Option<u64>,
}

/// An option the model cannot honour. `field` names the option without the caller's prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error(
        "{layer} is outside -{}..={last} (0 is the embedding output, {last} the last layer)",
        last + 1
    )]
    Layer { layer: i64, last: usize },
    #[error("{dimensions} is outside 1..={hidden} (the model's hidden size)")]
    Dimensions { dimensions: u64, hidden: usize },
    #[error("the model {model} has no classification head (architectures {architectures:?})")]
    NoClassifier {
        model: String,
        architectures: Vec<String>,
    },
}

impl OptionError {
    /// The option at fault, as the contract names it.
    pub fn field(&self) -> &'static str {
        match self {
            OptionError::Layer { .. } => "layer",
            OptionError::Dimensions { .. } => "dimensions",
            OptionError::NoClassifier { .. } => "model",
        }
    }
}

impl EmbedRequest {
    pub fn resolve(&self, spec: &ModelSpec) -> Result<Task, OptionError> {
        let requested = self.layer.unwrap_or(-1);
        let layer = spec.resolve_layer(requested).ok_or(OptionError::Layer {
            layer: requested,
            last: spec.num_layers(),
        })?;
        let hidden = spec.hidden_size();
        let dimensions = match self.dimensions {
            None => None,
            Some(d) if d >= 1 && d as usize <= hidden => Some(d as usize),
            Some(d) => {
                return Err(OptionError::Dimensions {
                    dimensions: d,
                    hidden,
                });
            }
        };
        Ok(Task::Embed(EmbedOptions {
            pooling: self.pooling.unwrap_or(spec.default_pooling),
            normalize: self.normalize.unwrap_or(spec.default_normalize),
            layer,
            dimensions,
        }))
    }
}

impl ClassifyRequest {
    pub fn resolve(&self, spec: &ModelSpec) -> Result<Task, OptionError> {
        let Some(classifier) = &spec.classifier else {
            return Err(OptionError::NoClassifier {
                model: spec.name.clone(),
                architectures: spec.config.architectures.clone(),
            });
        };
        Ok(Task::Classify(ClassifyOptions {
            activation: self.activation.unwrap_or(classifier.activation),
            top_k: self.top_k.filter(|&k| k > 0).map(|k| k as usize),
        }))
    }
}
