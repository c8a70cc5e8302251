//! bert.v1.Encoder: embeddings, one call at a time or as a stream.
use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use super::AppState;
use super::error::ApiError;
use super::proto::bert::v1 as pb;
use super::proto::bert::v1::encoder_server::Encoder;
use super::proto::google::rpc;
use super::request::{Call, Computed, streamed, unary};
use super::stream::ResponseStream;
use crate::engine::options::EmbedRequest;
use crate::engine::{Output, Task};
use crate::model::{ModelSpec, Pooling};

pub struct EncoderService {
    pub state: Arc<AppState>,
}

/// The contract's options in the engine's terms.
fn embed_request(options: &pb::EncodeOptions) -> Result<EmbedRequest, ApiError> {
    let pooling = match pb::Pooling::try_from(options.pooling) {
        Ok(pb::Pooling::Default) => None,
        Ok(pb::Pooling::Cls) => Some(Pooling::Cls),
        Ok(pb::Pooling::Mean) => Some(Pooling::Mean),
        Ok(pb::Pooling::Max) => Some(Pooling::Max),
        Ok(pb::Pooling::Tokens) => Some(Pooling::Tokens),
        Err(_) => {
            return Err(ApiError::invalid(format!(
                "options.pooling: unknown value {}; expected POOLING_DEFAULT, _CLS, _MEAN, _MAX or _TOKENS",
                options.pooling
            )));
        }
    };
    Ok(EmbedRequest {
        pooling,
        normalize: options.normalize,
        layer: options.layer.map(i64::from),
        dimensions: options.dimensions.map(u64::from),
    })
}

struct EncodeCall;

impl Call for EncodeCall {
    type Request = pb::EncodeRequest;
    type Response = pb::EncodeResponse;
    const SERVICE: &str = "bert.v1.Encoder";
    const STREAM_METHOD: &str = "EncodeStream";

    fn id(request: &pb::EncodeRequest) -> &str {
        &request.id
    }

    fn inputs(request: &pb::EncodeRequest) -> &[pb::TextInput] {
        &request.inputs
    }

    fn take_inputs(request: &mut pb::EncodeRequest) -> Vec<pb::TextInput> {
        std::mem::take(&mut request.inputs)
    }

    fn options(spec: &ModelSpec, request: &pb::EncodeRequest) -> Result<(Task, bool), ApiError> {
        let options = request.options.unwrap_or_default();
        let task = embed_request(&options)?
            .resolve(spec)
            .map_err(ApiError::option)?;
        Ok((task, options.truncate.unwrap_or(true)))
    }

    fn respond(id: String, results: Vec<Computed>) -> pb::EncodeResponse {
        let results = results
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
        pb::EncodeResponse {
            id,
            results,
            error: None,
        }
    }

    fn failed(id: String, error: rpc::Status) -> pb::EncodeResponse {
        pb::EncodeResponse {
            id,
            results: Vec::new(),
            error: Some(error),
        }
    }

    fn error(response: &pb::EncodeResponse) -> Option<&rpc::Status> {
        response.error.as_ref()
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
