//! [`WanTransformer`]: Wan's diffusion transformer (diffusers `WanTransformer3DModel`). Latents
//! are cut into spacetime patches, conditioned on the timestep (adaptive LayerNorm with a
//! per-block modulation table) and on text (cross-attention), and put back together.

use std::ops::Range;

use candle_core::{D, DType, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::kernels::{self, bf16_linear::Dense, modulation};
use crate::ops;

use super::config::WanTransformerConfig;
use super::folded_text::FoldedText;
use super::rope::Rotary;

/// LayerNorm without learned parameters over the last dimension, computed in f32.
fn plain_layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred.broadcast_div(&(variance + eps)?.sqrt()?)
}

/// LayerNorm with weight and bias, computed in f32.
struct AffineLayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl AffineLayerNorm {
    fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?.to_dtype(DType::F32)?,
            bias: vb.get(dim, "bias")?.to_dtype(DType::F32)?,
            eps,
        })
    }

    /// The norm of `x` in `dtype`.
    fn forward(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        if modulation::applies(x) {
            return modulation::affine_layer_norm(x, &self.weight, &self.bias, self.eps, dtype);
        }
        let scaled = ops::broadcast_mul(&plain_layer_norm(x, self.eps)?, &self.weight)?;
        ops::broadcast_add(&scaled, &self.bias)?.to_dtype(dtype)
    }
}

/// RMSNorm over all heads' channels together, with a learned weight.
struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if modulation::applies(x) {
            return modulation::rms_norm(x, &self.weight, self.eps.into(), x.dtype());
        }
        ops::rms_norm(x, &self.weight, self.eps)
    }
}

/// Most score-matrix elements attention holds at once (256 MiB in f32): longer sequences are
/// processed in blocks of queries, so memory stays bounded at any video size.
const SCORE_BUDGET: usize = 64 << 20;

/// Scaled dot-product attention over `[B, L, heads, head_dim]` inputs, `key_bias` `[B, S]`
/// (f32) added to the scores, returning `[B, L, D]`. Without gradients on the CPU it runs fused
/// ([`kernels::attention`]); bf16 inputs in f32 where the CPU lacks AVX-512 BF16 (candle's bf16
/// products are slow there).
fn attention(
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    key_bias: Option<&Tensor>,
) -> Result<Tensor> {
    let dtype = query.dtype();
    if kernels::attention::applies(query, key, value) {
        return kernels::attention::attention(query, key, value, key_bias)?.to_dtype(dtype);
    }
    if query.device().is_cpu() && dtype == DType::BF16 && !query.track_op() {
        let f32 = |t: &Tensor| t.to_dtype(DType::F32);
        return attention(&f32(query)?, &f32(key)?, &f32(value)?, key_bias)?.to_dtype(dtype);
    }
    attention_within(query, key, value, key_bias, SCORE_BUDGET)
}

