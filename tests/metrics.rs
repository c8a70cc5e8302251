//! The metrics endpoint after a known workload: every counter and histogram count equals what was
//! sent, parsed from the exposition format, and the counters GetInfo reports are the same numbers.
mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::grpc::*;
use common::scrape::{Metrics, get};
use common::*;
use tonic::Code;

use bertd::api::proto::bert::v1 as pb;

/// Unary Encode calls, and inputs in each.
const UNARY_CALLS: usize = 3;
const UNARY_INPUTS: usize = 2;
/// Messages of the stream that completes, and inputs in each.
const STREAM_MESSAGES: usize = 4;
const STREAM_INPUTS: usize = 3;
/// Requests refused as invalid (no inputs).
const BAD_REQUESTS: usize = 2;
/// How long the server may take to notice the cancelled stream.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

const ENCODER: (&str, &str) = ("service", "bert.v1.Encoder");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_counter_and_histogram_count_equals_the_workload_sent() {
    let mut s = settings(&model_dir("bert_tiny"));
    s.telemetry.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    let server = serve(s).await;
    let metrics_addr = server.metrics_addr.expect("a metrics endpoint");
    let channel = channel(&server).await;
    let mut encoder = EncoderClient::new(channel.clone());

    let mut tokens = 0u64;
    for call in 0..UNARY_CALLS {
        let inputs = (0..UNARY_INPUTS)
            .map(|i| input(&format!("unary call {call} input {i} with a few words")))
            .collect();
        let response = encoder
            .encode(encode_request(
                format!("u{call}"),
                inputs,
                pb::Pooling::Mean,
            ))
            .await
            .unwrap()
            .into_inner();
        tokens += response
            .results
            .iter()
            .map(|r| r.usage.unwrap().tokens as u64)
            .sum::<u64>();
    }
    for bad in 0..BAD_REQUESTS {
        let refused = encoder
            .encode(encode_request(
                format!("bad{bad}"),
                vec![],
                pb::Pooling::Mean,
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
    }

    // A stream that completes.
    let requests: Vec<pb::EncodeRequest> = (0..STREAM_MESSAGES)
        .map(|m| {
            let inputs = (0..STREAM_INPUTS)
                .map(|i| input(&format!("stream message {m} input {i}")))
                .collect();
            encode_request(format!("s{m}"), inputs, pb::Pooling::Cls)
        })
        .collect();
    let mut responses = encoder
        .encode_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut answered = 0;
    while let Some(response) = responses.message().await.unwrap() {
        tokens += response
            .results
            .iter()
            .map(|r| r.usage.unwrap().tokens as u64)
            .sum::<u64>();
        answered += 1;
    }
    assert_eq!(answered, STREAM_MESSAGES);

    // A stream the client abandons after its first answer, while it could still send more.
    let (sender, requests) = tokio::sync::mpsc::channel(1);
    sender
        .send(encode_request(
            "first",
            vec![input("one input")],
            pb::Pooling::Mean,
        ))
        .await
        .unwrap();
    let mut abandoned = encoder
        .encode_stream(tokio_stream::wrappers::ReceiverStream::new(requests))
        .await
        .unwrap()
        .into_inner();
    let first = abandoned.message().await.unwrap().unwrap();
    tokens += first
        .results
        .iter()
        .map(|r| r.usage.unwrap().tokens as u64)
        .sum::<u64>();
    let cancelled_inputs = first.results.len();
    drop(abandoned);
    drop(sender);

    // The server learns of the cancellation asynchronously, and a worker counts itself idle only
    // after it has handed its batch's results over (which the client may see first): wait for
    // both, within a bound.
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    let m = loop {
        let m = Metrics::scrape(metrics_addr).await;
        let settled = m.value("bertd_streams_in_flight", &[]) == 0.0
            && m.value("bertd_workers_busy", &[]) == 0.0
            && m.value(
                "bertd_grpc_requests_total",
                &[ENCODER, ("method", "EncodeStream"), ("code", "CANCELLED")],
            ) == 1.0;
        if settled {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cancelled stream was counted within {SETTLE_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let unary_inputs = (UNARY_CALLS * UNARY_INPUTS) as f64;
    let stream_inputs = (STREAM_MESSAGES * STREAM_INPUTS + cancelled_inputs) as f64;
    let requests_by_code = |method: &str, code: &str| {
        m.value(
            "bertd_grpc_requests_total",
            &[ENCODER, ("method", method), ("code", code)],
        )
    };
    assert_eq!(requests_by_code("Encode", "OK"), UNARY_CALLS as f64);
    assert_eq!(
        requests_by_code("Encode", "INVALID_ARGUMENT"),
        BAD_REQUESTS as f64
    );
    assert_eq!(requests_by_code("EncodeStream", "OK"), 1.0);
    assert_eq!(
        m.observations(
            "bertd_grpc_request_duration_seconds",
            &[ENCODER, ("method", "Encode")]
        ),
        (UNARY_CALLS + BAD_REQUESTS) as f64
    );
    let stream = [ENCODER, ("method", "EncodeStream")];
    assert_eq!(
        m.value("bertd_grpc_stream_messages_received_total", &stream),
        (STREAM_MESSAGES + 1) as f64
    );
    assert_eq!(
        m.value("bertd_grpc_stream_messages_sent_total", &stream),
        (STREAM_MESSAGES + 1) as f64
    );

    assert_eq!(
        m.value("bertd_inputs_computed_total", &[]),
        unary_inputs + stream_inputs
    );
    assert_eq!(m.value("bertd_tokens_computed_total", &[]), tokens as f64);
    assert_eq!(
        m.observations("bertd_queue_wait_seconds", &[("lane", "unary")]),
        unary_inputs
    );
    assert_eq!(
        m.observations("bertd_queue_wait_seconds", &[("lane", "stream")]),
        stream_inputs
    );
    // Each valid request was tokenized once.
    assert_eq!(
        m.observations("bertd_tokenize_duration_seconds", &[]),
        (UNARY_CALLS + STREAM_MESSAGES + 1) as f64
    );
    let cpu = [("device", "cpu")];
    let batches = m.value("bertd_batches_total", &[]);
    assert!(batches >= 1.0);
    assert_eq!(
        m.observations("bertd_batch_forward_duration_seconds", &cpu),
        batches
    );
    assert_eq!(m.observations("bertd_batch_size_inputs", &cpu), batches);
    assert_eq!(
        m.value("bertd_batch_size_inputs_sum", &cpu),
        unary_inputs + stream_inputs
    );
    assert_eq!(m.observations("bertd_batch_padding_ratio", &cpu), batches);
    assert!(
        m.value("bertd_batch_padded_tokens_sum", &cpu) >= tokens as f64,
        "padding only adds tokens"
    );
    for counter in [
        "bertd_inputs_cancelled_total",
        "bertd_inputs_expired_total",
        "bertd_requests_rejected_total",
        "bertd_inputs_failed_total",
        "bertd_worker_restarts_total",
    ] {
        assert_eq!(m.value(counter, &[]), 0.0, "{counter}");
    }
    assert_eq!(m.total("bertd_queued_inputs", &[]), 0.0);
    assert_eq!(m.value("bertd_workers_busy", &[]), 0.0);
    assert_eq!(m.value("bertd_workers_running", &[]), 1.0);
    assert_eq!(m.value("bertd_in_flight_bytes", &[]), 0.0);
    assert_eq!(
        m.value(
            "bertd_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("device", "cpu"),
                ("dtype", "fp32")
            ]
        ),
        1.0
    );

    // GetInfo reports the same numbers.
    let stats = ModelClient::new(channel)
        .get_info(pb::GetInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let m = Metrics::scrape(metrics_addr).await;
    let same: HashMap<&str, u64> = HashMap::from([
        ("bertd_inputs_computed_total", stats.inputs_computed),
        ("bertd_batches_total", stats.batches),
        ("bertd_inputs_cancelled_total", stats.inputs_cancelled),
        ("bertd_requests_rejected_total", stats.requests_rejected),
    ]);
    for (name, value) in same {
        assert_eq!(m.value(name, &[]), value as f64, "{name}");
    }
}

#[tokio::test]
async fn only_get_metrics_and_health_are_served() {
    let mut s = settings(&model_dir("bert_tiny"));
    s.telemetry.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    let server = serve(s).await;
    let addr = server.metrics_addr.unwrap();
    assert_eq!(get(addr, "/").await.0, 404);
    assert_eq!(get(addr, "/healthz").await.0, 404);
    assert_eq!(get(addr, "/metrics").await.0, 200);
    assert_eq!(
        get(addr, "/health").await.0,
        200,
        "a ready server is healthy"
    );
}

#[tokio::test]
async fn no_metrics_endpoint_unless_configured() {
    let server = serve(settings(&model_dir("bert_tiny"))).await;
    assert_eq!(server.metrics_addr, None);
}
