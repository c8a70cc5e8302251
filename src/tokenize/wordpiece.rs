//! BERT's tokenizer (`BertNormalizer`, `BertPreTokenizer`, WordPiece) for the model's ids only:
//! the same ids as HuggingFace's `encode_fast`. On realistic text the model's path, these ids
//! then truncated and framed by `frame`, is about 18 times faster (BENCHMARKS.md, `make
//! bench-tokenize`).
//!
//! Why: on a GPU the host tokenizes every input while the device computes, and HuggingFace's
//! pipeline spends most of its time on bookkeeping the model never reads: an alignment per
//! character through every normalizing step, a string per piece of every split, a `String` per
//! token. Here the text goes through the same steps once, character by character, into one
//! reused word buffer, and WordPiece looks its pieces up without building strings.
//!
//! Invariants (tests compare the ids with HuggingFace's on hand-picked hard text, with every
//! normalizer setting, and on random Unicode text; `make bench-tokenize` on the realistic corpus):
//! - The steps are HuggingFace's, in its order, with the same Unicode tables (the crates it
//!   uses: `unicode_categories`, `unicode-normalization-alignments`): clean the text (drop NUL,
//!   U+FFFD and control characters, whitespace to a space), spaces around CJK ideographs, NFD and
//!   non-spacing marks dropped (`strip_accents`, by default when lower-casing), lower-case; split
//!   at whitespace (dropped) and punctuation (kept, one character a word); WordPiece's greedy
//!   longest match, a word of more than `max_input_chars_per_word` characters or with an
//!   unmatched rest becoming the unknown token.
//! - Only for that exact configuration (`WordPieceIds::of` says `None` otherwise), and only for
//!   texts in which no added token's content occurs: HuggingFace splits those tokens out before
//!   normalizing, so such a text (and any tokenizer with normalized added tokens) is left to it.

use std::collections::HashMap;

use ahash::RandomState;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::{ModelWrapper, NormalizerWrapper, PreTokenizerWrapper, Tokenizer};
use unicode_categories::UnicodeCategories;

use super::precut::is_cjk_ideograph;
use unicode_normalization_alignments::UnicodeNormalization;

/// What an ASCII character does in the normalizer and pre-tokenizer (each known character
/// classified at load by the same predicates that classify the others).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ascii {
    /// Dropped by cleaning.
    Dropped,
    /// Ends a word.
    Space,
    /// A word of its own.
    Punctuation,
    /// Part of a word, as this (lower-cased where the normalizer lower-cases).
    Letter(u8),
}

/// BERT's normalizer settings, as `tokenizer.json` gives them.
#[derive(Debug, Clone, Copy)]
struct Normalizer {
    clean_text: bool,
    handle_chinese_chars: bool,
    strip_accents: bool,
    lowercase: bool,
}

/// The ids of BERT's tokenizer, computed without HuggingFace's bookkeeping.
pub struct WordPieceIds {
    normalizer: Normalizer,
    ascii: [Ascii; 128],
    /// Every vocabulary entry, looked up for a word's first piece.
    first: HashMap<Box<str>, u32, RandomState>,
    /// The entries that start with the continuing prefix, without it: a word's later pieces.
    later: HashMap<Box<str>, u32, RandomState>,
    /// The longest entry of each map, in bytes: no longer piece can match.
    first_longest: usize,
    later_longest: usize,
    unknown: u32,
    max_word_chars: usize,
    /// Added tokens' contents: a text holding one is left to HuggingFace.
    added: Vec<String>,
}

impl WordPieceIds {
    /// The fast path for `tokenizer`, when it is BERT's tokenizer and nothing in it needs what
    /// only HuggingFace's pipeline does.
    pub fn of(tokenizer: &Tokenizer) -> Option<Self> {
        let (bert, model) = bert_parts(tokenizer)?;
        let added_tokens = tokenizer.get_added_tokens_decoder();
        if added_tokens.values().any(|t| t.normalized) {
            return None;
        }
        let normalizer = Normalizer {
            clean_text: bert.clean_text,
            handle_chinese_chars: bert.handle_chinese_chars,
            strip_accents: bert.strip_accents.unwrap_or(bert.lowercase),
            lowercase: bert.lowercase,
        };
        let vocab = tokenizers::Model::get_vocab(model);
        let unknown = *vocab.get(&model.unk_token)?;
        let prefix = model.continuing_subword_prefix.as_str();
        let mut first = HashMap::with_capacity_and_hasher(vocab.len(), RandomState::new());
        let mut later = HashMap::with_hasher(RandomState::new());
        for (piece, &id) in &vocab {
            if let Some(rest) = piece.strip_prefix(prefix) {
                later.insert(rest.into(), id);
            }
            first.insert(piece.as_str().into(), id);
        }
        let longest = |map: &HashMap<Box<str>, u32, RandomState>| {
            map.keys().map(|k| k.len()).max().unwrap_or(0)
        };
        Some(WordPieceIds {
            normalizer,
            ascii: std::array::from_fn(|b| classify(b as u8 as char, normalizer)),
            first_longest: longest(&first),
            later_longest: longest(&later),
            first,
            later,
            unknown,
            max_word_chars: model.max_input_chars_per_word,
            added: added_tokens.into_values().map(|t| t.content).collect(),
        })
    }

