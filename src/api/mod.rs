//! The gRPC edge: the services of `proto/bert/v1` and health, what they accept (validation, size
//! predictions, deadlines) and the status codes they answer with. Everything behind them (the
//! queue, the workers, the server's life) is another layer's; handlers read what they need from
//! `AppState`.
pub mod auth;
mod classifier;
mod deadline;
mod encoder;
mod error;
mod health;
mod info;
pub mod limits;
pub mod proto;
mod request;
mod size;
mod stream;
mod tokenizer;

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::batch::Scheduler;
use crate::batch::budget::ByteBudget;
use crate::batch::pool::PoolStatus;
use crate::config::Settings;
use crate::model::ModelSpec;
use crate::telemetry::metrics::RpcMetrics;
use crate::tokenize::BertTokenizer;
use crate::tokenize::pool::TokenizePool;
pub use error::ApiError;
pub use health::DrainingHealth;
pub use info::stats;
use proto::bert::v1::classifier_server::ClassifierServer;
use proto::bert::v1::encoder_server::EncoderServer;
use proto::bert::v1::model_server::ModelServer;
use proto::bert::v1::tokenizer_server::TokenizerServer;

/// The health-checked service names; "" stands for the server as a whole.
pub const SERVICES: [&str; 5] = [
    "",
    "bert.v1.Encoder",
    "bert.v1.Classifier",
    "bert.v1.Tokenizer",
    "bert.v1.Model",
];

/// Byte budgets shared by all calls of a kind.
pub struct Budgets {
    pub unary: ByteBudget,
    pub streams: ByteBudget,
}

/// What every handler reads.
pub struct AppState {
    pub settings: Settings,
    /// The model as served: its max_length capped by `limits.max_input_tokens`.
    pub spec: Arc<ModelSpec>,
    pub tokenizer: Arc<BertTokenizer>,
    pub tokenize_pool: TokenizePool,
    pub scheduler: Arc<Scheduler>,
    pub budgets: Budgets,
    /// Each worker's device.
    pub devices: Vec<String>,
    pub pool_status: watch::Receiver<PoolStatus>,
    /// Cancelled when the server starts to drain: streams stop reading and end.
    pub draining: CancellationToken,
    pub metrics: Arc<RpcMetrics>,
}

/// The bert.v1 services, each with its message size limits.
pub fn routes(state: &Arc<AppState>) -> Routes {
    let max_request = state.settings.server.max_message_bytes;
    let max_response = state.settings.server.max_response_bytes;
    Routes::new(
        EncoderServer::new(encoder::EncoderService {
            state: state.clone(),
        })
        .max_decoding_message_size(max_request)
        .max_encoding_message_size(max_response),
    )
    .add_service(
        ClassifierServer::new(classifier::ClassifierService {
            state: state.clone(),
        })
        .max_decoding_message_size(max_request)
        .max_encoding_message_size(max_response),
    )
    .add_service(
        TokenizerServer::new(tokenizer::TokenizerService {
            state: state.clone(),
        })
        .max_decoding_message_size(max_request)
        .max_encoding_message_size(max_response),
    )
    .add_service(ModelServer::new(info::ModelService {
        state: state.clone(),
    }))
}
