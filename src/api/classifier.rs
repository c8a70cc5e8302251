//! bert.v1.Classifier: labels with scores, one call at a time or as a stream.
use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use super::AppState;
use super::error::ApiError;
use super::proto::bert::v1 as pb;
use super::proto::bert::v1::classifier_server::Classifier;
use super::proto::google::rpc;
use super::request::{Call, Computed, streamed, unary};
use super::stream::ResponseStream;
use crate::engine::options::ClassifyRequest;
use crate::engine::{Output, Task};
use crate::model::{ModelSpec, ScoreActivation};

pub struct ClassifierService {
    pub state: Arc<AppState>,
}

/// The contract's options in the engine's terms.
fn classify_request(options: &pb::ClassifyOptions) -> Result<ClassifyRequest, ApiError> {
    let activation = match pb::Activation::try_from(options.activation) {
        Ok(pb::Activation::Auto) => None,
        Ok(pb::Activation::Softmax) => Some(ScoreActivation::Softmax),
        Ok(pb::Activation::Sigmoid) => Some(ScoreActivation::Sigmoid),
        Ok(pb::Activation::None) => Some(ScoreActivation::None),
        Err(_) => {
            return Err(ApiError::invalid(format!(
                "options.activation: unknown value {}; expected ACTIVATION_AUTO, _SOFTMAX, _SIGMOID or _NONE",
                options.activation
            )));
        }
    };
    Ok(ClassifyRequest {
        activation,
        top_k: Some(u64::from(options.top_k)),
    })
}

struct ClassifyCall;

impl Call for ClassifyCall {
    type Request = pb::ClassifyRequest;
    type Response = pb::ClassifyResponse;
    const SERVICE: &str = "bert.v1.Classifier";
    const STREAM_METHOD: &str = "ClassifyStream";

    fn id(request: &pb::ClassifyRequest) -> &str {
        &request.id
    }

    fn inputs(request: &pb::ClassifyRequest) -> &[pb::TextInput] {
        &request.inputs
    }

    fn take_inputs(request: &mut pb::ClassifyRequest) -> Vec<pb::TextInput> {
        std::mem::take(&mut request.inputs)
    }

    fn options(spec: &ModelSpec, request: &pb::ClassifyRequest) -> Result<(Task, bool), ApiError> {
        let options = request.options.unwrap_or_default();
        let task = classify_request(&options)?
            .resolve(spec)
            .map_err(ApiError::option)?;
        Ok((task, options.truncate.unwrap_or(true)))
    }

    fn respond(id: String, results: Vec<Computed>) -> pb::ClassifyResponse {
        let results = results
            .into_iter()
            .map(|c| {
                let Output::Scores(scores) = c.output else {
                    unreachable!("a classification task gives scores")
                };
                pb::ClassifyResult {
                    labels: scores
                        .into_iter()
                        .map(|s| pb::LabelScore {
                            label: s.label,
                            score: s.score,
                            index: s.index as u32,
                        })
                        .collect(),
                    usage: Some(c.usage),
                }
            })
            .collect();
        pb::ClassifyResponse {
            id,
            results,
            error: None,
        }
    }

    fn failed(id: String, error: rpc::Status) -> pb::ClassifyResponse {
        pb::ClassifyResponse {
            id,
            results: Vec::new(),
            error: Some(error),
        }
    }

    fn error(response: &pb::ClassifyResponse) -> Option<&rpc::Status> {
        response.error.as_ref()
    }
}

#[tonic::async_trait]
impl Classifier for ClassifierService {
    async fn classify(
        &self,
        request: Request<pb::ClassifyRequest>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        unary::<ClassifyCall>(&self.state, request).await
    }

    type ClassifyStreamStream = ResponseStream<pb::ClassifyResponse>;

    async fn classify_stream(
        &self,
        request: Request<Streaming<pb::ClassifyRequest>>,
    ) -> Result<Response<Self::ClassifyStreamStream>, Status> {
        Ok(streamed::<ClassifyCall>(&self.state, request))
    }
}
