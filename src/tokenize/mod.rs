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
//! without its per-character bookkeeping. A single text's ids are then truncated here and framed
//! by the special tokens that `frame` learned from the post-processor at load, without
//! HuggingFace's `Encoding`s: about an eighteenth of the time of HuggingFace's `encode_fast`
//! (BENCHMARKS.md), which on a GPU decides how many inputs a host core can feed. HuggingFace
//! still loads the tokenizer, tokenizes what `wordpiece` leaves to it (other tokenizers, texts
//! holding an added token), truncates pairs and adds their special tokens, and serves the
//! Tokenize call with its offsets.
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

/// `text`'s ids through the fast path, as an encoding for HuggingFace's truncation and special
/// tokens (which read only its ids); `None` when the text is left to HuggingFace.
fn ids_only(fast: &WordPieceIds, text: &str) -> Option<Encoding> {
    let mut ids = Vec::new();
    if !fast.ids(text, &mut ids) {
        return None;
    }
    let tokens = ids
        .into_iter()
        .map(|id| Token::new(id, String::new(), (0, 0)));
    Some(Encoding::from_tokens(tokens.collect(), 0))
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
    /// The special tokens around a single text, where `fast` is there and the post-processor
    /// adds a frame (`frame`).
    frame: Option<Frame>,
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
            frame: fast.as_ref().and_then(|_| Frame::of(&inner)),
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
        if input.text_pair.is_none()
            && let Some(tokenized) = self.encode_framed(&input.text, truncate)?
        {
            return Ok(tokenized);
        }
        let (encoding, original_length) = self.encode_raw(input, truncate, Purpose::Model)?;
        Ok(Tokenized::of(&encoding, original_length))
    }

    /// A single text through the fast ids, truncated and framed here, as `encode_raw` would;
    /// None where the fast path or the frame does not apply (then `encode_raw` does it all).
    fn encode_framed(
        &self,
        text: &str,
        truncate: bool,
    ) -> Result<Option<Tokenized>, TokenizeError> {
        let (Some(fast), Some(frame)) = (&self.fast, &self.frame) else {
            return Ok(None);
        };
        let cut = self.cut(text, truncate, Purpose::Model);
        if cut.is_some() && !truncate {
            return Err(self.too_long_uncounted());
        }
        let mut ids = Vec::new();
        if !fast.ids(cut.unwrap_or(text), &mut ids) {
            return Ok(None);
        }
        let original_length = ids.len() + frame.added();
        if original_length > self.max_length {
            if !truncate {
                return Err(TokenizeError::TooLong {
                    tokens: original_length,
                    max: self.max_length,
                    at_least: false,
                });
            }
            ids.truncate(self.max_length - frame.added());
        }
        let (ids, type_ids) = frame.apply(&ids);
        Ok(Some(Tokenized {
            ids,
            type_ids,
            original_length,
        }))
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
    fn encode_raw<'a>(
        &self,
        input: &'a TextInput,
        truncate: bool,
        purpose: Purpose,
    ) -> Result<(Encoding, usize), TokenizeError> {
        let failed = |e: tokenizers::Error| TokenizeError::Tokenizer(e.to_string());
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
        let encode = |text: &str| {
            match purpose {
                Purpose::Model => match self.fast.as_ref().and_then(|f| ids_only(f, text)) {
                    Some(encoding) => Ok(encoding),
                    None => self.inner.encode_fast(text, false),
                },
                Purpose::Display => self.inner.encode_char_offsets(text, false),
            }
            .map_err(failed)
        };
        let mut first = encode(first_cut.unwrap_or(&input.text))?;
        let mut second = match &input.text_pair {
            Some(pair) => Some(encode(pair_cut.unwrap_or(pair))?),
            None => None,
        };
        // One text of a pair cut: it must still be the longer, or it is tokenized whole.
        if let (Some(pair), Some(second)) = (&input.text_pair, &mut second) {
            if first_cut.is_some() && first.len() <= second.len() {
                first = encode(&input.text)?;
            }
            if pair_cut.is_some() && second.len() <= first.len() {
                *second = encode(pair)?;
            }
        }
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
            truncate_encodings(first, second, &params).map_err(failed)?
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

    /// The default model's single texts take the framed path (`tests/precut.rs` checks it
    /// against HuggingFace's); a pair keeps HuggingFace's post-processing.
    #[test]
    fn the_default_models_single_texts_are_framed_here() {
        let spec = ModelSpec::load(&crate::config::default_model_dir()).unwrap();
        let tokenizer = BertTokenizer::load(&spec).unwrap();
        let framed = tokenizer
            .encode_framed("A man is eating food.", true)
            .unwrap()
            .expect("framed");
        let input = TextInput::single("A man is eating food.");
        let (whole, _) = tokenizer.encode_detailed(&input, true).unwrap();
        assert_eq!(framed, whole);
        assert_eq!(tokenizer.encode(&input, true).unwrap(), whole);
        let pair = TextInput::pair("A man is eating food.", "Someone eats.");
        let (whole, _) = tokenizer.encode_detailed(&pair, true).unwrap();
        assert_eq!(tokenizer.encode(&pair, true).unwrap(), whole);
    }
}
