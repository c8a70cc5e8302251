//! bert.v1.Classifier: labels with scores, one call at a time or as a stream.
use std::sync::Arc;

use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use super::AppState;
use super::error::ApiError;
use super::proto::bert::v1 as pb;
use super::proto::bert::v1::classifier_server::Classifier;
use super::proto::google::rpc;
use super::request::{Call, check_inputs, compute, streamed, unary};
use super::stream::ResponseStream;
use crate::batch::Priority;
use crate::engine::{ClassifyOptions, Output, Task};
use crate::model::{ModelSpec, ScoreActivation};

pub struct ClassifierService {
    pub state: Arc<AppState>,
}

fn classify_options(
    spec: &ModelSpec,
    options: Option<pb::ClassifyOptions>,
) -> Result<(Task, bool), ApiError> {
    let Some(classifier) = &spec.classifier else {
        return Err(ApiError::precondition(format!(
            "the model {} has no classification head (architectures {:?}); use Encoder",
            spec.name, spec.config.architectures
        )));
    };
    let options = options.unwrap_or_default();
    let activation = match pb::Activation::try_from(options.activation) {
        Ok(pb::Activation::Auto) => classifier.activation,
        Ok(pb::Activation::Softmax) => ScoreActivation::Softmax,
        Ok(pb::Activation::Sigmoid) => ScoreActivation::Sigmoid,
        Ok(pb::Activation::None) => ScoreActivation::None,
        Err(_) => {
            return Err(ApiError::invalid(format!(
                "options.activation: unknown value {}; expected ACTIVATION_AUTO, _SOFTMAX, _SIGMOID or _NONE",
                options.activation
            )));
        }
    };
    let top_k = (options.top_k > 0).then_some(options.top_k as usize);
    let task = Task::Classify(ClassifyOptions { activation, top_k });
    Ok((task, options.truncate.unwrap_or(true)))
}

async fn classify(
    state: Arc<AppState>,
    request: pb::ClassifyRequest,
    priority: Priority,
    deadline: Option<Instant>,
) -> Result<pb::ClassifyResponse, ApiError> {
    let (task, truncate) = classify_options(&state.spec, request.options)?;
    check_inputs(&state, &request.inputs)?;
    let computed = compute(&state, request.inputs, truncate, task, priority, deadline).await?;
    let results = computed
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
    Ok(pb::ClassifyResponse {
        id: request.id,
        results,
        error: None,
    })
}

struct ClassifyCall;

impl Call for ClassifyCall {
    type Request = pb::ClassifyRequest;
    type Response = pb::ClassifyResponse;

    fn id(request: &pb::ClassifyRequest) -> String {
        request.id.clone()
    }

    fn inputs(request: &pb::ClassifyRequest) -> usize {
        request.inputs.len()
    }

    fn failed(id: String, error: rpc::Status) -> pb::ClassifyResponse {
        pb::ClassifyResponse {
            id,
            results: Vec::new(),
            error: Some(error),
        }
    }

    async fn run(
        state: Arc<AppState>,
        request: pb::ClassifyRequest,
        priority: Priority,
        deadline: Option<Instant>,
    ) -> Result<pb::ClassifyResponse, ApiError> {
        classify(state, request, priority, deadline).await
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
