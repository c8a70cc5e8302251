//! The RPC a job streams through (`EncodeStream` or `ClassifyStream`) with its per-call options,
//! seen by the rest of the job as chunks of items going out and `Reply`s coming back.
use bertd_proto::bert::v1 as pb;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use pb::classifier_client::ClassifierClient;
use pb::encoder_client::EncoderClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::transport::Channel;

use crate::connect::{Auth, MAX_RESPONSE_BYTES};
use crate::input::Item;
use crate::outcome::{Failure, Label, Value};

#[derive(Debug, Clone)]
pub enum Call {
    Encode(pb::EncodeOptions),
    Classify(pb::ClassifyOptions),
}

/// One request of a stream: its id and its inputs.
pub type Outgoing = (String, Vec<pb::TextInput>);

/// The answer to one request: per input (tokens used, value), or the request's error.
#[derive(Debug)]
pub struct Reply {
    pub id: String,
    pub outcome: Result<Vec<(u32, Value)>, Failure>,
}

pub fn inputs(items: &[Item]) -> Vec<pb::TextInput> {
    items
        .iter()
        .map(|item| pb::TextInput {
            text: item.text.clone(),
            text_pair: item.text_pair.clone(),
        })
        .collect()
}

fn failure(status: Option<bertd_proto::google::rpc::Status>) -> Option<Failure> {
    status.filter(|s| s.code != 0).map(|s| Failure {
        code: tonic::Code::from_i32(s.code),
        message: s.message,
    })
}

impl Call {
    /// Opens the stream on `channel`; requests are whatever arrives on `outgoing`.
    pub async fn open(
        &self,
        channel: Channel,
        auth: Auth,
        outgoing: mpsc::Receiver<Outgoing>,
    ) -> Result<BoxStream<'static, Result<Reply, Status>>, Status> {
        match self {
            Call::Encode(options) => {
                let options = *options;
                let tokens = options.pooling == pb::Pooling::Tokens as i32;
                let requests =
                    ReceiverStream::new(outgoing).map(move |(id, inputs)| pb::EncodeRequest {
                        id,
                        inputs,
                        options: Some(options),
                    });
                let mut client = EncoderClient::with_interceptor(channel, auth)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES);
                let replies = client.encode_stream(requests).await?.into_inner();
                Ok(replies
                    .map(move |r| r.map(|r| encode_reply(r, tokens)))
                    .boxed())
            }
            Call::Classify(options) => {
                let options = *options;
                let requests =
                    ReceiverStream::new(outgoing).map(move |(id, inputs)| pb::ClassifyRequest {
                        id,
                        inputs,
                        options: Some(options),
                    });
                let mut client = ClassifierClient::with_interceptor(channel, auth)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES);
                let replies = client.classify_stream(requests).await?.into_inner();
                Ok(replies.map(|r| r.map(classify_reply)).boxed())
            }
        }
    }
}

fn encode_reply(response: pb::EncodeResponse, tokens: bool) -> Reply {
    let outcome = match failure(response.error) {
        Some(failure) => Err(failure),
        None => Ok(response
            .results
            .into_iter()
            .map(|result| {
                let used = result.usage.map_or(0, |u| u.tokens);
                let value = if tokens {
                    Value::Tokens(
                        result
                            .token_embeddings
                            .into_iter()
                            .map(|v| v.values)
                            .collect(),
                    )
                } else {
                    Value::Embedding(result.embedding)
                };
                (used, value)
            })
            .collect()),
    };
    Reply {
        id: response.id,
        outcome,
    }
}

fn classify_reply(response: pb::ClassifyResponse) -> Reply {
    let outcome = match failure(response.error) {
        Some(failure) => Err(failure),
        None => Ok(response
            .results
            .into_iter()
            .map(|result| {
                let used = result.usage.map_or(0, |u| u.tokens);
                let labels = result
                    .labels
                    .into_iter()
                    .map(|l| Label {
                        label: l.label,
                        score: l.score,
                        index: l.index,
                    })
                    .collect();
                (used, Value::Labels(labels))
            })
            .collect()),
    };
    Reply {
        id: response.id,
        outcome,
    }
}
