//! bert.v1.Encoder: embeddings, one call at a time or as a stream.
use std::sync::Arc;

use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use super::AppState;
use super::error::ApiError;
use super::proto::bert::v1 as pb;
use super::proto::bert::v1::encoder_server::Encoder;
use super::proto::google::rpc;
use super::request::{Call, check_inputs, compute, streamed, unary};
use super::stream::ResponseStream;
use crate::batch::Priority;
use crate::engine::{EmbedOptions, Output, Task};
use crate::model::{ModelSpec, Pooling};

pub struct EncoderService {
    pub state: Arc<AppState>,
}

/// The call's options resolved against the model's defaults: (task, truncate).
fn embed_options(
    spec: &ModelSpec,
    options: Option<pb::EncodeOptions>,
) -> Result<(Task, bool), ApiError> {
    let options = options.unwrap_or_default();
    let pooling = match pb::Pooling::try_from(options.pooling) {
        Ok(pb::Pooling::Default) => spec.default_pooling,
        Ok(pb::Pooling::Cls) => Pooling::Cls,
        Ok(pb::Pooling::Mean) => Pooling::Mean,
        Ok(pb::Pooling::Max) => Pooling::Max,
        Ok(pb::Pooling::Tokens) => Pooling::Tokens,
        Err(_) => {
            return Err(ApiError::invalid(format!(
                "options.pooling: unknown value {}; expected POOLING_DEFAULT, _CLS, _MEAN, _MAX or _TOKENS",
                options.pooling
            )));
        }
    };
    let requested_layer = options.layer.unwrap_or(-1);
    let layer = spec.resolve_layer(i64::from(requested_layer)).ok_or_else(|| {
        let n = spec.num_layers();
        ApiError::invalid(format!(
            "options.layer: {requested_layer} is outside -{}..={n} (0 is the embedding output, {n} the last layer)",
            n + 1
        ))
    })?;
    let hidden = spec.hidden_size();
    let dimensions = match options.dimensions {
        None => None,
        Some(d) if d >= 1 && d as usize <= hidden => Some(d as usize),
        Some(d) => {
            return Err(ApiError::invalid(format!(
                "options.dimensions: {d} is outside 1..={hidden} (the model's hidden size)"
            )));
        }
    };
    let task = Task::Embed(EmbedOptions {
        pooling,
        normalize: options.normalize.unwrap_or(spec.default_normalize),
        layer,
        dimensions,
    });
    Ok((task, options.truncate.unwrap_or(true)))
}

async fn encode(
    state: Arc<AppState>,
    request: pb::EncodeRequest,
    priority: Priority,
    deadline: Option<Instant>,
) -> Result<pb::EncodeResponse, ApiError> {
    check_inputs(&state, &request.inputs)?;
    let (task, truncate) = embed_options(&state.spec, request.options)?;
    let computed = compute(&state, request.inputs, truncate, task, priority, deadline).await?;
    let results = computed
        .into_iter()
        .map(|c| {
            let mut result = pb::EncodeResult {
                usage: Some(c.usage),
                ..Default::default()
            };
            match c.output {
                Output::Embedding(values) => result.embedding = values,
                Output::TokenEmbeddings { dim, values } => {
                    result.token_embeddings = values
                        .chunks(dim)
                        .map(|v| pb::Vector { values: v.to_vec() })
                        .collect();
                }
                Output::Scores(_) => unreachable!("an embedding task gives embeddings"),
            }
            result
        })
        .collect();
    Ok(pb::EncodeResponse {
        id: request.id,
        results,
        error: None,
    })
}

struct EncodeCall;

impl Call for EncodeCall {
    type Request = pb::EncodeRequest;
    type Response = pb::EncodeResponse;

    fn id(request: &pb::EncodeRequest) -> String {
        request.id.clone()
    }

    fn inputs(request: &pb::EncodeRequest) -> usize {
        request.inputs.len()
    }

    fn failed(id: String, error: rpc::Status) -> pb::EncodeResponse {
        pb::EncodeResponse {
            id,
            results: Vec::new(),
            error: Some(error),
        }
    }

    async fn run(
        state: Arc<AppState>,
        request: pb::EncodeRequest,
        priority: Priority,
        deadline: Option<Instant>,
    ) -> Result<pb::EncodeResponse, ApiError> {
        encode(state, request, priority, deadline).await
    }
}

#[tonic::async_trait]
impl Encoder for EncoderService {
    async fn encode(
        &self,
        request: Request<pb::EncodeRequest>,
    ) -> Result<Response<pb::EncodeResponse>, Status> {
        unary::<EncodeCall>(&self.state, request).await
    }

    type EncodeStreamStream = ResponseStream<pb::EncodeResponse>;

    async fn encode_stream(
        &self,
        request: Request<Streaming<pb::EncodeRequest>>,
    ) -> Result<Response<Self::EncodeStreamStream>, Status> {
        Ok(streamed::<EncodeCall>(&self.state, request))
    }
}
