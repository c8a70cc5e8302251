//! Every failure a caller can see, mapped once to a gRPC code and a message that names the input,
//! the field and the limit.
use tonic::{Code, Status};

use super::proto::google::rpc;
use crate::batch::budget::OverBudget;
use crate::batch::{JobError, SubmitError};
use crate::engine::EngineError;
use crate::engine::options::OptionError;
use crate::tokenize::TokenizeError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
}

impl ApiError {
    fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(Code::InvalidArgument, message)
    }

    pub fn resource_exhausted(message: impl Into<String>) -> Self {
        ApiError::new(Code::ResourceExhausted, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(Code::Internal, message)
    }

    pub fn shutting_down() -> Self {
        ApiError::new(Code::Unavailable, "the server is shutting down")
    }

    /// An option the model cannot honour, named as the contract names it.
    pub fn option(error: OptionError) -> Self {
        let code = match error {
            OptionError::NoClassifier { .. } => {
                return ApiError::new(Code::FailedPrecondition, format!("{error}; use Encoder"));
            }
            _ => Code::InvalidArgument,
        };
        ApiError::new(code, format!("options.{}: {error}", error.field()))
    }

    /// A tokenizer refusal for input `index` of a request.
    pub fn tokenize(index: usize, error: TokenizeError) -> Self {
        match error {
            TokenizeError::TooLong {
                tokens,
                max,
                at_least,
            } => ApiError::invalid(format!(
                "inputs[{index}]: {}{tokens} tokens exceed the maximum input length of {max} tokens and truncate is false",
                if at_least { "at least " } else { "" }
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
            JobError::Engine(EngineError::Compute(reason) | EngineError::Broken(reason)) => {
                ApiError::internal(format!("inputs[{index}]: the model failed: {reason}"))
            }
            JobError::DeadlineExceeded => ApiError::new(
                Code::DeadlineExceeded,
                format!("inputs[{index}]: the deadline passed while it was queued"),
            ),
            JobError::ShuttingDown => ApiError::shutting_down(),
            JobError::Unavailable(reason) => ApiError::no_worker(&reason),
        }
    }

    /// Input `index` was taken by a worker whose thread then died before answering.
    pub fn worker_lost(index: usize) -> Self {
        ApiError::internal(format!(
            "inputs[{index}]: the worker computing it stopped; it may be sent again"
        ))
    }

    fn no_worker(reason: &str) -> Self {
        ApiError::new(
            Code::Unavailable,
            format!("no model worker can run ({reason}); retry later or elsewhere"),
        )
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
            SubmitError::QueueFull { capacity } => ApiError::resource_exhausted(format!(
                "the queue is full: unary calls may queue {capacity} inputs (batching.queue_capacity); retry later"
            )),
            SubmitError::Closed => ApiError::shutting_down(),
            SubmitError::Unavailable(reason) => ApiError::no_worker(&reason),
        }
    }
}

impl From<OverBudget> for ApiError {
    fn from(error: OverBudget) -> Self {
        ApiError::resource_exhausted(error.to_string())
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        Status::new(error.code, error.message)
    }
}
