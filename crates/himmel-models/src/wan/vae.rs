//! [`WanVae`]: Wan 2.1's causal video autoencoder (diffusers `AutoencoderKLWan`): 8x spatial and
//! 4x temporal compression, causal 3-D convolutions run in time chunks (one frame, then four at
//! a time when encoding; one latent frame at a time when decoding, and one output frame at a
//! time after the decoder's last temporal upsampling) with a per-layer cache of the frames each
//! convolution last saw, computing what the reference computes. Memory grows with the chunk,
//! not the clip; the encoder's weights can wait until something is encoded.

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::kernels::{video, video_training};

/// Configuration of the Wan VAE, as in a diffusers `vae/config.json` (defaults: Wan 2.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WanVaeConfig {
    /// Channels of the first stage; default 96.
    #[serde(default = "default_base_dim")]
    pub base_dim: usize,
    /// Channels of the decoder's last stage where they differ from `base_dim` (himmel-mini's
    /// decoder may be wider than its encoder); default none: `base_dim`, as Wan's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_base_dim: Option<usize>,
    /// Latent channels; default 16.
    #[serde(default = "default_z_dim")]
    pub z_dim: usize,
    /// Channel multiplier per stage; default `[1, 2, 4, 4]`.
    #[serde(default = "default_dim_mult")]
    pub dim_mult: Vec<usize>,
    /// Residual blocks per encoder stage (decoder stages have one more); default 2.
    #[serde(default = "default_res_blocks")]
    pub num_res_blocks: usize,
    /// Whether each encoder downsampling also halves time; default `[false, true, true]`.
    #[serde(default = "default_temporal")]
    pub temperal_downsample: Vec<bool>,
    /// Whether each encoder downsampling halves height and width; default none: every one does,
    /// as Wan's. A stage that keeps the size halves time only (himmel-mini's finer autoencoders:
    /// 2x in space, 4x in time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spatial_downsample: Option<Vec<bool>>,
    /// Per-channel latent means; default Wan 2.1's.
    #[serde(default = "default_mean")]
    pub latents_mean: Vec<f64>,
    /// Per-channel latent standard deviations; default Wan 2.1's.
    #[serde(default = "default_std")]
    pub latents_std: Vec<f64>,
    /// Statistics of the first latent frame where they differ from the others' (it encodes one
    /// frame, the others four each): himmel-mini's small autoencoders give it about half their
    /// spread. Default none: every frame normalises alike, as Wan's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_frame_latents: Option<LatentStatistics>,
    /// Attention at these scales outside the middle blocks; default none (the only supported).
    #[serde(default)]
    pub attn_scales: Vec<f64>,
    /// Wan 2.2's residual variant; default false (the only supported).
    #[serde(default)]
    pub is_residual: bool,
}

fn default_base_dim() -> usize {
    96
}
fn default_z_dim() -> usize {
    16
}
fn default_dim_mult() -> Vec<usize> {
    vec![1, 2, 4, 4]
}
fn default_res_blocks() -> usize {
    2
}
fn default_temporal() -> Vec<bool> {
    vec![false, true, true]
}
fn default_mean() -> Vec<f64> {
    vec![
        -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715,
        0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
    ]
}
fn default_std() -> Vec<f64> {
    vec![
        2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652,
        1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
    ]
}

/// Per-channel mean and standard deviation of latents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatentStatistics {
    /// Means, one per latent channel.
    pub mean: Vec<f64>,
    /// Standard deviations, one per latent channel.
    pub std: Vec<f64>,
}

impl WanVaeConfig {
    /// Wan 2.1's VAE (`Wan-AI/Wan2.1-T2V-1.3B-Diffusers/vae`).
    pub fn default_wan21() -> Self {
        Self {
            base_dim: default_base_dim(),
            decoder_base_dim: None,
            z_dim: default_z_dim(),
            dim_mult: default_dim_mult(),
            num_res_blocks: default_res_blocks(),
            temperal_downsample: default_temporal(),
            spatial_downsample: None,
            latents_mean: default_mean(),
            latents_std: default_std(),
            first_frame_latents: None,
            attn_scales: Vec::new(),
            is_residual: false,
        }
    }

    /// This config with latent statistics zero and one and none of its own for the first
    /// frame: its architecture alone, as an autoencoder run exports it.
    pub fn unnormalised(&self) -> Self {
        Self {
            latents_mean: vec![0.0; self.z_dim],
            latents_std: vec![1.0; self.z_dim],
            first_frame_latents: None,
            ..self.clone()
        }
    }

    /// Channels of the decoder's last stage (its others are multiples of it).
    pub fn decoder_dim(&self) -> usize {
        self.decoder_base_dim.unwrap_or(self.base_dim)
    }

    /// Whether encoder downsampling `stage` halves height and width.
    pub fn halves_space(&self, stage: usize) -> bool {
        self.spatial_downsample
            .as_ref()
            .is_none_or(|halves| halves.get(stage) == Some(&true))
    }

    /// How many pixels a latent cell spans in each spatial direction: 2 per downsampling stage
    /// that halves space.
    pub fn spatial_factor(&self) -> usize {
        let stages = self.dim_mult.len().saturating_sub(1);
        1 << (0..stages)
            .filter(|&stage| self.halves_space(stage))
            .count()
    }

    /// How many frames a latent frame stands for after the first: 2 per temporal downsampling.
    pub fn temporal_factor(&self) -> usize {
        1 << self
            .temperal_downsample
            .iter()
            .filter(|&&halves| halves)
            .count()
    }

    /// Floating-point operations (two per multiply-add) of decoding latents of `frames` x
    /// `height` x `width` cells: the convolutions and the mid block's attention, each layer at
    /// the frame count and size it runs at (the first frame is never doubled in time).
    pub fn decode_flops(&self, frames: usize, height: usize, width: usize) -> f64 {
        let last = *self.dim_mult.last().unwrap_or(&1);
        let dims: Vec<f64> = std::iter::once(last)
            .chain(self.dim_mult.iter().rev().copied())
            .map(|m| (self.decoder_dim() * m) as f64)
            .collect();
        let (mut frames, mut pixels) = (frames as f64, (height * width) as f64);
        // A convolution of `taps` taps from `inputs` to `outputs` channels over the clip so far.
        let conv = |inputs: f64, outputs: f64, taps: f64, frames: f64, pixels: f64| {
            2.0 * inputs * outputs * taps * frames * pixels
        };
        let residual = |inputs: f64, outputs: f64, frames: f64, pixels: f64| {
            let shortcut = if inputs == outputs {
                0.0
            } else {
                conv(inputs, outputs, 1.0, frames, pixels)
            };
            conv(inputs, outputs, 27.0, frames, pixels)
                + conv(outputs, outputs, 27.0, frames, pixels)
                + shortcut
        };
        let top = dims[0];
        let attention =
            frames * (2.0 * 4.0 * top * top * pixels + 2.0 * 2.0 * pixels * pixels * top);
        let mut total = conv(self.z_dim as f64, top, 27.0, frames, pixels)
            + 2.0 * residual(top, top, frames, pixels)
            + attention;
        let stages = self.dim_mult.len();
        for stage in 0..stages {
            let mut inputs = if stage > 0 {
                dims[stage] / 2.0
            } else {
                dims[stage]
            };
            for _ in 0..=self.num_res_blocks {
                total += residual(inputs, dims[stage + 1], frames, pixels);
                inputs = dims[stage + 1];
            }
            if stage + 1 != stages {
                let channels = dims[stage + 1];
                let temporal = self.temperal_downsample.iter().rev().nth(stage) == Some(&true);
                if temporal {
                    total += conv(channels, 2.0 * channels, 3.0, frames - 1.0, pixels);
                    frames = 2.0 * frames - 1.0;
                }
                if self.halves_space(stages - 2 - stage) {
                    pixels *= 4.0;
                }
                total += conv(channels, channels / 2.0, 9.0, frames, pixels);
            }
        }
        total + conv(dims[stages], 3.0, 27.0, frames, pixels)
    }
}

