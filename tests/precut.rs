//! Cutting long texts before tokenizing, and skipping their offsets (through bertd's own WordPiece
//! ids, src/tokenize/wordpiece.rs), changes nothing the model sees: for generated texts of every
//! kind, pairs, with and without truncation, the model's path (pre-cut, ids only) gives exactly the
//! ids and truncation flag of tokenizing the whole text with offsets (the Tokenize call's path),
//! with the test models' tokenizer and the default model's.
mod common;

use std::sync::Arc;

use bertd::config::default_model_dir;
use bertd::model::ModelSpec;
use bertd::tokenize::{BertTokenizer, TextInput, TokenizeError};
use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const CASES: u32 = 1_500;

fn tokenizer(dir: &std::path::Path) -> BertTokenizer {
    BertTokenizer::load(&Arc::new(ModelSpec::load(dir).unwrap())).unwrap()
}

/// Pieces texts are made of: words, punctuation, numbers, whitespace of every kind, accents,
/// CJK, control characters, arbitrary characters, and special tokens written in the text (which
/// HuggingFace tokenizes instead of bertd's WordPiece ids).
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[a-zA-Z]{1,12}",
        2 => "[0-9]{1,6}",
        2 => "[.,;:!?()\"'-]{1,3}",
        3 => "[ \t\n\r\u{a0}\u{2003}\u{3000}]{1,4}",
        1 => "[éüñçøÅ]{1,5}",
        1 => "[\u{4e00}-\u{9fff}]{1,6}",
        1 => "[\u{0}-\u{1f}\u{7f}\u{200b}\u{feff}]{1,3}",
        1 => "\\PC{1,8}",
        1 => any::<char>().prop_map(String::from),
        1 => "[a-z]{101,150}",
        1 => prop::sample::select(vec!["[SEP]", "[CLS]", "[MASK]", "[PAD]"]).prop_map(String::from),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 0..600).prop_map(|p| p.concat())
}

fn same_as_whole(tokenizer: &BertTokenizer) {
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (text(), prop::option::weighted(0.2, text()), any::<bool>());
    runner
        .run(&strategy, |(text, pair, truncate)| {
            let input = TextInput {
                text,
                text_pair: pair,
            };
            let precut = tokenizer.encode(&input, truncate);
            let whole = tokenizer.encode_detailed(&input, truncate).map(|(t, _)| t);
            match (precut, whole) {
                (Ok(cut), Ok(whole)) => {
                    prop_assert_eq!(&cut.ids, &whole.ids);
                    prop_assert_eq!(&cut.type_ids, &whole.type_ids);
                    prop_assert_eq!(cut.truncated(), whole.truncated());
                }
                (
                    Err(TokenizeError::TooLong {
                        tokens, at_least, ..
                    }),
                    Err(TokenizeError::TooLong { tokens: exact, .. }),
                ) => {
                    if at_least {
                        prop_assert!(tokens <= exact, "{} > {}", tokens, exact);
                    } else {
                        prop_assert_eq!(tokens, exact);
                    }
                }
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                (a, b) => prop_assert!(false, "{:?} vs {:?}", a.map(|t| t.ids), b.map(|t| t.ids)),
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn precut_texts_tokenize_as_the_whole_with_the_test_models_tokenizer() {
    let tokenizer = tokenizer(&model_dir("bert_tiny"));
    assert!(tokenizer.precuts(), "a BERT tokenizer is pre-cut");
    same_as_whole(&tokenizer);
}

#[test]
fn precut_texts_tokenize_as_the_whole_with_the_default_models_tokenizer() {
    same_as_whole(&tokenizer(&default_model_dir()));
}
