//! Overload and hostile input against the real server on loopback: client deadlines parsed
//! safely; responses bounded before any work; ids capped; byte budgets, call and connection caps
//! refusing at once; streams progressing under a flood of unary calls.
mod common;

use std::time::Duration;

use bertd::api::proto::bert::v1 as pb;
use common::grpc::*;
use common::*;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const PATIENCE: Duration = Duration::from_secs(30);

fn tiny() -> bertd::config::Settings {
    settings(&model_dir("bert_tiny"))
}

async fn encode(
    channel: &Channel,
    request: pb::EncodeRequest,
) -> Result<pb::EncodeResponse, tonic::Status> {
    EncoderClient::new(channel.clone())
        .encode(request)
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_timeout_too_large_to_represent_is_capped_not_a_panic() {
    let server = serve(tiny()).await;
    let channel = channel(&server).await;
    for timeout in ["18446744073709551615S", "99999999H", "1x", "S"] {
        let mut request =
            tonic::Request::new(encode_request("t", vec![input("hello")], pb::Pooling::Mean));
        request
            .metadata_mut()
            .insert("grpc-timeout", timeout.parse().unwrap());
        let response = EncoderClient::new(channel.clone())
            .encode(request)
            .await
            .unwrap_or_else(|e| panic!("grpc-timeout {timeout}: {e:?}"));
        assert_eq!(response.into_inner().results.len(), 1);
    }
}

/// Inputs of `words` words each.
fn long_inputs(count: usize, words: usize) -> Vec<pb::TextInput> {
    (0..count)
        .map(|i| input(&format!("word{i} ").repeat(words)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_over_the_limit_is_refused_before_any_work_and_one_within_it_is_served() {
    const LIMIT: usize = 100_000;
    let mut s = tiny();
    s.server.max_response_bytes = LIMIT;
    let server = serve(s).await;
    let channel = channel(&server).await;

    // 64 inputs of 48 tokens of 32 dimensions: about 400 KB of token embeddings.
    let refused = encode(
        &channel,
        encode_request("big", long_inputs(64, 100), pb::Pooling::Tokens),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    for part in [
        "at least",
        "bytes for 64 inputs",
        "limit of 100000 bytes",
        "server.max_response_bytes",
    ] {
        assert!(
            refused.message().contains(part),
            "{part}: {}",
            refused.message()
        );
    }

    // Text whose tokens cannot be counted without tokenizing is refused after tokenizing, still
    // before the model.
    let cyrillic = (0..64).map(|_| input(&"слово ".repeat(100))).collect();
    let refused = encode(
        &channel,
        encode_request("big", cyrillic, pb::Pooling::Tokens),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        !refused.message().contains("at least"),
        "{}",
        refused.message()
    );
    assert_eq!(
        stats(&channel).await.inputs_computed,
        0,
        "nothing was computed"
    );

    // Within the limit: served, and no larger than predicted.
    let fits = encode(
        &channel,
        encode_request("fits", long_inputs(8, 100), pb::Pooling::Tokens),
    )
    .await
    .unwrap();
    assert_eq!(fits.results[0].token_embeddings.len(), 48);
    assert!(fits.encoded_len() <= LIMIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_over_the_limit_is_refused_and_echoed_only_up_to_the_limit() {
    let server = serve(tiny()).await;
    let channel = channel(&server).await;
    let long_id = "i".repeat(10_000);
    let refused = encode(
        &channel,
        encode_request(long_id.clone(), vec![input("x")], pb::Pooling::Mean),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused
            .message()
            .contains("id: 10000 bytes exceed the limit of 256 (limits.max_id_bytes)"),
        "{}",
        refused.message()
    );
    let responses: Vec<pb::EncodeResponse> = EncoderClient::new(channel.clone())
        .encode_stream(tokio_stream::iter(vec![
            encode_request(long_id, vec![input("x")], pb::Pooling::Mean),
            encode_request("ok", vec![input("y")], pb::Pooling::Mean),
        ]))
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(responses[0].id.len(), 256);
    assert_eq!(
        responses[0].error.as_ref().unwrap().code,
        Code::InvalidArgument as i32
    );
    assert!(responses[1].error.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_over_the_byte_budget_are_refused_at_once() {
    let mut s = tiny();
    s.limits.unary_inflight_bytes = 64 << 10;
    s.batching.max_batch_delay_ms = 1_500; // keeps the first call in flight
    s.batching.max_batch_size = Some(1_000);
    let server = serve(s).await;
    let channel = channel(&server).await;
    // Token embeddings of 16 long inputs: about 70 KB predicted, the whole budget.
    let holder = tokio::spawn({
        let channel = channel.clone();
        async move {
            encode(
                &channel,
                encode_request("held", long_inputs(16, 100), pb::Pooling::Tokens),
            )
            .await
        }
    });
    let started = tokio::time::Instant::now();
    while stats(&channel).await.inputs_queued < 16 {
        assert!(started.elapsed() < PATIENCE, "the first call is queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let refused = encode(
        &channel,
        encode_request("second", vec![input("x")], pb::Pooling::Mean),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("limits.unary_inflight_bytes"),
        "{}",
        refused.message()
    );
    assert!(
        started.elapsed() < Duration::from_millis(1_200),
        "refused at once"
    );
    assert!(holder.await.unwrap().is_ok(), "the holder is served");
    // Its bytes came back.
    assert!(
        encode(
            &channel,
            encode_request("third", vec![input("x")], pb::Pooling::Mean)
        )
        .await
        .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_the_concurrency_cap_are_shed_at_once_and_health_still_answers() {
    let mut s = tiny();
    s.server.max_concurrent_calls = 1;
    let server = serve(s).await;
    let channel = channel(&server).await;
    // A stream holds the only place while it is open.
    let (tx, mut open) = open_stream(&channel).await;
    let shed = encode(
        &channel,
        encode_request("shed", vec![input("two")], pb::Pooling::Mean),
    )
    .await
    .unwrap_err();
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    assert!(
        shed.message().contains("server.max_concurrent_calls"),
        "{}",
        shed.message()
    );
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    assert!(health.is_ok(), "probes are exempt: {health:?}");
    // The place comes back when the stream ends.
    drop(tx);
    assert!(open.message().await.unwrap().is_none());
    let after = tokio::time::timeout(PATIENCE, async {
        loop {
            match encode(
                &channel,
                encode_request("after", vec![input("three")], pb::Pooling::Mean),
            )
            .await
            {
                Ok(response) => return response,
                // The stream's body may still be finishing on the server.
                Err(status) if status.code() == Code::ResourceExhausted => {
                    tokio::task::yield_now().await
                }
                Err(status) => panic!("{status:?}"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(after.id, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_wait_until_one_closes() {
    let mut s = tiny();
    s.server.max_connections = 1;
    let server = serve(s).await;
    let first = channel(&server).await;
    assert!(
        encode(
            &first,
            encode_request("1", vec![input("a")], pb::Pooling::Mean)
        )
        .await
        .is_ok()
    );
    // A second connection is not served while the first is open...
    let endpoint = Channel::from_shared(format!("http://{}", server.addr)).unwrap();
    let second = tokio::spawn(async move {
        let channel = endpoint.connect().await?;
        encode(
            &channel,
            encode_request("2", vec![input("b")], pb::Pooling::Mean),
        )
        .await
        .map_err(Into::<Box<dyn std::error::Error + Send + Sync>>::into)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "the second connection waits");
    // ...and is, once the first closes.
    drop(first);
    let served = tokio::time::timeout(PATIENCE, second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(served.unwrap().id, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_gets_its_share_of_batches_under_a_flood_of_unary_calls() {
    const FLOODERS: usize = 6;
    const STREAM_REQUESTS: usize = 256;
    let mut s = tiny();
    s.batching.max_batch_size = Some(8);
    let share = s.batching.stream_share;
    let server = serve(s).await;
    let channel = channel(&server).await;
    let flooding = tokio_util::sync::CancellationToken::new();
    let mut flooders = Vec::new();
    for f in 0..FLOODERS {
        let channel = channel.clone();
        let flooding = flooding.clone();
        flooders.push(tokio::spawn(async move {
            let mut calls = 0usize;
            while !flooding.is_cancelled() {
                let inputs = (0..64).map(|i| input(&format!("flood {f} {i}"))).collect();
                encode(&channel, encode_request("flood", inputs, pb::Pooling::Mean))
                    .await
                    .unwrap();
                calls += 1;
            }
            calls
        }));
    }
    // The flood is on when the stream starts.
    let started = tokio::time::Instant::now();
    while stats(&channel).await.inputs_computed < 1_000 {
        assert!(started.elapsed() < PATIENCE, "the flood runs");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = stats(&channel).await;
    let requests: Vec<pb::EncodeRequest> = (0..STREAM_REQUESTS)
        .map(|i| encode_request(i.to_string(), vec![input("bulk text")], pb::Pooling::Mean))
        .collect();
    let responses = EncoderClient::new(channel.clone())
        .encode_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap())
        .collect::<Vec<_>>();
    let responses = tokio::time::timeout(PATIENCE, responses)
        .await
        .expect("the stream finishes during the flood");
    let after = stats(&channel).await;
    flooding.cancel();
    let mut unary_calls = 0;
    for flooder in flooders {
        unary_calls += flooder.await.unwrap();
    }
    assert_eq!(responses.len(), STREAM_REQUESTS);
    assert!(responses.iter().all(|r| r.error.is_none()));
    // Streams anchor at least their share of the batches while both wait.
    let batches = after.batches - before.batches;
    assert!(
        STREAM_REQUESTS as f64 >= share * batches as f64,
        "{STREAM_REQUESTS} stream inputs in {batches} batches"
    );
    let unary_inputs = after.inputs_computed - before.inputs_computed - STREAM_REQUESTS as u64;
    assert!(
        unary_inputs > 0 && unary_calls > FLOODERS,
        "unary calls were served too"
    );
    println!(
        "stream of {STREAM_REQUESTS} finished in {batches} batches alongside {unary_inputs} unary inputs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_its_max_age_is_asked_to_go_away_and_closed_after_the_grace() {
    const AGE: Duration = Duration::from_millis(300);
    const GRACE: Duration = Duration::from_millis(300);
    let mut s = tiny();
    s.server.max_connection_age_ms = AGE.as_millis() as u64;
    s.server.max_connection_age_grace_ms = GRACE.as_millis() as u64;
    let server = serve(s).await;
    let channel = channel(&server).await;
    // A stream that outlives the age and the grace is cut with its connection...
    let (tx, rx) = mpsc::channel(1);
    tx.send(encode_request("0", vec![input("x")], pb::Pooling::Mean))
        .await
        .unwrap();
    let mut open = EncoderClient::new(channel.clone())
        .encode_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(open.message().await.unwrap().unwrap().id, "0");
    let cut = tokio::time::timeout(PATIENCE, open.message())
        .await
        .expect("the server closes the aged connection");
    assert!(cut.is_err(), "{cut:?}");
    // ...and the client reconnects for its next call. A call made while the channel still holds
    // the closed connection fails as Cancelled ("connection was not ready") and is made again.
    let again = tokio::time::timeout(PATIENCE, async {
        loop {
            let call = encode(
                &channel,
                encode_request("1", vec![input("y")], pb::Pooling::Mean),
            )
            .await;
            match call {
                Err(status) if status.code() == tonic::Code::Cancelled => continue,
                result => break result,
            }
        }
    })
    .await
    .expect("the client reconnects");
    assert!(again.is_ok(), "{again:?}");
    drop(tx);
}

/// Opens a raw TCP connection that speaks HTTP/2's preface and then never reads or answers
/// anything, as a peer that vanished would; true when the server closed it within `within`.
async fn closed_by_server(server: &bertd::server::ServerHandle, within: Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    socket
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
    socket
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    // Never answer: read (and drop) whatever comes until the server closes, or time runs out.
    let mut buffer = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_answering_pings_is_disconnected() {
    const WATCH: Duration = Duration::from_secs(2);
    let mut s = tiny();
    s.server.http2_keepalive_interval_ms = 200;
    s.server.http2_keepalive_timeout_ms = 200;
    let with_keepalive = serve(s).await;
    assert!(
        closed_by_server(&with_keepalive, WATCH).await,
        "an unanswered PING closes the connection"
    );
    let mut s = tiny();
    s.server.http2_keepalive_interval_ms = 0;
    let without = serve(s).await;
    assert!(
        !closed_by_server(&without, WATCH).await,
        "without keepalive the same peer stays connected"
    );
}
