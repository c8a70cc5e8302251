//! The BERT encoder. One struct per checkpoint module, each loaded from its key prefix.
use tch::Tensor;

use super::LinearKernel;
use super::config::{BertConfig, HiddenAct};
use super::onednn::{self, Fused};
use super::rows::RowBuckets;
use super::weights::Scope;

/// The row count oneDNN packs weights for: the CPU's default token budget. The packed layout
/// serves products of any row count; this only tunes its blocking.
const PACK_ROWS: i64 = 1024;

/// A dense layer's weight [out, in], as its kernel takes it. The packed form replaces the plain
/// one, so a replica holds its dense weights once.
enum Weight {
    Plain(Tensor),
    /// In oneDNN's blocked layout.
    Packed(Tensor),
}

pub struct Linear {
    weight: Weight,
    bias: Tensor,
}

impl Linear {
    pub fn load(scope: &Scope, in_dim: i64, out_dim: i64, kernel: LinearKernel) -> Self {
        let weight = scope.get("weight", &[out_dim, in_dim]);
        let weight = match kernel {
            LinearKernel::Aten => Weight::Plain(weight),
            LinearKernel::OneDnn => Weight::Packed(
                onednn::pack(&weight, PACK_ROWS)
                    .unwrap_or_else(|e| panic!("packing {} for oneDNN: {e}", scope.name("weight"))),
            ),
        };
        Linear {
            weight,
            bias: scope.get("bias", &[out_dim]),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_fused(x, Fused::Nothing)
    }

    /// `activation(x · weightᵀ + bias)`, in one kernel where the layer computes through oneDNN.
    fn forward_fused(&self, x: &Tensor, activation: Fused) -> Tensor {
        let weight = match &self.weight {
            Weight::Packed(packed) => return onednn::linear(x, packed, &self.bias, activation),
            Weight::Plain(weight) => weight,
        };
        let y = x.linear(weight, Some(&self.bias));
        match activation {
            Fused::Nothing => y,
            Fused::Gelu => y.gelu("none"),
            Fused::GeluTanh => y.gelu("tanh"),
            Fused::Relu => y.relu(),
        }
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    dim: i64,
}

impl LayerNorm {
    fn load(scope: &Scope, dim: i64, eps: f64) -> Self {
        LayerNorm {
            weight: scope.get("weight", &[dim]),
            bias: scope.get("bias", &[dim]),
            eps,
            dim,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm(
            [self.dim],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )
    }
}

/// `embeddings.*`: word + absolute position + token type, then LayerNorm.
struct Embeddings {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    layer_norm: LayerNorm,
}

impl Embeddings {
    fn load(scope: &Scope, c: &BertConfig) -> Self {
        Embeddings {
            word: scope.get("word_embeddings.weight", &[c.vocab_size, c.hidden_size]),
            position: scope.get(
                "position_embeddings.weight",
                &[c.max_position_embeddings, c.hidden_size],
            ),
            token_type: scope.get(
                "token_type_embeddings.weight",
                &[c.type_vocab_size, c.hidden_size],
            ),
            layer_norm: LayerNorm::load(&scope.sub("LayerNorm"), c.hidden_size, c.layer_norm_eps),
        }
    }

    fn forward(&self, input_ids: &Tensor, token_type_ids: &Tensor) -> Tensor {
        let seq_len = input_ids.size()[1];
        let positions = Tensor::arange(seq_len, (tch::Kind::Int64, input_ids.device()));
        let x = Tensor::embedding(&self.word, input_ids, -1, false, false)
            + Tensor::embedding(&self.position, &positions, -1, false, false).unsqueeze(0)
            + Tensor::embedding(&self.token_type, token_type_ids, -1, false, false);
        self.layer_norm.forward(&x)
    }
}

/// `attention.self.*`: multi-head scaled dot-product attention over the non-padding keys.
struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    num_heads: i64,
    head_dim: i64,
}

impl SelfAttention {
    fn load(scope: &Scope, c: &BertConfig, kernel: LinearKernel) -> Self {
        let h = c.hidden_size;
        SelfAttention {
            query: Linear::load(&scope.sub("query"), h, h, kernel),
            key: Linear::load(&scope.sub("key"), h, h, kernel),
            value: Linear::load(&scope.sub("value"), h, h, kernel),
            num_heads: c.num_attention_heads,
            head_dim: h / c.num_attention_heads,
        }
    }

    /// `x`: the batch's rows ([`Rows`]); `key_mask`: bool [batch, 1, 1, seq], true where a key
    /// is a real token.
    fn forward(&self, x: &Tensor, rows: &Rows, key_mask: &Tensor) -> Tensor {
        let heads = |t: Tensor| {
            rows.unpadded(&t)
                .view([rows.batch, rows.seq, self.num_heads, self.head_dim])
                .transpose(1, 2)
        };
        let q = heads(self.query.forward(x));
        let k = heads(self.key.forward(x));
        let v = heads(self.value.forward(x));
        let context = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            Some(key_mask),
            0.0,
            false,
            None,
            false,
        );
        rows.padded(&context.transpose(1, 2))
    }
}

/// `attention.*`: self-attention, projection, residual and LayerNorm.
struct Attention {
    self_attention: SelfAttention,
    output_dense: Linear,
    output_norm: LayerNorm,
}

impl Attention {
    fn load(scope: &Scope, c: &BertConfig, kernel: LinearKernel) -> Self {
        let output = scope.sub("output");
        Attention {
            self_attention: SelfAttention::load(&scope.sub("self"), c, kernel),
            output_dense: Linear::load(&output.sub("dense"), c.hidden_size, c.hidden_size, kernel),
            output_norm: LayerNorm::load(&output.sub("LayerNorm"), c.hidden_size, c.layer_norm_eps),
        }
    }