    /// `text`'s ids, without special tokens, appended to `ids`; false (and `ids` untouched) when
    /// an added token occurs in it and HuggingFace must tokenize it.
    pub fn ids(&self, text: &str, ids: &mut Vec<u32>) -> bool {
        if self.added.iter().any(|a| text.contains(a.as_str())) {
            return false;
        }
        let mut words = Words {
            model: self,
            word: String::with_capacity(64),
            chars: 0,
            ids,
        };
        if text.is_ascii() {
            // No ASCII character decomposes or is a mark: NFD and accent stripping are identity.
            for &b in text.as_bytes() {
                match self.ascii[usize::from(b)] {
                    Ascii::Dropped => {}
                    Ascii::Space => words.end(),
                    Ascii::Punctuation => words.alone(char::from(b)),
                    Ascii::Letter(l) => words.push(char::from(l)),
                }
            }
        } else {
            let n = self.normalizer;
            let cleaned = text.chars().filter_map(|c| {
                if !n.clean_text {
                    Some(c)
                } else if c == '\0' || c == '\u{fffd}' || is_control(c) {
                    None
                } else if is_bert_whitespace(c) {
                    Some(' ')
                } else {
                    Some(c)
                }
            });
            // Spaces around CJK ideographs: as separate characters they split words alike.
            let spaced = cleaned.flat_map(|c| {
                let wide = n.handle_chinese_chars && is_cjk_ideograph(c);
                [wide.then_some(' '), Some(c), wide.then_some(' ')]
                    .into_iter()
                    .flatten()
            });
            if n.strip_accents {
                let stripped = spaced
                    .nfd()
                    .map(|(c, _)| c)
                    .filter(|c| !c.is_mark_nonspacing());
                self.split(stripped, &mut words);
            } else {
                self.split(spaced, &mut words);
            }
        }
        words.end();
        true
    }

    /// Lower-cases (where the normalizer does) and splits normalized characters into words.
    fn split(&self, chars: impl Iterator<Item = char>, words: &mut Words<'_>) {
        for c in chars {
            if self.normalizer.lowercase {
                for l in c.to_lowercase() {
                    words.take(l);
                }
            } else {
                words.take(c);
            }
        }
    }

    /// WordPiece on one word: its pieces' ids, or the unknown token.
    fn word(&self, word: &str, chars: usize, ids: &mut Vec<u32>) {
        if chars > self.max_word_chars {
            ids.push(self.unknown);
            return;
        }
        let before = ids.len();
        let mut start = 0;
        while start < word.len() {
            let (map, longest) = if start == 0 {
                (&self.first, self.first_longest)
            } else {
                (&self.later, self.later_longest)
            };
            let mut end = floor_char_boundary(word, (start + longest).min(word.len()));
            let found = loop {
                if end <= start {
                    break None;
                }
                if let Some(&id) = map.get(&word[start..end]) {
                    break Some(id);
                }
                end = floor_char_boundary(word, end - 1);
            };
            match found {
                Some(id) => {
                    ids.push(id);
                    start = end;
                }
                None => {
                    ids.truncate(before);
                    ids.push(self.unknown);
                    return;
                }
            }
        }
    }
}

/// The word being built, and the ids of the words done.
struct Words<'a> {
    model: &'a WordPieceIds,
    word: String,
    chars: usize,
    ids: &'a mut Vec<u32>,
}

impl Words<'_> {
    /// One normalized character, through the pre-tokenizer.
    fn take(&mut self, c: char) {
        if c.is_whitespace() {
            self.end();
        } else if is_bert_punctuation(c) {
            self.alone(c);
        } else {
            self.push(c);
        }
    }

    fn push(&mut self, c: char) {
        self.word.push(c);
        self.chars += 1;
    }

    /// A punctuation character: a word of its own.
    fn alone(&mut self, c: char) {
        self.end();
        self.push(c);
        self.end();
    }

    fn end(&mut self) {
        if !self.word.is_empty() {
            self.model.word(&self.word, self.chars, self.ids);
            self.word.clear();
            self.chars = 0;
        }
    }
}

