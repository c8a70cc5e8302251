//! The metrics endpoint's registry: what each layer records as it goes (`RpcMetrics` at the edge,
//! the batch layer's histograms), and, read at each scrape, the counters and gauges that
//! `Model.GetInfo` reports, from the very same source (`api::stats`), so the two never disagree.
use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::api::{self, AppState};
use crate::batch::Stats;
use crate::telemetry::metrics::LaneLabels;

/// Every metric the server exposes.
pub fn registry(state: &Arc<AppState>) -> Registry {
    let mut registry = Registry::default();
    state.metrics.register(&mut registry);
    state.scheduler.stats().histograms.register(&mut registry);
    registry.register_collector(Box::new(Snapshot {
        state: state.clone(),
    }));
    registry
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    model: String,
    device: String,
    dtype: String,
}

/// Values read at scrape time.
struct Snapshot {
    state: Arc<AppState>,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Snapshot")
    }
}

// Help texts end with a full stop, as `Registry::register` writes them for the other metrics.

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, &format!("{help}."), None, c.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let g = ConstGauge::new(value as i64);
    g.encode(encoder.encode_descriptor(name, &format!("{help}."), None, g.metric_type())?)
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let state = &self.state;
        let s = api::stats(state);
        let e = &mut encoder;
        for (name, help, value) in [
            (
                "bertd_inputs_computed",
                "Inputs computed by the model",
                s.inputs_computed,
            ),
            (
                "bertd_tokens_computed",
                "Real (unpadded) tokens of the inputs computed",
                Stats::get(&state.scheduler.stats().tokens_computed),
            ),
            (
                "bertd_batches",
                "Forward passes run (a failed batch's halves each count)",
                s.batches,
            ),
            (
                "bertd_inputs_cancelled",
                "Queued inputs dropped uncomputed because their caller went away",
                s.inputs_cancelled,
            ),
            (
                "bertd_inputs_expired",
                "Queued inputs failed uncomputed because their deadline passed",
                s.inputs_expired,
            ),
            (
                "bertd_requests_rejected",
                "Unary calls refused at once because the queue was full",
                s.requests_rejected,
            ),
            (
                "bertd_inputs_failed",
                "Inputs that failed on the model alone",
                s.inputs_failed,
            ),
            (
                "bertd_batches_split",
                "Failed batches split in halves to find the failing inputs",
                s.batches_split,
            ),
            (
                "bertd_worker_restarts",
                "Workers started again after their replica broke or their thread died",
                s.worker_restarts,
            ),
        ] {
            counter(e, name, help, value)?;
        }
        let (unary, streams) = state.scheduler.queued_by_lane();
        let queued = e.encode_descriptor(
            "bertd_queued_inputs",
            "Inputs waiting in the queue now, by lane (capacity: batching.queue_capacity and batching.stream_queue_capacity).",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        encode_lanes(queued, unary, streams)?;
        gauge(
            e,
            "bertd_queue_capacity_inputs",
            "Inputs the queue holds at most, unary calls and streams together",
            (state.settings.batching.queue_capacity + state.settings.batching.stream_queue_capacity)
                as u64,
        )?;
        gauge(
            e,
            "bertd_workers_busy",
            "Workers running a batch now",
            Stats::get(&state.scheduler.stats().busy_workers),
        )?;
        gauge(
            e,
            "bertd_workers_running",
            "Workers with a loaded replica",
            s.workers_running as u64,
        )?;
        gauge(
            e,
            "bertd_workers",
            "Workers configured (devices x engine.workers_per_device)",
            state.devices.len() as u64,
        )?;
        gauge(
            e,
            "bertd_in_flight_bytes",
            "Bytes held by calls in flight (requests, tokens and responses, as priced on admission)",
            s.bytes_in_flight,
        )?;
        let mut devices = state.devices.clone();
        devices.dedup();
        let build = BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
            model: state.spec.name.clone(),
            device: devices.join(","),
            dtype: state.settings.engine.dtype.to_string(),
        };
        let info = e.encode_descriptor(
            "bertd_build_info",
            "1, labelled with the version, the model, its devices and its dtype.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        let mut family = info;
        ConstGauge::new(1i64).encode(family.encode_family(&build)?)
    }
}

fn encode_lanes(
    mut encoder: prometheus_client::encoding::MetricEncoder,
    unary: usize,
    streams: usize,
) -> fmt::Result {
    for (lane, value) in [("unary", unary), ("stream", streams)] {
        ConstGauge::new(value as i64).encode(encoder.encode_family(&LaneLabels { lane })?)?;
    }
    Ok(())
}
