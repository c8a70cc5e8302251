//! bert.v1.Model: what is served, on what, within which limits, and counters since start.
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::AppState;
use super::proto::bert::v1 as pb;
use super::proto::bert::v1::model_server::Model;
use crate::batch::Stats;

pub struct ModelService {
    pub state: Arc<AppState>,
}

#[tonic::async_trait]
impl Model for ModelService {
    async fn get_info(
        &self,
        _: Request<pb::GetInfoRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        let state = &self.state;
        let spec = &state.spec;
        let s = &state.settings;
        Ok(Response::new(pb::ModelInfo {
            name: spec.name.clone(),
            architecture: spec
                .config
                .architectures
                .first()
                .cloned()
                .unwrap_or_else(|| "BertModel".into()),
            hidden_size: spec.hidden_size() as u32,
            num_layers: spec.num_layers() as u32,
            max_length: spec.max_length as u32,
            default_pooling: spec.default_pooling.to_string(),
            default_normalize: spec.default_normalize,
            labels: spec
                .classifier
                .as_ref()
                .map(|c| c.labels.clone())
                .unwrap_or_default(),
            default_activation: spec
                .classifier
                .as_ref()
                .map(|c| c.activation.to_string())
                .unwrap_or_default(),
            devices: state.devices.clone(),
            dtype: s.engine.dtype.to_string(),
            limits: Some(pb::Limits {
                max_inputs_per_request: s.limits.max_inputs_per_request as u32,
                max_input_chars: s.limits.max_input_chars as u32,
                max_input_tokens: spec.max_length as u32,
                max_batch_tokens: s.max_batch_tokens() as u32,
                max_batch_size: s.max_batch_size() as u32,
                max_batch_delay_ms: s.batching.max_batch_delay_ms as u32,
                queue_capacity: s.batching.queue_capacity as u32,
                stream_queue_capacity: s.batching.stream_queue_capacity as u32,
                stream_window: s.batching.stream_window as u32,
                max_message_bytes: s.server.max_message_bytes as u32,
                max_concurrent_streams: s.server.max_concurrent_streams,
                max_response_bytes: s.server.max_response_bytes as u64,
                max_id_bytes: s.limits.max_id_bytes as u32,
                stream_window_bytes: s.batching.stream_window_bytes as u64,
                unary_inflight_bytes: s.limits.unary_inflight_bytes as u64,
                stream_inflight_bytes: s.limits.stream_inflight_bytes as u64,
                stream_share: s.batching.stream_share,
                forward_cost_tokens: s.forward_cost_tokens() as u64,
            }),
            stats: Some(stats(state)),
        }))
    }
}

/// The counters since start and the state now, as GetInfo reports them; the metrics endpoint
/// encodes the same values.
pub fn stats(state: &AppState) -> pb::Stats {
    let stats = state.scheduler.stats();
    pb::Stats {
        inputs_computed: Stats::get(&stats.inputs_computed),
        batches: Stats::get(&stats.batches),
        inputs_cancelled: Stats::get(&stats.inputs_cancelled),
        inputs_expired: Stats::get(&stats.inputs_expired),
        requests_rejected: Stats::get(&stats.requests_rejected),
        inputs_queued: state.scheduler.queued() as u64,
        inputs_failed: Stats::get(&stats.inputs_failed),
        batches_split: Stats::get(&stats.batches_split),
        worker_restarts: Stats::get(&stats.worker_restarts),
        workers_running: state.pool_status.borrow().running as u32,
        bytes_in_flight: (state.budgets.unary.in_use() + state.budgets.streams.in_use()) as u64,
    }
}