/// How [`latent_cells`] combines the pixels of a latent cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellReduction {
    /// Their mean.
    Mean,
    /// Their maximum.
    Max,
}

/// Pixels `[..., 1 + tk, sh, sw]` reduced over the cells of `config`'s latent grid (t and s its
/// temporal and spatial factors): frame 0 alone, then groups of t frames, each over sxs pixels.
/// Returns `[..., 1 + k, h, w]`.
pub fn latent_cells(
    pixels: &Tensor,
    config: &WanVaeConfig,
    reduction: CellReduction,
) -> Result<Tensor> {
    let dims = pixels.dims();
    if dims.len() < 3 {
        candle_core::bail!("latent_cells needs frames, height and width, got {dims:?}");
    }
    let (lead, grid) = dims.split_at(dims.len() - 3);
    let (frames, height, width) = (grid[0], grid[1], grid[2]);
    let (time, space) = (config.temporal_factor(), config.spatial_factor());
    let rows: usize = lead.iter().product();
    let reduce = |x: Tensor, dim: usize| match reduction {
        CellReduction::Mean => x.mean(dim),
        CellReduction::Max => x.max(dim),
    };
    let x = pixels.reshape((rows, frames, height, width))?;
    let groups = (frames - 1) / time;
    let first = x.narrow(1, 0, 1)?;
    // A single frame (an image) is one cell deep.
    let frames = if groups == 0 {
        first
    } else {
        let rest = x
            .narrow(1, 1, time * groups)?
            .reshape((rows, groups, time, height, width))?;
        Tensor::cat(&[first, reduce(rest, 2)?], 1)?
    };
    let cells = frames.reshape((
        rows,
        1 + groups,
        height / space,
        space,
        width / space,
        space,
    ))?;
    let cells = reduce(reduce(cells, 5)?, 3)?;
    let mut shape = lead.to_vec();
    shape.extend([1 + groups, height / space, width / space]);
    cells.reshape(shape)
}

/// The per-layer caches of one encode or decode, handed out in call order. A slot is `None`
/// before its layer's first chunk, then holds the last input frames the layer saw (at most
/// two), oldest first, as the tensors they came in: the causal convolutions read them in place.
struct TimeCache {
    slots: Vec<Option<Vec<Tensor>>>,
    cursor: usize,
}

impl TimeCache {
    fn new() -> Self {
        Self {
            slots: Vec::new(),
            cursor: 0,
        }
    }

    /// Starts a new chunk: layers take their slots from the first again.
    fn rewind(&mut self) {
        self.cursor = 0;
    }

    fn next(&mut self) -> &mut Option<Vec<Tensor>> {
        if self.cursor == self.slots.len() {
            self.slots.push(None);
        }
        self.cursor += 1;
        &mut self.slots[self.cursor - 1]
    }
}

/// The last `n` frames (time is dimension 2), or all if fewer; a copy when fewer than all, so
/// a cache holding them does not keep the whole chunk's storage alive.
fn last_frames(x: &Tensor, n: usize) -> Result<Tensor> {
    let frames = x.dim(2)?;
    if frames <= n {
        return Ok(x.clone());
    }
    x.narrow(2, frames - n, n)?.force_contiguous()
}

/// The last `n` frames of the frame tensors `earlier` (oldest first) followed by `x`, oldest
/// first: tensors kept whole are not copied, one cut is (see [`last_frames`]).
fn keep_last(earlier: Vec<Tensor>, x: &Tensor, n: usize) -> Result<Vec<Tensor>> {
    let mut kept = Vec::new();
    let mut count = 0;
    for frames in std::iter::once(x).chain(earlier.iter().rev()) {
        if count == n {
            break;
        }
        let part = last_frames(frames, n - count)?;
        count += part.dim(2)?;
        kept.push(part);
    }
    kept.reverse();
    Ok(kept)
}

/// Applies a 2-D op to every frame of `[B, C, T, H, W]`.
fn per_frame(x: &Tensor, op: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let (batch, channels, frames, height, width) = x.dims5()?;
    let flat = x
        .permute((0, 2, 1, 3, 4))?
        .reshape((batch * frames, channels, height, width))?;
    let out = op(&flat.contiguous()?)?;
    let (_, out_channels, out_height, out_width) = out.dims4()?;
    out.reshape((batch, frames, out_channels, out_height, out_width))?
        .permute((0, 2, 1, 3, 4))?
        .contiguous()
}

/// A 2-D convolution of frames `[N, C, H, W]` with `weight` `[O, C, k, k]`: candle's own while
/// the weight is fixed; while it is trained (gradients flow to it), as one matrix product over
/// the gathered `k * k` shifted views, whose backward pass is matrix products too (candle's CPU
/// backward of conv2d runs a direct transposed convolution that cost most of a training step).
fn conv2d(x: &Tensor, weight: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    if !weight.track_op() {
        return x.conv2d(weight, padding, stride, 1, 1);
    }
    let (batch, channels, height, width) = x.dims4()?;
    let (outputs, _, kernel, _) = weight.dims4()?;
    let out_height = (height + 2 * padding - kernel) / stride + 1;
    let out_width = (width + 2 * padding - kernel) / stride + 1;
    let padded = x
        .pad_with_zeros(2, padding, padding)?
        .pad_with_zeros(3, padding, padding)?;
    let mut views = Vec::with_capacity(kernel * kernel);
    for dy in 0..kernel {
        for dx in 0..kernel {
            let view = padded
                .narrow(2, dy, (out_height - 1) * stride + 1)?
                .narrow(3, dx, (out_width - 1) * stride + 1)?;
            views.push(every_nth(&every_nth(&view, 2, stride)?, 3, stride)?);
        }
    }
    // [N, C, k*k, H', W'] -> rows [N*H'*W', C*k*k], in the weight's (c, ky, kx) order.
    let columns = Tensor::stack(&views, 2)?
        .reshape((batch, channels * kernel * kernel, out_height * out_width))?
        .transpose(1, 2)?
        .reshape(((), channels * kernel * kernel))?;
    columns
        .matmul(&weight.reshape((outputs, ()))?.t()?)?
        .reshape((batch, out_height, out_width, outputs))?
        .permute((0, 3, 1, 2))
}

/// `layer` applied to frames `[N, C, H, W]` through [`conv2d`].
fn apply_conv2d(layer: &Conv2d, x: &Tensor) -> Result<Tensor> {
    let config = layer.config();
    let out = conv2d(x, layer.weight(), config.padding, config.stride)?;
    match layer.bias() {
        Some(bias) => out.broadcast_add(&bias.reshape((1, (), 1, 1))?),
        None => Ok(out),
    }
}

