//! A property test over the whole request path, against the real server on loopback: generated
//! requests (arbitrary unicode, control characters, empty and huge texts, pairs, too many inputs,
//! every option, valid or not, long ids, odd metadata and deadlines) each get a response or a
//! clean status, in order, with results of the right shape; nothing panics, nothing hangs, and the
//! queue is empty at the end.
//!
//! `BERTD_FUZZ_REQUESTS` sets how many requests (default 100,000; `make fuzz` runs 2,000,000).
mod common;

use std::time::Duration;

use bertd::api::proto::bert::v1 as pb;
use common::grpc::*;
use common::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::metadata::{
    AsciiMetadataKey, AsciiMetadataValue, BinaryMetadataKey, BinaryMetadataValue,
};
use tonic::transport::Channel;

const DEFAULT_REQUESTS: usize = 100_000;
/// Requests per generated case: most through streams, some unary with odd metadata.
const PER_CASE: usize = 1_000;
const UNARY_PER_CASE: usize = 50;
/// The limits the server runs with, small so that requests cross them often.
const MAX_INPUTS: usize = 8;
const MAX_CHARS: usize = 4_000;
const MAX_ID_BYTES: usize = 64;
/// A case that takes longer than this has hung.
const CASE_TIMEOUT: Duration = Duration::from_secs(30);

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "\\PC{0,40}",
        3 => any::<String>(),
        1 => Just(String::new()),
        1 => "[ \t\n\r\u{0}\u{1}\u{7f}\u{200b}\u{feff}\u{fffd}]{0,30}",
        1 => "[\u{4e00}-\u{9fff}\u{3040}-\u{30ff}]{0,80}",
        1 => (1usize..1_000).prop_map(|n| "word, ".repeat(n)),
        1 => (MAX_CHARS - 2..MAX_CHARS + 3).prop_map(|n| "é".repeat(n)),
    ]
}

fn text_input() -> impl Strategy<Value = pb::TextInput> {
    (text(), prop::option::weighted(0.2, text()))
        .prop_map(|(text, text_pair)| pb::TextInput { text, text_pair })
}

fn id() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "\\PC{0,12}",
        1 => "[a-z]{60,70}",
        1 => any::<String>(),
    ]
}

fn inputs() -> impl Strategy<Value = Vec<pb::TextInput>> {
    vec(text_input(), 0..=MAX_INPUTS + 2)
}

fn encode_options() -> impl Strategy<Value = Option<pb::EncodeOptions>> {
    prop::option::of(
        (
            -1i32..7,
            any::<Option<bool>>(),
            any::<Option<bool>>(),
            prop::option::of(-6i32..6),
            prop::option::of(0u32..40),
        )
            .prop_map(|(pooling, normalize, truncate, layer, dimensions)| {
                pb::EncodeOptions {
                    pooling,
                    normalize,
                    truncate,
                    layer,
                    dimensions,
                }
            }),
    )
}

fn classify_options() -> impl Strategy<Value = Option<pb::ClassifyOptions>> {
    prop::option::of((0u32..6, -1i32..6, any::<Option<bool>>()).prop_map(
        |(top_k, activation, truncate)| pb::ClassifyOptions {
            top_k,
            activation,
            truncate,
        },
    ))
}

#[derive(Debug, Clone)]
enum Call {
    Encode(pb::EncodeRequest),
    Classify(pb::ClassifyRequest),
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        3 => (id(), inputs(), encode_options()).prop_map(|(id, inputs, options)| {
            Call::Encode(pb::EncodeRequest { id, inputs, options })
        }),
        1 => (id(), inputs(), classify_options()).prop_map(|(id, inputs, options)| {
            Call::Classify(pb::ClassifyRequest { id, inputs, options })
        }),
    ]
}

/// Call metadata as keys and raw values.
type Metadata = Vec<(String, Vec<u8>)>;

