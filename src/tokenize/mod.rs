//! Text to token ids with the model's own `tokenizer.json`, truncated to the model's maximum length
//! exactly as HuggingFace's fast tokenizers do (`truncation=True, max_length=...`), and reporting
//! whether anything was cut.
//!
//! Tokenizing costs time in proportion to the text, however little of it the model sees. For
//! BERT's own tokenizer (`BertNormalizer`, `BertPreTokenizer`, WordPiece) a long text that will be
//! truncated is first cut (`precut`) to a prefix that gives the same tokens up to the maximum
//! length, so 100,000 characters cost what a few thousand do.
//!
//! For the model's ids, BERT's own tokenizer runs through `wordpiece`: HuggingFace's steps
//! without its per-character bookkeeping. A text's or a pair's ids are then truncated here (a
//! pair longest first, as HuggingFace does: `longest_first`) and framed by the special tokens
//! that `frame` learned from the post-processor at load, without HuggingFace's `Encoding`s: about
//! an eighteenth of the time of HuggingFace's `encode_fast` for a text, a twentieth for a pair
//! (BENCHMARKS.md), which on a GPU decides how many inputs a host core can feed. HuggingFace
//! still loads the tokenizer, tokenizes what `wordpiece` leaves to it (other tokenizers, and the
//! texts holding an added token), and serves the Tokenize call with its offsets: the reference
//! that the model's path is tested against.
mod frame;
pub mod pool;
mod precut;
mod wordpiece;

use tokenizers::utils::truncation::{
    TruncationDirection, TruncationParams, TruncationStrategy, truncate_encodings,
};
use tokenizers::{Encoding, PostProcessor, Token, Tokenizer};

use crate::model::{ModelError, ModelSpec};
use frame::Frame;
use wordpiece::WordPieceIds;

/// One input: a text, or a pair of texts (segments A and B).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextInput {
    pub text: String,
    pub text_pair: Option<String>,
}

impl TextInput {
    pub fn single(text: impl Into<String>) -> Self {
        TextInput {
            text: text.into(),
            text_pair: None,
        }
    }

    pub fn pair(text: impl Into<String>, text_pair: impl Into<String>) -> Self {
        TextInput {
            text: text.into(),
            text_pair: Some(text_pair.into()),
        }
    }

    pub fn chars(&self) -> usize {
        self.text.chars().count() + self.text_pair.as_ref().map_or(0, |p| p.chars().count())
    }
}

/// What the model sees of one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    pub ids: Vec<i64>,
    pub type_ids: Vec<i64>,
    /// Tokens the input had before truncation, special tokens included (for a text that was
    /// pre-cut, the tokens of the part that was tokenized: more than the maximum length).
    pub original_length: usize,
}

