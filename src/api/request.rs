//! What Encode and Classify share: checking a request against the limits, tokenizing it off the
//! async runtime, queueing it and collecting one result per input.
use std::sync::Arc;

use tokio::time::Instant;

use super::AppState;
use super::error::ApiError;
use super::proto::bert::v1 as pb;
use crate::batch::{NewJob, Priority};
use crate::engine::{Output, Task};
use crate::tokenize::{TextInput, Tokenized};

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
                let input = TextInput {
                    text: input.text,
                    text_pair: input.text_pair,
                };
                tokenizer
                    .encode(&input, truncate)
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
