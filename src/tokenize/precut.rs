//! Cutting a long text, before tokenizing it, to a prefix that tokenizes to the same first tokens.
//!
//! Valid for BERT's tokenizer only (`BertNormalizer`, `BertPreTokenizer`, WordPiece), whose
//! steps are local to characters and words:
//! - the normalizer maps each character on its own (cleaning, lower-casing, accents) and puts
//!   spaces around CJK ideographs;
//! - the pre-tokenizer splits at whitespace (and punctuation), so the words of a prefix cut at
//!   whitespace are a prefix of the whole text's words;
//! - WordPiece turns every word into at least one token (`[UNK]` at worst).
//!
//! So a whitespace-separated run that holds an ASCII letter or digit, and each CJK ideograph,
//! gives at least one token, and nothing the normalizer could remove can make it give none.
//! Once `keep` of them have been seen, the text can be cut at the next whitespace: the prefix has
//! at least `keep` tokens, identical to the whole text's first ones. Runs of other scripts are
//! not counted (a lower bound stays a lower bound), so such texts are cut later or not at all.

/// The prefix of `text` that gives the same first `keep` tokens as the whole; `None` when the
/// text has no more than that to cut.
pub fn safe_prefix(text: &str, keep: usize) -> Option<&str> {
    match scan(text, keep) {
        (_, Some(at)) => Some(&text[..at]),
        (_, None) => None,
    }
}

/// Tokens `text` gives at least (without special tokens), counted up to `cap`.
pub fn tokens_at_least(text: &str, cap: usize) -> usize {
    scan(text, cap).0.min(cap)
}

/// Counts the runs sure to give a token, up to `keep`, and where the text can be cut after them.
fn scan(text: &str, keep: usize) -> (usize, Option<usize>) {
    let mut counted = 0usize;
    let mut run_counted = false;
    for (at, c) in text.char_indices() {
        if c.is_whitespace() {
            if counted >= keep {
                return (counted, Some(at));
            }
            run_counted = false;
        } else if is_cjk_ideograph(c) {
            counted += 1;
        } else if c.is_ascii_alphanumeric() && !run_counted {
            counted += 1;
            run_counted = true;
        }
    }
    (counted, None)
}

/// The ranges BERT's normalizer treats as CJK ideographs (each becomes a word of its own).
pub(super) fn is_cjk_ideograph(c: char) -> bool {
    matches!(
        c as u32,
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_text_is_not_cut() {
        assert_eq!(safe_prefix("one two three", 3), None);
        assert_eq!(safe_prefix("", 1), None);
    }

    #[test]
    fn a_long_text_is_cut_at_the_whitespace_after_enough_counted_runs() {
        assert_eq!(safe_prefix("one two three four", 2), Some("one two"));
        // Whitespace of any kind, repeated, is one separator.
        assert_eq!(safe_prefix("a\t\n b   c", 2), Some("a\t\n b"));
    }

    #[test]
    fn runs_that_may_give_no_token_are_not_counted() {
        // Punctuation-only and non-ASCII runs are not counted, so the cut comes later.
        assert_eq!(safe_prefix("... é a b", 2), None);
        assert_eq!(safe_prefix("... é a b c", 2), Some("... é a b"));
    }

    #[test]
    fn the_lower_bound_counts_runs_up_to_the_cap() {
        assert_eq!(tokens_at_least("one, two... three é", 10), 3);
        assert_eq!(tokens_at_least("a b c d e f", 4), 4);
        assert_eq!(tokens_at_least("", 4), 0);
    }

    #[test]
    fn each_cjk_ideograph_counts_as_a_token() {
        assert_eq!(safe_prefix("中文字 x", 3), Some("中文字"));
    }
}
