//! [`Umt5Encoder`]: token embeddings, then per layer an RMS-normed self-attention with its own
//! relative position bias (no 1/sqrt(d) scaling) and an RMS-normed gated-GELU feed-forward,
//! then a final RMS norm.

use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

use super::config::Umt5Config;
use crate::kernels::bf16_linear::Dense;

/// T5's norm: scale by the root mean square (no mean subtraction, no bias), in f32.
struct T5Norm {
    weight: Tensor,
    eps: f64,
}

impl T5Norm {
    fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let variance = x.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x
            .broadcast_div(&(variance + self.eps)?.sqrt()?)?
            .to_dtype(self.weight.dtype())?;
        crate::ops::broadcast_mul(&normed, &self.weight)?.to_dtype(dtype)
    }
}

/// Bucket of a relative position (key minus query) for a bidirectional encoder: half the
/// buckets per sign, exact for small distances, logarithmic up to `max_distance`.
fn relative_bucket(relative: i64, buckets: usize, max_distance: usize) -> usize {
    let half = buckets / 2;
    let offset = if relative > 0 { half } else { 0 };
    let distance = relative.unsigned_abs() as usize;
    let exact = half / 2;
    if distance < exact {
        return offset + distance;
    }
    let ratio = (distance as f32 / exact as f32).ln() / (max_distance as f32 / exact as f32).ln();
    let large = exact + (ratio * (half - exact) as f32) as usize;
    offset + large.min(half - 1)
}

struct SelfAttention {
    q: Dense,
    k: Dense,
    v: Dense,
    o: Dense,
    relative_bias: Embedding,
    heads: usize,
    head_dim: usize,
    buckets: usize,
    max_distance: usize,
}

impl SelfAttention {
    fn new(config: &Umt5Config, vb: VarBuilder) -> Result<Self> {
        let inner = config.num_heads * config.d_kv;
        let bias = vb.get(
            (config.relative_attention_num_buckets, config.num_heads),
            "relative_attention_bias.weight",
        )?;
        Ok(Self {
            q: Dense::load_no_bias(config.d_model, inner, vb.pp("q"))?,
            k: Dense::load_no_bias(config.d_model, inner, vb.pp("k"))?,
            v: Dense::load_no_bias(config.d_model, inner, vb.pp("v"))?,
            o: Dense::load_no_bias(inner, config.d_model, vb.pp("o"))?,
            relative_bias: Embedding::new(bias, config.num_heads),
            heads: config.num_heads,
            head_dim: config.d_kv,
            buckets: config.relative_attention_num_buckets,
            max_distance: config.relative_attention_max_distance,
        })
    }

    /// Position bias `[1, heads, L, L]`.
    fn position_bias(&self, length: usize, device: &Device) -> Result<Tensor> {
        let buckets: Vec<u32> = (0..length as i64)
            .flat_map(|query| {
                (0..length as i64).map(move |key| {
                    relative_bucket(key - query, self.buckets, self.max_distance) as u32
                })
            })
            .collect();
        let buckets = Tensor::from_vec(buckets, (length, length), device)?;
        self.relative_bias
            .forward(&buckets)?
            .permute((2, 0, 1))?
            .unsqueeze(0)
    }