/// Every `n`th entry of dimension `dim`, from the first (length `1 + n(m-1)` gives `m`).
fn every_nth(x: &Tensor, dim: usize, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x.clone());
    }
    let length = x.dim(dim)?;
    let kept = (length - 1) / n + 1;
    let mut shape = x.dims().to_vec();
    shape[dim] = kept;
    shape.insert(dim + 1, n);
    x.pad_with_zeros(dim, 0, kept * n - length)?
        .reshape(shape)?
        .narrow(dim + 1, 0, 1)?
        .squeeze(dim + 1)
}

/// A 3-D convolution causal in time: `2 * pad_t` frames of zeros (or cached frames) in front.
struct CausalConv3d {
    /// `[out, in, kt, kh, kw]`.
    weight: Tensor,
    bias: Tensor,
    front: usize,
    spatial_padding: usize,
    time_stride: usize,
}

impl CausalConv3d {
    fn new(
        (inputs, outputs): (usize, usize),
        (kt, ks): (usize, usize),
        (pad_t, pad_s): (usize, usize),
        time_stride: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            weight: vb.get((outputs, inputs, kt, ks, ks), "weight")?,
            bias: vb.get(outputs, "bias")?,
            front: 2 * pad_t,
            spatial_padding: pad_s,
            time_stride,
        })
    }

    /// The convolution of `x` with the frames `before` (a cache, oldest first) in front of it,
    /// and zeros in front of those up to the kernel's causal padding; plus `residual` if given.
    fn forward(&self, x: &Tensor, before: &[Tensor], residual: Option<&Tensor>) -> Result<Tensor> {
        let before = if self.front > 0 { before } else { &[] };
        let cached = before
            .iter()
            .map(|frames| frames.dim(2))
            .sum::<Result<usize>>()?;
        let Some(zeros) = self.front.checked_sub(cached) else {
            candle_core::bail!(
                "causal conv3d: {cached} cached frames for a padding of {}",
                self.front
            );
        };
        if video::applies(x, &self.weight) {
            let taps = self.weight.dim(2)?;
            if zeros > 0 && zeros + cached + x.dim(2)? == taps {
                // One window, zeros in front (a first chunk's): the taps over the zeros add
                // nothing, so only the others run, over the frames there are.
                let weight = self.weight.narrow(2, zeros, taps - zeros)?.contiguous()?;
                let (bias, padding) = (&self.bias, self.spatial_padding);
                return video::conv3d_after(before, x, &weight, bias, padding, 1, residual);
            }
            // The cached frames (and zeros before the first chunk) are read in place, not joined.
            let mut front = Vec::with_capacity(before.len() + 1);
            if zeros > 0 {
                let (batch, channels, _, height, width) = x.dims5()?;
                let shape = (batch, channels, zeros, height, width);
                front.push(Tensor::zeros(shape, x.dtype(), x.device())?);
            }
            front.extend_from_slice(before);
            return video::conv3d_after(
                &front,
                x,
                &self.weight,
                &self.bias,
                self.spatial_padding,
                self.time_stride,
                residual,
            );
        }
        let out = self.forward_joined(x, before, zeros)?;
        match residual {
            Some(residual) => out + residual,
            None => Ok(out),
        }
    }

    /// [`Self::forward`] without the kernels: the frames joined, then candle's ops.
    fn forward_joined(&self, x: &Tensor, before: &[Tensor], zeros: usize) -> Result<Tensor> {
        let mut parts = before.to_vec();
        parts.push(x.clone());
        let x = Tensor::cat(&parts, 2)?
            .pad_with_zeros(2, zeros, 0)?
            .contiguous()?;
        if video_training::applies(&x, &self.weight) {
            return video_training::conv3d(
                &x,
                &self.weight,
                &self.bias,
                self.spatial_padding,
                self.time_stride,
            );
        }
        // Each output frame's window of input frames becomes the channels of one frame, in the
        // weight's (channel, tap) order, so a single 2-D convolution does the 3-D one.
        let (batch, channels, frames, height, width) = x.dims5()?;
        let (outputs, _, taps, kernel_height, kernel_width) = self.weight.dims5()?;
        let steps = (frames - taps) / self.time_stride + 1;
        let indices: Vec<u32> = (0..steps)
            .flat_map(|t| (0..taps).map(move |k| (t * self.time_stride + k) as u32))
            .collect();
        let windows = x
            .index_select(&Tensor::new(indices.as_slice(), x.device())?, 2)?
            .reshape((batch, channels, steps, taps, height, width))?
            .permute((0, 2, 1, 3, 4, 5))?
            .reshape((batch * steps, channels * taps, height, width))?;
        let weight =
            self.weight
                .reshape((outputs, channels * taps, kernel_height, kernel_width))?;
        let out = conv2d(&windows, &weight, self.spatial_padding, 1)?;
        let (_, _, out_height, out_width) = out.dims4()?;
        out.reshape((batch, steps, outputs, out_height, out_width))?
            .permute((0, 2, 1, 3, 4))?
            .broadcast_add(&self.bias.reshape((1, (), 1, 1, 1))?)
    }

    /// Runs with the layer's cache slot (which holds the last two input frames), plus
    /// `residual` if given.
    fn forward_cached(
        &self,
        x: &Tensor,
        cache: &mut TimeCache,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let slot = cache.next();
        let before = slot.take().unwrap_or_default();
        let out = self.forward(x, &before, residual)?;
        *slot = Some(keep_last(before, x, 2)?);
        Ok(out)
    }
}

/// L2 normalisation over channels times sqrt(C) and a learned gain (`WanRMS_norm`).
struct ChannelRmsNorm {
    /// `[1, C, 1, ...]`.
    gamma: Tensor,
    scale: f64,
}

impl ChannelRmsNorm {
    /// `dims` is the gain's trailing singleton count: 3 for video, 2 for frames.
    fn new(channels: usize, trailing: usize, vb: VarBuilder) -> Result<Self> {
        let mut shape = vec![channels];
        shape.extend(std::iter::repeat_n(1, trailing));
        Ok(Self {
            gamma: vb.get(shape.as_slice(), "gamma")?.unsqueeze(0)?,
            scale: (channels as f64).sqrt(),
        })
    }

    /// The norm followed by SiLU, as the blocks use it.
    fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        self.normalise(x, true)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.normalise(x, false)
    }

    /// The norm, then SiLU when `silu`: one fused pass where the CPU kernel applies.
    fn normalise(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        let gain = (&self.gamma * self.scale)?;
        if video::applies(x, &self.gamma) {
            return video::channel_rms_norm(x, &gain, silu);
        }
        if video_training::applies(x, &self.gamma) {
            return video_training::channel_rms_norm(x, &gain, silu);
        }
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        // max(norm, 1e-12) as the reference has it, written so its gradient stays finite at 0.
        let norm = (x.sqr()?.sum_keepdim(1)? + 1e-24)?.sqrt()?;
        let normed = x
            .broadcast_div(&norm)?
            .to_dtype(dtype)?
            .broadcast_mul(&gain)?;
        if silu { normed.silu() } else { Ok(normed) }
    }
}

struct ResidualBlock {
    norm1: ChannelRmsNorm,
    conv1: CausalConv3d,
    norm2: ChannelRmsNorm,
    conv2: CausalConv3d,
    shortcut: Option<CausalConv3d>,
}

