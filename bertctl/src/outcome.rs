//! What a job produces for each input: its value, or why it failed.
use crate::input::Item;

/// One label of a classification, as the server ranked it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Label {
    pub label: String,
    pub score: f32,
    pub index: u32,
}

/// The value computed for one input.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Embedding(Vec<f32>),
    Tokens(Vec<Vec<f32>>),
    Labels(Vec<Label>),
}

/// Why an input has no value: the gRPC status the server (or the transport) gave last.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub code: tonic::Code,
    pub message: String,
}

impl Failure {
    pub fn from_status(status: &tonic::Status) -> Failure {
        Failure {
            code: status.code(),
            message: status.message().to_string(),
        }
    }

    /// The code as gRPC spells it (`INVALID_ARGUMENT`).
    pub fn code_name(&self) -> String {
        code_name(self.code)
    }
}

/// `tonic::Code` as the gRPC specification spells it.
pub fn code_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// One input, answered.
#[derive(Debug, Clone)]
pub struct Done {
    pub index: u64,
    pub line: u64,
    pub id: String,
    /// Byte offset in the input just past this input (progress).
    pub end: u64,
    pub tokens: u32,
    pub result: Result<Value, Failure>,
}

impl Done {
    pub fn new(item: &Item, tokens: u32, result: Result<Value, Failure>) -> Done {
        Done {
            index: item.index,
            line: item.line,
            id: item.id.clone(),
            end: item.end,
            tokens,
            result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_named_as_the_grpc_specification_names_them() {
        assert_eq!(code_name(tonic::Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(tonic::Code::Unavailable), "UNAVAILABLE");
        assert_eq!(code_name(tonic::Code::Ok), "OK");
    }
}
