//! The special tokens a tokenizer's post-processor puts around a single text (`[CLS] … [SEP]`
//! for BERT), learned once at load, so that the model's path adds them to a text's ids itself.
//!
//! HuggingFace truncates and adds special tokens on its `Encoding`s: for each text, two of them
//! with eight vectors apiece, and the tokens' strings. On the model's path that bookkeeping cost
//! about as much as computing the ids (`wordpiece`), so for a single text the path now takes the
//! ids, truncates them and frames them, and builds nothing else.
//!
//! A post-processor is only known by what it does, so the frame is learned by post-processing
//! stand-in ids: the tokens before them, the tokens after them, and the type id they get. It is
//! used only when the post-processor frames one, two and three stand-ins the same way, keeps
//! them in order, and adds as many tokens as it says it adds. Pairs, and any post-processor that
//! does something else, keep HuggingFace's post-processing.
use tokenizers::{Encoding, PostProcessor, Token, Tokenizer};

/// Ids no vocabulary has, standing in for a text's tokens while the frame is learned.
const STAND_IN: u32 = u32::MAX;

/// What the post-processor adds around a single text: (id, type id) pairs before and after it,
/// and the type id of the text's own tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    before: Vec<(u32, u32)>,
    after: Vec<(u32, u32)>,
    type_id: u32,
}

impl Frame {
    /// The frame `tokenizer`'s post-processor puts around a single text, if it is one. None for
    /// a tokenizer that pads or truncates: post-processing would do that too.
    pub fn of(tokenizer: &Tokenizer) -> Option<Frame> {
        if tokenizer.get_padding().is_some() || tokenizer.get_truncation().is_some() {
            return None;
        }
        let frame = Self::around(tokenizer, 1)?;
        let added = tokenizer
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        let same = [2, 3]
            .into_iter()
            .all(|n| Self::around(tokenizer, n).as_ref() == Some(&frame));
        (same && frame.added() == added).then_some(frame)
    }

    /// What the post-processor does around `n` stand-ins, when it keeps them together and in
    /// order, with one type id, and adds no stand-in of its own.
    fn around(tokenizer: &Tokenizer, n: u32) -> Option<Frame> {
        let stand_ins: Vec<u32> = (0..n).map(|i| STAND_IN - i).collect();
        let framed = post_processed(tokenizer, &stand_ins)?;
        let (ids, types) = (framed.get_ids(), framed.get_type_ids());
        let at = ids.iter().position(|&id| id == STAND_IN)?;
        let end = at + stand_ins.len();
        if ids.get(at..end)? != stand_ins.as_slice()
            || ids[..at]
                .iter()
                .chain(&ids[end..])
                .any(|id| stand_ins.contains(id))
            || types[at..end].iter().any(|&t| t != types[at])
        {
            return None;
        }
        let pairs = |range: std::ops::Range<usize>| {
            ids[range.clone()]
                .iter()
                .copied()
                .zip(types[range].iter().copied())
                .collect()
        };
        Some(Frame {
            before: pairs(0..at),
            after: pairs(end..ids.len()),
            type_id: types[at],
        })
    }

    /// How many tokens the frame adds.
    pub fn added(&self) -> usize {
        self.before.len() + self.after.len()
    }

    /// `ids` in the frame, widened for the model: the ids and their type ids.
    pub fn apply(&self, ids: &[u32]) -> (Vec<i64>, Vec<i64>) {
        let len = ids.len() + self.added();
        let (mut all, mut types) = (Vec::with_capacity(len), Vec::with_capacity(len));
        let text = ids.iter().map(|&id| (id, self.type_id));
        for (id, type_id) in self
            .before
            .iter()
            .copied()
            .chain(text)
            .chain(self.after.iter().copied())
        {
            all.push(i64::from(id));
            types.push(i64::from(type_id));
        }
        (all, types)
    }
}

/// HuggingFace's post-processing of `ids` as a single text's tokens.
fn post_processed(tokenizer: &Tokenizer, ids: &[u32]) -> Option<Encoding> {
    let tokens = ids
        .iter()
        .map(|&id| Token::new(id, String::new(), (0, 0)))
        .collect();
    tokenizer
        .post_process(Encoding::from_tokens(tokens, 0), None, true)
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

    /// HuggingFace's own post-processing of `ids` as a single text: ids and type ids.
    fn huggingface(tokenizer: &Tokenizer, ids: &[u32]) -> (Vec<i64>, Vec<i64>) {
        let framed = post_processed(tokenizer, ids).unwrap();
        let widen = |v: &[u32]| v.iter().map(|&i| i64::from(i)).collect();
        (widen(framed.get_ids()), widen(framed.get_type_ids()))
    }

    /// Ids of a few lengths, none of them 0.
    const TEXTS: [&[u32]; 4] = [&[], &[2023], &[2023, 2003, 1037], &[7; 40]];

    #[test]
    fn berts_frame_is_cls_then_the_text_then_sep() {
        let tokenizer = default_tokenizer(None);
        let frame = Frame::of(&tokenizer).unwrap();
        let (cls, sep) = (
            tokenizer.token_to_id("[CLS]").unwrap(),
            tokenizer.token_to_id("[SEP]").unwrap(),
        );
        assert_eq!(frame.before, [(cls, 0)]);
        assert_eq!(frame.after, [(sep, 0)]);
        assert_eq!(frame.type_id, 0);
        for ids in TEXTS {
            assert_eq!(frame.apply(ids), huggingface(&tokenizer, ids), "{ids:?}");
        }
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
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [101], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [102], "tokens": ["[SEP]"]},
                "[MASK]": {"id": "[MASK]", "ids": [103], "tokens": ["[MASK]"]},
            },
        })));
        let frame = Frame::of(&tokenizer).unwrap();
        assert_eq!(frame.before, [(102, 2), (101, 0)]);
        assert_eq!(frame.after, [(103, 3)]);
        assert_eq!(frame.type_id, 1);
        for ids in TEXTS {
            assert_eq!(frame.apply(ids), huggingface(&tokenizer, ids), "{ids:?}");
        }
    }

    #[test]
    fn a_tokenizer_that_pads_or_truncates_has_no_frame() {
        let mut tokenizer = default_tokenizer(None);
        tokenizer.with_padding(Some(Default::default()));
        assert_eq!(Frame::of(&tokenizer), None);
        let mut tokenizer = default_tokenizer(None);
        tokenizer.with_truncation(Some(Default::default())).unwrap();
        assert_eq!(Frame::of(&tokenizer), None);
    }

    #[test]
    fn no_post_processor_is_an_empty_frame() {
        let tokenizer = default_tokenizer(Some(serde_json::Value::Null));
        let frame = Frame::of(&tokenizer).unwrap();
        assert_eq!(frame.added(), 0);
        for ids in TEXTS {
            assert_eq!(frame.apply(ids), huggingface(&tokenizer, ids), "{ids:?}");
        }
    }
}