impl ResidualBlock {
    fn new(inputs: usize, outputs: usize, vb: VarBuilder) -> Result<Self> {
        let shortcut = (inputs != outputs)
            .then(|| {
                CausalConv3d::new((inputs, outputs), (1, 1), (0, 0), 1, vb.pp("conv_shortcut"))
            })
            .transpose()?;
        Ok(Self {
            norm1: ChannelRmsNorm::new(inputs, 3, vb.pp("norm1"))?,
            conv1: CausalConv3d::new((inputs, outputs), (3, 3), (1, 1), 1, vb.pp("conv1"))?,
            norm2: ChannelRmsNorm::new(outputs, 3, vb.pp("norm2"))?,
            conv2: CausalConv3d::new((outputs, outputs), (3, 3), (1, 1), 1, vb.pp("conv2"))?,
            shortcut,
        })
    }

    fn forward(&self, x: &Tensor, cache: &mut TimeCache) -> Result<Tensor> {
        let skip = match &self.shortcut {
            Some(conv) => conv.forward(x, &[], None)?,
            None => x.clone(),
        };
        let h = self
            .conv1
            .forward_cached(&self.norm1.forward_silu(x)?, cache, None)?;
        self.conv2
            .forward_cached(&self.norm2.forward_silu(&h)?, cache, Some(&skip))
    }
}

/// Single-head self-attention over each frame's pixels.
struct FrameAttention {
    norm: ChannelRmsNorm,
    to_qkv: Conv2d,
    proj: Conv2d,
}

impl FrameAttention {
    fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        let conv = |inputs, outputs, name| {
            candle_nn::conv2d(inputs, outputs, 1, Conv2dConfig::default(), vb.pp(name))
        };
        Ok(Self {
            norm: ChannelRmsNorm::new(channels, 2, vb.pp("norm"))?,
            to_qkv: conv(channels, 3 * channels, "to_qkv")?,
            proj: conv(channels, channels, "proj")?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let attended = per_frame(x, |frames| {
            let (count, channels, height, width) = frames.dims4()?;
            let qkv = self.to_qkv.forward(&self.norm.forward(frames)?)?;
            let tokens = qkv
                .reshape((count, 3 * channels, height * width))?
                .transpose(1, 2)?;
            let part = |i: usize| tokens.narrow(2, i * channels, channels)?.contiguous();
            let (query, key, value) = (part(0)?, part(1)?, part(2)?);
            let scores = (query.matmul(&key.t()?)? / (channels as f64).sqrt())?;
            let out = crate::ops::softmax_last_dim(&scores)?.matmul(&value)?;
            let out = out
                .transpose(1, 2)?
                .reshape((count, channels, height, width))?;
            self.proj.forward(&out)
        })?;
        attended + x
    }
}

/// Residual, attention, residual.
struct MidBlock {
    first: ResidualBlock,
    attention: FrameAttention,
    second: ResidualBlock,
}

impl MidBlock {
    fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            first: ResidualBlock::new(channels, channels, vb.pp("resnets.0"))?,
            attention: FrameAttention::new(channels, vb.pp("attentions.0"))?,
            second: ResidualBlock::new(channels, channels, vb.pp("resnets.1"))?,
        })
    }

    fn forward(&self, x: &Tensor, cache: &mut TimeCache) -> Result<Tensor> {
        let x = self.first.forward(x, cache)?;
        let x = self.attention.forward(&x)?;
        self.second.forward(&x, cache)
    }
}

/// Halves height and width (unless its convolution has stride 1 and keeps the size) and, with
/// `time_conv`, time after the first frame.
struct Downsample {
    spatial: Conv2d,
    time_conv: Option<CausalConv3d>,
}

impl Downsample {
    fn new(channels: usize, halves_space: bool, temporal: bool, vb: VarBuilder) -> Result<Self> {
        // Halving pads one row and column after the frame (in `forward`); keeping pads both.
        let config = Conv2dConfig {
            stride: if halves_space { 2 } else { 1 },
            padding: usize::from(!halves_space),
            ..Default::default()
        };
        let time_conv = temporal
            .then(|| CausalConv3d::new((channels, channels), (3, 1), (0, 0), 2, vb.pp("time_conv")))
            .transpose()?;
        Ok(Self {
            spatial: candle_nn::conv2d(channels, channels, 3, config, vb.pp("resample.1"))?,
            time_conv,
        })
    }

    fn forward(&self, x: &Tensor, cache: &mut TimeCache) -> Result<Tensor> {
        let x = if self.spatial.config().stride == 2 {
            per_frame(x, |frames| {
                let padded =
                    frames
                        .pad_with_zeros(D::Minus1, 0, 1)?
                        .pad_with_zeros(D::Minus2, 0, 1)?;
                apply_conv2d(&self.spatial, &padded)
            })?
        } else {
            frame_conv(&self.spatial, x)?
        };
        let Some(time_conv) = &self.time_conv else {
            return Ok(x);
        };
        match cache.next().replace(vec![last_frames(&x, 1)?]) {
            Some(mut joined) => {
                joined.push(x);
                time_conv.forward(&Tensor::cat(&joined, 2)?, &[], None)
            }
            // The first chunk passes through; its last frame is kept for the next one.
            None => Ok(x),
        }
    }
}

/// Doubles height and width (unless `doubles_space` is false) and, with `time_conv`, time after
/// the first frame; its convolution halves the channels.
struct Upsample {
    spatial: Conv2d,
    doubles_space: bool,
    time_conv: Option<CausalConv3d>,
}

impl Upsample {
    fn new(channels: usize, doubles_space: bool, temporal: bool, vb: VarBuilder) -> Result<Self> {
        let config = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let time_conv = temporal
            .then(|| {
                CausalConv3d::new(
                    (channels, 2 * channels),
                    (3, 1),
                    (1, 0),
                    1,
                    vb.pp("time_conv"),
                )
            })
            .transpose()?;
        Ok(Self {
            spatial: candle_nn::conv2d(channels, channels / 2, 3, config, vb.pp("resample.1"))?,
            doubles_space,
            time_conv,
        })
    }

    fn forward(&self, x: &Tensor, cache: &mut TimeCache) -> Result<Tensor> {
        let mut x = x.clone();
        if let Some(time_conv) = &self.time_conv {
            let slot = cache.next();
            // The first chunk passes through unchanged (leaving no frames in the cache, so the
            // second sees zeros in front of it).
            if let Some(before) = slot.replace(Vec::new()) {
                let doubled = time_conv.forward(&x, &before, None)?;
                *slot = Some(keep_last(before, &x, 2)?);
                // Channels [0, C) are the earlier frame of each pair, [C, 2C) the later.
                let (batch, channels, frames, height, width) = x.dims5()?;
                x = doubled
                    .reshape((batch, 2, channels, frames, height, width))?
                    .permute((0, 2, 3, 1, 4, 5))?
                    .reshape((batch, channels, 2 * frames, height, width))?;
            }
        }
        if self.doubles_space {
            x = upsample_nearest_twice(&x)?;
        }
        frame_conv(&self.spatial, &x)
    }
}

/// Video `[B, C, T, H, W]` with each pixel repeated into a 2x2 block.
fn upsample_nearest_twice(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 && !x.track_op() {
        return video::upsample_nearest_twice(x);
    }
    let (batch, channels, frames, height, width) = x.dims5()?;
    x.to_dtype(DType::F32)?
        .reshape((batch, channels * frames, height, width))?
        .upsample_nearest2d(2 * height, 2 * width)?
        .reshape((batch, channels, frames, 2 * height, 2 * width))?
        .to_dtype(x.dtype())
}

