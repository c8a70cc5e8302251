//! What a request costs in memory, predicted from the request alone, in bytes: the message
//! itself, the tokens it becomes, and its response as protobuf will encode it. Predictions are
//! upper bounds (every length prefix at its longest), so a response never exceeds what was
//! predicted for its token counts; the tests check that against prost's own `encoded_len`.
use prost::encoding::encoded_len_varint;

use crate::engine::Task;
use crate::model::{ModelSpec, Pooling};

/// Bytes of one length-delimited field of `len` bytes: tag, length, payload.
fn field(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// Usage { tokens: uint32, truncated: bool } as a field.
const USAGE_FIELD: usize = 1 + 1 + (1 + 5) + (1 + 1);

/// Memory a tokenized input holds per token (ids and type ids, i64 each).
pub const TOKEN_BYTES: usize = 16;

/// Bytes of one input's result in a response, for an input of `tokens` tokens.
pub fn result_bytes(spec: &ModelSpec, task: &Task, tokens: usize) -> usize {
    let inner = match task {
        Task::Embed(options) => {
            let dim = options.dimensions.unwrap_or(spec.hidden_size());
            let vector = field(4 * dim);
            if options.pooling == Pooling::Tokens {
                tokens * field(vector) + USAGE_FIELD
            } else {
                vector + USAGE_FIELD
            }
        }
        Task::Classify(options) => {
            let labels = spec.classifier.as_ref().map_or(&[][..], |c| &c.labels[..]);
            let longest = labels.iter().map(String::len).max().unwrap_or(0);
            let shown = options.top_k.unwrap_or(labels.len()).min(labels.len());
            // LabelScore { label: string, score: float, index: uint32 }
            let label = field(longest) + (1 + 4) + (1 + 5);
            shown * field(label) + USAGE_FIELD
        }
    };
    field(inner)
}

/// Bytes of a whole response: its id and one result per input of the given token counts.
pub fn response_bytes(
    spec: &ModelSpec,
    task: &Task,
    id: &str,
    tokens: impl IntoIterator<Item = usize>,
) -> usize {
    field(id.len())
        + tokens
            .into_iter()
            .map(|t| result_bytes(spec, task, t))
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message;

    use super::*;
    use crate::api::proto::bert::v1 as pb;
    use crate::engine::{ClassifyOptions, EmbedOptions};
    use crate::model::ScoreActivation;

    fn spec(name: &str) -> ModelSpec {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models")
            .join(name);
        ModelSpec::load(&dir).unwrap()
    }

    fn usage(tokens: usize) -> Option<pb::Usage> {
        Some(pb::Usage {
            tokens: tokens as u32,
            truncated: true,
        })
    }

    proptest! {
        #[test]
        fn an_encode_response_is_never_larger_than_predicted(
            id in "\\PC{0,40}",
            tokens in prop::collection::vec(1usize..300, 1..20),
            pooling in prop_oneof![Just(Pooling::Mean), Just(Pooling::Tokens)],
            dimensions in prop::option::of(1usize..=32),
            value in any::<f32>(),
        ) {
            let spec = spec("bert_tiny");
            let task = Task::Embed(EmbedOptions { pooling, normalize: false, layer: 1, dimensions });
            let dim = dimensions.unwrap_or(spec.hidden_size());
            let results = tokens.iter().map(|&t| {
                let mut result = pb::EncodeResult { usage: usage(t), ..Default::default() };
                if pooling == Pooling::Tokens {
                    result.token_embeddings = vec![pb::Vector { values: vec![value; dim] }; t];
                } else {
                    result.embedding = vec![value; dim];
                }
                result
            }).collect();
            let response = pb::EncodeResponse { id: id.clone(), results, error: None };
            prop_assert!(response.encoded_len() <= response_bytes(&spec, &task, &id, tokens.iter().copied()));
        }

        #[test]
        fn a_classify_response_is_never_larger_than_predicted(
            id in "\\PC{0,40}",
            inputs in 1usize..20,
            top_k in prop::option::of(0usize..5),
        ) {
            let spec = spec("classifier_single");
            let labels = &spec.classifier.as_ref().unwrap().labels;
            let task = Task::Classify(ClassifyOptions { activation: ScoreActivation::Softmax, top_k });
            let shown = top_k.unwrap_or(labels.len()).min(labels.len());
            let result = pb::ClassifyResult {
                labels: labels.iter().take(shown).enumerate().map(|(index, label)| pb::LabelScore {
                    label: label.clone(),
                    score: 0.5,
                    index: index as u32,
                }).collect(),
                usage: usage(48),
            };
            let response = pb::ClassifyResponse { id: id.clone(), results: vec![result; inputs], error: None };
            prop_assert!(response.encoded_len() <= response_bytes(&spec, &task, &id, std::iter::repeat_n(48, inputs)));
        }
    }
}
