//! Engine throughput on CPU for the default model (all-MiniLM-L6-v2): sentences per second at a
//! few batch sizes, on batches sorted by token count (what the scheduler builds) and, for
//! comparison, on batches in arrival order. Run with `make bench`; numbers go to BENCHMARKS.md.
//!
//! Options: `--seconds N`: at least this long per measurement, in whole passes (default 5), `--threads N` (default: libtorch's).
use std::time::{Duration, Instant};

use bertd::engine::{Engine, EngineInput, Task};
use bertd::tokenize::{TextInput, Tokenized};

mod common;
use common::{arg, corpus, default_engine};

/// Whole passes over `tokens` until `budget` has passed, so every length counts the same.
fn measure(
    engine: &Engine,
    tokens: &[Tokenized],
    task: &Task,
    batch: usize,
    budget: Duration,
) -> (f64, f64) {
    let start = Instant::now();
    let (mut sentences, mut token_count) = (0usize, 0usize);
    while start.elapsed() < budget {
        for chunk in tokens.chunks(batch) {
            let inputs: Vec<EngineInput> = chunk
                .iter()
                .map(|t| EngineInput { tokens: t, task })
                .collect();
            engine.run(&inputs).expect("forward");
            sentences += chunk.len();
            token_count += chunk.iter().map(Tokenized::len).sum::<usize>();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    (sentences as f64 / secs, token_count as f64 / secs)
}

fn main() {
    let seconds: u64 = arg("--seconds").unwrap_or(5);
    if let Some(threads) = arg::<i32>("--threads") {
        tch::set_num_threads(threads);
    }
    let (spec, tokenizer, engine, task) = default_engine();
    let arrival: Vec<Tokenized> = corpus(1024)
        .iter()
        .map(|s| {
            tokenizer
                .encode(&TextInput::single(s.as_str()), true)
                .unwrap()
        })
        .collect();
    let mut sorted = arrival.clone();
    sorted.sort_by_key(Tokenized::len);
    let mean_tokens =
        arrival.iter().map(Tokenized::len).sum::<usize>() as f64 / arrival.len() as f64;

    println!(
        "model {} on cpu, {} libtorch threads, {} sentences of {mean_tokens:.1} tokens on average, {seconds} s each",
        spec.name,
        tch::get_num_threads(),
        arrival.len()
    );
    println!("| batch | order | sentences/s | tokens/s |");
    println!("|---|---|---|---|");
    measure(&engine, &sorted[..64], &task, 32, Duration::from_secs(1)); // warm-up
    let budget = Duration::from_secs(seconds);
    for batch in [1, 8, 32, 128] {
        let (s, t) = measure(&engine, &sorted, &task, batch, budget);
        println!("| {batch} | sorted by length | {s:.0} | {t:.0} |");
    }
    let (s, t) = measure(&engine, &arrival, &task, 32, budget);
    println!("| 32 | arrival order | {s:.0} | {t:.0} |");
}
