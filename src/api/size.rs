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
