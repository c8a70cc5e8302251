//! What the benchmarks share: a deterministic corpus and argument parsing.
#![allow(dead_code)]

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
