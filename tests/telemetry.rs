//! Traces of the real `bertd serve`, exported over OTLP to a real trace receiver in this process:
//! a client's trace continues through the server, every call has its server span with the RPC
//! attributes, tokenizing and queueing are its children, the batch is a span of its own linked
//! both ways with the requests it served, the forward pass is the batch's child, no input text
//! leaves the server, and what is buffered is flushed when the server stops.
mod common;

use std::collections::HashMap;
use std::process::{Child, Stdio};

use common::grpc::{encode_request, input};
use common::otlp::{Received, Receiver, Span, attributes, hex};
use common::process::{self, terminate, wait_serving};
use common::*;
use tonic::Request;
use tonic::metadata::MetadataValue;

use bertd::api::proto::bert::v1 as pb;
use bertd::api::proto::bert::v1::encoder_client::EncoderClient;

/// Text that must never appear in a span.
const MARKER: &str = "confidential-marker-4711";
/// The client's trace and span, as its `traceparent` names them (sampled).
const UNARY_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const UNARY_PARENT: &str = "00f067aa0ba902b7";
const STREAM_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const STREAM_PARENT: &str = "b7ad6b7169203331";
const BAD_TRACE: &str = "5b8aa5a2d2c872e8321cf37308d69df2";
const BAD_PARENT: &str = "051581bf3cb55c13";
const STREAM_MESSAGES: usize = 2;
/// SPAN_KIND_SERVER in OTLP.
const SERVER: i32 = 2;

fn traceparent(trace: &str, parent: &str) -> MetadataValue<tonic::metadata::Ascii> {
    format!("00-{trace}-{parent}-01").parse().unwrap()
}

fn traced<T>(message: T, trace: &str, parent: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("traceparent", traceparent(trace, parent));
    request
        .metadata_mut()
        .insert("baggage", "tenant=team-a".parse().unwrap());
    request
}

