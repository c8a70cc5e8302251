//! What Encode and Classify share, unary or streamed. A request goes through, in order:
//! 1. `check`: its id, inputs and options against the limits, and its cost in bytes (message,
//!    tokens, response at its largest). A response sure to exceed `server.max_response_bytes` is
//!    refused here, before any work.
//! 2. admission (by the caller): bytes from a budget and room in the queue, still before any
//!    work; a unary call is refused at once when either is short, a stream waits.
//! 3. `execute`: tokenizing on the tokenizer pool, the exact response size checked, the inputs
//!    queued, and one result per input collected.
use std::sync::Arc;

use prost::Message;
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::AppState;
use super::auth::{Caller, charge};
use super::deadline::deadline;
use super::error::ApiError;
use super::proto::bert::v1 as pb;
use super::proto::google::rpc;
use super::size::{self, TOKEN_BYTES};
use super::stream::{ResponseStream, ordered};
use crate::batch::{Admission, NewJob};
use crate::engine::{Output, Task};
use crate::model::ModelSpec;
use crate::tokenize::{TextInput, Tokenized};

/// A call that computes its inputs on the model: Encode or Classify.
pub trait Call: Send + Sync + 'static {
    type Request: Message + Send + 'static;
    type Response: Send + 'static;
    /// The gRPC service and its streaming method, as metrics name them.
    const SERVICE: &'static str;
    const STREAM_METHOD: &'static str;

    fn id(request: &Self::Request) -> &str;
    fn inputs(request: &Self::Request) -> &[pb::TextInput];
    /// Moves the inputs out, for tokenizing.
    fn take_inputs(request: &mut Self::Request) -> Vec<pb::TextInput>;
    /// The request's options resolved against the model: the task and whether to truncate.
    fn options(spec: &ModelSpec, request: &Self::Request) -> Result<(Task, bool), ApiError>;
    fn respond(id: String, results: Vec<Computed>) -> Self::Response;
    /// A stream's response for a request that failed.
    fn failed(id: String, error: rpc::Status) -> Self::Response;
    /// The failure a stream's response carries, if any.
    fn error(response: &Self::Response) -> Option<&rpc::Status>;
}

/// One input's result and what the model saw of it.
pub struct Computed {
    pub output: Output,
    pub usage: pb::Usage,
}

/// A request that passed `check`, with what it will cost.
pub struct Checked<C: Call> {
    request: C::Request,
    task: Task,
    truncate: bool,
    /// Bytes to hold for it until its response is sent: the message, its tokens and its
    /// response at their largest (the response counted up to the response limit).
    pub cost: usize,
}

impl<C: Call> Checked<C> {
    pub fn inputs(&self) -> usize {
        C::inputs(&self.request).len()
    }
}

/// A unary call: refused at once when its bytes or its queue room are not available.
pub async fn unary<C: Call>(
    state: &Arc<AppState>,
    request: Request<C::Request>,
) -> Result<Response<C::Response>, Status> {
    let deadline = deadline(request.metadata(), state.settings.max_deadline());
    let caller = request.extensions().get::<Caller>().cloned();
    let checked = check::<C>(state, request.into_inner())?;
    let _quota = charge(caller.as_ref(), checked.inputs(), &state.metrics)?;
    let _bytes = state
        .budgets
        .unary
        .try_take(checked.cost)
        .map_err(ApiError::from)?;
    let admission = state
        .scheduler
        .try_admit(checked.inputs())
        .map_err(ApiError::from)?;
    let response = execute(state.clone(), checked, admission, deadline).await?;
    Ok(Response::new(response))
}

/// A stream of calls: responses in request order, a failed request answered in its own
/// response (see `stream`).
pub fn streamed<C: Call>(
    state: &Arc<AppState>,
    request: Request<Streaming<C::Request>>,
) -> Response<ResponseStream<C::Response>> {
    let deadline = deadline(request.metadata(), state.settings.max_deadline());
    let quota = request
        .extensions()
        .get::<Caller>()
        .and_then(|c| c.key.clone());
    Response::new(ordered::<C>(
        state.clone(),
        quota,
        request.into_inner(),
        deadline,
    ))
}

