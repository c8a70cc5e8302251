//! The gRPC service against the real server on an ephemeral loopback port: results equal the
//! references, streams keep ids and order, cancelled work is not computed, backpressure holds,
//! bad input gets its code, health follows the server's life.
mod common;

use std::time::Duration;

use bertd::api::proto::bert::v1 as pb;
use common::grpc::*;
use common::*;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn pb_input(r: &Value) -> pb::TextInput {
    pb::TextInput {
        text: r["text"].as_str().unwrap().into(),
        text_pair: r["text_pair"].as_str().map(Into::into),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_encode_equals_transformers_for_many_inputs_in_one_call() {
    let refs = references("bert_tiny");
    let server = serve(settings(&model_dir("bert_tiny"))).await;
    let mut client = EncoderClient::new(channel(&server).await);
    let inputs: Vec<pb::TextInput> = refs.iter().map(pb_input).collect();

    let response = client
        .encode(encode_request("many", inputs.clone(), pb::Pooling::Mean))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.id, "many");
    assert_eq!(response.results.len(), refs.len());
    for (r, result) in refs.iter().zip(&response.results) {
        assert_close("mean", &result.embedding, &floats(&r["mean"]));
        let usage = result.usage.unwrap();
        assert_eq!(
            usage.tokens as usize,
            r["input_ids"].as_array().unwrap().len()
        );
        assert_eq!(usage.truncated, r["original_length"].as_u64().unwrap() > 48);
    }

    let mut tokens_request = encode_request("tokens", inputs.clone(), pb::Pooling::Tokens);
    tokens_request.options.as_mut().unwrap().layer = Some(-1);
    let response = client.encode(tokens_request).await.unwrap().into_inner();
    for (r, result) in refs.iter().zip(&response.results) {
        assert!(result.embedding.is_empty());
        let flat: Vec<f32> = result
            .token_embeddings
            .iter()
            .flat_map(|v| v.values.clone())
            .collect();
        assert_close("tokens", &flat, &flat_floats(&r["token_embeddings"]));
    }

    let mut options_request = encode_request("options", inputs, pb::Pooling::Cls);
    let options = options_request.options.as_mut().unwrap();
    options.layer = Some(0);
    let response = client.encode(options_request).await.unwrap().into_inner();
    for (r, result) in refs.iter().zip(&response.results) {
        assert_close("layer 0 cls", &result.embedding, &floats(&r["layer0_cls"]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_classify_equals_transformers_with_labels_and_top_k() {
    let refs = references("classifier_single");
    let server = serve(settings(&model_dir("classifier_single"))).await;
    let mut client = ClassifierClient::new(channel(&server).await);
    let response = client
        .classify(pb::ClassifyRequest {
            id: "c".into(),
            inputs: refs.iter().map(pb_input).collect(),
            options: None,
        })
        .await
        .unwrap()
        .into_inner();
    for (r, result) in refs.iter().zip(&response.results) {
        let want = floats(&r["softmax"]);
        assert_eq!(result.labels.len(), 3);
        assert!(result.labels.windows(2).all(|w| w[0].score >= w[1].score));
        for label in &result.labels {
            assert!((label.score - want[label.index as usize]).abs() <= 1e-5);
            assert_eq!(
                label.label,
                ["negative", "neutral", "positive"][label.index as usize]
            );
        }
    }
    let response = client
        .classify(pb::ClassifyRequest {
            id: "raw".into(),
            inputs: vec![pb_input(&refs[0])],
            options: Some(pb::ClassifyOptions {
                top_k: 1,
                activation: pb::Activation::None as i32,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let logits = floats(&refs[0]["logits"]);
    let best = &response.results[0].labels;
    assert_eq!(best.len(), 1);
    let max = logits.iter().cloned().fold(f32::MIN, f32::max);
    assert!((best[0].score - max).abs() <= 1e-5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_10000_requests_keeps_ids_and_order_with_correct_results() {
    let refs = references("bert_tiny");
    let server = serve(settings(&model_dir("bert_tiny"))).await;
    let mut client = EncoderClient::new(channel(&server).await);
    let requests = (0..10_000).map(move |i| {
        let r = &references("bert_tiny")[i % 11];
        encode_request(format!("req-{i}"), vec![pb_input(r)], pb::Pooling::Mean)
    });
    let (tx, rx) = mpsc::channel(64);
    let feeder = tokio::spawn(async move {
        for request in requests {
            tx.send(request).await.unwrap();
        }
    });
    let mut responses = client
        .encode_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut count = 0;
    while let Some(response) = responses.next().await {
        let response = response.unwrap();
        assert_eq!(
            response.id,
            format!("req-{count}"),
            "responses come in request order"
        );
        assert!(response.error.is_none());
        assert_close(
            "mean",
            &response.results[0].embedding,
            &floats(&refs[count % 11]["mean"]),
        );
        count += 1;
    }
    feeder.await.unwrap();
    assert_eq!(count, 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_and_unary_calls_each_get_their_own_results() {
    let refs = references("bert_tiny");
    let server = serve(settings(&model_dir("bert_tiny"))).await;
    let channel = channel(&server).await;
    let mut tasks = Vec::new();
    for stream_no in 0..4usize {
        let channel = channel.clone();
        let refs = refs.clone();
        tasks.push(tokio::spawn(async move {
            let requests: Vec<pb::EncodeRequest> = (0..300)
                .map(|i| {
                    let k = (i + stream_no) % 11;
                    let pooling =
                        [pb::Pooling::Mean, pb::Pooling::Cls, pb::Pooling::Max][stream_no % 3];
                    encode_request(
                        format!("{stream_no}/{i}/{k}"),
                        vec![pb_input(&refs[k])],
                        pooling,
                    )
                })
                .collect();
            let mut responses = EncoderClient::new(channel)
                .encode_stream(tokio_stream::iter(requests))
                .await
                .unwrap()
                .into_inner();
            let key = ["mean", "cls", "max"][stream_no % 3];
            let mut i = 0;
            while let Some(response) = responses.next().await {
                let response = response.unwrap();
                let k = (i + stream_no) % 11;
                assert_eq!(response.id, format!("{stream_no}/{i}/{k}"));
                assert_close(key, &response.results[0].embedding, &floats(&refs[k][key]));
                i += 1;
            }
            assert_eq!(i, 300);
        }));
    }
    for call in 0..40usize {
        let channel = channel.clone();
        let refs = refs.clone();
        tasks.push(tokio::spawn(async move {
            let k = call % 11;
            let response = EncoderClient::new(channel)
                .encode(encode_request(
                    format!("unary-{call}"),
                    vec![pb_input(&refs[k])],
                    pb::Pooling::Max,
                ))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(response.id, format!("unary-{call}"));
            assert_close(
                "max",
                &response.results[0].embedding,
                &floats(&refs[k]["max"]),
            );
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_has_its_queued_work_dropped_and_others_are_served() {
    let mut s = settings(&model_dir("bert_tiny"));
    // Inputs wait for company long enough for the client to leave first.
    s.batching.max_batch_delay_ms = 1_500;
    s.batching.max_batch_size = Some(1_000);
    s.batching.max_batch_tokens = Some(100_000);
    let server = serve(s).await;
    let channel = channel(&server).await;
    let (tx, rx) = mpsc::channel(64);
    let mut responses = EncoderClient::new(channel.clone())
        .encode_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for i in 0..50 {
        tx.send(encode_request(
            format!("{i}"),
            vec![input("queued and abandoned")],
            pb::Pooling::Mean,
        ))
        .await
        .unwrap();
    }
    let started = tokio::time::Instant::now();
    while stats(&channel).await.inputs_queued < 50 {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the stream's inputs are queued"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(tx);
    drop(responses.message()); // nothing to read yet; then the client abandons the call
    drop(responses);

    let started = tokio::time::Instant::now();
    loop {
        let now = stats(&channel).await;
        if now.inputs_cancelled == 50 {
            assert_eq!(
                now.inputs_computed, 0,
                "abandoned inputs are never computed"
            );
            assert_eq!(now.inputs_queued, 0);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "abandoned inputs are dropped: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The server goes on serving others.
    let response = EncoderClient::new(channel.clone())
        .encode(encode_request(
            "after",
            vec![input("still here")],
            pb::Pooling::Mean,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.results[0].embedding.len(), 32);
    assert_eq!(stats(&channel).await.inputs_computed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_overload_is_refused_at_once_with_resource_exhausted() {
    let mut s = settings(&model_dir("bert_tiny"));
    s.batching.queue_capacity = 4;
    s.limits.max_inputs_per_request = 4;
    s.batching.stream_window = 4;
    s.batching.max_batch_delay_ms = 2_000;
    s.batching.max_batch_size = Some(100);
    let server = serve(s).await;
    let channel = channel(&server).await;
    let waiting = tokio::spawn({
        let channel = channel.clone();
        async move {
            EncoderClient::new(channel)
                .encode(encode_request(
                    "fills",
                    (0..4).map(|_| input("x")).collect(),
                    pb::Pooling::Mean,
                ))
                .await
        }
    });
    let started = tokio::time::Instant::now();
    while stats(&channel).await.inputs_queued < 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let refused = EncoderClient::new(channel.clone())
        .encode(encode_request(
            "refused",
            vec![input("y")],
            pb::Pooling::Mean,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("batching.queue_capacity"),
        "{}",
        refused.message()
    );
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "refused at once, not after the queue drained"
    );
    assert_eq!(stats(&channel).await.requests_rejected, 1);
    assert!(
        waiting.await.unwrap().is_ok(),
        "the queued call is still served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_client_stops_reading_is_held_to_its_window() {
    let mut s = settings(&model_dir("bert_tiny"));
    s.batching.stream_window = 16;
    s.limits.max_inputs_per_request = 16;
    s.batching.queue_capacity = 16;
    let server = serve(s).await;
    let channel = channel(&server).await;
    // Counters come over a connection of their own: the stream's unread responses fill its
    // connection's HTTP/2 window.
    let observer = common::grpc::channel(&server).await;
    let total = 20_000;
    // Large requests and large responses (token embeddings), so that HTTP/2's buffers fill up.
    let text = "a long text that the client sends again and again ".repeat(6);
    let (tx, rx) = mpsc::channel(1);
    let feeder = tokio::spawn(async move {
        for i in 0..total {
            if tx
                .send(encode_request(
                    format!("{i}"),
                    vec![input(&text)],
                    pb::Pooling::Tokens,
                ))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut responses = EncoderClient::new(channel.clone())
        .encode_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // Not reading: the server computes what fits in the window and the transport, then stops.
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = stats(&observer).await.inputs_computed;
        if now == last {
            break;
        }
        last = now;
    }
    // It computed at least a window's worth (it did not stall from the start), and stopped far
    // short of the whole stream.
    assert!(
        (16..2_000).contains(&last),
        "the server stopped at {last} of {total} inputs"
    );
    assert!(
        !feeder.is_finished(),
        "the client cannot push the whole stream"
    );
    // Reading again: everything arrives, in order.
    let mut count = 0;
    while let Some(response) = responses.next().await {
        assert_eq!(response.unwrap().id, count.to_string());
        count += 1;
    }
    assert_eq!(count, total);
}

async fn encode_error(
    client: &mut EncoderClient<tonic::transport::Channel>,
    request: pb::EncodeRequest,
) -> tonic::Status {
    client.encode(request).await.expect_err("refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_code_and_a_message_naming_input_field_and_limit() {
    let mut s = settings(&model_dir("bert_tiny"));
    s.limits.max_inputs_per_request = 3;
    s.batching.stream_window = 3;
    s.limits.max_input_chars = 1_000;
    s.server.max_message_bytes = 4_000;
    let server = serve(s).await;
    let channel = channel(&server).await;
    let mut client = EncoderClient::new(channel.clone());
    let long = references("bert_tiny")[6]["text"]
        .as_str()
        .unwrap()
        .to_string();

    let cases: Vec<(pb::EncodeRequest, Code, &[&str])> = vec![
        (
            encode_request("", vec![], pb::Pooling::Mean),
            Code::InvalidArgument,
            &["inputs", "no inputs"],
        ),
        (
            encode_request("", (0..4).map(|_| input("x")).collect(), pb::Pooling::Mean),
            Code::InvalidArgument,
            &[
                "4 inputs exceed the limit of 3",
                "limits.max_inputs_per_request",
            ],
        ),
        (
            encode_request(
                "",
                vec![input("ok"), input(&"é".repeat(1_001))],
                pb::Pooling::Mean,
            ),
            Code::InvalidArgument,
            &[
                "inputs[1]",
                "1001 characters",
                "limit of 1000",
                "limits.max_input_chars",
            ],
        ),
        (
            pb::EncodeRequest {
                inputs: vec![input("ok"), input(&long)],
                options: Some(pb::EncodeOptions {
                    truncate: Some(false),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Code::InvalidArgument,
            &[
                "inputs[1]",
                "114 tokens",
                "maximum input length of 48",
                "truncate is false",
            ],
        ),
        (
            pb::EncodeRequest {
                inputs: vec![input("ok")],
                options: Some(pb::EncodeOptions {
                    pooling: 99,
                    ..Default::default()
                }),
                ..Default::default()
            },
            Code::InvalidArgument,
            &["options.pooling", "unknown value 99"],
        ),
        (
            pb::EncodeRequest {
                inputs: vec![input("ok")],
                options: Some(pb::EncodeOptions {
                    layer: Some(7),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Code::InvalidArgument,
            &["options.layer", "7 is outside -4..=3"],
        ),
        (
            pb::EncodeRequest {
                inputs: vec![input("ok")],
                options: Some(pb::EncodeOptions {
                    dimensions: Some(33),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Code::InvalidArgument,
            &["options.dimensions", "33 is outside 1..=32"],
        ),
        (
            encode_request("", vec![input(&"x".repeat(5_000))], pb::Pooling::Mean),
            Code::ResourceExhausted,
            &["message length too large", "the limit is: 4000 bytes"],
        ),
    ];
    for (request, code, parts) in cases {
        let status = encode_error(&mut client, request).await;
        assert_eq!(status.code(), code, "{status:?}");
        for part in parts {
            assert!(
                status.message().contains(part),
                "{:?} lacks {part:?}",
                status.message()
            );
        }
    }

    let status = ClassifierClient::new(channel.clone())
        .classify(pb::ClassifyRequest {
            inputs: vec![input("x")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("no classification head"),
        "{}",
        status.message()
    );

    // The server is unharmed.
    let ok = client
        .encode(encode_request("ok", vec![input("fine")], pb::Pooling::Mean))
        .await
        .unwrap();
    assert_eq!(ok.into_inner().results.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_request_in_a_stream_gets_its_own_error_and_the_stream_goes_on() {
    let server = serve(settings(&model_dir("bert_tiny"))).await;
    let mut client = EncoderClient::new(channel(&server).await);
    let requests = vec![
        encode_request("good-1", vec![input("one")], pb::Pooling::Mean),
        encode_request("empty", vec![], pb::Pooling::Mean),
        pb::EncodeRequest {
            id: "bad-layer".into(),
            inputs: vec![input("two")],
            options: Some(pb::EncodeOptions {
                layer: Some(42),
                ..Default::default()
            }),
        },
        encode_request("good-2", vec![input("three")], pb::Pooling::Mean),
    ];
    let responses: Vec<pb::EncodeResponse> = client
        .encode_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap())
        .collect()
        .await;
    let ids: Vec<&str> = responses.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["good-1", "empty", "bad-layer", "good-2"]);
    assert!(responses[0].error.is_none() && responses[3].error.is_none());
    assert_eq!(responses[3].results.len(), 1);
    let empty = responses[1].error.as_ref().unwrap();
    assert_eq!(empty.code, Code::InvalidArgument as i32);
    assert!(empty.message.contains("no inputs"));
    let layer = responses[2].error.as_ref().unwrap();
    assert_eq!(layer.code, Code::InvalidArgument as i32);
    assert!(layer.message.contains("options.layer"));
    assert!(responses[1].results.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_ends_a_stream_with_resource_exhausted() {
    let mut s = settings(&model_dir("bert_tiny"));
    s.server.max_message_bytes = 1_000;
    let server = serve(s).await;
    let mut client = EncoderClient::new(channel(&server).await);
    let requests = vec![
        encode_request("small", vec![input("fine")], pb::Pooling::Mean),
        encode_request("huge", vec![input(&"x".repeat(5_000))], pb::Pooling::Mean),
    ];
    let mut responses = client
        .encode_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut saw_small = false;
    let status = loop {
        match responses
            .next()
            .await
            .expect("the stream ends with an error")
        {
            Ok(r) => saw_small |= r.id == "small",
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("server.max_message_bytes"),
        "{}",
        status.message()
    );
    assert!(
        saw_small,
        "the request before the oversized one is answered first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_shows_what_the_model_sees() {
    let refs = references("bert_tiny");
    let server = serve(settings(&model_dir("bert_tiny"))).await;
    let mut client = TokenizerClient::new(channel(&server).await);
    let response = client
        .tokenize(pb::TokenizeRequest {
            inputs: refs.iter().map(pb_input).collect(),
            truncate: None,
        })
        .await
        .unwrap()
        .into_inner();
    for (r, result) in refs.iter().zip(&response.results) {
        let ids: Vec<u64> = result.tokens.iter().map(|t| u64::from(t.id)).collect();
        let want: Vec<u64> = r["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(ids, want);
        assert_eq!(
            u64::from(result.original_tokens),
            r["original_length"].as_u64().unwrap()
        );
        assert!(result.tokens.first().unwrap().special && result.tokens.last().unwrap().special);
        assert_eq!(result.tokens[0].text, "[CLS]");
    }
    // Offsets are in characters of the input's own text.
    let hello = &response.results[0].tokens[1];
    let text: Vec<char> = "Hello world!".chars().collect();
    let piece: String = text[hello.start as usize..hello.end as usize]
        .iter()
        .collect();
    assert_eq!(piece.to_lowercase(), hello.text.trim_start_matches("##"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_info_describes_model_device_and_limits() {
    let server = serve(settings(&model_dir("classifier_multi"))).await;
    let info = ModelClient::new(channel(&server).await)
        .get_info(pb::GetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.architecture, "BertForSequenceClassification");
    assert_eq!(
        (info.hidden_size, info.num_layers, info.max_length),
        (32, 3, 48)
    );
    assert_eq!(info.labels, ["sports", "politics", "science", "art"]);
    assert_eq!(info.default_activation, "sigmoid");
    assert_eq!(info.devices, ["cpu"]);
    assert_eq!(info.dtype, "fp32");
    let limits = info.limits.unwrap();
    assert_eq!(limits.max_inputs_per_request, 256);
    assert_eq!(
        limits.max_batch_tokens as usize,
        bertd::config::BatchDefaults::CPU.max_batch_tokens,
        "a CPU server's default"
    );
    assert_eq!(
        limits.forward_cost_tokens as usize,
        bertd::config::BatchDefaults::CPU.forward_cost_tokens
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_past_its_grpc_deadline_is_not_computed() {
    let mut s = settings(&model_dir("bert_tiny"));
    s.batching.max_batch_delay_ms = 1_000; // the input would wait longer than its deadline
    s.batching.max_batch_size = Some(1_000);
    let server = serve(s).await;
    let channel = channel(&server).await;
    let mut request = tonic::Request::new(encode_request(
        "late",
        vec![input("too slow")],
        pb::Pooling::Mean,
    ));
    request.set_timeout(Duration::from_millis(200));
    let status = EncoderClient::new(channel.clone())
        .encode(request)
        .await
        .unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let now = stats(&channel).await;
    assert_eq!(now.inputs_computed, 0, "{now:?}");
    assert_eq!(now.inputs_cancelled + now.inputs_expired, 1, "{now:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_every_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let server = serve(settings(&model_dir("bert_tiny"))).await;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel(&server).await)
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("a list of services")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for name in [
        "bert.v1.Encoder",
        "bert.v1.Classifier",
        "bert.v1.Tokenizer",
        "bert.v1.Model",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_share_one_queue_and_give_the_same_results() {
    let refs = references("bert_tiny");
    let mut s = settings(&model_dir("bert_tiny"));
    s.engine.workers_per_device = Some(2);
    s.engine.cpu_threads = 2; // one libtorch thread each
    s.batching.max_batch_size = Some(4);
    let server = serve(s).await;
    let channel = channel(&server).await;
    let info = ModelClient::new(channel.clone())
        .get_info(pb::GetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.devices, ["cpu", "cpu"]);
    let requests: Vec<pb::EncodeRequest> = (0..400)
        .map(|i| {
            encode_request(
                i.to_string(),
                vec![pb_input(&refs[i % 11])],
                pb::Pooling::Mean,
            )
        })
        .collect();
    let responses: Vec<pb::EncodeResponse> = EncoderClient::new(channel.clone())
        .encode_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap())
        .collect()
        .await;
    for (i, response) in responses.iter().enumerate() {
        assert_eq!(response.id, i.to_string());
        assert_close(
            "mean",
            &response.results[0].embedding,
            &floats(&refs[i % 11]["mean"]),
        );
    }
    let now = stats(&channel).await;
    assert_eq!(now.inputs_computed, 400);
    assert!(now.batches >= 100, "batches of at most 4: {now:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_has_at_most_max_concurrent_streams_calls_open() {
    let mut s = settings(&model_dir("bert_tiny"));
    s.server.max_concurrent_streams = 1;
    let server = serve(s).await;
    let channel = channel(&server).await;
    // The first call holds the connection's only stream open: its client has not finished sending.
    let (tx, mut first) = open_stream(&channel).await;
    let second = tokio::spawn({
        let channel = channel.clone();
        async move {
            EncoderClient::new(channel)
                .encode(encode_request(
                    "second",
                    vec![input("two")],
                    pb::Pooling::Mean,
                ))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !second.is_finished(),
        "a second call waits while the first is open"
    );
    drop(tx);
    assert!(first.message().await.unwrap().is_none());
    let second = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.unwrap().into_inner().id, "second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_each_take_a_whole_stream_window_follow_one_another() {
    const WINDOW: usize = 4;
    let mut s = settings(&model_dir("bert_tiny"));
    s.batching.stream_window = WINDOW;
    s.limits.max_inputs_per_request = WINDOW;
    s.batching.queue_capacity = WINDOW;
    let server = serve(s).await;
    let requests: Vec<pb::EncodeRequest> = (0..3)
        .map(|i| {
            let inputs = (0..WINDOW).map(|_| input("fills the window")).collect();
            encode_request(i.to_string(), inputs, pb::Pooling::Mean)
        })
        .collect();
    let responses = EncoderClient::new(channel(&server).await)
        .encode_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap().results.len())
        .collect::<Vec<_>>();
    let responses = tokio::time::timeout(Duration::from_secs(30), responses)
        .await
        .expect("each request gets the window once the one before has been answered");
    assert_eq!(responses, [WINDOW; 3]);
}
