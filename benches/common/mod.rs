//! What the benchmarks share: the default model's engine, a deterministic corpus, arguments.
#![allow(dead_code)]
use std::sync::Arc;

use bertd::config::default_model_dir;
use bertd::engine::{EmbedOptions, Engine, Task};
use bertd::model::{Model, ModelSpec};
use bertd::tokenize::BertTokenizer;
use tch::{Device, Kind};

/// all-MiniLM-L6-v2 on CPU in fp32, its tokenizer, and the embedding task of its defaults.
pub fn default_engine() -> (Arc<ModelSpec>, BertTokenizer, Engine, Task) {
    let spec =
        Arc::new(ModelSpec::load(&default_model_dir()).expect("the default model (make setup)"));
    let tokenizer = BertTokenizer::load(&spec).unwrap();
    let engine = Engine::new(Model::load(spec.clone(), Device::Cpu, Kind::Float).unwrap());
    let task = Task::Embed(EmbedOptions {
        pooling: spec.default_pooling,
        normalize: spec.default_normalize,
        layer: spec.num_layers(),
        dimensions: None,
    });
    (spec, tokenizer, engine, task)
}

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

/// Deterministic sentences of 4 to 64 words (a linear congruential generator, fixed seed).
pub fn corpus(n: usize) -> Vec<String> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    (0..n)
        .map(|_| {
            let words = 4 + next() % 61;
            (0..words)
                .map(|_| WORDS[next() % WORDS.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// The value after `flag` on the command line, parsed.
pub fn arg<T: std::str::FromStr>(flag: &str) -> Option<T> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}
