//! The special tokens a tokenizer's post-processor puts around a single text (`[CLS] A [SEP]`
//! for BERT) and around a pair (`[CLS] A [SEP] B [SEP]`), learned once at load, so that the
//! model's path adds them to the texts' ids itself.
//!
//! HuggingFace truncates and adds special tokens on its `Encoding`s: for each text, two of them
//! with eight vectors apiece, and the tokens' strings. On the model's path that bookkeeping cost
//! about as much as computing the ids (`wordpiece`), so the path now takes the ids, truncates
//! them and frames them, and builds nothing else.
//!
//! A post-processor is only known by what it does, so a frame is learned by post-processing
//! stand-in ids: the tokens before, between and after the texts, and the type id each text's
//! tokens get. It is used only when the post-processor frames one, two and three stand-ins a
//! text the same way, keeps each text whole and in order, and adds as many tokens as it says it
//! adds. Any post-processor that does something else keeps HuggingFace's post-processing.
use std::ops::Range;

use tokenizers::{Encoding, PostProcessor, Tokenizer};

use super::ids_encoding;

/// Ids no vocabulary has, standing in for the texts' tokens while a frame is learned: the first
/// text's count down from here, the second's from `STAND_IN - STAND_IN_GAP`.
const STAND_IN: u32 = u32::MAX;
const STAND_IN_GAP: u32 = 16;
/// Stand-ins per text while learning: enough to show that a text's tokens stay whole.
const MOST_STAND_INS: u32 = 3;

/// What the post-processor adds around one text or a pair: (id, type id) before the first text,
/// between the texts and after the last, and the type id of each text's own tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// One more than `type_ids`: before, (between,) after.
    around: Vec<Vec<(u32, u32)>>,
    type_ids: Vec<u32>,
}

impl Frame {
    /// The frame `tokenizer`'s post-processor puts around a single text (`pair` false) or a
    /// pair, if it is one. None for a tokenizer that pads or truncates: post-processing would
    /// do that too.
    pub fn of(tokenizer: &Tokenizer, pair: bool) -> Option<Frame> {
        if tokenizer.get_padding().is_some() || tokenizer.get_truncation().is_some() {
            return None;
        }
        let frame = Self::around(tokenizer, 1, pair)?;
        let added = tokenizer
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(pair));
        let same =
            (2..=MOST_STAND_INS).all(|n| Self::around(tokenizer, n, pair).as_ref() == Some(&frame));
        (same && frame.added() == added).then_some(frame)
    }

    /// What the post-processor does around `n` stand-ins a text, when it keeps each text
    /// together and in order, with one type id, and adds no stand-in of its own.
    fn around(tokenizer: &Tokenizer, n: u32, pair: bool) -> Option<Frame> {
        let texts: Vec<Vec<u32>> = (0..1 + u32::from(pair))
            .map(|t| (0..n).map(|i| STAND_IN - t * STAND_IN_GAP - i).collect())
            .collect();
        let framed = post_processed(tokenizer, &texts)?;
        let (ids, types) = (framed.get_ids(), framed.get_type_ids());
        let pairs = |range: Range<usize>| -> Vec<(u32, u32)> {
            ids[range.clone()]
                .iter()
                .copied()
                .zip(types[range].iter().copied())
                .collect()
        };
        let (mut around, mut type_ids, mut from) = (Vec::new(), Vec::new(), 0);
        for text in &texts {
            let at = from + ids[from..].iter().position(|&id| id == text[0])?;
            let end = at + text.len();
            if ids.get(at..end)? != text.as_slice()
                || types[at..end].iter().any(|&t| t != types[at])
            {
                return None;
            }
            around.push(pairs(from..at));
            type_ids.push(types[at]);
            from = end;
        }
        around.push(pairs(from..ids.len()));
        let stand_in = |&(id, _): &(u32, u32)| id > STAND_IN - 2 * STAND_IN_GAP;
        if around.iter().flatten().any(stand_in) {
            return None;
        }
        Some(Frame { around, type_ids })
    }

    /// How many tokens the frame adds.
    pub fn added(&self) -> usize {
        self.around.iter().map(Vec::len).sum()
    }

    /// `texts`' ids (one text, or a pair: as many as the frame was learned for) in the frame,
    /// widened for the model: the ids and their type ids.
    pub fn apply(&self, texts: &[&[u32]]) -> (Vec<i64>, Vec<i64>) {
        debug_assert_eq!(
            texts.len(),
            self.type_ids.len(),
            "a frame for as many texts"
        );
        let len = texts.iter().map(|t| t.len()).sum::<usize>() + self.added();
        let (mut all, mut types) = (Vec::with_capacity(len), Vec::with_capacity(len));
        let mut push = |(id, type_id): (u32, u32)| {
            all.push(i64::from(id));
            types.push(i64::from(type_id));
        };
        for ((around, text), &type_id) in self.around.iter().zip(texts).zip(&self.type_ids) {
            around.iter().copied().for_each(&mut push);
            text.iter().for_each(|&id| push((id, type_id)));
        }
        self.around[self.type_ids.len()]
            .iter()
            .copied()
            .for_each(push);
        (all, types)
    }
}