impl From<pb::TextInput> for TextInput {
    fn from(input: pb::TextInput) -> Self {
        TextInput {
            text: input.text,
            text_pair: input.text_pair,
        }
    }
}

/// `id` cut to at most `max` bytes (at a character boundary), for echoing a refused id.
pub fn echoed_id(id: &str, max: usize) -> String {
    let mut end = id.len().min(max);
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    id[..end].to_string()
}

/// Checks the request against the limits and prices it; no work is done for it yet.
pub fn check<C: Call>(state: &AppState, request: C::Request) -> Result<Checked<C>, ApiError> {
    let limits = &state.settings.limits;
    let id = C::id(&request);
    if id.len() > limits.max_id_bytes {
        return Err(ApiError::invalid(format!(
            "id: {} bytes exceed the limit of {} (limits.max_id_bytes)",
            id.len(),
            limits.max_id_bytes
        )));
    }
    check_inputs(state, C::inputs(&request))?;
    let (task, truncate) = C::options(&state.spec, &request)?;

    let spec = &state.spec;
    let max_response = state.settings.server.max_response_bytes;
    let inputs = C::inputs(&request);
    let fewest: Vec<usize> = inputs
        .iter()
        .map(|i| state.tokenizer.min_tokens(&i.text, i.text_pair.as_deref()))
        .collect();
    let smallest = size::response_bytes(spec, &task, id, fewest.iter().copied());
    if smallest > max_response {
        return Err(too_large(smallest, inputs.len(), max_response, "at least "));
    }
    // Every token takes at least one byte of text; special tokens come on top.
    let most: Vec<usize> = inputs
        .iter()
        .map(|i| {
            let bytes = i.text.len() + i.text_pair.as_ref().map_or(0, String::len);
            (bytes + SPECIAL_TOKENS_AT_MOST).min(spec.max_length)
        })
        .collect();
    let largest = size::response_bytes(spec, &task, id, most.iter().copied());
    let cost = request.encoded_len()
        + most.iter().sum::<usize>() * TOKEN_BYTES
        + largest.min(max_response);
    Ok(Checked {
        request,
        task,
        truncate,
        cost,
    })
}

/// Special tokens BERT adds to one input: [CLS] text [SEP] pair [SEP].
const SPECIAL_TOKENS_AT_MOST: usize = 3;

fn too_large(bytes: usize, inputs: usize, max: usize, qualifier: &str) -> ApiError {
    ApiError::resource_exhausted(format!(
        "the response would take {qualifier}{bytes} bytes for {inputs} inputs, over the limit of {max} bytes (server.max_response_bytes); send fewer inputs per request"
    ))
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

/// Tokenizes, queues and computes every input of one admitted request; fails with the first
/// failure.
pub async fn execute<C: Call>(
    state: Arc<AppState>,
    checked: Checked<C>,
    admission: Admission,
    deadline: Option<Instant>,
) -> Result<C::Response, ApiError> {
    let Checked {
        mut request,
        task,
        truncate,
        ..
    } = checked;
    let inputs = C::take_inputs(&mut request);
    let id = C::id(&request).to_string();
    drop(request);

    let tokenizer = state.tokenizer.clone();
    let started = std::time::Instant::now();
    let tokenize_span = tracing::info_span!("tokenize", bertd.inputs = inputs.len());
    let tokenized: Vec<Tokenized> = state
        .tokenize_pool
        .run(move || {
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
        .instrument(tokenize_span)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    state
        .metrics
        .tokenize
        .observe(started.elapsed().as_secs_f64());

    let max_response = state.settings.server.max_response_bytes;
    let bytes = size::response_bytes(&state.spec, &task, &id, tokenized.iter().map(|t| t.len()));
    if bytes > max_response {
        return Err(too_large(bytes, tokenized.len(), max_response, ""));
    }

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
    let receivers = state.scheduler.submit(admission, jobs, deadline)?;
    let mut computed = Vec::with_capacity(receivers.len());
    for (i, (receiver, usage)) in receivers.into_iter().zip(usages).enumerate() {
        let output = receiver
            .await
            .map_err(|_| ApiError::worker_lost(i))?
            .map_err(|e| ApiError::job(i, e))?;
        computed.push(Computed { output, usage });
    }
    Ok(C::respond(id, computed))
}