/// What the normalizer and pre-tokenizer do with the ASCII character `c`, by the predicates
/// that decide it for every character.
fn classify(c: char, n: Normalizer) -> Ascii {
    let c = if n.clean_text {
        if c == '\0' || is_control(c) {
            return Ascii::Dropped;
        }
        if is_bert_whitespace(c) { ' ' } else { c }
    } else {
        c
    };
    if c.is_whitespace() {
        Ascii::Space
    } else if is_bert_punctuation(c) {
        Ascii::Punctuation
    } else if n.lowercase {
        Ascii::Letter(c.to_ascii_lowercase() as u8)
    } else {
        Ascii::Letter(c as u8)
    }
}

/// The normalizer and model of `tokenizer` when it is BERT's own (`BertNormalizer`,
/// `BertPreTokenizer`, WordPiece): what both this module and `precut` are valid for.
pub(super) fn bert_parts(tokenizer: &Tokenizer) -> Option<(&BertNormalizer, &WordPiece)> {
    let Some(NormalizerWrapper::BertNormalizer(normalizer)) = tokenizer.get_normalizer() else {
        return None;
    };
    let Some(PreTokenizerWrapper::BertPreTokenizer(_)) = tokenizer.get_pre_tokenizer() else {
        return None;
    };
    let ModelWrapper::WordPiece(model) = tokenizer.get_model() else {
        return None;
    };
    Some((normalizer, model))
}

/// The largest char boundary of `s` at or below `at`.
fn floor_char_boundary(s: &str, mut at: usize) -> usize {
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

// The predicates of HuggingFace's `BertNormalizer` and `BertPreTokenizer`, on the same tables.

fn is_bert_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && c.is_other()
}