/// `layer` (a 3x3 convolution padded to keep the size) applied to every frame of video
/// `[B, C, T, H, W]`, as one video convolution where the kernels take it.
fn frame_conv(layer: &Conv2d, x: &Tensor) -> Result<Tensor> {
    if let Some(bias) = layer.bias()
        && video_training::applies(x, layer.weight())
    {
        let weight = layer.weight().unsqueeze(2)?;
        return if video::applies(x, &weight) {
            video::conv3d(x, &weight, bias, 1, 1)
        } else {
            video_training::conv3d(x, &weight, bias, 1, 1)
        };
    }
    per_frame(x, |frames| apply_conv2d(layer, frames))
}

/// One step of the encoder or a decoder stage.
enum Layer {
    Residual(ResidualBlock),
    Down(Downsample),
    Up(Upsample),
}

impl Layer {
    fn forward(&self, x: &Tensor, cache: &mut TimeCache) -> Result<Tensor> {
        match self {
            Self::Residual(block) => block.forward(x, cache),
            Self::Down(down) => down.forward(x, cache),
            Self::Up(up) => up.forward(x, cache),
        }
    }
}

/// conv_in, layers, mid block, norm, SiLU, conv_out: the shape shared by encoder and decoder.
struct Coder {
    conv_in: CausalConv3d,
    mid: MidBlock,
    layers: Vec<Layer>,
    mid_first: bool,
    /// From this layer on nothing mixes frames but the causal convolutions, whose caches carry
    /// the frames before: inference on the CPU runs the rest one frame at a time, holding a
    /// quarter of the chunk's activations (the decoder after its last temporal upsampling).
    /// A GPU runs the chunk whole: its memory is ample and each frame costs kernel launches.
    frame_wise_from: Option<usize>,
    norm_out: ChannelRmsNorm,
    conv_out: CausalConv3d,
}

impl Coder {
    fn forward(&self, x: &Tensor, cache: &mut TimeCache) -> Result<Tensor> {
        cache.rewind();
        let mut x = self.conv_in.forward_cached(x, cache, None)?;
        if self.mid_first {
            x = self.mid.forward(&x, cache)?;
        }
        let split = self
            .frame_wise_from
            .filter(|_| !x.track_op() && x.device().is_cpu())
            .unwrap_or(self.layers.len());
        for layer in &self.layers[..split] {
            x = layer.forward(&x, cache)?;
        }
        if split == self.layers.len() {
            return self.finish(&x, &self.layers[split..], cache);
        }
        let first_slot = cache.cursor;
        let frames = (0..x.dim(2)?)
            .map(|t| {
                cache.cursor = first_slot;
                self.finish(&x.narrow(2, t, 1)?, &self.layers[split..], cache)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&frames, 2)
    }

    /// `layers`, then (unless it came first) the mid block, the norm, SiLU and conv_out.
    fn finish(&self, x: &Tensor, layers: &[Layer], cache: &mut TimeCache) -> Result<Tensor> {
        let mut x = x.clone();
        for layer in layers {
            x = layer.forward(&x, cache)?;
        }
        if !self.mid_first {
            x = self.mid.forward(&x, cache)?;
        }
        self.conv_out
            .forward_cached(&self.norm_out.forward_silu(&x)?, cache, None)
    }
}

/// The encoding half: the encoder and the convolution to the latent moments.
struct Encoding {
    encoder: Coder,
    quant_conv: CausalConv3d,
}

/// Opens the weights again, for an encoder built on first use.
pub type WeightSource = Box<dyn Fn() -> Result<VarBuilder<'static>> + Send + Sync>;

/// The encoding half, loaded with the decoder or on first use.
enum EncoderWeights {
    Loaded(Encoding),
    OnFirstUse(WeightSource, std::sync::OnceLock<Encoding>),
}

/// Wan's video autoencoder.
pub struct WanVae {
    config: WanVaeConfig,
    encoder: EncoderWeights,
    decoder: Coder,
    post_quant_conv: CausalConv3d,
}

impl WanVae {
    /// Loads the autoencoder from diffusers-named weights.
    pub fn new(config: &WanVaeConfig, vb: VarBuilder) -> Result<Self> {
        Self::check(config)?;
        let encoder = EncoderWeights::Loaded(Self::encoding(config, vb.clone())?);
        Self::with_encoder(config, vb, encoder)
    }

    /// Loads the decoder from `vb` now and the encoder from `source` when something is first
    /// encoded: text to video never holds the encoder's weights.
    pub fn with_lazy_encoder(
        config: &WanVaeConfig,
        vb: VarBuilder,
        source: WeightSource,
    ) -> Result<Self> {
        Self::check(config)?;
        let encoder = EncoderWeights::OnFirstUse(source, std::sync::OnceLock::new());
        Self::with_encoder(config, vb, encoder)
    }

    fn with_encoder(
        config: &WanVaeConfig,
        vb: VarBuilder,
        encoder: EncoderWeights,
    ) -> Result<Self> {
        let z = config.z_dim;
        Ok(Self {
            encoder,
            decoder: Self::decoder(config, vb.pp("decoder"))?,
            post_quant_conv: CausalConv3d::new(
                (z, z),
                (1, 1),
                (0, 0),
                1,
                vb.pp("post_quant_conv"),
            )?,
            config: config.clone(),
        })
    }

    fn encoding(config: &WanVaeConfig, vb: VarBuilder) -> Result<Encoding> {
        let z = config.z_dim;
        Ok(Encoding {
            encoder: Self::encoder(config, vb.pp("encoder"))?,
            quant_conv: CausalConv3d::new((2 * z, 2 * z), (1, 1), (0, 0), 1, vb.pp("quant_conv"))?,
        })
    }

    /// The encoding half, built from its source on first use.
    fn encoding_half(&self) -> Result<&Encoding> {
        match &self.encoder {
            EncoderWeights::Loaded(encoding) => Ok(encoding),
            EncoderWeights::OnFirstUse(source, built) => {
                if let Some(encoding) = built.get() {
                    return Ok(encoding);
                }
                let encoding = Self::encoding(&self.config, source()?)?;
                Ok(built.get_or_init(|| encoding))
            }
        }
    }