    /// `x` `[B, L, d_model]`, `mask_bias` `[B, 1, 1, L]` (0 or a large negative).
    fn forward(&self, x: &Tensor, mask_bias: &Tensor) -> Result<Tensor> {
        let (batch, length, _) = x.dims3()?;
        let heads = |t: Tensor| -> Result<Tensor> {
            t.reshape((batch, length, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let query = heads(self.q.forward(x)?)?;
        let key = heads(self.k.forward(x)?)?;
        let value = heads(self.v.forward(x)?)?;
        let bias = self
            .position_bias(length, x.device())?
            .to_dtype(DType::F32)?;
        let scores = query
            .to_dtype(DType::F32)?
            .matmul(&key.to_dtype(DType::F32)?.t()?)?;
        let scores = crate::ops::broadcast_add(&scores, &bias)?.broadcast_add(mask_bias)?;
        let weights = crate::ops::softmax_last_dim(&scores)?.to_dtype(value.dtype())?;
        let attended = weights.matmul(&value)?.transpose(1, 2)?.reshape((
            batch,
            length,
            self.heads * self.head_dim,
        ))?;
        self.o.forward(&attended)
    }
}

struct GatedGelu {
    wi_0: Dense,
    wi_1: Dense,
    wo: Dense,
}

impl GatedGelu {
    fn new(config: &Umt5Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            wi_0: Dense::load_no_bias(config.d_model, config.d_ff, vb.pp("wi_0"))?,
            wi_1: Dense::load_no_bias(config.d_model, config.d_ff, vb.pp("wi_1"))?,
            wo: Dense::load_no_bias(config.d_ff, config.d_model, vb.pp("wo"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.wi_0.forward_gelu(x)?;
        self.wo.forward(&(gate * self.wi_1.forward(x)?)?)
    }
}

struct Layer {
    attention_norm: T5Norm,
    attention: SelfAttention,
    feed_forward_norm: T5Norm,
    feed_forward: GatedGelu,
}

impl Layer {
    fn new(config: &Umt5Config, vb: VarBuilder) -> Result<Self> {
        let eps = config.layer_norm_epsilon;
        Ok(Self {
            attention_norm: T5Norm::new(config.d_model, eps, vb.pp("layer.0.layer_norm"))?,
            attention: SelfAttention::new(config, vb.pp("layer.0.SelfAttention"))?,
            feed_forward_norm: T5Norm::new(config.d_model, eps, vb.pp("layer.1.layer_norm"))?,
            feed_forward: GatedGelu::new(config, vb.pp("layer.1.DenseReluDense"))?,
        })
    }

    fn forward(&self, x: &Tensor, mask_bias: &Tensor) -> Result<Tensor> {
        let x = (x + self
            .attention
            .forward(&self.attention_norm.forward(x)?, mask_bias)?)?;
        &x + self
            .feed_forward
            .forward(&self.feed_forward_norm.forward(&x)?)?
    }
}

/// Weights the encoder reads a part at a time as it runs ([`Umt5Encoder::streamed`]), so that
/// at most one layer is in memory: UMT5-XXL is 11 GB in bf16, a layer 0.4 GB.
pub trait Umt5Source: Send + Sync {
    /// The embedding rows of `ids`, `[ids.len(), d_model]`, without reading the whole table
    /// (2 GB for UMT5-XXL).
    fn embedding_rows(&self, ids: &[u32]) -> Result<Tensor>;
    /// All weights under transformers' names, opened afresh: dropping the builder releases
    /// whatever was read through it.
    fn open(&self) -> Result<VarBuilder<'static>>;
}

/// Where the encoder's weights are.
enum Parts {
    /// All in memory.
    Resident {
        embeddings: Embedding,
        layers: Vec<Layer>,
        final_norm: T5Norm,
    },
    /// Read from their source layer by layer during each forward.
    Streamed(Box<dyn Umt5Source>),
}

/// The UMT5 encoder.
pub struct Umt5Encoder {
    config: Umt5Config,
    parts: Parts,
}

impl Umt5Encoder {
    /// Loads the encoder from transformers-named weights (`shared.weight`, `encoder.*`).
    pub fn new(config: &Umt5Config, vb: VarBuilder) -> Result<Self> {
        check(config)?;
        let shape = (config.vocab_size, config.d_model);
        let table = if vb.contains_tensor("shared.weight") {
            vb.get(shape, "shared.weight")?
        } else {
            vb.get(shape, "encoder.embed_tokens.weight")?
        };
        let layers = (0..config.num_layers)
            .map(|index| layer(config, &vb, index))
            .collect::<Result<_>>()?;
        Ok(Self {
            config: config.clone(),
            parts: Parts::Resident {
                embeddings: Embedding::new(table, config.d_model),
                layers,
                final_norm: final_norm(config, &vb)?,
            },
        })
    }

    /// An encoder that holds no weights: each forward reads the embedding rows it needs, then
    /// one layer at a time, from `source`. The same results as [`Umt5Encoder::new`] over the
    /// same weights, with a peak memory of one layer instead of the whole model.
    pub fn streamed(config: &Umt5Config, source: Box<dyn Umt5Source>) -> Result<Self> {
        check(config)?;
        Ok(Self {
            config: config.clone(),
            parts: Parts::Streamed(source),
        })
    }

    /// Encodes token ids `[B, L]` (u32) with `attention_mask` `[B, L]` (1 for tokens, 0 for
    /// padding) into hidden states `[B, L, d_model]`.
    pub fn forward(&self, ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let (batch, length) = ids.dims2()?;
        let keep = attention_mask.to_dtype(DType::F32)?;
        // Padded keys get the most negative f32, as transformers does.
        let mask_bias = ((1.0 - keep)? * f64::from(f32::MIN))?.reshape((batch, 1, 1, length))?;
        match &self.parts {
            Parts::Resident {
                embeddings,
                layers,
                final_norm,
            } => {
                let mut x = embeddings.forward(ids)?;
                for layer in layers {
                    x = layer.forward(&x, &mask_bias)?;
                }
                final_norm.forward(&x)
            }
            Parts::Streamed(source) => {
                let rows = source.embedding_rows(&ids.flatten_all()?.to_vec1::<u32>()?)?;
                let mut x = rows.reshape((batch, length, self.config.d_model))?;
                for index in 0..self.config.num_layers {
                    // The layer's weights are dropped before the next one is read.
                    x = layer(&self.config, &source.open()?, index)?.forward(&x, &mask_bias)?;
                }
                final_norm(&self.config, &source.open()?)?.forward(&x)
            }
        }
    }
}

/// An error for configurations the encoder does not implement.
fn check(config: &Umt5Config) -> Result<()> {
    if config.feed_forward_proj != "gated-gelu" {
        candle_core::bail!(
            "UMT5 feed_forward_proj {:?} is not supported; expected gated-gelu",
            config.feed_forward_proj
        );
    }
    Ok(())
}

/// Layer `index` of the encoder whose weights `vb` holds.
fn layer(config: &Umt5Config, vb: &VarBuilder, index: usize) -> Result<Layer> {
    Layer::new(config, vb.pp(format!("encoder.block.{index}")))
}

/// The norm after the last layer.
fn final_norm(config: &Umt5Config, vb: &VarBuilder) -> Result<T5Norm> {
    T5Norm::new(
        config.d_model,
        config.layer_norm_epsilon,
        vb.pp("encoder.final_layer_norm"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_t5() {
        // Exact below 8, logarithmic to 128, positive distances in the upper half.
        assert_eq!(relative_bucket(0, 32, 128), 0);
        assert_eq!(relative_bucket(-3, 32, 128), 3);
        assert_eq!(relative_bucket(3, 32, 128), 19);
        assert_eq!(relative_bucket(-8, 32, 128), 8);
        assert_eq!(relative_bucket(-127, 32, 128), 15);
        assert_eq!(relative_bucket(-500, 32, 128), 15);
        assert_eq!(relative_bucket(500, 32, 128), 31);
    }
}