    fn forward(&self, x: &Tensor, rows: &Rows, key_mask: &Tensor) -> Tensor {
        let attended = self.self_attention.forward(x, rows, key_mask);
        self.output_norm
            .forward(&(self.output_dense.forward(&attended) + x))
    }
}

/// `encoder.layer.N.*`: attention, then the feed-forward block (`intermediate`, `output`).
struct Layer {
    attention: Attention,
    intermediate: Linear,
    activation: Fused,
    output_dense: Linear,
    output_norm: LayerNorm,
}

impl Layer {
    fn load(scope: &Scope, c: &BertConfig, activation: HiddenAct, kernel: LinearKernel) -> Self {
        let output = scope.sub("output");
        Layer {
            attention: Attention::load(&scope.sub("attention"), c, kernel),
            intermediate: Linear::load(
                &scope.sub("intermediate").sub("dense"),
                c.hidden_size,
                c.intermediate_size,
                kernel,
            ),
            activation: match activation {
                HiddenAct::Gelu => Fused::Gelu,
                HiddenAct::GeluTanh => Fused::GeluTanh,
                HiddenAct::Relu => Fused::Relu,
            },
            output_dense: Linear::load(
                &output.sub("dense"),
                c.intermediate_size,
                c.hidden_size,
                kernel,
            ),
            output_norm: LayerNorm::load(&output.sub("LayerNorm"), c.hidden_size, c.layer_norm_eps),
        }
    }

    fn forward(&self, x: &Tensor, rows: &Rows, key_mask: &Tensor) -> Tensor {
        let attended = self.attention.forward(x, rows, key_mask);
        let inner = self.intermediate.forward_fused(&attended, self.activation);
        self.output_norm
            .forward(&(self.output_dense.forward(&inner) + attended))
    }
}

/// `pooler.*`: tanh(dense(hidden state of the first token)).
pub struct Pooler {
    dense: Linear,
}

impl Pooler {
    fn load(scope: &Scope, c: &BertConfig, kernel: LinearKernel) -> Self {
        Pooler {
            dense: Linear::load(&scope.sub("dense"), c.hidden_size, c.hidden_size, kernel),
        }
    }

