//! What Encode and Classify share: checking a request against the limits, tokenizing it off the
//! async runtime, queueing it and collecting one result per input.
use std::future::Future;
use std::sync::Arc;

use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use super::AppState;
use super::error::ApiError;
use super::proto::bert::v1 as pb;
use super::proto::google::rpc;
use super::stream::{ResponseStream, ordered};
use crate::batch::{NewJob, Priority};
use crate::engine::{Output, Task};
use crate::tokenize::{TextInput, Tokenized};

/// A call that computes its inputs on the model: Encode or Classify. Its unary and streaming
/// forms differ only in priority and in how a failure is returned.
pub trait Call: Send + Sync + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;

    fn id(request: &Self::Request) -> String;
    fn inputs(request: &Self::Request) -> usize;
    /// A stream's response for a request that failed.
    fn failed(id: String, error: rpc::Status) -> Self::Response;
    fn run(
        state: Arc<AppState>,
        request: Self::Request,
        priority: Priority,
        deadline: Option<Instant>,
    ) -> impl Future<Output = Result<Self::Response, ApiError>> + Send;
}

/// A unary call: served ahead of streams, refused at once when the queue is full.
pub async fn unary<C: Call>(
    state: &Arc<AppState>,
    request: Request<C::Request>,
) -> Result<Response<C::Response>, Status> {
    let deadline = deadline_of(&request);
    let response = C::run(
        state.clone(),
        request.into_inner(),
        Priority::Interactive,
        deadline,
    )
    .await?;
    Ok(Response::new(response))
}

/// A stream of calls: responses in request order, a failed request answered in its own response.
pub fn streamed<C: Call>(
    state: &Arc<AppState>,
    request: Request<Streaming<C::Request>>,
) -> Response<ResponseStream<C::Response>> {
    let deadline = deadline_of(&request);
    let window = state.settings.batching.stream_window;
    let state = state.clone();
    Response::new(ordered(request.into_inner(), window, C::inputs, move |r| {
        let state = state.clone();
        async move {
            let id = C::id(&r);
            C::run(state, r, Priority::Bulk, deadline)
                .await
                .unwrap_or_else(|e| C::failed(id, e.to_rpc_status()))
        }
    }))
}

impl From<pb::TextInput> for TextInput {
    fn from(input: pb::TextInput) -> Self {
        TextInput {
            text: input.text,
            text_pair: input.text_pair,
        }
    }
}

/// Checks the number and size of inputs against the configured limits.
pub fn check_inputs(state: &AppState, inputs: &[pb::TextInput]) -> Result<(), ApiError> {
    let limits = &state.settings.limits;
    if inputs.is_empty() {
        return Err(ApiError::invalid(
            "inputs: the request has no inputs; send at least one",
        ));
    }
    if inputs.len() > limits.max_inputs_per_request {
        return Err(ApiError::invalid(format!(
            "inputs: {} inputs exceed the limit of {} per request (limits.max_inputs_per_request)",
            inputs.len(),
            limits.max_inputs_per_request
        )));
    }
    for (i, input) in inputs.iter().enumerate() {
        let chars =
            input.text.chars().count() + input.text_pair.as_ref().map_or(0, |p| p.chars().count());
        if chars > limits.max_input_chars {
            return Err(ApiError::invalid(format!(
                "inputs[{i}]: {chars} characters exceed the limit of {} per input (limits.max_input_chars)",
                limits.max_input_chars
            )));
        }
    }
    Ok(())
}

/// The request's deadline from its `grpc-timeout` header, if any.
pub fn deadline_of<T>(request: &tonic::Request<T>) -> Option<Instant> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => std::time::Duration::from_secs(amount * 3600),
        "M" => std::time::Duration::from_secs(amount * 60),
        "S" => std::time::Duration::from_secs(amount),
        "m" => std::time::Duration::from_millis(amount),
        "u" => std::time::Duration::from_micros(amount),
        "n" => std::time::Duration::from_nanos(amount),
        _ => return None,
    };
    Some(Instant::now() + timeout)
}

/// One input's result and what the model saw of it.
pub struct Computed {
    pub output: Output,
    pub usage: pb::Usage,
}

/// Tokenizes, queues and computes every input of one request; fails with the first failure.
pub async fn compute(
    state: &Arc<AppState>,
    inputs: Vec<pb::TextInput>,
    truncate: bool,
    task: Task,
    priority: Priority,
    deadline: Option<Instant>,
) -> Result<Vec<Computed>, ApiError> {
    let tokenizer = state.tokenizer.clone();
    let tokenized: Vec<Tokenized> = tokio::task::spawn_blocking(move || {
        inputs
            .into_iter()
            .enumerate()
            .map(|(i, input)| {
                tokenizer
                    .encode(&input.into(), truncate)
                    .map_err(|e| ApiError::tokenize(i, e))
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|_| ApiError::unavailable())??;

    let usages: Vec<pb::Usage> = tokenized
        .iter()
        .map(|t| pb::Usage {
            tokens: t.len() as u32,
            truncated: t.truncated(),
        })
        .collect();
    let jobs = tokenized
        .into_iter()
        .map(|tokens| NewJob { tokens, task })
        .collect();
    let receivers = state.scheduler.submit(jobs, priority, deadline).await?;
    let mut computed = Vec::with_capacity(receivers.len());
    for (i, (receiver, usage)) in receivers.into_iter().zip(usages).enumerate() {
        let output = receiver
            .await
            .map_err(|_| ApiError::unavailable())?
            .map_err(|e| ApiError::job(i, e))?;
        computed.push(Computed { output, usage });
    }
    Ok(computed)
}
