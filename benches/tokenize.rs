//! Tokenizing for the model, per input on one thread: bertd's path (`BertTokenizer::encode`, the
//! fast WordPiece ids of `src/tokenize/wordpiece.rs`, framed by `src/tokenize/frame.rs`) against
//! HuggingFace's own (`encode_fast` with special tokens and the same truncation), in alternating
//! rounds over a corpus file, after checking that both give the same ids for every input. Single
//! texts first (each line), then pairs (each line with the next, as a cross-encoder's query and
//! passage would come). Run with `make bench-tokenize`.
//!
//! Options: `--corpus FILE` (required: one text a line; `bench/corpus.py` writes a realistic
//! one), `--rounds N` (default 8).
use std::time::Instant;

use bertd::config::default_model_dir;
use bertd::model::ModelSpec;
use bertd::tokenize::{BertTokenizer, TextInput};
use tokenizers::utils::truncation::{TruncationParams, TruncationStrategy};
use tokenizers::{EncodeInput, Tokenizer};

mod common;
use common::arg;

fn main() {
    let corpus: String = arg("--corpus").expect("--corpus FILE (bench/corpus.py writes one)");
    let rounds: usize = arg("--rounds").unwrap_or(8);
    let text = std::fs::read_to_string(&corpus).unwrap_or_else(|e| panic!("{corpus}: {e}"));
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
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
    println!("{} lines of {corpus}", lines.len());
    let singles: Vec<TextInput> = lines.iter().copied().map(TextInput::single).collect();
    let pairs: Vec<TextInput> = lines
        .windows(2)
        .map(|w| TextInput::pair(w[0], w[1]))
        .collect();
    for (what, inputs) in [("single texts", singles), ("pairs", pairs)] {
        compare(what, &inputs, &ours, &theirs, spec.max_length, rounds);
    }
}

/// Times bertd's path and HuggingFace's on `inputs` in `rounds` alternating rounds, after
/// checking that both give the same ids for each, and prints µs an input.
fn compare(
    what: &str,
    inputs: &[TextInput],
    ours: &BertTokenizer,
    theirs: &Tokenizer,
    max_length: usize,
    rounds: usize,
) {
    let hf = |t: &TextInput| -> Vec<i64> {
        let input: EncodeInput = match &t.text_pair {
            None => t.text.as_str().into(),
            Some(pair) => (t.text.as_str(), pair.as_str()).into(),
        };
        let encoding = theirs.encode_fast(input, true).unwrap();
        encoding.get_ids().iter().map(|&i| i64::from(i)).collect()
    };
    let bertd = |t: &TextInput| ours.encode(t, true).unwrap().ids;
    let mut tokens = 0usize;
    for t in inputs {
        let ids = bertd(t);
        assert_eq!(ids, hf(t), "{t:?}");
        tokens += ids.len();
    }
    println!(
        "{what}: {} inputs, {:.1} tokens an input (special tokens included, at most {max_length})",
        inputs.len(),
        tokens as f64 / inputs.len() as f64,
    );
    let time = |f: &dyn Fn(&TextInput) -> Vec<i64>| {
        let start = Instant::now();
        let mut sink = 0usize;
        for t in inputs {
            sink += f(t).len();
        }
        assert_eq!(sink, tokens);
        start.elapsed().as_secs_f64() * 1e6 / inputs.len() as f64
    };
    let (mut ours_us, mut theirs_us) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        theirs_us.push(time(&hf));
        ours_us.push(time(&bertd));
    }
    let wins = ours_us
        .iter()
        .zip(&theirs_us)
        .filter(|(o, t)| o < t)
        .count();
    for (name, mut us) in [("HuggingFace encode_fast", theirs_us), ("bertd", ours_us)] {
        us.sort_by(f64::total_cmp);
        println!(
            "  {name:<24} µs an input: least {:.1}, median {:.1} ({rounds} rounds)",
            us[0],
            us[us.len() / 2]
        );
    }
    println!("  bertd faster in {wins} of {rounds} rounds");
}
