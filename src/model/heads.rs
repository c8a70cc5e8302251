//! What is computed on top of the encoder's hidden states: pooling into sentence embeddings,
//! normalisation, and the activation over classification logits.
use std::str::FromStr;

use tch::{Kind, Tensor};

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pooling {
    /// The first token's ([CLS]) hidden state.
    Cls,
    /// The mean over real (non-padding) tokens.
    Mean,
    /// The element-wise maximum over real tokens.
    Max,
    /// No pooling: one vector per token.
    Tokens,
}

impl FromStr for Pooling {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cls" => Ok(Pooling::Cls),
            "mean" => Ok(Pooling::Mean),
            "max" => Ok(Pooling::Max),
            "tokens" => Ok(Pooling::Tokens),
            other => Err(format!(
                "unknown pooling {other:?}: expected cls, mean, max or tokens"
            )),
        }
    }
}

impl std::fmt::Display for Pooling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
            Pooling::Max => "max",
            Pooling::Tokens => "tokens",
        })
    }
}

/// Pools `hidden` [batch, seq, dim] into [batch, dim] over the real tokens of `mask` [batch, seq].
/// Token pooling is not a reduction and is handled by the caller.
pub fn pool(hidden: &Tensor, mask: &Tensor, pooling: Pooling) -> Tensor {
    match pooling {
        Pooling::Cls => hidden.select(1, 0),
        Pooling::Mean => {
            let mask = mask.unsqueeze(-1).to_kind(hidden.kind());
            let summed = (hidden * &mask).sum_dim_intlist(1, false, hidden.kind());
            let counts = mask
                .sum_dim_intlist(1, false, hidden.kind())
                .clamp_min(1e-9);
            summed / counts
        }
        Pooling::Max => {
            let padding = mask.unsqueeze(-1).eq(0);
            hidden
                .masked_fill(&padding, f64::NEG_INFINITY)
                .amax(1, false)
        }
        Pooling::Tokens => unreachable!("token embeddings are not pooled"),
    }
}

/// L2 normalisation along the last dimension, as torch.nn.functional.normalize (eps 1e-12).
pub fn l2_normalize(x: &Tensor) -> Tensor {
    let norms = x.norm_scalaropt_dim(2.0, [-1], true).clamp_min(1e-12);
    x / norms
}

/// The function from classification logits to scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScoreActivation {
    /// Single-label classification: probabilities that sum to one.
    Softmax,
    /// Multi-label classification: an independent probability per label.
    Sigmoid,
    /// Regression or raw logits.
    None,
}

impl ScoreActivation {
    /// HuggingFace's reading of `problem_type`; without one, one label means sigmoid and more
    /// mean softmax (as transformers' text-classification pipeline does).
    pub fn from_problem_type(
        problem_type: Option<&str>,
        num_labels: usize,
    ) -> Result<Self, String> {
        match problem_type {
            Some("single_label_classification") => Ok(ScoreActivation::Softmax),
            Some("multi_label_classification") => Ok(ScoreActivation::Sigmoid),
            Some("regression") => Ok(ScoreActivation::None),
            Some(other) => Err(format!("unsupported problem_type {other:?}")),
            None if num_labels == 1 => Ok(ScoreActivation::Sigmoid),
            None => Ok(ScoreActivation::Softmax),
        }
    }

    /// Scores from logits [batch, labels], in fp32. Softmax subtracts the row maximum inside
    /// libtorch, so large logits of opposite sign do not overflow.
    pub fn apply(self, logits: &Tensor) -> Tensor {
        let logits = logits.to_kind(Kind::Float);
        match self {
            ScoreActivation::Softmax => logits.softmax(-1, Kind::Float),
            ScoreActivation::Sigmoid => logits.sigmoid(),
            ScoreActivation::None => logits,
        }
    }
}

impl FromStr for ScoreActivation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "softmax" => Ok(ScoreActivation::Softmax),
            "sigmoid" => Ok(ScoreActivation::Sigmoid),
            "none" => Ok(ScoreActivation::None),
            other => Err(format!(
                "unknown activation {other:?}: expected softmax, sigmoid or none"
            )),
        }
    }
}

impl std::fmt::Display for ScoreActivation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ScoreActivation::Softmax => "softmax",
            ScoreActivation::Sigmoid => "sigmoid",
            ScoreActivation::None => "none",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_follows_problem_type_then_label_count() {
        let from = ScoreActivation::from_problem_type;
        assert_eq!(
            from(Some("single_label_classification"), 1),
            Ok(ScoreActivation::Softmax)
        );
        assert_eq!(
            from(Some("multi_label_classification"), 3),
            Ok(ScoreActivation::Sigmoid)
        );
        assert_eq!(from(Some("regression"), 1), Ok(ScoreActivation::None));
        assert_eq!(from(None, 1), Ok(ScoreActivation::Sigmoid));
        assert_eq!(from(None, 2), Ok(ScoreActivation::Softmax));
        assert!(from(Some("ranking"), 2).is_err());
    }

    #[test]
    fn softmax_survives_large_logits_of_opposite_sign() {
        let logits = Tensor::from_slice(&[1000f32, -1000.0, 0.0]).view([1, 3]);
        let scores =
            Vec::<f32>::try_from(ScoreActivation::Softmax.apply(&logits).view([-1])).unwrap();
        assert_eq!(scores, [1.0, 0.0, 0.0]);
    }

    #[test]
    fn pooling_ignores_padding() {
        // Two tokens of which the second is padding: every pooling must see only the first.
        let hidden = Tensor::from_slice(&[1f32, -2.0, 50.0, 60.0]).view([1, 2, 2]);
        let mask = Tensor::from_slice(&[1i64, 0]).view([1, 2]);
        for pooling in [Pooling::Cls, Pooling::Mean, Pooling::Max] {
            let pooled = Vec::<f32>::try_from(pool(&hidden, &mask, pooling).view([-1])).unwrap();
            assert_eq!(pooled, [1.0, -2.0], "{pooling}");
        }
    }

    #[test]
    fn names_round_trip() {
        for p in [Pooling::Cls, Pooling::Mean, Pooling::Max, Pooling::Tokens] {
            assert_eq!(p.to_string().parse::<Pooling>(), Ok(p));
        }
        for a in [
            ScoreActivation::Softmax,
            ScoreActivation::Sigmoid,
            ScoreActivation::None,
        ] {
            assert_eq!(a.to_string().parse::<ScoreActivation>(), Ok(a));
        }
    }
}