impl Tokenized {
    fn of(encoding: &Encoding, original_length: usize) -> Self {
        let widen = |v: &[u32]| v.iter().map(|&i| i64::from(i)).collect();
        Tokenized {
            ids: widen(encoding.get_ids()),
            type_ids: widen(encoding.get_type_ids()),
            original_length,
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn truncated(&self) -> bool {
        self.original_length > self.ids.len()
    }
}

/// One token with where it came from, for the Tokenize call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub id: u32,
    pub token: String,
    /// Character (Unicode scalar) offsets into its own text, end exclusive.
    pub start: usize,
    pub end: usize,
    pub special: bool,
    /// 0 for the first text, 1 for the pair.
    pub type_id: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenizeError {
    /// `tokens` is exact, or a lower bound when `at_least` (the text was not tokenized whole).
    #[error("{}{tokens} tokens exceed the maximum length of {max} tokens and truncation is off", if *at_least { "at least " } else { "" })]
    TooLong {
        tokens: usize,
        max: usize,
        at_least: bool,
    },
    #[error("this model has a single segment embedding and cannot take text pairs")]
    PairsUnsupported,
    #[error("tokenizer failed: {0}")]
    Tokenizer(String),
}

/// A HuggingFace tokenizer error, as this module reports it.
fn failed(e: tokenizers::Error) -> TokenizeError {
    TokenizeError::Tokenizer(e.to_string())
}

/// How many tokens of each text HuggingFace's longest-first truncation (tokenizers'
/// `truncate_encodings`) keeps of `first` and `second` tokens (0 for a single text) to fit
/// `room`: the shorter text whole when the longer can take the rest, else half of `room` each,
/// the odd token to the longer (to the second, when they are as long).
fn longest_first(first: usize, second: usize, room: usize) -> (usize, usize) {
    if first + second <= room {
        return (first, second);
    }
    let shorter = first.min(second);
    let (shorter, longer) = if 2 * shorter <= room {
        (shorter, room - shorter)
    } else {
        (room / 2, room / 2 + room % 2)
    };
    if first > second {
        (longer, shorter)
    } else {
        (shorter, longer)
    }
}

/// An encoding of bare ids, for HuggingFace's truncation and post-processing, which read only
/// its ids (and type ids).
fn ids_encoding(ids: impl IntoIterator<Item = u32>) -> Encoding {
    let tokens = ids
        .into_iter()
        .map(|id| Token::new(id, String::new(), (0, 0)));
    Encoding::from_tokens(tokens.collect(), 0)
}

/// Texts refused for their length are counted exactly up to this many times the maximum.
const EXACT_COUNT_UP_TO: usize = 4;

/// What an encoding is for, which decides how much of it is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// The model's ids only: no offsets (`wordpiece`, or else HuggingFace's `encode_fast`),
    /// and long texts pre-cut.
    Model,
    /// Showing the tokens: character offsets, and every text tokenized whole.
    Display,
}

pub struct BertTokenizer {
    inner: Tokenizer,
    max_length: usize,
    supports_pairs: bool,
    /// Whether long texts may be cut before tokenizing (BERT's own normalizer, pre-tokenizer
    /// and model, whose tokens `precut` knows how to bound).
    precut: bool,
    /// BERT's tokenizer for the model's ids, HuggingFace's without its bookkeeping (`wordpiece`).
    fast: Option<WordPieceIds>,
    /// The special tokens around a single text and around a pair, where `fast` is there and
    /// the post-processor adds a frame (`frame`).
    frame: Option<Frame>,
    pair_frame: Option<Frame>,
}

impl BertTokenizer {
    pub fn load(spec: &ModelSpec) -> Result<Self, ModelError> {
        let file = spec.dir.join("tokenizer.json");
        if !file.exists() {
            return Err(ModelError::io(
                &file,
                std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer.json not found"),
            ));
        }
        let invalid = |reason: String| ModelError::Invalid {
            file: file.clone(),
            reason,
        };
        let mut inner = Tokenizer::from_file(&file).map_err(|e| invalid(e.to_string()))?;
        // Truncation is done here per input (to report it); padding once per batch by the engine.
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| invalid(e.to_string()))?;
        let vocab = inner.get_vocab_size(true) as i64;
        if vocab > spec.config.vocab_size {
            return Err(invalid(format!(
                "the tokenizer's vocabulary ({vocab}) is larger than the model's vocab_size ({})",
                spec.config.vocab_size
            )));
        }
        let added = inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(true));
        if spec.max_length <= added {
            return Err(invalid(format!(
                "maximum length {} leaves no room beside {added} special tokens",
                spec.max_length
            )));
        }
        let precut = wordpiece::bert_parts(&inner).is_some();
        let fast = WordPieceIds::of(&inner);
        Ok(BertTokenizer {
            frame: fast.as_ref().and_then(|_| Frame::of(&inner, false)),
            pair_frame: fast.as_ref().and_then(|_| Frame::of(&inner, true)),
            fast,
            inner,
            max_length: spec.max_length,
            supports_pairs: spec.config.type_vocab_size >= 2,
            precut,
        })
    }

    /// Whether long texts are cut before tokenizing.
    pub fn precuts(&self) -> bool {
        self.precut
    }

    /// Tokens an input gives at least, special tokens included and within the maximum length,
    /// found without tokenizing it: a lower bound for predicting response sizes. Only the
    /// special tokens for a tokenizer whose tokens `precut` cannot bound.
    pub fn min_tokens(&self, text: &str, pair: Option<&str>) -> usize {
        let added = self
            .inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(pair.is_some()));
        if !self.precut {
            return added.min(self.max_length);
        }
        let cap = self.max_length;
        let words = precut::tokens_at_least(text, cap)
            + pair.map_or(0, |p| precut::tokens_at_least(p, cap));
        (words + added).min(self.max_length)
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// What the model sees of `input`: truncated (or refused, when `truncate` is false) to the
    /// maximum length. A long text is pre-cut first where the tokenizer allows it.
    pub fn encode(&self, input: &TextInput, truncate: bool) -> Result<Tokenized, TokenizeError> {
        let frame = match input.text_pair {
            None => &self.frame,
            Some(_) => &self.pair_frame,
        };
        let (Some(fast), Some(frame)) = (&self.fast, frame) else {
            let (encoding, original_length) = self.encode_raw(input, truncate, Purpose::Model)?;
            return Ok(Tokenized::of(&encoding, original_length));
        };
        let model_ids = |text: &str| self.model_ids(fast, text);
        let (mut first, mut second) =
            self.texts(input, truncate, Purpose::Model, model_ids, Vec::len)?;
        let second_len = second.as_ref().map_or(0, Vec::len);
        let original_length = first.len() + second_len + frame.added();
        if original_length > self.max_length {
            if !truncate {
                return Err(TokenizeError::TooLong {
                    tokens: original_length,
                    max: self.max_length,
                    at_least: false,
                });
            }
            let room = self.max_length - frame.added();
            let (keep_first, keep_second) = longest_first(first.len(), second_len, room);
            first.truncate(keep_first);
            second.iter_mut().for_each(|s| s.truncate(keep_second));
        }
        let (ids, type_ids) = match &second {
            None => frame.apply(&[&first]),
            Some(second) => frame.apply(&[&first, second]),
        };
        Ok(Tokenized {
            ids,
            type_ids,
            original_length,
        })
    }

    /// `text`'s ids without special tokens: bertd's own (`wordpiece`), or HuggingFace's for a
    /// text that holds an added token.
    fn model_ids(&self, fast: &WordPieceIds, text: &str) -> Result<Vec<u32>, TokenizeError> {
        let mut ids = Vec::new();
        if fast.ids(text, &mut ids) {
            return Ok(ids);
        }
        let encoding = self.inner.encode_fast(text, false).map_err(failed)?;
        Ok(encoding.get_ids().to_vec())
    }

    /// `input`'s texts through `encode` (one result a text; `len` counts its tokens), each cut
    /// first where truncation keeps only tokens of the cut (`cut`). Refuses a pair the model
    /// cannot take, and without truncation a text so long that it was cut.
    fn texts<'a, T>(
        &self,
        input: &'a TextInput,
        truncate: bool,
        purpose: Purpose,
        encode: impl Fn(&str) -> Result<T, TokenizeError>,
        len: impl Fn(&T) -> usize,
    ) -> Result<(T, Option<T>), TokenizeError> {
        if input.text_pair.is_some() && !self.supports_pairs {
            return Err(TokenizeError::PairsUnsupported);
        }
        // Without truncation the caller is told the exact count, unless the text is far over
        // the limit: then a lower bound is enough, and the text is not tokenized at all.
        let cut = |text: &'a str| self.cut(text, truncate, purpose);
        let (mut first_cut, mut pair_cut) =
            (cut(&input.text), input.text_pair.as_deref().and_then(cut));
        if !truncate && (first_cut.is_some() || pair_cut.is_some()) {
            return Err(self.too_long_uncounted());
        }
        // Truncating a pair keeps more of its longer text: both texts cut, which is the longer
        // is unknown, so neither is.
        if first_cut.is_some() && pair_cut.is_some() {
            (first_cut, pair_cut) = (None, None);
        }
        let mut first = encode(first_cut.unwrap_or(&input.text))?;
        let Some(pair) = &input.text_pair else {
            return Ok((first, None));
        };
        let mut second = encode(pair_cut.unwrap_or(pair))?;
        // One text of a pair cut: it must still be the longer, or it is tokenized whole.
        if first_cut.is_some() && len(&first) <= len(&second) {
            first = encode(&input.text)?;
        }
        if pair_cut.is_some() && len(&second) <= len(&first) {
            second = encode(pair)?;
        }
        Ok((first, Some(second)))
    }

    /// Tokens kept of a text: the maximum length, or without truncation enough to count a text's
    /// tokens exactly up to EXACT_COUNT_UP_TO times it (a text far over it is refused uncounted).
    fn keep(&self, truncate: bool) -> usize {
        if truncate {
            self.max_length
        } else {
            EXACT_COUNT_UP_TO * self.max_length
        }
    }

    /// The prefix of `text` that gives the same tokens up to `keep`, when it is shorter than the
    /// text and this tokenizer's texts may be cut for this purpose (`precut`).
    fn cut<'a>(&self, text: &'a str, truncate: bool, purpose: Purpose) -> Option<&'a str> {
        if self.precut && purpose == Purpose::Model {
            precut::safe_prefix(text, self.keep(truncate))
        } else {
            None
        }
    }

    /// Refusing, without truncation, a text that was cut, so not counted.
    fn too_long_uncounted(&self) -> TokenizeError {
        TokenizeError::TooLong {
            tokens: self.keep(false),
            max: self.max_length,
            at_least: true,
        }
    }

    /// Tokens with their text, offsets and flags, for showing what the model will see.
    pub fn encode_detailed(
        &self,
        input: &TextInput,
        truncate: bool,
    ) -> Result<(Tokenized, Vec<TokenInfo>), TokenizeError> {
        let (encoding, original_length) = self.encode_raw(input, truncate, Purpose::Display)?;
        let tokens = (0..encoding.len())
            .map(|i| TokenInfo {
                id: encoding.get_ids()[i],
                token: encoding.get_tokens()[i].clone(),
                start: encoding.get_offsets()[i].0,
                end: encoding.get_offsets()[i].1,
                special: encoding.get_special_tokens_mask()[i] == 1,
                type_id: encoding.get_type_ids()[i],
            })
            .collect();
        Ok((Tokenized::of(&encoding, original_length), tokens))
    }

    /// Encodes without special tokens, measures, truncates (longest first, as HuggingFace does for
    /// pairs) to leave room for the special tokens, then adds them.
    fn encode_raw(
        &self,
        input: &TextInput,
        truncate: bool,
        purpose: Purpose,
    ) -> Result<(Encoding, usize), TokenizeError> {
        let encode = |text: &str| match (purpose, &self.fast) {
            (Purpose::Model, Some(fast)) => self.model_ids(fast, text).map(ids_encoding),
            (Purpose::Model, None) => self.inner.encode_fast(text, false).map_err(failed),
            (Purpose::Display, _) => self.inner.encode_char_offsets(text, false).map_err(failed),
        };
        let (first, second) = self.texts(input, truncate, purpose, encode, Encoding::len)?;
        let added = self
            .inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(second.is_some()));
        let original_length = first.len() + second.as_ref().map_or(0, Encoding::len) + added;
        let (first, second) = if original_length > self.max_length {
            if !truncate {
                return Err(TokenizeError::TooLong {
                    tokens: original_length,
                    max: self.max_length,
                    at_least: false,
                });
            }
            let params = TruncationParams {
                direction: TruncationDirection::Right,
                max_length: self.max_length - added,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            };
            let (mut first, mut second) =
                truncate_encodings(first, second, &params).map_err(failed)?;
            // HuggingFace keeps what it cut as overflowing parts, and post-processing a pair
            // frames every part of one text with every part of the other: two texts of 49,000
            // characters made about 3,000 encodings, half a second and a gigabyte in the server
            // (BENCHMARKS.md). Nothing here reads them.
            for encoding in std::iter::once(&mut first).chain(second.as_mut()) {
                drop(encoding.take_overflowing());
            }
            (first, second)
        } else {
            (first, second)
        };
        let encoding = self
            .inner
            .post_process(first, second, true)
            .map_err(failed)?;
        Ok((encoding, original_length))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lengths up to this (texts and room) are compared with HuggingFace's truncation, every
    /// combination.
    const MOST_TOKENS: usize = 12;

    #[test]
    fn longest_first_keeps_what_huggingfaces_truncation_keeps() {
        let encoding = |n: usize| ids_encoding(0..n as u32);
        for room in 1..=MOST_TOKENS {
            let params = TruncationParams {
                direction: TruncationDirection::Right,
                max_length: room,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            };
            for first in 0..=MOST_TOKENS {
                let (single, _) = truncate_encodings(encoding(first), None, &params).unwrap();
                assert_eq!(
                    longest_first(first, 0, room),
                    (single.len(), 0),
                    "{first} in {room}"
                );
                for second in 0..=MOST_TOKENS {
                    let (a, b) =
                        truncate_encodings(encoding(first), Some(encoding(second)), &params)
                            .unwrap();
                    let kept = (a.len(), b.unwrap().len());
                    assert_eq!(
                        longest_first(first, second, room),
                        kept,
                        "{first}+{second} in {room}"
                    );
                }
            }
        }
    }

    /// Words of each text of the long pair, many times the maximum length.
    const LONG_TEXT_WORDS: usize = 5_000;

    /// The Tokenize call's path truncates a long pair without HuggingFace's overflowing parts,
    /// whose every combination post-processing would otherwise frame (half a second and a
    /// gigabyte for a pair of two long texts).
    #[test]
    fn a_long_pair_is_shown_truncated_without_its_cut_parts() {
        let spec = ModelSpec::load(&crate::config::default_model_dir()).unwrap();
        let tokenizer = BertTokenizer::load(&spec).unwrap();
        let text = |word: &str| vec![word; LONG_TEXT_WORDS].join(" ");
        let input = TextInput::pair(text("query"), text("passage"));
        let (encoding, original_length) = tokenizer
            .encode_raw(&input, true, Purpose::Display)
            .unwrap();
        assert_eq!(encoding.len(), tokenizer.max_length());
        assert!(original_length > 2 * LONG_TEXT_WORDS);
        assert!(encoding.get_overflowing().is_empty());
    }

    /// The default model's texts and pairs take the framed path (`tests/precut.rs` checks it
    /// against HuggingFace's on generated texts, truncated and not).
    #[test]
    fn the_default_models_texts_and_pairs_are_framed_here() {
        let spec = ModelSpec::load(&crate::config::default_model_dir()).unwrap();
        let tokenizer = BertTokenizer::load(&spec).unwrap();
        assert!(tokenizer.fast.is_some(), "bertd's own WordPiece ids");
        assert!(tokenizer.frame.is_some() && tokenizer.pair_frame.is_some());
        for input in [
            TextInput::single("A man is eating food."),
            TextInput::pair("A man is eating food.", "Someone eats."),
        ] {
            let (whole, _) = tokenizer.encode_detailed(&input, true).unwrap();
            assert_eq!(tokenizer.encode(&input, true).unwrap(), whole, "{input:?}");
        }
    }
}