    /// Rejects configurations this implementation does not cover.
    fn check(config: &WanVaeConfig) -> Result<()> {
        if config.is_residual || !config.attn_scales.is_empty() {
            candle_core::bail!(
                "only the Wan 2.1 VAE (is_residual false, no attn_scales) is supported"
            );
        }
        if config.decoder_base_dim == Some(0) {
            candle_core::bail!("decoder_base_dim must be at least 1");
        }
        if config.latents_mean.len() != config.z_dim || config.latents_std.len() != config.z_dim {
            candle_core::bail!(
                "latents_mean and latents_std need {} entries each",
                config.z_dim
            );
        }
        if let Some(first) = &config.first_frame_latents
            && (first.mean.len() != config.z_dim || first.std.len() != config.z_dim)
        {
            candle_core::bail!(
                "first_frame_latents needs {} means and standard deviations",
                config.z_dim
            );
        }
        if config.dim_mult.is_empty()
            || config.temperal_downsample.len() + 1 != config.dim_mult.len()
        {
            candle_core::bail!(
                "temperal_downsample needs one entry per downsampling: {} for dim_mult {:?}, got {:?}",
                config.dim_mult.len().saturating_sub(1),
                config.dim_mult,
                config.temperal_downsample
            );
        }
        if let Some(space) = &config.spatial_downsample {
            if space.len() != config.temperal_downsample.len() {
                candle_core::bail!(
                    "spatial_downsample needs one entry per downsampling like temperal_downsample: {:?} against {:?}",
                    space,
                    config.temperal_downsample
                );
            }
            if let Some(stage) =
                (0..space.len()).find(|&stage| !space[stage] && !config.temperal_downsample[stage])
            {
                candle_core::bail!(
                    "downsampling stage {stage} halves neither space nor time (spatial_downsample {:?}, temperal_downsample {:?})",
                    space,
                    config.temperal_downsample
                );
            }
        }
        Ok(())
    }

    fn encoder(config: &WanVaeConfig, vb: VarBuilder) -> Result<Coder> {
        let base = config.base_dim;
        let dims: Vec<usize> = std::iter::once(1)
            .chain(config.dim_mult.iter().copied())
            .map(|m| base * m)
            .collect();
        let blocks = vb.pp("down_blocks");
        let mut layers = Vec::new();
        let stages = config.dim_mult.len();
        for stage in 0..stages {
            let mut inputs = dims[stage];
            for _ in 0..config.num_res_blocks {
                layers.push(Layer::Residual(ResidualBlock::new(
                    inputs,
                    dims[stage + 1],
                    blocks.pp(layers.len()),
                )?));
                inputs = dims[stage + 1];
            }
            if stage + 1 != stages {
                let temporal = config
                    .temperal_downsample
                    .get(stage)
                    .copied()
                    .unwrap_or(false);
                layers.push(Layer::Down(Downsample::new(
                    dims[stage + 1],
                    config.halves_space(stage),
                    temporal,
                    blocks.pp(layers.len()),
                )?));
            }
        }
        let top = dims[stages];
        Ok(Coder {
            conv_in: CausalConv3d::new((3, base), (3, 3), (1, 1), 1, vb.pp("conv_in"))?,
            mid: MidBlock::new(top, vb.pp("mid_block"))?,
            layers,
            mid_first: false,
            frame_wise_from: None,
            norm_out: ChannelRmsNorm::new(top, 3, vb.pp("norm_out"))?,
            conv_out: CausalConv3d::new(
                (top, 2 * config.z_dim),
                (3, 3),
                (1, 1),
                1,
                vb.pp("conv_out"),
            )?,
        })
    }

    fn decoder(config: &WanVaeConfig, vb: VarBuilder) -> Result<Coder> {
        let base = config.decoder_dim();
        let last = *config.dim_mult.last().unwrap_or(&1);
        let dims: Vec<usize> = std::iter::once(last)
            .chain(config.dim_mult.iter().rev().copied())
            .map(|m| base * m)
            .collect();
        let stages = config.dim_mult.len();
        let upsample_time: Vec<bool> = config.temperal_downsample.iter().rev().copied().collect();
        let mut layers = Vec::new();
        for stage in 0..stages {
            let block = vb.pp(format!("up_blocks.{stage}"));
            let mut inputs = if stage > 0 {
                dims[stage] / 2
            } else {
                dims[stage]
            };
            for j in 0..=config.num_res_blocks {
                layers.push(Layer::Residual(ResidualBlock::new(
                    inputs,
                    dims[stage + 1],
                    block.pp(format!("resnets.{j}")),
                )?));
                inputs = dims[stage + 1];
            }
            if stage + 1 != stages {
                let temporal = upsample_time.get(stage).copied().unwrap_or(false);
                layers.push(Layer::Up(Upsample::new(
                    dims[stage + 1],
                    config.halves_space(stages - 2 - stage),
                    temporal,
                    block.pp("upsamplers.0"),
                )?));
            }
        }
        let bottom = dims[stages];
        let frame_wise_from = layers
            .iter()
            .rposition(|layer| matches!(layer, Layer::Up(up) if up.time_conv.is_some()))
            .map_or(0, |last| last + 1);
        Ok(Coder {
            conv_in: CausalConv3d::new(
                (config.z_dim, dims[0]),
                (3, 3),
                (1, 1),
                1,
                vb.pp("conv_in"),
            )?,
            mid: MidBlock::new(dims[0], vb.pp("mid_block"))?,
            layers,
            mid_first: true,
            frame_wise_from: Some(frame_wise_from),
            norm_out: ChannelRmsNorm::new(bottom, 3, vb.pp("norm_out"))?,
            conv_out: CausalConv3d::new((bottom, 3), (3, 3), (1, 1), 1, vb.pp("conv_out"))?,
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &WanVaeConfig {
        &self.config
    }

    /// Encodes video `[B, 3, 1 + 4k, H, W]` in -1..=1 to the latent mean `[B, z, 1 + k, H/8, W/8]`
    /// (not normalised; see [`WanVae::normalize`]); other configs compress by their
    /// [`WanVaeConfig::temporal_factor`] and [`WanVaeConfig::spatial_factor`].
    pub fn encode(&self, video: &Tensor) -> Result<Tensor> {
        Ok(self.encode_moments(video)?.0)
    }

    /// Encodes like [`WanVae::encode`] and returns the latent distribution: `(mean, log_var)`.
    pub fn encode_moments(&self, video: &Tensor) -> Result<(Tensor, Tensor)> {
        let Encoding {
            encoder,
            quant_conv,
        } = self.encoding_half()?;
        let frames = video.dim(2)?;
        let mut cache = TimeCache::new();
        let mut chunks = vec![encoder.forward(&video.narrow(2, 0, 1)?, &mut cache)?];
        let mut start = 1;
        while start < frames {
            let length = self.config.temporal_factor().min(frames - start);
            chunks.push(encoder.forward(&video.narrow(2, start, length)?, &mut cache)?);
            start += length;
        }
        let moments = quant_conv.forward(&Tensor::cat(&chunks, 2)?, &[], None)?;
        let z = self.config.z_dim;
        Ok((moments.narrow(1, 0, z)?, moments.narrow(1, z, z)?))
    }

    /// Decodes latents `[B, z, F, h, w]` (not normalised) to video `[B, 3, 1 + 4(F-1), 8h, 8w]`
    /// in -1..=1, one latent frame at a time.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        self.decode_unclamped(latents)?.clamp(-1f32, 1f32)
    }

    /// [`WanVae::decode`] without the final clamp (training needs gradients everywhere).
    pub fn decode_unclamped(&self, latents: &Tensor) -> Result<Tensor> {
        let x = self.post_quant_conv.forward(latents, &[], None)?;
        let mut cache = TimeCache::new();
        let frames = (0..x.dim(2)?)
            .map(|i| self.decoder.forward(&x.narrow(2, i, 1)?, &mut cache))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&frames, 2)
    }

    /// `(mean, std)` to normalise `like` `[B, z, F, h, w]` (a whole encoding, from its first
    /// latent frame): `[1, z, 1, 1, 1]`, or `[1, z, F, 1, 1]` when the first frame has its own.
    fn statistics(&self, like: &Tensor) -> Result<(Tensor, Tensor)> {
        let shape = (1, self.config.z_dim, 1, 1, 1);
        let to_tensor = |values: &[f64]| -> Result<Tensor> {
            let values: Vec<f32> = values.iter().map(|&v| v as f32).collect();
            Tensor::from_vec(values, shape, like.device())?.to_dtype(like.dtype())
        };
        let (mean, std) = (
            to_tensor(&self.config.latents_mean)?,
            to_tensor(&self.config.latents_std)?,
        );
        let frames = like.dim(2)?;
        match &self.config.first_frame_latents {
            Some(first) if frames == 1 => Ok((to_tensor(&first.mean)?, to_tensor(&first.std)?)),
            Some(first) if frames > 1 => {
                let rest = (1, self.config.z_dim, frames - 1, 1, 1);
                let join = |first: Tensor, rest_values: &Tensor| {
                    Tensor::cat(&[first, rest_values.broadcast_as(rest)?.contiguous()?], 2)
                };
                Ok((
                    join(to_tensor(&first.mean)?, &mean)?,
                    join(to_tensor(&first.std)?, &std)?,
                ))
            }
            _ => Ok((mean, std)),
        }
    }

    /// Latents as the denoiser sees them: `(mean_latent - latents_mean) / latents_std`, with the
    /// first latent frame's own statistics where the config has them. `latents` must start at
    /// an encoding's first latent frame.
    pub fn normalize(&self, latents: &Tensor) -> Result<Tensor> {
        let (mean, std) = self.statistics(latents)?;
        latents.broadcast_sub(&mean)?.broadcast_div(&std)
    }

    /// The inverse of [`WanVae::normalize`].
    pub fn denormalize(&self, latents: &Tensor) -> Result<Tensor> {
        let (mean, std) = self.statistics(latents)?;
        latents.broadcast_mul(&std)?.broadcast_add(&mean)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use himmel_core::compare::max_abs_difference;

    #[test]
    fn trained_convolutions_match_candles() {
        let device = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 9, 7), &device).unwrap();
        for (kernel, padding, stride) in [(3, 1, 1), (3, 0, 2), (1, 0, 1), (3, 1, 2)] {
            let weight = Tensor::randn(0f32, 1.0, (4, 3, kernel, kernel), &device).unwrap();
            let trained = Var::from_tensor(&weight).unwrap();
            assert!(trained.as_tensor().track_op() && !weight.track_op());
            let ours = conv2d(&x, trained.as_tensor(), padding, stride).unwrap();
            let candles = x.conv2d(&weight, padding, stride, 1, 1).unwrap();
            assert_eq!(
                ours.dims(),
                candles.dims(),
                "k{kernel} p{padding} s{stride}"
            );
            let difference = max_abs_difference(&ours, &candles).unwrap();
            assert!(
                difference < 1e-4,
                "k{kernel} p{padding} s{stride}: {difference}"
            );
        }
    }