/// Odd call metadata: deadlines well formed or not, and arbitrary keys and values.
fn metadata() -> impl Strategy<Value = Metadata> {
    vec(
        prop_oneof![
            ("[0-9]{0,24}[HMSmunx]?", Just(()))
                .prop_map(|(v, _)| ("grpc-timeout".to_string(), v.into_bytes())),
            ("x-[a-z0-9-]{1,12}", "[ -~]{0,40}").prop_map(|(k, v)| (k, v.into_bytes())),
            ("x-[a-z0-9-]{1,12}-bin", vec(any::<u8>(), 0..40)).prop_map(|(k, v)| (k, v)),
        ],
        0..4,
    )
}

fn with_metadata<T>(message: T, metadata: &[(String, Vec<u8>)]) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for (key, value) in metadata {
        if key.ends_with("-bin") {
            let key = BinaryMetadataKey::from_bytes(key.as_bytes()).unwrap();
            request
                .metadata_mut()
                .insert_bin(key, BinaryMetadataValue::from_bytes(value));
        } else if let (Ok(key), Ok(value)) = (
            AsciiMetadataKey::from_bytes(key.as_bytes()),
            AsciiMetadataValue::try_from(value.as_slice()),
        ) {
            request.metadata_mut().insert(key, value);
        }
    }
    request
}

/// Codes a bad request may get; anything else (INTERNAL, UNKNOWN, ...) is a bug.
fn acceptable(code: i32, deadline_sent: bool) -> bool {
    let allowed = [
        Code::InvalidArgument,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
    ];
    allowed.iter().any(|c| *c as i32 == code)
        || (deadline_sent
            && [Code::DeadlineExceeded as i32, Code::Cancelled as i32].contains(&code))
}

fn expected_id(id: &str) -> String {
    let mut end = id.len().min(MAX_ID_BYTES);
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    id[..end].to_string()
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if ok {
        Ok(())
    } else {
        Err(TestCaseError::fail(what()))
    }
}

fn check_encoded(
    request: &pb::EncodeRequest,
    response: &pb::EncodeResponse,
) -> Result<(), TestCaseError> {
    check(response.id == expected_id(&request.id), || {
        format!("id {:?} for {:?}", response.id, request.id)
    })?;
    if let Some(error) = &response.error {
        return check(acceptable(error.code, false), || {
            format!("{error:?} for {request:?}")
        });
    }
    check(response.results.len() == request.inputs.len(), || {
        "one result per input".into()
    })?;
    for result in &response.results {
        let values = result
            .embedding
            .iter()
            .chain(result.token_embeddings.iter().flat_map(|v| &v.values));
        check(values.clone().all(|v| v.is_finite()), || {
            format!("finite values for {request:?}")
        })?;
        check(values.count() > 0, || {
            format!("some values for {request:?}")
        })?;
    }
    Ok(())
}

fn check_classified(
    request: &pb::ClassifyRequest,
    response: &pb::ClassifyResponse,
) -> Result<(), TestCaseError> {
    check(response.id == expected_id(&request.id), || {
        format!("id {:?} for {:?}", response.id, request.id)
    })?;
    if let Some(error) = &response.error {
        return check(acceptable(error.code, false), || {
            format!("{error:?} for {request:?}")
        });
    }
    check(response.results.len() == request.inputs.len(), || {
        "one result per input".into()
    })?;
    for result in &response.results {
        check(
            !result.labels.is_empty() && result.labels.iter().all(|l| l.score.is_finite()),
            || format!("labels for {request:?}"),
        )?;
    }
    Ok(())
}

