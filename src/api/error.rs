//! Every failure a caller can see, mapped once to a gRPC code and a message that names the input,
//! the field and the limit.
use tonic::{Code, Status};

use super::proto::google::rpc;
use crate::batch::{JobError, SubmitError};
use crate::engine::EngineError;
use crate::tokenize::TokenizeError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError {
            code: Code::InvalidArgument,
            message: message.into(),
        }
    }

    pub fn precondition(message: impl Into<String>) -> Self {
        ApiError {
            code: Code::FailedPrecondition,
            message: message.into(),
        }
    }

    /// A tokenizer refusal for input `index` of a request.
    pub fn tokenize(index: usize, error: TokenizeError) -> Self {
        match error {
            TokenizeError::TooLong { tokens, max } => ApiError::invalid(format!(
                "inputs[{index}]: {tokens} tokens exceed the maximum input length of {max} tokens and truncate is false"
            )),
            TokenizeError::PairsUnsupported => ApiError::invalid(format!(
                "inputs[{index}].text_pair: this model has a single segment embedding and takes no pairs"
            )),
            TokenizeError::Tokenizer(e) => ApiError::invalid(format!("inputs[{index}]: {e}")),
        }
    }

    /// A failure of input `index` after it was queued.
    pub fn job(index: usize, error: JobError) -> Self {
        match error {
            JobError::Engine(EngineError::InvalidInput { reason, .. }) => {
                ApiError::invalid(format!("inputs[{index}]: {reason}"))
            }
            JobError::Engine(EngineError::Compute(reason)) => ApiError {
                code: Code::Internal,
                message: format!("inputs[{index}]: the model failed: {reason}"),
            },
            JobError::DeadlineExceeded => ApiError {
                code: Code::DeadlineExceeded,
                message: format!("inputs[{index}]: the deadline passed while it was queued"),
            },
            JobError::ShuttingDown => ApiError::unavailable(),
        }
    }

    pub fn unavailable() -> Self {
        ApiError {
            code: Code::Unavailable,
            message: "the server is shutting down".into(),
        }
    }

    pub fn to_rpc_status(&self) -> rpc::Status {
        rpc::Status {
            code: self.code as i32,
            message: self.message.clone(),
            details: Vec::new(),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> Self {
        match error {
            SubmitError::QueueFull { capacity } => ApiError {
                code: Code::ResourceExhausted,
                message: format!(
                    "the queue is full: unary calls may queue {capacity} inputs (batching.queue_capacity); retry later"
                ),
            },
            SubmitError::Closed => ApiError::unavailable(),
        }
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        Status::new(error.code, error.message)
    }
}