/// `bertd serve` on `addr` with the tiny model and `env` alone as its environment.
fn spawn_server(addr: &str, extra_args: &[&str], env: &[(&str, String)]) -> Child {
    process::serve(addr, &model_dir("bert_tiny"))
        .args(extra_args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// SIGTERM, then the exit (which must be a success) within a bound; returns what it logged.
fn stop_server(mut server: Child) -> String {
    let exit = terminate(&mut server);
    let mut stderr = String::new();
    std::io::Read::read_to_string(server.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(exit.success(), "{exit}: {stderr}");
    stderr
}

struct Spans(Vec<Received>);

impl Spans {
    fn in_trace(&self, trace: &str) -> Vec<&Span> {
        self.0
            .iter()
            .map(|r| &r.span)
            .filter(|s| hex(&s.trace_id) == trace)
            .collect()
    }

    fn children<'a>(&'a self, parent: &Span, name: &str) -> Vec<&'a Span> {
        self.0
            .iter()
            .map(|r| &r.span)
            .filter(|s| s.trace_id == parent.trace_id && s.parent_span_id == parent.span_id)
            .filter(|s| s.name == name)
            .collect()
    }

    /// The server span of the call whose client span is `parent`.
    fn server_span(&self, trace: &str, parent: &str) -> &Span {
        let found: Vec<&Span> = self
            .in_trace(trace)
            .into_iter()
            .filter(|s| hex(&s.parent_span_id) == parent)
            .collect();
        assert_eq!(found.len(), 1, "one server span continues {trace}/{parent}");
        found[0]
    }

    /// Batches that link to `request`.
    fn batches_of(&self, request: &Span) -> Vec<&Span> {
        self.0
            .iter()
            .map(|r| &r.span)
            .filter(|s| s.name == "batch")
            .filter(|s| {
                s.links
                    .iter()
                    .any(|l| l.trace_id == request.trace_id && l.span_id == request.span_id)
            })
            .collect()
    }
}

fn attrs(span: &Span) -> HashMap<String, String> {
    attributes(&span.attributes)
}

/// Checks a request's queue and batch structure: a `queue` child, batches linking to it and
/// linked from it, each with a `forward` child.
fn check_request_through_the_batch(spans: &Spans, request: &Span) {
    assert_eq!(
        spans.children(request, "tokenize").len(),
        1,
        "{}",
        request.name
    );
    assert_eq!(
        spans.children(request, "queue").len(),
        1,
        "{}",
        request.name
    );
    let batches = spans.batches_of(request);
    assert!(!batches.is_empty(), "a batch links to {}", request.name);
    for batch in batches {
        let a = attrs(batch);
        assert_eq!(a["bertd.device"], "cpu");
        let inputs: u64 = a["bertd.batch.inputs"].parse().unwrap();
        let real: u64 = a["bertd.batch.real_tokens"].parse().unwrap();
        let padded: u64 = a["bertd.batch.padded_tokens"].parse().unwrap();
        assert!(inputs >= 1 && real >= inputs && padded >= real, "{a:?}");
        assert!(
            request
                .links
                .iter()
                .any(|l| l.trace_id == batch.trace_id && l.span_id == batch.span_id),
            "{} links back to its batch",
            request.name
        );
        assert_eq!(
            spans.children(batch, "forward").len(),
            1,
            "the batch's forward pass"
        );
    }
}

#[test]
fn a_clients_trace_continues_through_the_server_down_to_the_forward_pass() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (receiver, collector) = runtime.block_on(Receiver::start());
    let addr = free_addr();
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let server = spawn_server(
        &addr,
        &["--log-format", "json"],
        &[
            (
                "BERTD_TELEMETRY__OTLP_ENDPOINT",
                format!("http://{collector}"),
            ),
            // Nothing is exported on a timer during the test: what arrives, the stop flushed.
            ("OTEL_BSP_SCHEDULE_DELAY", "600000".into()),
            ("K8S_POD_NAME", "bertd-0".into()),
        ],
    );

    runtime.block_on(async {
        let channel = wait_serving(&addr).await;
        let mut encoder = EncoderClient::new(channel);
        let secret = format!("a sentence holding {MARKER} and more words");
        encoder
            .encode(traced(
                encode_request(
                    "unary",
                    vec![input(&secret), input("short")],
                    pb::Pooling::Mean,
                ),
                UNARY_TRACE,
                UNARY_PARENT,
            ))
            .await
            .unwrap();
        let messages: Vec<pb::EncodeRequest> = (0..STREAM_MESSAGES)
            .map(|m| encode_request(format!("m{m}"), vec![input(&secret)], pb::Pooling::Cls))
            .collect();
        let mut responses = encoder
            .encode_stream(traced(
                tokio_stream::iter(messages),
                STREAM_TRACE,
                STREAM_PARENT,
            ))
            .await
            .unwrap()
            .into_inner();
        while responses.message().await.unwrap().is_some() {}
        let refused = encoder
            .encode(traced(
                encode_request("bad", vec![], pb::Pooling::Mean),
                BAD_TRACE,
                BAD_PARENT,
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    });

    let stderr = stop_server(server);
    assert!(!stderr.contains(MARKER), "no input text in the logs");

    let spans = Spans(receiver.spans());
    assert!(!spans.0.is_empty(), "spans were flushed on shutdown");
    let everything = format!("{:?}", spans.0);
    assert!(!everything.contains(MARKER), "no input text in any span");
    assert!(
        !everything.contains("team-a"),
        "no baggage value in any span"
    );

    let resource = &spans.0[0].resource;
    assert_eq!(resource["service.name"], "bertd");
    assert_eq!(resource["service.version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(resource["k8s.pod.name"], "bertd-0");
    assert!(!resource["service.instance.id"].is_empty());

    // Unary: the server span continues the client's trace, with the RPC attributes.
    let unary = spans.server_span(UNARY_TRACE, UNARY_PARENT);
    assert_eq!(unary.name, "bert.v1.Encoder/Encode");
    assert_eq!(unary.kind, SERVER);
    let a = attrs(unary);
    for (key, value) in [
        ("rpc.system", "grpc"),
        ("rpc.service", "bert.v1.Encoder"),
        ("rpc.method", "Encode"),
        ("rpc.grpc.status_code", "0"),
        ("server.address", "127.0.0.1"),
    ] {
        assert_eq!(
            a.get(key).map(String::as_str),
            Some(value),
            "{key} in {a:?}"
        );
    }
    assert_eq!(a["server.port"], port.to_string());
    check_request_through_the_batch(&spans, unary);

    // Stream: one span for the call, one per message, each message through its batch.
    let stream = spans.server_span(STREAM_TRACE, STREAM_PARENT);
    assert_eq!(stream.name, "bert.v1.Encoder/EncodeStream");
    assert_eq!(attrs(stream)["rpc.grpc.status_code"], "0");
    let messages = spans.children(stream, "message");
    assert_eq!(messages.len(), STREAM_MESSAGES);
    for message in messages {
        check_request_through_the_batch(&spans, message);
    }

    // A refused call has its span too, with its status code, and nothing below it.
    let bad = spans.server_span(BAD_TRACE, BAD_PARENT);
    assert_eq!(attrs(bad)["rpc.grpc.status_code"], "3");
    assert_eq!(spans.in_trace(BAD_TRACE).len(), 1);
}

/// Export attempts the test gives the exporter (each fails at once: nothing listens).
const EXPORT_EVERY_MS: &str = "20";
const CALLS_WHILE_UNREACHABLE: usize = 20;

#[test]
fn an_unreachable_collector_costs_one_warning_and_no_call() {
    let nothing_listens = free_addr();
    let addr = free_addr();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = spawn_server(
        &addr,
        &[],
        &[
            (
                "BERTD_TELEMETRY__OTLP_ENDPOINT",
                format!("http://{nothing_listens}"),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", EXPORT_EVERY_MS.into()),
        ],
    );
    runtime.block_on(async {
        let mut encoder = EncoderClient::new(wait_serving(&addr).await);
        for call in 0..CALLS_WHILE_UNREACHABLE {
            encoder
                .encode(traced(
                    encode_request(format!("{call}"), vec![input("words")], pb::Pooling::Mean),
                    UNARY_TRACE,
                    UNARY_PARENT,
                ))
                .await
                .expect("calls are served while the collector is down");
        }
    });
    let stderr = stop_server(server);
    let warnings = stderr.matches("exporting spans failed").count();
    assert_eq!(
        warnings, 1,
        "one warning, however many exports failed:\n{stderr}"
    );
    // The rest were counted, and summed up at the end.
    let summary = stderr
        .lines()
        .find(|l| l.contains("more span exports failed"))
        .unwrap_or_else(|| panic!("a summary of the failures at the end:\n{stderr}"));
    let failures: u64 = summary
        .split("failures=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a failure count in {summary}"));
    assert!(failures >= 1, "{summary}");
}

#[test]
fn traces_travel_over_http_protobuf_too_with_the_standard_environment_variables() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (receiver, collector) = runtime.block_on(Receiver::start_http());
    let addr = free_addr();
    let server = spawn_server(
        &addr,
        &[],
        &[
            // The standard variables, where the config says nothing: a base URL, to which the
            // exporter adds /v1/traces, and the service's name.
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}")),
            ("BERTD_TELEMETRY__OTLP_PROTOCOL", "http/protobuf".into()),
            ("OTEL_SERVICE_NAME", "embeddings-eu".into()),
        ],
    );
    runtime.block_on(async {
        let mut encoder = EncoderClient::new(wait_serving(&addr).await);
        encoder
            .encode(traced(
                encode_request("over-http", vec![input("words")], pb::Pooling::Mean),
                UNARY_TRACE,
                UNARY_PARENT,
            ))
            .await
            .unwrap();
    });
    stop_server(server);
    let spans = Spans(receiver.spans());
    let unary = spans.server_span(UNARY_TRACE, UNARY_PARENT);
    assert_eq!(unary.name, "bert.v1.Encoder/Encode");
    assert_eq!(spans.0[0].resource["service.name"], "embeddings-eu");
}