fn is_bert_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || c.is_punctuation()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// HuggingFace's tokenizer from `dir`, neither padding nor truncating (as `BertTokenizer`
    /// loads it: the default model's `tokenizer.json` pads to 128).
    fn load(dir: &std::path::Path) -> Tokenizer {
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).unwrap();
        tokenizer
    }

    fn tokenizer(model: &str) -> Tokenizer {
        load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/models")
                .join(model),
        )
    }

    fn default_tokenizer() -> Tokenizer {
        load(&crate::config::default_model_dir())
    }

    /// The default model's tokenizer and its fast path, loaded once for the random cases.
    static DEFAULT: std::sync::LazyLock<(Tokenizer, WordPieceIds)> =
        std::sync::LazyLock::new(|| {
            let tokenizer = default_tokenizer();
            let fast = WordPieceIds::of(&tokenizer).unwrap();
            (tokenizer, fast)
        });

    /// HuggingFace's ids for `text` (no special tokens), and ours.
    fn both(tokenizer: &Tokenizer, fast: &WordPieceIds, text: &str) -> (Vec<u32>, Vec<u32>) {
        let want = tokenizer
            .encode_fast(text, false)
            .unwrap()
            .get_ids()
            .to_vec();
        let mut got = Vec::new();
        assert!(fast.ids(text, &mut got), "{text:?} was left to HuggingFace");
        (got, want)
    }

    #[test]
    fn the_default_models_ids_are_huggingfaces_on_tricky_text() {
        let (tokenizer, fast) = &*DEFAULT;
        for text in [
            "",
            "   \t\n ",
            "Hello, world! It's 3:45pm.",
            "Café naïve résumé ÉLÉGANT Ångström",
            "中文字符 and 日本語のテキスト",
            "İstanbul ǅemal ΣΊΣΥΦΟΣ straße ﬁnance",
            "tabs\tand\u{0b}vertical\u{0c}feeds\r\n and \u{00a0}no-break \u{2003}em spaces",
            "controls \u{0}\u{1}\u{7f}\u{200b}\u{200d}\u{fffd}\u{feff} gone",
            "emoji 🤖🎉 and symbols ™ © ° ± § ¶ … — “quotes” «guillemets»",
            "a\u{301}\u{323}b\u{1d165}\u{1d16d}c combining marks",
            "unbelievably-antidisestablishmentarianism-supercalifragilistic",
            &"x".repeat(101),
            &"x".repeat(100),
            "ʕ•ᴥ•ʔ ¯\\_(ツ)_/¯ ಠ_ಠ",
            "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ ①②③",
            "ąčęėįšųūž Ελληνικά кириллица עברית العربية हिन्दी ไทย",
        ] {
            let (got, want) = both(tokenizer, fast, text);
            assert_eq!(got, want, "{text:?}");
        }
    }

    #[test]
    fn the_fixtures_tokenizers_give_huggingfaces_ids() {
        for model in ["bert_tiny", "classifier_single", "sentence_transformers"] {
            let tokenizer = tokenizer(model);
            let fast = WordPieceIds::of(&tokenizer).unwrap();
            for text in [
                "A man is eating food.",
                "Résumé of 中文 — unknownwordpieces!!",
            ] {
                let (got, want) = both(&tokenizer, &fast, text);
                assert_eq!(got, want, "{model}: {text:?}");
            }
        }
    }

    #[test]
    fn a_text_holding_an_added_token_is_left_to_huggingface() {
        let fast = WordPieceIds::of(&default_tokenizer()).unwrap();
        let mut ids = vec![7];
        assert!(!fast.ids("before [SEP] after", &mut ids));
        assert_eq!(ids, [7], "nothing appended");
        assert!(fast.ids("before [SE P] after", &mut ids));
    }

    #[test]
    fn another_normalizer_or_model_gets_no_fast_path() {
        let mut tokenizer = default_tokenizer();
        tokenizer.with_normalizer(Some(tokenizers::normalizers::Lowercase));
        assert!(WordPieceIds::of(&tokenizer).is_none());
        let mut tokenizer = default_tokenizer();
        tokenizer.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::Whitespace));
        assert!(WordPieceIds::of(&tokenizer).is_none());
    }

    #[test]
    fn settings_of_the_normalizer_are_followed() {
        for (clean, chinese, accents, lower) in [
            (false, false, Some(false), false),
            (true, true, Some(false), true),
            (true, false, Some(true), false),
            (false, true, None, false),
        ] {
            let mut tokenizer = default_tokenizer();
            tokenizer.with_normalizer(Some(tokenizers::normalizers::BertNormalizer::new(
                clean, chinese, accents, lower,
            )));
            let fast = WordPieceIds::of(&tokenizer).unwrap();
            let text = "Café 中文\u{7}x\tÉTÉ naïve\u{a0}Straße";
            let (got, want) = both(&tokenizer, &fast, text);
            assert_eq!(got, want, "{clean} {chinese} {accents:?} {lower}: {text:?}");
        }
    }

    /// Characters from every region where the steps differ: ASCII, Latin with accents and
    /// combining marks, CJK, whitespace and controls of all kinds, punctuation, emoji.
    fn tricky_char() -> impl Strategy<Value = char> {
        prop_oneof![
            4 => proptest::char::range(' ', '~'),
            2 => proptest::sample::select(vec![
                '\t', '\n', '\r', '\u{0}', '\u{b}', '\u{85}', '\u{a0}', '\u{200b}', '\u{2028}',
                '\u{3000}', '\u{fffd}', '\u{feff}', '\u{e000}', '\u{301}', '\u{323}', '\u{1d165}',
                '#', '[', ']', 'İ', 'ǅ', 'ß', 'ﬁ', 'Σ',
            ]),
            2 => proptest::char::range('\u{a0}', '\u{24f}'),
            1 => proptest::char::range('\u{300}', '\u{36f}'),
            1 => proptest::char::range('\u{370}', '\u{52f}'),
            1 => proptest::char::range('\u{2000}', '\u{2bff}'),
            1 => proptest::char::range('\u{3000}', '\u{9fff}'),
            1 => proptest::char::range('\u{ac00}', '\u{d7a3}'),
            1 => proptest::char::range('\u{f900}', '\u{ffff}'),
            1 => proptest::char::range('\u{1f300}', '\u{1faff}'),
            1 => proptest::char::range('\u{20000}', '\u{2fa1f}'),
            1 => any::<char>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 2000,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        #[test]
        fn random_unicode_text_gets_huggingfaces_ids(
            text in proptest::collection::vec(tricky_char(), 0..80)
                .prop_map(|cs| cs.into_iter().collect::<String>())
        ) {
            let (tokenizer, fast) = &*DEFAULT;
            let want = tokenizer.encode_fast(text.as_str(), false).unwrap().get_ids().to_vec();
            let mut got = Vec::new();
            if fast.ids(&text, &mut got) {
                prop_assert_eq!(got, want, "{:?}", text);
            }
        }
    }
}