    pub fn forward(&self, hidden: &Tensor) -> Tensor {
        self.dense.forward(&hidden.select(1, 0)).tanh()
    }
}

/// The hidden states a forward pass kept, indexed as HuggingFace's `hidden_states`:
/// 0 is the embedding output, `num_layers` the last layer.
pub struct HiddenStates {
    states: Vec<Option<Tensor>>,
}

impl HiddenStates {
    pub fn get(&self, index: usize) -> &Tensor {
        self.states[index]
            .as_ref()
            .expect("only hidden states that were asked for are read")
    }
}

/// A batch's hidden states as the dense layers take them: one row per token, [rows, hidden],
/// where the first `batch * seq` rows are the tokens in order and any rows after them are padding
/// that only the row-wise operations (products, additions, LayerNorm) compute and nothing reads.
///
/// Why pad rows: oneDNN builds a kernel for every row count it is given; the model's
/// [`RowBuckets`] say why that must be bounded and how.
struct Rows {
    batch: i64,
    seq: i64,
    /// `batch * seq`: the real rows.
    tokens: i64,
    /// `tokens` rounded up to the model's row bucket.
    rows: i64,
}

impl Rows {
    fn new(batch: i64, seq: i64, buckets: RowBuckets) -> Self {
        let tokens = batch * seq;
        Rows {
            batch,
            seq,
            tokens,
            rows: buckets.rows(tokens),
        }
    }

    /// [batch, seq, ..] from [rows, ..]: a view, without the padding rows.
    fn unpadded(&self, x: &Tensor) -> Tensor {
        let width = *x.size().last().expect("rows are [rows, width]");
        x.narrow(0, 0, self.tokens)
            .view([self.batch, self.seq, width])
    }

    /// [rows, hidden] from [batch, seq, ..] (any strides), the padding rows zero: one copy, which
    /// making the attention's heads contiguous again costs anyway.
    fn padded(&self, x: &Tensor) -> Tensor {
        let size = x.size();
        let width: i64 = size[2..].iter().product();
        if self.rows == self.tokens {
            return x.contiguous().view([self.tokens, width]);
        }
        let out = Tensor::empty([self.rows, width], (x.kind(), x.device()));
        out.narrow(0, 0, self.tokens).view(size.as_slice()).copy_(x);
        let _ = out.narrow(0, self.tokens, self.rows - self.tokens).zero_();
        out
    }
}

pub struct BertModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    pub pooler: Option<Pooler>,
    /// How the dense layers' row counts are rounded up ([`Rows`]).
    row_buckets: RowBuckets,
}

impl BertModel {
    pub fn load(
        scope: &Scope,
        c: &BertConfig,
        kernel: LinearKernel,
        row_buckets: RowBuckets,
    ) -> Self {
        let activation = c.activation().expect("validated with the config");
        let encoder = scope.sub("encoder").sub("layer");
        BertModel {
            embeddings: Embeddings::load(&scope.sub("embeddings"), c),
            layers: (0..c.num_hidden_layers)
                .map(|i| Layer::load(&encoder.sub(i), c, activation, kernel))
                .collect(),
            pooler: scope
                .contains("pooler.dense.weight")
                .then(|| Pooler::load(&scope.sub("pooler"), c, kernel)),
            row_buckets,
        }
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn row_buckets(&self) -> RowBuckets {
        self.row_buckets
    }

    #[cfg(test)]
    pub(super) fn set_row_buckets(&mut self, buckets: RowBuckets) {
        self.row_buckets = buckets;
    }

    /// Runs the encoder up to the deepest layer in `keep`, keeping the hidden states listed there
    /// ([batch, seq, hidden] each). `attention_mask`: [batch, seq], 1 for real tokens, 0 for
    /// padding.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        keep: &[usize],
    ) -> HiddenStates {
        let deepest = keep.iter().copied().max().unwrap_or(self.layers.len());
        let mut states: Vec<Option<Tensor>> = (0..=self.layers.len()).map(|_| None).collect();
        let key_mask = attention_mask
            .to_kind(tch::Kind::Bool)
            .unsqueeze(1)
            .unsqueeze(1);
        let (batch, seq) = input_ids.size2().expect("input ids are [batch, seq]");
        let rows = Rows::new(batch, seq, self.row_buckets);
        let mut x = rows.padded(&self.embeddings.forward(input_ids, token_type_ids));
        if keep.contains(&0) {
            states[0] = Some(rows.unpadded(&x));
        }
        for (i, layer) in self.layers.iter().enumerate().take(deepest) {
            x = layer.forward(&x, &rows, &key_mask);
            if keep.contains(&(i + 1)) {
                states[i + 1] = Some(rows.unpadded(&x));
            }
        }
        HiddenStates { states }
    }
}