async fn run_case(
    channel: &Channel,
    calls: Vec<Call>,
    unary: Vec<(Call, Metadata)>,
) -> Result<(), TestCaseError> {
    let (encodes, classifies): (Vec<Call>, Vec<Call>) = calls
        .into_iter()
        .partition(|c| matches!(c, Call::Encode(_)));
    let encodes: Vec<pb::EncodeRequest> = encodes
        .into_iter()
        .map(|c| match c {
            Call::Encode(r) => r,
            Call::Classify(_) => unreachable!(),
        })
        .collect();
    let classifies: Vec<pb::ClassifyRequest> = classifies
        .into_iter()
        .map(|c| match c {
            Call::Classify(r) => r,
            Call::Encode(_) => unreachable!(),
        })
        .collect();

    let encoded = EncoderClient::new(channel.clone())
        .encode_stream(tokio_stream::iter(encodes.clone()))
        .await
        .map_err(|e| TestCaseError::fail(format!("{e:?}")))?
        .into_inner();
    let classified = ClassifierClient::new(channel.clone())
        .classify_stream(tokio_stream::iter(classifies.clone()))
        .await
        .map_err(|e| TestCaseError::fail(format!("{e:?}")))?
        .into_inner();
    let (encoded, classified): (Vec<_>, Vec<_>) =
        tokio::join!(encoded.collect(), classified.collect());
    check(encoded.len() == encodes.len(), || {
        format!("{} responses to {} requests", encoded.len(), encodes.len())
    })?;
    for (request, response) in encodes.iter().zip(encoded) {
        let response = response.map_err(|e| TestCaseError::fail(format!("stream ended: {e:?}")))?;
        check_encoded(request, &response)?;
    }
    check(classified.len() == classifies.len(), || {
        "a response per classify request".into()
    })?;
    for (request, response) in classifies.iter().zip(classified) {
        let response = response.map_err(|e| TestCaseError::fail(format!("stream ended: {e:?}")))?;
        check_classified(request, &response)?;
    }

    for (call, metadata) in unary {
        let deadline_sent = metadata.iter().any(|(k, _)| k == "grpc-timeout");
        let result = match &call {
            Call::Encode(r) => EncoderClient::new(channel.clone())
                .encode(with_metadata(r.clone(), &metadata))
                .await
                .map(|response| check_encoded(r, response.get_ref())),
            Call::Classify(r) => ClassifierClient::new(channel.clone())
                .classify(with_metadata(r.clone(), &metadata))
                .await
                .map(|response| check_classified(r, response.get_ref())),
        };
        match result {
            Ok(checked) => checked?,
            Err(status) => check(acceptable(status.code() as i32, deadline_sent), || {
                format!("{status:?} for {call:?} with {metadata:?}")
            })?,
        }
    }
    Ok(())
}

#[test]
fn every_generated_request_gets_a_response_or_a_clean_status() {
    let total: usize = std::env::var("BERTD_FUZZ_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_REQUESTS);
    let cases = total.div_ceil(PER_CASE + UNARY_PER_CASE) as u32;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut s = settings(&model_dir("classifier_single"));
    s.limits.max_inputs_per_request = MAX_INPUTS;
    s.batching.stream_window = MAX_INPUTS;
    s.batching.queue_capacity = 64;
    s.limits.max_input_chars = MAX_CHARS;
    s.limits.max_id_bytes = MAX_ID_BYTES;
    s.server.max_response_bytes = 64 << 10;
    let (server, channel) = runtime.block_on(async {
        let server = serve(s).await;
        let channel = channel(&server).await;
        (server, channel)
    });

    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        // A failing case of 1,000 requests shrinks slowly; a few rounds show the culprit.
        max_shrink_iters: 8,
        ..Config::default()
    });
    let strategy = (
        vec(call(), PER_CASE),
        vec((call(), metadata()), UNARY_PER_CASE),
    );
    let result = runner.run(&strategy, |(calls, unary)| {
        runtime.block_on(async {
            tokio::time::timeout(CASE_TIMEOUT, run_case(&channel, calls, unary))
                .await
                .map_err(|_| TestCaseError::fail("a case hung"))?
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let now = runtime.block_on(stats(&channel));
    assert_eq!(now.inputs_queued, 0, "{now:?}");
    assert_eq!(
        now.inputs_failed, 0,
        "no input failed on the model: {now:?}"
    );
    println!(
        "{} requests: {} inputs computed in {} batches",
        cases as usize * (PER_CASE + UNARY_PER_CASE),
        now.inputs_computed,
        now.batches
    );
    drop(server);
}
