//! bert.v1.Tokenizer: what the model will see of a text. Tokenized exactly (never pre-cut), on
//! the tokenizer pool, within the input limits.
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::AppState;
use super::error::ApiError;
use super::proto::bert::v1 as pb;
use super::proto::bert::v1::tokenizer_server::Tokenizer;
use super::request::check_inputs;

pub struct TokenizerService {
    pub state: Arc<AppState>,
}

#[tonic::async_trait]
impl Tokenizer for TokenizerService {
    async fn tokenize(
        &self,
        request: Request<pb::TokenizeRequest>,
    ) -> Result<Response<pb::TokenizeResponse>, Status> {
        let request = request.into_inner();
        check_inputs(&self.state, &request.inputs)?;
        let truncate = request.truncate.unwrap_or(true);
        let tokenizer = self.state.tokenizer.clone();
        let results = self
            .state
            .tokenize_pool
            .run(move || {
                request
                    .inputs
                    .into_iter()
                    .enumerate()
                    .map(|(i, input)| {
                        let (tokenized, tokens) = tokenizer
                            .encode_detailed(&input.into(), truncate)
                            .map_err(|e| ApiError::tokenize(i, e))?;
                        Ok(pb::TokenizedInput {
                            tokens: tokens
                                .into_iter()
                                .map(|t| pb::Token {
                                    id: t.id,
                                    text: t.token,
                                    start: t.start as u32,
                                    end: t.end as u32,
                                    special: t.special,
                                    type_id: t.type_id,
                                })
                                .collect(),
                            usage: Some(pb::Usage {
                                tokens: tokenized.len() as u32,
                                truncated: tokenized.truncated(),
                            }),
                            original_tokens: tokenized.original_length as u32,
                        })
                    })
                    .collect::<Result<Vec<_>, ApiError>>()
            })
            .await
            .map_err(|e| Status::from(ApiError::internal(e.to_string())))??;
        Ok(Response::new(pb::TokenizeResponse { results }))
    }
}
