//! Deterministic mixed-length sentences, for tests and benchmarks that need many distinct
//! inputs without reading a corpus file: a linear congruential generator with a fixed seed, so
//! every run gets the same lines.
use std::ops::RangeInclusive;

/// `n` sentences of words from `vocabulary`, each of a word count drawn from `words`.
pub fn sentences(n: usize, words: RangeInclusive<usize>, vocabulary: &[&str]) -> Vec<String> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize
    };
    let (least, span) = (*words.start(), words.end() - words.start() + 1);
    (0..n)
        .map(|_| {
            let count = least + next() % span;
            (0..count)
                .map(|_| vocabulary[next() % vocabulary.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}
