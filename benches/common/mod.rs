//! What the benchmarks share: the default model's engine, a deterministic corpus, arguments.
#![allow(dead_code)]
use std::sync::Arc;

use bertd::config::default_model_dir;
use bertd::engine::{DenseKernel, DeviceSpec, EmbedOptions, Engine, Task};
use bertd::model::{Model, ModelSpec};
use bertd::tokenize::BertTokenizer;
use std::time::{Duration, Instant};

use bertd::api::proto::bert::v1 as pb;
use bertd::api::proto::bert::v1::encoder_client::EncoderClient;
use tch::{Device, Kind};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// all-MiniLM-L6-v2 on CPU in fp32, its tokenizer, and the embedding task of its defaults.
pub fn default_engine() -> (Arc<ModelSpec>, BertTokenizer, Engine, Task) {
    let spec =
        Arc::new(ModelSpec::load(&default_model_dir()).expect("the default model (make setup)"));
    let tokenizer = BertTokenizer::load(&spec).unwrap();
    let kernel = DenseKernel::Auto.resolve(DeviceSpec(Device::Cpu)).unwrap();
    let engine = Engine::new(Model::load(spec.clone(), Device::Cpu, Kind::Float, kernel).unwrap());
    let task = Task::Embed(EmbedOptions {
        pooling: spec.default_pooling,
        normalize: spec.default_normalize,
        layer: spec.num_layers(),
        dimensions: None,
    });
    (spec, tokenizer, engine, task)
}

#[path = "../../tests/common/sentences.rs"]
mod sentences;

const WORDS: &[&str] = &[
    "the",
    "model",
    "reads",
    "every",
    "token",
    "of",
    "a",
    "sentence",
    "and",
    "writes",
    "one",
    "vector",
    "for",
    "search",
    "clustering",
    "retrieval",
    "server",
    "batch",
    "queue",
    "worker",
    "latency",
    "throughput",
    "embedding",
    "classifier",
    "label",
    "score",
    "request",
    "stream",
];

/// Deterministic sentences of 4 to 64 words.
pub fn corpus(n: usize) -> Vec<String> {
    sentences::sentences(n, 4..=64, WORDS)
}

/// The value after `flag` on the command line, parsed.
pub fn arg<T: std::str::FromStr>(flag: &str) -> Option<T> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

/// The short text whose latency the benchmarks measure.
pub const LATENCY_TEXT: &str = "A man is eating food.";

/// Streams `texts`, `per_request` a message, through one EncodeStream; inputs/s.
pub async fn stream_rate(channel: Channel, texts: &[String], per_request: usize) -> f64 {
    let requests: Vec<pb::EncodeRequest> = texts
        .chunks(per_request)
        .enumerate()
        .map(|(i, chunk)| pb::EncodeRequest {
            id: i.to_string(),
            inputs: chunk
                .iter()
                .map(|t| pb::TextInput {
                    text: t.clone(),
                    text_pair: None,
                })
                .collect(),
            options: None,
        })
        .collect();
    let start = Instant::now();
    let mut responses = EncoderClient::new(channel)
        .encode_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut results = 0;
    while let Some(response) = responses.next().await {
        results += response.unwrap().results.len();
    }
    assert_eq!(results, texts.len());
    texts.len() as f64 / start.elapsed().as_secs_f64()
}

/// p50 and p99 of `calls` unary calls of the short text, one at a time, after a warm-up.
pub async fn latency(channel: Channel, calls: usize) -> (Duration, Duration) {
    let mut client = EncoderClient::new(channel);
    let request = || pb::EncodeRequest {
        id: "latency".into(),
        inputs: vec![pb::TextInput {
            text: LATENCY_TEXT.into(),
            text_pair: None,
        }],
        options: None,
    };
    for _ in 0..10 {
        client.encode(request()).await.unwrap();
    }
    let mut times: Vec<Duration> = Vec::with_capacity(calls);
    for _ in 0..calls {
        let start = Instant::now();
        client.encode(request()).await.unwrap();
        times.push(start.elapsed());
    }
    times.sort();
    (times[calls / 2], times[calls * 99 / 100])
}