    #[test]
    fn windows_as_channels_convolve_as_the_kernel_does() {
        // f64 takes the path GPUs and bf16 take (windows folded into channels, one conv2d);
        // the f32 CPU kernel is the reference.
        let device = Device::Cpu;
        let clip = Tensor::randn(0f32, 1.0, (2, 3, 4, 6, 5), &device).unwrap();
        let frame = clip.narrow(2, 0, 1).unwrap();
        let cached = Tensor::randn(0f32, 1.0, (2, 3, 1, 6, 5), &device).unwrap();
        // A clip after a cached frame; a first chunk's frame after zeros only, and after zeros
        // and a cached frame (one window each: the kernel leaves out the taps over the zeros).
        let inputs = [
            (&clip, vec![cached.clone()]),
            (&frame, vec![]),
            (&frame, vec![cached]),
        ];
        let shapes = [(3, 3, 1, 1), (3, 1, 0, 1), (3, 3, 1, 2)];
        for ((taps, size, padding, time_stride), (x, before)) in shapes
            .into_iter()
            .flat_map(|shape| inputs.iter().map(move |input| (shape, input)))
        {
            let weight = Tensor::randn(0f32, 1.0, (4, 3, taps, size, size), &device).unwrap();
            let bias = Tensor::randn(0f32, 1.0, 4, &device).unwrap();
            let conv = |dtype| CausalConv3d {
                weight: weight.to_dtype(dtype).unwrap(),
                bias: bias.to_dtype(dtype).unwrap(),
                front: taps - 1,
                spatial_padding: padding,
                time_stride,
            };
            let in_f64 = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
            let before_f64: Vec<Tensor> = before.iter().map(in_f64).collect();
            let folded = conv(DType::F64)
                .forward(&in_f64(x), &before_f64, None)
                .unwrap();
            let kernel = conv(DType::F32).forward(x, before, None).unwrap();
            assert_eq!(folded.dims(), kernel.dims());
            let difference =
                max_abs_difference(&folded.to_dtype(DType::F32).unwrap(), &kernel).unwrap();
            assert!(difference < 1e-4, "{taps}x{size}x{size}: {difference}");
        }
    }

    #[test]
    fn latent_cells_show_an_object_when_any_of_their_pixels_does() {
        // 9 frames of 8x8 pixels on a grid of 4 frames and 4x4 pixels: one pixel set in frame
        // 6 at row 5, column 2.
        let config = WanVaeConfig {
            dim_mult: vec![1, 1, 1],
            temperal_downsample: vec![true, true],
            ..WanVaeConfig::default_wan21()
        };
        let mut values = vec![0f32; 9 * 8 * 8];
        values[6 * 64 + 5 * 8 + 2] = 1.0;
        let masks = Tensor::from_vec(values, (1, 1, 9, 8, 8), &Device::Cpu).unwrap();
        let grid = latent_cells(&masks, &config, CellReduction::Max).unwrap();
        assert_eq!(grid.dims(), [1, 1, 3, 2, 2]);
        let cells = grid.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Frame 6 is in the second group of four (latent frame 2); row 5 and column 2 are in
        // the lower left cell.
        let mut expected = vec![0f32; 12];
        expected[2 * 4 + 2] = 1.0;
        assert_eq!(cells, expected);
        // An image: frame 6 alone.
        let image = masks.narrow(2, 6, 1).unwrap();
        let grid = latent_cells(&image, &config, CellReduction::Max).unwrap();
        assert_eq!(grid.dims(), [1, 1, 1, 2, 2]);
        let cells = grid.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(cells, [0.0, 0.0, 1.0, 0.0]);
    }