/// HuggingFace's post-processing of `texts` (one, or a pair) as the texts' tokens.
fn post_processed(tokenizer: &Tokenizer, texts: &[Vec<u32>]) -> Option<Encoding> {
    let encoding = |ids: &Vec<u32>| ids_encoding(ids.iter().copied());
    tokenizer
        .post_process(encoding(&texts[0]), texts.get(1).map(encoding), true)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default model's tokenizer with the post-processor `json` (a `tokenizer.json`
    /// post_processor object, or its own for None), neither padding nor truncating (as
    /// `BertTokenizer` loads it: the default model's `tokenizer.json` pads to 128).
    fn default_tokenizer(json: Option<serde_json::Value>) -> Tokenizer {
        let mut tokenizer: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(crate::config::default_model_dir().join("tokenizer.json"))
                .unwrap(),
        )
        .unwrap();
        if let Some(json) = json {
            tokenizer["post_processor"] = json;
        }
        tokenizer["padding"] = serde_json::Value::Null;
        tokenizer["truncation"] = serde_json::Value::Null;
        tokenizer.to_string().parse().unwrap()
    }

    /// HuggingFace's own post-processing of `texts` (one or a pair): ids and type ids.
    fn huggingface(tokenizer: &Tokenizer, texts: &[&[u32]]) -> (Vec<i64>, Vec<i64>) {
        let texts: Vec<Vec<u32>> = texts.iter().map(|t| t.to_vec()).collect();
        let framed = post_processed(tokenizer, &texts).unwrap();
        let widen = |v: &[u32]| v.iter().map(|&i| i64::from(i)).collect();
        (widen(framed.get_ids()), widen(framed.get_type_ids()))
    }

    /// Ids of a few lengths, none of them 0.
    const TEXTS: [&[u32]; 4] = [&[], &[2023], &[2023, 2003, 1037], &[7; 40]];

    /// `frame` frames every one of TEXTS, and every pair of them for a pair's frame, as
    /// `tokenizer`'s post-processor does.
    fn frames_as_huggingface(tokenizer: &Tokenizer, frame: &Frame) {
        for first in TEXTS {
            if frame.type_ids.len() == 1 {
                assert_eq!(
                    frame.apply(&[first]),
                    huggingface(tokenizer, &[first]),
                    "{first:?}"
                );
                continue;
            }
            for second in TEXTS {
                let texts = [first, second];
                assert_eq!(
                    frame.apply(&texts),
                    huggingface(tokenizer, &texts),
                    "{texts:?}"
                );
            }
        }
    }

    #[test]
    fn berts_frames_are_cls_a_sep_and_cls_a_sep_b_sep() {
        let tokenizer = default_tokenizer(None);
        let (cls, sep) = (
            tokenizer.token_to_id("[CLS]").unwrap(),
            tokenizer.token_to_id("[SEP]").unwrap(),
        );
        let single = Frame::of(&tokenizer, false).unwrap();
        assert_eq!(single.around, [vec![(cls, 0)], vec![(sep, 0)]]);
        assert_eq!(single.type_ids, [0]);
        frames_as_huggingface(&tokenizer, &single);
        let pair = Frame::of(&tokenizer, true).unwrap();
        assert_eq!(
            pair.around,
            [vec![(cls, 0)], vec![(sep, 0)], vec![(sep, 1)]]
        );
        assert_eq!(pair.type_ids, [0, 1]);
        frames_as_huggingface(&tokenizer, &pair);
    }

    /// A template's special tokens, by its name for them.
    fn special_tokens() -> serde_json::Value {
        serde_json::json!({
            "[CLS]": {"id": "[CLS]", "ids": [101], "tokens": ["[CLS]"]},
            "[SEP]": {"id": "[SEP]", "ids": [102], "tokens": ["[SEP]"]},
            "[MASK]": {"id": "[MASK]", "ids": [103], "tokens": ["[MASK]"]},
        })
    }

    #[test]
    fn any_template_is_learned_with_its_type_ids() {
        let tokenizer = default_tokenizer(Some(serde_json::json!({
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "[SEP]", "type_id": 2}},
                {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 1}},
                {"SpecialToken": {"id": "[MASK]", "type_id": 3}},
            ],
            "pair": [
                {"Sequence": {"id": "A", "type_id": 2}},
                {"SpecialToken": {"id": "[MASK]", "type_id": 0}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 3}},
            ],
            "special_tokens": special_tokens(),
        })));
        let single = Frame::of(&tokenizer, false).unwrap();
        assert_eq!(single.around, [vec![(102, 2), (101, 0)], vec![(103, 3)]]);
        assert_eq!(single.type_ids, [1]);
        frames_as_huggingface(&tokenizer, &single);
        let pair = Frame::of(&tokenizer, true).unwrap();
        assert_eq!(pair.around, [vec![], vec![(103, 0), (102, 1)], vec![]]);
        assert_eq!(pair.type_ids, [2, 3]);
        frames_as_huggingface(&tokenizer, &pair);
    }

    #[test]
    fn a_template_that_puts_the_second_text_first_has_no_pair_frame() {
        let tokenizer = default_tokenizer(Some(serde_json::json!({
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"Sequence": {"id": "B", "type_id": 1}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "special_tokens": special_tokens(),
        })));
        assert_eq!(Frame::of(&tokenizer, true), None);
        assert!(Frame::of(&tokenizer, false).is_some());
    }

    #[test]
    fn a_tokenizer_that_pads_or_truncates_has_no_frame() {
        for pair in [false, true] {
            let mut tokenizer = default_tokenizer(None);
            tokenizer.with_padding(Some(Default::default()));
            assert_eq!(Frame::of(&tokenizer, pair), None);
            let mut tokenizer = default_tokenizer(None);
            tokenizer.with_truncation(Some(Default::default())).unwrap();
            assert_eq!(Frame::of(&tokenizer, pair), None);
        }
    }

    #[test]
    fn no_post_processor_is_an_empty_frame() {
        let tokenizer = default_tokenizer(Some(serde_json::Value::Null));
        for pair in [false, true] {
            let frame = Frame::of(&tokenizer, pair).unwrap();
            assert_eq!(frame.added(), 0);
            frames_as_huggingface(&tokenizer, &frame);
        }
    }
}