/// [`attention`] holding at most `budget` score elements at once.
fn attention_within(
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    key_bias: Option<&Tensor>,
    budget: usize,
) -> Result<Tensor> {
    let (batch, tokens, heads, head_dim) = query.dims4()?;
    let keys = key.dim(1)?;
    let query = query.transpose(1, 2)?.contiguous()?;
    let key_t = key.transpose(1, 2)?.contiguous()?.t()?;
    let value = value.transpose(1, 2)?.contiguous()?;
    // `[B, 1, 1, S]`, in the scores' dtype.
    let key_bias = key_bias
        .map(|bias| bias.to_dtype(query.dtype())?.unsqueeze(1)?.unsqueeze(1))
        .transpose()?;
    let block = (budget / (batch * heads * keys).max(1)).clamp(1, tokens);
    let outputs = (0..tokens)
        .step_by(block)
        .map(|start| {
            let rows = query.narrow(2, start, block.min(tokens - start))?;
            let mut scores = (rows.matmul(&key_t)? / (head_dim as f64).sqrt())?;
            if let Some(bias) = &key_bias {
                scores = scores.broadcast_add(bias)?;
            }
            ops::softmax_last_dim(&scores)?.matmul(&value)
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&outputs, 2)?
        .transpose(1, 2)?
        .reshape((batch, tokens, heads * head_dim))
}

/// Self- or cross-attention with RMS-normed queries and keys.
struct Attention {
    to_q: Dense,
    to_k: Dense,
    to_v: Dense,
    to_out: Dense,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
    heads: usize,
}

impl Attention {
    fn new(config: &WanTransformerConfig, vb: VarBuilder, int8: bool) -> Result<Self> {
        let dim = config.inner_dim();
        let layer = |name: &str| Dense::load_in(dim, dim, vb.pp(name), int8);
        Ok(Self {
            to_q: layer("to_q")?,
            to_k: layer("to_k")?,
            to_v: layer("to_v")?,
            to_out: layer("to_out.0")?,
            norm_q: RmsNorm::new(dim, config.eps, vb.pp("norm_q"))?,
            norm_k: RmsNorm::new(dim, config.eps, vb.pp("norm_k"))?,
            heads: config.num_attention_heads,
        })
    }

    /// Attends from `x` to `context` (itself for self-attention), rotating queries and keys
    /// when `rotary` is given; `key_bias` `[B, S]` is added to the scores of `context`'s rows.
    fn forward(
        &self,
        x: &Tensor,
        context: &Tensor,
        rotary: Option<&Rotary>,
        key_bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let split = |t: Tensor| -> Result<Tensor> {
            let (batch, tokens, dim) = t.dims3()?;
            t.reshape((batch, tokens, self.heads, dim / self.heads))
        };
        let mut query = split(self.norm_q.forward(&self.to_q.forward(x)?)?)?;
        let mut key = split(self.norm_k.forward(&self.to_k.forward(context)?)?)?;
        let value = split(self.to_v.forward(context)?)?;
        if let Some(rotary) = rotary {
            query = rotary.apply(&query)?;
            key = rotary.apply(&key)?;
        }
        self.to_out
            .forward(&attention(&query, &key, &value, key_bias)?)
    }

    /// Self-attention with its map replaced by the identity, each token attending to itself
    /// alone: the token's own value, projected out. Skip guidance's weakened prediction.
    fn forward_skipped(&self, x: &Tensor) -> Result<Tensor> {
        self.to_out.forward(&self.to_v.forward(x)?)
    }
}

/// Feed-forward: Linear, tanh-approximated GELU, Linear.
struct FeedForward {
    up: Dense,
    down: Dense,
}

impl FeedForward {
    fn new(config: &WanTransformerConfig, vb: VarBuilder, int8: bool) -> Result<Self> {
        let (dim, hidden) = (config.inner_dim(), config.ffn_dim);
        Ok(Self {
            up: Dense::load_in(dim, hidden, vb.pp("net.0.proj"), int8)?,
            down: Dense::load_in(hidden, dim, vb.pp("net.2"), int8)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.up.forward_gelu_into(&self.down, x)
    }
}

/// One transformer block: modulated self-attention, cross-attention to the text, modulated
/// feed-forward.
struct Block {
    attn1: Attention,
    attn2: Attention,
    norm2: Option<AffineLayerNorm>,
    ffn: FeedForward,
    /// `[1, 6, D]`: shift, scale and gate for self-attention, then for the feed-forward.
    scale_shift_table: Tensor,
    eps: f64,
}

impl Block {
    fn new(config: &WanTransformerConfig, vb: VarBuilder, int8: bool) -> Result<Self> {
        let dim = config.inner_dim();
        let norm2 = config
            .cross_attn_norm
            .then(|| AffineLayerNorm::new(dim, config.eps, vb.pp("norm2")))
            .transpose()?;
        Ok(Self {
            attn1: Attention::new(config, vb.pp("attn1"), int8)?,
            attn2: Attention::new(config, vb.pp("attn2"), int8)?,
            norm2,
            ffn: FeedForward::new(config, vb.pp("ffn"), int8)?,
            scale_shift_table: vb
                .get((1, 6, dim), "scale_shift_table")?
                .to_dtype(DType::F32)?,
            eps: config.eps,
        })
    }

    /// `x` `[B, L, D]`, `text` the embedded rows `[B, Lt, D]` and their weights, `modulation`
    /// `[B, 6, D]` (f32); with `skip_self_attention`, each token attends to itself alone.
    fn forward(
        &self,
        x: &Tensor,
        text: &FoldedText,
        modulation: &Tensor,
        rotary: &Rotary,
        skip_self_attention: bool,
    ) -> Result<Tensor> {
        let dtype = x.dtype();
        let parts = ops::broadcast_add(&self.scale_shift_table, modulation)?;
        let part = |i: usize| parts.narrow(1, i, 1);
        let (shift, scale, gate) = (part(0)?, part(1)?, part(2)?);
        let (ff_shift, ff_scale, ff_gate) = (part(3)?, part(4)?, part(5)?);

        let modulate = |x: &Tensor, shift: &Tensor, scale: &Tensor| -> Result<Tensor> {
            if modulation::applies(x) {
                return modulation::modulated_layer_norm(x, shift, scale, self.eps, dtype);
            }
            let scaled = ops::broadcast_mul(&plain_layer_norm(x, self.eps)?, &(scale + 1.0)?)?;
            ops::broadcast_add(&scaled, shift)?.to_dtype(dtype)
        };
        // x + y * gate in f32, back in the block's dtype.
        let gated = |x: &Tensor, y: &Tensor, gate: &Tensor| -> Result<Tensor> {
            if modulation::applies(x) && modulation::applies(y) {
                return modulation::gated_residual(x, y, gate, dtype);
            }
            let y = ops::broadcast_mul(&y.to_dtype(DType::F32)?, gate)?;
            (x.to_dtype(DType::F32)? + y)?.to_dtype(dtype)
        };
        let normed = modulate(x, &shift, &scale)?;
        let attended = if skip_self_attention {
            self.attn1.forward_skipped(&normed)?
        } else {
            self.attn1.forward(&normed, &normed, Some(rotary), None)?
        };
        let x = gated(x, &attended, &gate)?;

        let normed = match &self.norm2 {
            Some(norm) => norm.forward(&x, dtype)?,
            None => x.clone(),
        };
        let text_bias = text.key_bias.as_ref();
        let attended = self.attn2.forward(&normed, &text.rows, None, text_bias)?;
        let x = if modulation::applies(&x) && modulation::applies(&attended) {
            modulation::residual(&x, &attended, dtype)?
        } else {
            (&x + attended)?
        };

        let fed = self.ffn.forward(&modulate(&x, &ff_shift, &ff_scale)?)?;
        gated(&x, &fed, &ff_gate)
    }
}

/// Step caching (First Block Cache): when the first block's change to the tokens differs from
/// the one of the last fully computed step by less than `threshold` (mean absolute difference
/// relative to its mean magnitude), the other blocks are skipped and their change from that
/// step is reused. Off unless asked for; its cost in quality is measured in BENCHMARKS.md.
#[derive(Debug)]
pub struct StepCache {
    threshold: f64,
    /// From the last full step: the first block's change, its mean magnitude, and the other
    /// blocks' change.
    last: Option<(Tensor, f32, Tensor)>,
    /// Steps that reused the cached change.
    pub reused: usize,
    /// Steps computed in full.
    pub computed: usize,
}

impl StepCache {
    /// An empty cache that reuses below `threshold` (e.g. 0.05; 0 never reuses).
    pub fn new(threshold: f64) -> Self {
        Self {
            threshold,
            last: None,
            reused: 0,
            computed: 0,
        }
    }

    /// The other blocks' cached change when `first_change` is close enough to the cached one.
    fn reuse(&mut self, first_change: &Tensor) -> Result<Option<Tensor>> {
        let Some((last_first, magnitude, rest)) = &self.last else {
            return Ok(None);
        };
        let difference = (first_change - last_first)?
            .abs()?
            .mean_all()?
            .to_scalar::<f32>()?;
        if f64::from(difference) < self.threshold * f64::from(*magnitude) {
            self.reused += 1;
            Ok(Some(rest.clone()))
        } else {
            Ok(None)
        }
    }

    fn store(&mut self, first_change: Tensor, rest: Tensor) -> Result<()> {
        self.computed += 1;
        let magnitude = first_change.abs()?.mean_all()?.to_scalar::<f32>()?;
        self.last = Some((first_change, magnitude, rest));
        Ok(())
    }
}

/// The sinusoidal timestep embedding: `[cos(t f_i), sin(t f_i)]`, f_i = 10000^(-i/half).
fn timestep_sinusoid(timestep: &Tensor, channels: usize) -> Result<Tensor> {
    let half = channels / 2;
    let frequencies: Vec<f32> = (0..half)
        .map(|i| (-(10_000f64.ln()) * i as f64 / half as f64).exp() as f32)
        .collect();
    let frequencies = Tensor::from_vec(frequencies, (1, half), timestep.device())?;
    let angles = timestep
        .to_dtype(DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&frequencies)?;
    Tensor::cat(&[angles.cos()?, angles.sin()?], 1)
}

/// Wan's diffusion transformer.
pub struct WanTransformer {
    config: WanTransformerConfig,
    patch_embedding: Dense,
    time_embedder: (Dense, Dense),
    time_proj: Dense,
    text_embedder: (Dense, Dense),
    blocks: Vec<Block>,
    /// `[1, 2, D]`: shift and scale of the output norm, added to the time embedding.
    scale_shift_table: Tensor,
    proj_out: Dense,
}

impl WanTransformer {
    /// Loads the transformer from diffusers-named weights.
    pub fn new(config: &WanTransformerConfig, vb: VarBuilder) -> Result<Self> {
        Self::load(config, vb, false)
    }

    /// [`Self::new`] with the blocks' attention and feed-forward layers quantised to int8
    /// (per output channel; activations per token as they run) where the CPU has AVX-512
    /// VNNI or AVX2 ([`crate::kernels::int8_available`]), as [`Self::new`] loads them
    /// elsewhere.
    pub fn new_int8(config: &WanTransformerConfig, vb: VarBuilder) -> Result<Self> {
        Self::load(config, vb, true)
    }

    fn load(config: &WanTransformerConfig, vb: VarBuilder, int8: bool) -> Result<Self> {
        let dim = config.inner_dim();
        let [pt, ph, pw] = config.patch_size;
        let patch_inputs = config.in_channels * pt * ph * pw;
        let patch_weight = vb.get(
            (dim, config.in_channels, pt, ph, pw),
            "patch_embedding.weight",
        )?;
        let patch_embedding = Dense::new(Linear::new(
            patch_weight.reshape((dim, patch_inputs))?,
            Some(vb.get(dim, "patch_embedding.bias")?),
        ))?;
        let condition = vb.pp("condition_embedder");
        let time = condition.pp("time_embedder");
        let text = condition.pp("text_embedder");
        let blocks = (0..config.num_layers)
            .map(|i| Block::new(config, vb.pp(format!("blocks.{i}")), int8))
            .collect::<Result<_>>()?;
        let outputs = config.out_channels * pt * ph * pw;
        Ok(Self {
            config: config.clone(),
            patch_embedding,
            time_embedder: (
                Dense::load(config.freq_dim, dim, time.pp("linear_1"))?,
                Dense::load(dim, dim, time.pp("linear_2"))?,
            ),
            time_proj: Dense::load(dim, 6 * dim, condition.pp("time_proj"))?,
            text_embedder: (
                Dense::load(config.text_dim, dim, text.pp("linear_1"))?,
                Dense::load(dim, dim, text.pp("linear_2"))?,
            ),
            blocks,
            scale_shift_table: vb
                .get((1, 2, dim), "scale_shift_table")?
                .to_dtype(DType::F32)?,
            proj_out: Dense::load(dim, outputs, vb.pp("proj_out"))?,
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &WanTransformerConfig {
        &self.config
    }

    /// Predicts the flow for `latents` `[B, C, F, H, W]` at `timestep` `[B]` given the text
    /// encoder's embeddings `text` `[B, Lt, text_dim]`; returns `[B, C_out, F, H, W]`.
    pub fn forward(&self, latents: &Tensor, timestep: &Tensor, text: &Tensor) -> Result<Tensor> {
        self.forward_cached(latents, timestep, text, None)
    }

    /// [`Self::forward`] that may reuse the blocks after the first from an earlier step of the
    /// same sampling run (see [`StepCache`]); one cache per run and guidance branch.
    pub fn forward_cached(
        &self,
        latents: &Tensor,
        timestep: &Tensor,
        text: &Tensor,
        cache: Option<&mut StepCache>,
    ) -> Result<Tensor> {
        Ok(self.run(latents, timestep, text, cache, None)?.0)
    }

    /// [`Self::forward_cached`], and besides it the first row's prediction with block
    /// `skipped`'s self-attention skipped (each token attending to itself alone): the weakened
    /// prediction of spatiotemporal skip guidance (Hyung et al. 2024), which guides away from
    /// it. Without a cache it shares the blocks before `skipped` with the first row's plain
    /// pass. Fails when there is no such block.
    pub fn forward_and_skipping(
        &self,
        latents: &Tensor,
        timestep: &Tensor,
        text: &Tensor,
        skipped: usize,
        cache: Option<&mut StepCache>,
    ) -> Result<(Tensor, Tensor)> {
        if skipped >= self.blocks.len() {
            candle_core::bail!(
                "block {skipped} cannot be skipped: the transformer has {} blocks",
                self.blocks.len()
            );
        }
        match self.run(latents, timestep, text, cache, Some(skipped))? {
            (plain, Some(weakened)) => Ok((plain, weakened)),
            (_, None) => unreachable!("a pass that skips a block gives the weakened row"),
        }
    }

    /// The forward pass, and with `skipped` the first row's pass with that block's
    /// self-attention skipped.
    fn run(
        &self,
        latents: &Tensor,
        timestep: &Tensor,
        text: &Tensor,
        cache: Option<&mut StepCache>,
        skipped: Option<usize>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (batch, channels, frames, height, width) = latents.dims5()?;
        let [pt, ph, pw] = self.config.patch_size;
        let grid = (frames / pt, height / ph, width / pw);
        let dim = self.config.inner_dim();
        let dtype = text.dtype();

        // Patches in row-major (frame, row, column) order, each flattened (channel, t, h, w).
        let patches = latents
            .reshape(&[batch, channels, grid.0, pt, grid.1, ph, grid.2, pw][..])?
            .permute(vec![0, 2, 4, 6, 1, 3, 5, 7])?
            .reshape((batch, grid.0 * grid.1 * grid.2, channels * pt * ph * pw))?
            .to_dtype(dtype)?;
        let x = self.patch_embedding.forward(&patches)?;

        let sinusoid = timestep_sinusoid(timestep, self.config.freq_dim)?;
        let (time_1, time_2) = &self.time_embedder;
        let temb = time_2.forward(&time_1.forward(&sinusoid.to_dtype(dtype)?)?.silu()?)?;
        let modulation = self
            .time_proj
            .forward(&temb.silu()?)?
            .reshape((batch, 6, dim))?
            .to_dtype(DType::F32)?;
        let (text_1, text_2) = &self.text_embedder;
        let text = FoldedText::new(text)?;
        let text = FoldedText {
            rows: text_2.forward(&text_1.forward_gelu(&text.rows)?)?,
            key_bias: text.key_bias,
        };

        let rotary = Rotary::for_grid(self.config.attention_head_dim, grid, latents.device())?;
        let depth = self.blocks.len();
        // Runs blocks `range` on every row of `x`.
        let run_blocks = |range: Range<usize>, mut x: Tensor| -> Result<Tensor> {
            for block in &self.blocks[range] {
                x = block.forward(&x, &text, &modulation, &rotary, false)?;
            }
            Ok(x)
        };
        let first_row = |tensor: &Tensor| tensor.narrow(0, 0, 1);
        // The first row of `x`, the hidden state before block `from`, through the blocks from
        // there on with the skipped block's self-attention skipped.
        let weaken = |x: &Tensor, from: usize| -> Result<Option<Tensor>> {
            let Some(skipped) = skipped else {
                return Ok(None);
            };
            let first_text = FoldedText {
                rows: first_row(&text.rows)?,
                key_bias: text.key_bias.as_ref().map(first_row).transpose()?,
            };
            let first_modulation = first_row(&modulation)?;
            let mut x = first_row(x)?;
            for (index, block) in self.blocks.iter().enumerate().skip(from) {
                let skip = index == skipped;
                x = block.forward(&x, &first_text, &first_modulation, &rotary, skip)?;
            }
            Ok(Some(x))
        };
        let (x, weakened) = match cache {
            Some(cache) if depth > 0 => {
                let weakened = weaken(&x, 0)?;
                let after_first = run_blocks(0..1, x.clone())?;
                let first_change = (&after_first - &x)?.to_dtype(DType::F32)?;
                let x = if let Some(reused) = cache.reuse(&first_change)? {
                    (after_first + reused.to_dtype(dtype)?)?
                } else {
                    let out = run_blocks(1..depth, after_first.clone())?;
                    cache.store(first_change, (&out - &after_first)?)?;
                    out
                };
                (x, weakened)
            }
            _ => {
                let shared = skipped.unwrap_or(depth);
                let x = run_blocks(0..shared, x)?;
                let weakened = weaken(&x, shared)?;
                (run_blocks(shared..depth, x)?, weakened)
            }
        };

        // The output head and the patches back into a video, for `x` of rows `temb`.
        let head = |x: &Tensor, temb: &Tensor| -> Result<Tensor> {
            let head = ops::broadcast_add(
                &self.scale_shift_table,
                &temb.to_dtype(DType::F32)?.unsqueeze(1)?,
            )?;
            let (shift, scale) = (head.narrow(1, 0, 1)?, head.narrow(1, 1, 1)?);
            let x = ops::broadcast_mul(&plain_layer_norm(x, self.config.eps)?, &(scale + 1.0)?)?;
            let x = ops::broadcast_add(&x, &shift)?;
            let x = self.proj_out.forward(&x.to_dtype(dtype)?)?;
            let rows = x.dim(0)?;
            let out = self.config.out_channels;
            x.reshape(&[rows, grid.0, grid.1, grid.2, pt, ph, pw, out][..])?
                .permute(vec![0, 7, 1, 4, 2, 5, 3, 6])?
                .reshape((rows, out, frames, height, width))
        };
        let weakened = weakened.map(|x| head(&x, &first_row(&temb)?)).transpose()?;
        Ok((head(&x, &temb)?, weakened))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use himmel_core::compare::max_abs_difference;

    #[test]
    fn attention_in_query_blocks_equals_attention_at_once() {
        let device = Device::Cpu;
        let query = Tensor::randn(0f32, 1.0, (2, 37, 3, 8), &device).unwrap();
        let key = Tensor::randn(0f32, 1.0, (2, 11, 3, 8), &device).unwrap();
        let value = Tensor::randn(0f32, 1.0, (2, 11, 3, 8), &device).unwrap();
        let bias = Tensor::randn(0f32, 1.0, (2, 11), &device).unwrap();
        let whole = attention_within(&query, &key, &value, Some(&bias), usize::MAX).unwrap();
        let blocks = attention_within(&query, &key, &value, Some(&bias), 2 * 3 * 11 * 5).unwrap();
        let gap = max_abs_difference(&whole, &blocks).unwrap();
        assert!(gap < 1e-6, "{gap}");
    }

    /// A three-block model with random weights (text rows of 8 channels, latents of 4).
    fn tiny_model(device: &Device) -> Result<WanTransformer> {
        let config: WanTransformerConfig = serde_json::from_str(
            r#"{"patch_size": [1, 2, 2], "num_attention_heads": 2, "attention_head_dim": 8,
                "in_channels": 4, "out_channels": 4, "text_dim": 8, "freq_dim": 8,
                "ffn_dim": 32, "num_layers": 3, "cross_attn_norm": true,
                "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 64}"#,
        )
        .map_err(candle_core::Error::msg)?;
        let weights = candle_nn::VarMap::new();
        let model = WanTransformer::new(
            &config,
            VarBuilder::from_varmap(&weights, DType::F32, device),
        )?;
        for var in weights.all_vars() {
            var.set(&Tensor::randn(0f32, 0.3, var.shape(), device)?)?;
        }
        Ok(model)
    }

    #[test]
    fn padded_text_attended_once_gives_what_every_padding_row_gives() -> Result<()> {
        let device = Device::Cpu;
        let model = tiny_model(&device)?;
        let latents = Tensor::randn(0f32, 1.0, (1, 4, 2, 4, 4), &device)?;
        let time = Tensor::new(&[500f32], &device)?;
        let prompt = Tensor::randn(0f32, 1.0, (1, 3, 8), &device)?;
        // Nine rows of zeros fold into one weighted row; zeros alternating with negative
        // zeros are the same values in other bits, so they are embedded and attended one by one.
        let padded = |signs: [f32; 2]| -> Result<Tensor> {
            let zeros: Vec<f32> = (0..9).flat_map(|row| [0.0 * signs[row % 2]; 8]).collect();
            let zeros = Tensor::from_vec(zeros, (1, 9, 8), &device)?;
            Tensor::cat(&[&prompt, &zeros], 1)
        };
        let folded = model.forward(&latents, &time, &padded([1.0, 1.0])?)?;
        let unfolded = model.forward(&latents, &time, &padded([1.0, -1.0])?)?;
        let gap = max_abs_difference(&folded, &unfolded)?;
        assert!(gap < 1e-5, "{gap}");
        // Not a degenerate check: the padding does weigh in.
        let unpadded = model.forward(&latents, &time, &prompt)?;
        assert!(max_abs_difference(&folded, &unpadded)? > 1e-3);
        Ok(())
    }

    #[test]
    fn a_step_cache_reuses_the_later_blocks_only_when_the_first_block_agrees() -> Result<()> {
        let device = Device::Cpu;
        let model = tiny_model(&device)?;
        let latents = Tensor::randn(0f32, 1.0, (1, 4, 2, 4, 4), &device)?;
        let text = Tensor::randn(0f32, 1.0, (1, 3, 8), &device)?;
        let (early, late) = (
            Tensor::new(&[900f32], &device)?,
            Tensor::new(&[100f32], &device)?,
        );
        let full = |time: &Tensor| model.forward(&latents, time, &text);

        // The same input again: the first block agrees exactly, and reusing is exact.
        let mut cache = StepCache::new(0.01);
        model.forward_cached(&latents, &early, &text, Some(&mut cache))?;
        let reused = model.forward_cached(&latents, &early, &text, Some(&mut cache))?;
        assert_eq!((cache.computed, cache.reused), (1, 1));
        assert!(max_abs_difference(&reused, &full(&early)?)? < 1e-5);

        // Another timestep changes the first block beyond the threshold: computed in full.
        let later = model.forward_cached(&latents, &late, &text, Some(&mut cache))?;
        assert_eq!((cache.computed, cache.reused), (2, 1));
        assert!(max_abs_difference(&later, &full(&late)?)? < 1e-5);

        // Threshold 0 never reuses.
        let mut never = StepCache::new(0.0);
        for _ in 0..2 {
            model.forward_cached(&latents, &early, &text, Some(&mut never))?;
        }
        assert_eq!((never.computed, never.reused), (2, 0));
        Ok(())
    }

    #[test]
    fn a_skipped_block_attends_each_token_to_itself() -> Result<()> {
        let device = Device::Cpu;
        let model = tiny_model(&device)?;
        let text = Tensor::randn(0f32, 1.0, (2, 3, 8), &device)?;
        let time = Tensor::new(&[500f32, 500.0], &device)?;
        let first = |tensor: &Tensor| tensor.narrow(0, 0, 1);
        // One token: attending to all tokens is attending to itself, so skipping changes nothing.
        let one = Tensor::randn(0f32, 1.0, (1, 4, 1, 2, 2), &device)?;
        let (plain, skipped) =
            model.forward_and_skipping(&one, &first(&time)?, &first(&text)?, 1, None)?;
        assert!(max_abs_difference(&skipped, &plain)? < 1e-5);
        // Many tokens: it weakens the prediction, and each block differently; the plain rows
        // are the plain pass's.
        let many = Tensor::randn(0f32, 1.0, (2, 4, 2, 4, 4), &device)?;
        let full = model.forward(&many, &time, &text)?;
        let (plain, at_first) = model.forward_and_skipping(&many, &time, &text, 0, None)?;
        let (_, at_last) = model.forward_and_skipping(&many, &time, &text, 2, None)?;
        assert!(max_abs_difference(&plain, &full)? < 1e-5);
        assert!(max_abs_difference(&at_first, &first(&full)?)? > 1e-3);
        assert!(max_abs_difference(&at_last, &first(&full)?)? > 1e-3);
        assert!(max_abs_difference(&at_first, &at_last)? > 1e-3);
        // The weakened row is the first row's, whether it shares blocks with the batch, runs
        // alone, or runs beside a step cache.
        let (_, alone) =
            model.forward_and_skipping(&first(&many)?, &first(&time)?, &first(&text)?, 2, None)?;
        assert!(max_abs_difference(&alone, &at_last)? < 1e-5);
        let mut cache = StepCache::new(0.0);
        let (cached, beside_cache) =
            model.forward_and_skipping(&many, &time, &text, 2, Some(&mut cache))?;
        assert!(max_abs_difference(&cached, &full)? < 1e-5);
        assert!(max_abs_difference(&beside_cache, &at_last)? < 1e-5);
        let error = model
            .forward_and_skipping(&many, &time, &text, 3, None)
            .unwrap_err();
        assert!(error.to_string().contains("3 blocks"), "{error}");
        Ok(())
    }
}