    #[test]
    fn the_first_latent_frame_normalises_with_its_own_statistics() {
        let mut config = WanVaeConfig {
            base_dim: 4,
            decoder_base_dim: None,
            z_dim: 2,
            dim_mult: vec![1, 2],
            num_res_blocks: 1,
            temperal_downsample: vec![true],
            latents_mean: vec![1.0, -1.0],
            latents_std: vec![2.0, 4.0],
            ..WanVaeConfig::default_wan21()
        };
        config.first_frame_latents = Some(LatentStatistics {
            mean: vec![0.5, 0.0],
            std: vec![0.5, 1.0],
        });
        let weights = candle_nn::VarMap::new();
        let vae = WanVae::new(
            &config,
            VarBuilder::from_varmap(&weights, DType::F32, &Device::Cpu),
        )
        .unwrap();
        // Channel values 3 in every frame: frame 0 normalises to (3 - 0.5) / 0.5 = 5 and
        // 3 / 1 = 3, later frames to (3 - 1) / 2 = 1 and 4 / 4 = 1.
        let latents = Tensor::full(3f32, (1, 2, 3, 1, 1), &Device::Cpu).unwrap();
        let normed = vae.normalize(&latents).unwrap();
        let values = normed.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values, [5.0, 1.0, 1.0, 3.0, 1.0, 1.0]);
        let back = vae.denormalize(&normed).unwrap();
        assert_eq!(max_abs_difference(&back, &latents).unwrap(), 0.0);
        // A single latent frame (an image) is a first frame.
        let image = latents.narrow(2, 0, 1).unwrap();
        let values = vae.normalize(&image).unwrap().flatten_all().unwrap();
        assert_eq!(values.to_vec1::<f32>().unwrap(), [5.0, 3.0]);
        config.first_frame_latents = Some(LatentStatistics {
            mean: vec![0.0],
            std: vec![1.0],
        });
        let error = WanVae::new(
            &config,
            VarBuilder::from_varmap(&weights, DType::F32, &Device::Cpu),
        )
        .err()
        .unwrap();
        assert!(error.to_string().contains("first_frame_latents"), "{error}");
    }

    /// A 2x-in-space, 4x-in-time config: its second downsampling halves time only.
    fn finer_config() -> WanVaeConfig {
        WanVaeConfig {
            base_dim: 4,
            decoder_base_dim: None,
            z_dim: 2,
            dim_mult: vec![1, 2, 2],
            num_res_blocks: 1,
            temperal_downsample: vec![true, true],
            spatial_downsample: Some(vec![true, false]),
            latents_mean: vec![0.0; 2],
            latents_std: vec![1.0; 2],
            ..WanVaeConfig::default_wan21()
        }
    }

    #[test]
    fn a_stage_that_keeps_the_size_halves_time_only() {
        let config = finer_config();
        assert_eq!((config.spatial_factor(), config.temporal_factor()), (2, 4));
        let weights = candle_nn::VarMap::new();
        WanVae::new(
            &config,
            VarBuilder::from_varmap(&weights, DType::F32, &Device::Cpu),
        )
        .unwrap();
        for var in weights.all_vars() {
            let random = Tensor::randn(0f32, 0.3, var.shape(), &Device::Cpu).unwrap();
            var.set(&random).unwrap();
        }
        let video = Tensor::randn(0f32, 0.5, (1, 3, 9, 8, 12), &Device::Cpu).unwrap();
        // f32 takes the video kernels; f64 candle's own per-frame convolutions.
        let run = |dtype| {
            let tensors = weights
                .data()
                .lock()
                .unwrap()
                .iter()
                .map(|(name, var)| (name.clone(), var.to_dtype(dtype).unwrap()))
                .collect();
            let vb = VarBuilder::from_tensors(tensors, dtype, &Device::Cpu);
            let vae = WanVae::new(&config, vb).unwrap();
            let latents = vae.encode(&video.to_dtype(dtype).unwrap()).unwrap();
            let decoded = vae.decode_unclamped(&latents).unwrap();
            (latents, decoded)
        };
        let (latents, decoded) = run(DType::F32);
        assert_eq!(latents.dims(), [1, 2, 3, 4, 6]);
        assert_eq!(decoded.dims(), [1, 3, 9, 8, 12]);
        let (latents64, decoded64) = run(DType::F64);
        let latents64 = latents64.to_dtype(DType::F32).unwrap();
        let decoded64 = decoded64.to_dtype(DType::F32).unwrap();
        assert!(max_abs_difference(&latents, &latents.zeros_like().unwrap()).unwrap() > 0.01);
        assert!(max_abs_difference(&latents, &latents64).unwrap() < 1e-4);
        assert!(max_abs_difference(&decoded, &decoded64).unwrap() < 1e-4);
        // Decoding keeps the same stages' sizes: the flop count grows 4x per spatial stage only.
        let mut coarser = config.clone();
        coarser.spatial_downsample = None;
        let (fine, coarse) = (config.decode_flops(3, 4, 4), coarser.decode_flops(3, 4, 4));
        assert!(coarse > 2.0 * fine, "{coarse} against {fine}");
    }

    #[test]
    fn downsampling_flags_are_checked() {
        let weights = candle_nn::VarMap::new();
        let vb = || VarBuilder::from_varmap(&weights, DType::F32, &Device::Cpu);
        let mut config = finer_config();
        config.spatial_downsample = Some(vec![true]);
        let error = WanVae::new(&config, vb()).err().unwrap().to_string();
        assert!(
            error.contains("spatial_downsample needs one entry"),
            "{error}"
        );
        config.spatial_downsample = Some(vec![true, false]);
        config.temperal_downsample = vec![true, false];
        let error = WanVae::new(&config, vb()).err().unwrap().to_string();
        assert!(error.contains("stage 1 halves neither"), "{error}");
    }

    #[test]
    fn every_nth_keeps_the_first_of_each_step() {
        let x = Tensor::arange(0f32, 7.0, &Device::Cpu).unwrap();
        let kept = every_nth(&x, 0, 3).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(kept, [0.0, 3.0, 6.0]);
    }

    #[test]
    fn a_lazily_loaded_encoder_encodes_as_an_eager_one() {
        let config = WanVaeConfig {
            base_dim: 8,
            decoder_base_dim: None,
            z_dim: 4,
            dim_mult: vec![1, 2],
            num_res_blocks: 1,
            temperal_downsample: vec![true],
            latents_mean: vec![0.0; 4],
            latents_std: vec![1.0; 4],
            ..WanVaeConfig::default_wan21()
        };
        let weights = candle_nn::VarMap::new();
        let vb = || VarBuilder::from_varmap(&weights, DType::F32, &Device::Cpu);
        WanVae::new(&config, vb()).unwrap();
        for var in weights.all_vars() {
            let random = Tensor::randn(0f32, 0.3, var.shape(), &Device::Cpu).unwrap();
            var.set(&random).unwrap();
        }
        let eager = WanVae::new(&config, vb()).unwrap();
        let shared = weights.clone();
        let source: WeightSource =
            Box::new(move || Ok(VarBuilder::from_varmap(&shared, DType::F32, &Device::Cpu)));
        let lazy = WanVae::with_lazy_encoder(&config, vb(), source).unwrap();
        assert!(
            matches!(&lazy.encoder, EncoderWeights::OnFirstUse(_, built) if built.get().is_none())
        );
        let video = Tensor::randn(0f32, 0.5, (1, 3, 5, 8, 8), &Device::Cpu).unwrap();
        let expected = eager.encode(&video).unwrap();
        let latents = lazy.encode(&video).unwrap();
        assert!(max_abs_difference(&expected, &expected.zeros_like().unwrap()).unwrap() > 0.1);
        assert_eq!(max_abs_difference(&latents, &expected).unwrap(), 0.0);

        let failing: WeightSource = Box::new(|| candle_core::bail!("weights moved away"));
        let without = WanVae::with_lazy_encoder(&config, vb(), failing).unwrap();
        let error = without.encode(&video).unwrap_err().to_string();
        assert!(error.contains("weights moved away"), "{error}");
        let decoded = without.decode(&expected).unwrap();
        assert_eq!(decoded.dims(), [1, 3, 5, 8, 8]);
    }
}
