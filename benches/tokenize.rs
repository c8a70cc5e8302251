//! Tokenizing for the model, per input on one thread: bertd's path (`BertTokenizer::encode`, the
//! fast WordPiece ids of `src/tokenize/wordpiece.rs`) against HuggingFace's own (`encode_fast`
//! with special tokens and the same truncation), in alternating rounds over a corpus file, after
//! checking that both give the same ids for every line. Run with `make bench-tokenize`.
//!
//! Options: `--corpus FILE` (required: one text a line; `bench/corpus.py` writes a realistic
//! one), `--rounds N` (default 8).
use std::time::Instant;

use bertd::config::default_model_dir;
use bertd::model::ModelSpec;
use bertd::tokenize::{BertTokenizer, TextInput};
use tokenizers::Tokenizer;
use tokenizers::utils::truncation::{TruncationParams, TruncationStrategy};

mod common;
use common::arg;

fn main() {
    let corpus: String = arg("--corpus").expect("--corpus FILE (bench/corpus.py writes one)");
    let rounds: usize = arg("--rounds").unwrap_or(8);
    let texts: Vec<TextInput> = std::fs::read_to_string(&corpus)
        .unwrap_or_else(|e| panic!("{corpus}: {e}"))
        .lines()
        .filter(|l| !l.is_empty())
        .map(TextInput::single)
        .collect();
    let spec = ModelSpec::load(&default_model_dir()).expect("the default model (make setup)");
    let ours = BertTokenizer::load(&spec).unwrap();
    let mut theirs = Tokenizer::from_file(spec.dir.join("tokenizer.json")).unwrap();
    theirs.with_padding(None);
    theirs
        .with_truncation(Some(TruncationParams {
            max_length: spec.max_length,
            strategy: TruncationStrategy::LongestFirst,
            ..Default::default()
        }))
        .unwrap();
    let hf = |t: &TextInput| -> Vec<i64> {
        let encoding = theirs.encode_fast(t.text.as_str(), true).unwrap();
        encoding.get_ids().iter().map(|&i| i64::from(i)).collect()
    };
    let bertd = |t: &TextInput| ours.encode(t, true).unwrap().ids;
    let mut tokens = 0usize;
    for t in &texts {
        let ids = bertd(t);
        assert_eq!(ids, hf(t), "{:?}", t.text);
        tokens += ids.len();
    }
    println!(
        "{} lines of {corpus}, {:.1} tokens a line (special tokens included, at most {})",
        texts.len(),
        tokens as f64 / texts.len() as f64,
        spec.max_length
    );
    let time = |f: &dyn Fn(&TextInput) -> Vec<i64>| {
        let start = Instant::now();
        let mut sink = 0usize;
        for t in &texts {
            sink += f(t).len();
        }
        assert_eq!(sink, tokens);
        start.elapsed().as_secs_f64() * 1e6 / texts.len() as f64
    };
    let (mut ours_us, mut theirs_us) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        theirs_us.push(time(&hf));
        ours_us.push(time(&bertd));
    }
    for (name, mut us) in [
        ("HuggingFace encode_fast", theirs_us.clone()),
        ("bertd", ours_us.clone()),
    ] {
        us.sort_by(f64::total_cmp);
        println!(
            "{name:<24} µs a line: least {:.1}, median {:.1} ({rounds} rounds)",
            us[0],
            us[us.len() / 2]
        );
    }
    let wins = ours_us
        .iter()
        .zip(&theirs_us)
        .filter(|(o, t)| o < t)
        .count();
    println!("bertd faster in {wins} of {rounds} rounds");
}
