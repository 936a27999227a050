//! Inference kernels for f32 video `[B, C, T, H, W]` on the CPU, where candle's general ops
//! spend most of the Wan VAE's time: the causal 3-D convolution and the channel RMS norm fused
//! with its SiLU.
//!
//! Convolutions run as matrix products over shifted views of the padded frames: no im2col copy
//! and no per-frame permutes. With the frames padded and flattened row after row, the input a
//! kernel tap `(dt, dy, dx)` sees is the padded frame read from offset `dy * padded_width + dx`,
//! so each tap is one product `weight[:, :, dt, dy, dx] x frame[:, offset..]` accumulated into
//! the output (which carries `kw - 1` unused columns per row until it is copied out). Outputs
//! are computed in blocks of rows small enough to stay in cache across the taps, blocks running
//! in parallel. Kernels 3x3 in space with 16 or more channels on both sides take Winograd's
//! minimal filtering instead (`winograd.rs`), which needs a quarter of the products; layers
//! with few outputs (RGB) sum each strip of a row in registers (`few_outputs.rs`).

use std::mem::MaybeUninit;

use candle_core::{DType, Result, Tensor, bail};
use rayon::prelude::*;

use super::{Unfilled, cpu_slice, elementwise, few_outputs, product, winograd};

/// Floats of one block's accumulator: 512 KiB stays in a core's L2 cache across the taps
/// (measured best of 128 KiB to 8 MiB on `himmel bench wan --width 128 --height 128 --frames 5`).
const BLOCK_FLOATS: usize = 1 << 17;

/// Whether these kernels can run on `x` with `weight`: both f32 on the CPU, no gradients wanted.
pub fn applies(x: &Tensor, weight: &Tensor) -> bool {
    x.device().is_cpu()
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && !x.track_op()
        && !weight.track_op()
}

/// Convolves `x` `[B, C, T, H, W]` with `weight` `[O, C, kt, kh, kw]` and `bias` `[O]`: time
/// stride `time_stride` and no time padding (the caller pads time, causally), spatial stride 1
/// and `padding` zeros on each side in space. Gives `[B, O, T', H', W']`.
pub fn conv3d(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    padding: usize,
    time_stride: usize,
) -> Result<Tensor> {
    conv3d_after(&[], x, weight, bias, padding, time_stride, None)
}

/// [`conv3d`] of the frames `front` (tensors `[B, C, t, H, W]`, in time order) and `x` joined
/// in time, without joining them: the kernel reads every part in place (a causal cache in front
/// of a chunk). With `residual` (f32, the output's shape) the result is added to it, in place.
pub fn conv3d_after(
    front: &[Tensor],
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    padding: usize,
    time_stride: usize,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let (batch, channels, _, height, width) = x.dims5()?;
    for part in front {
        let (b, c, _, h, w) = part.dims5()?;
        if (b, c, h, w) != (batch, channels, height, width) {
            bail!(
                "conv3d: frames in front are {b}x{c}x{h}x{w}, the clip {batch}x{channels}x\
                 {height}x{width}"
            );
        }
    }
    let parts = front
        .iter()
        .chain(std::iter::once(x))
        .map(Tensor::contiguous)
        .collect::<Result<Vec<_>>>()?;
    let frames = parts
        .iter()
        .map(|part| part.dim(2))
        .sum::<Result<usize>>()?;
    let shape = Conv::new(
        (batch, channels, frames, height, width),
        weight.dims5()?,
        padding,
        time_stride,
    )?;
    let weight = weight.contiguous()?;
    let (weight_storage, weight_layout) = weight.storage_and_layout();
    let weight = cpu_slice(
        &weight_storage,
        weight_layout.start_offset(),
        weight.elem_count(),
    )?;
    let bias = bias.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    if bias.len() != shape.outputs {
        bail!(
            "conv3d: {} biases for {} outputs",
            bias.len(),
            shape.outputs
        );
    }
    let storages = parts
        .iter()
        .map(Tensor::storage_and_layout)
        .collect::<Vec<_>>();
    let mut runs = Vec::with_capacity(parts.len());
    for (part, (storage, layout)) in parts.iter().zip(&storages) {
        let data = cpu_slice(storage, layout.start_offset(), part.elem_count())?;
        runs.push((data, part.dim(2)?));
    }
    let clip = Clip::new(runs, channels, height * width);
    let mut out = convolve(&shape, &clip, padding, weight, &bias);
    if let Some(residual) = residual {
        let dims = shape.output_dims();
        if residual.dims5()? != dims || residual.dtype() != DType::F32 {
            bail!(
                "conv3d: residual {:?} {:?} for an f32 output {dims:?}",
                residual.dims(),
                residual.dtype()
            );
        }
        let residual = residual.contiguous()?;
        let (storage, layout) = residual.storage_and_layout();
        let values = cpu_slice(&storage, layout.start_offset(), residual.elem_count())?;
        out.par_chunks_mut(SPAN)
            .zip(values.par_chunks(SPAN))
            .for_each(|(out, values)| {
                for (out, value) in out.iter_mut().zip(values) {
                    *out += value;
                }
            });
    }
    Tensor::from_vec(out, shape.output_dims(), x.device())
}

/// Every frame of `x` `[B, C, T, H, W]` (f32 on the CPU) at twice its height and width by
/// nearest neighbours, planes in parallel (candle's upsampling runs on one thread).
pub fn upsample_nearest_twice(x: &Tensor) -> Result<Tensor> {
    let (batch, channels, frames, height, width) = x.dims5()?;
    let shape = (batch, channels, frames, 2 * height, 2 * width);
    if x.elem_count() == 0 {
        return Tensor::zeros(shape, DType::F32, x.device());
    }
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let data = cpu_slice(&storage, layout.start_offset(), x.elem_count())?;
    let mut out = Unfilled::new(4 * data.len());
    out.slots()
        .par_chunks_mut(4 * height * width)
        .zip(data.par_chunks(height * width))
        .for_each(|(target, plane)| {
            for (rows, values) in target.chunks_exact_mut(4 * width).zip(plane.chunks(width)) {
                let (upper, lower) = rows.split_at_mut(2 * width);
                for (pair, &value) in upper.chunks_exact_mut(2).zip(values) {
                    pair.fill(MaybeUninit::new(value));
                }
                lower.copy_from_slice(upper);
            }
        });
    // SAFETY: each plane's rows, both copies of each, are written above.
    Tensor::from_vec(unsafe { out.filled() }, shape, x.device())
}

/// The convolution `shape` describes of `clip` (not padded in space) with `weight`
/// `[O, C, kt, kh, kw]` and `bias` `[O]`, as `[B, O, T', H', W']` values: Winograd's where it
/// applies, sums in registers for few outputs, else one product per tap.
pub(super) fn convolve(
    shape: &Conv,
    clip: &Clip,
    padding: usize,
    weight: &[f32],
    bias: &[f32],
) -> Vec<f32> {
    if winograd::applies(shape) {
        winograd::conv(shape, clip, padding, weight, bias)
    } else if few_outputs::applies(shape) {
        few_outputs::conv(shape, &pad_frames(shape, clip, padding), weight, bias)
    } else {
        direct(shape, &pad_frames(shape, clip, padding), weight, bias)
    }
}

/// A convolution's input, `[B, C, T, H, W]` f32, whose frames may lie in several runs apart.
pub(super) struct Clip<'a> {
    /// Runs of consecutive frames in time order: values `[B, C, frames, H, W]` and `frames`.
    runs: Vec<(&'a [f32], usize)>,
    /// Channels.
    channels: usize,
    /// Frames in all.
    frames: usize,
    /// `H x W`.
    frame_size: usize,
}

impl<'a> Clip<'a> {
    /// The clip made of `runs` (values `[B, C, frames, H, W]` and `frames`, in time order).
    pub fn new(runs: Vec<(&'a [f32], usize)>, channels: usize, frame_size: usize) -> Self {
        let frames = runs.iter().map(|&(_, frames)| frames).sum();
        Self {
            runs,
            channels,
            frames,
            frame_size,
        }
    }

    /// Frame `t` of `channel` in clip `item`.
    pub fn plane(&self, item: usize, channel: usize, t: usize) -> &[f32] {
        let mut t = t;
        for &(data, frames) in &self.runs {
            if t < frames {
                return &data[((item * self.channels + channel) * frames + t) * self.frame_size..]
                    [..self.frame_size];
            }
            t -= frames;
        }
        panic!("frame past the clip's {} frames", self.frames)
    }
}

/// The sizes of one convolution: its input (already padded in space), kernel and output.
pub(super) struct Conv {
    /// Clips in the batch.
    pub batch: usize,
    /// Input channels.
    pub channels: usize,
    /// Input frames (already padded in time by the caller).
    pub frames: usize,
    /// Frame height after spatial padding.
    pub padded_height: usize,
    /// Frame width after spatial padding.
    pub padded_width: usize,
    /// Output channels.
    pub outputs: usize,
    /// `(kt, kh, kw)`.
    pub kernel: (usize, usize, usize),
    /// Step between output frames, in input frames.
    pub time_stride: usize,
    /// Output frames.
    pub out_frames: usize,
    /// Output height.
    pub out_height: usize,
    /// Output width.
    pub out_width: usize,
}

impl Conv {
    /// The convolution of an input `(B, C, T, H, W)` (already padded in time) with a weight
    /// `(O, C, kt, kh, kw)`, `padding` zeros on each side in space; an error when they do not fit.
    pub fn new(
        (batch, channels, frames, height, width): (usize, usize, usize, usize, usize),
        (outputs, weight_channels, kt, kh, kw): (usize, usize, usize, usize, usize),
        padding: usize,
        time_stride: usize,
    ) -> Result<Self> {
        if weight_channels != channels {
            bail!("conv3d: input has {channels} channels, the weight expects {weight_channels}");
        }
        let (padded_height, padded_width) = (height + 2 * padding, width + 2 * padding);
        if frames < kt || padded_height < kh || padded_width < kw || time_stride == 0 {
            bail!(
                "conv3d: input {frames}x{height}x{width} (padding {padding}) is smaller than the \
                 kernel {kt}x{kh}x{kw}"
            );
        }
        Ok(Self {
            batch,
            channels,
            frames,
            padded_height,
            padded_width,
            outputs,
            kernel: (kt, kh, kw),
            time_stride,
            out_frames: (frames - kt) / time_stride + 1,
            out_height: padded_height - kh + 1,
            out_width: padded_width - kw + 1,
        })
    }

    /// The output's dimensions, `(B, O, T', H', W')`.
    pub fn output_dims(&self) -> (usize, usize, usize, usize, usize) {
        (
            self.batch,
            self.outputs,
            self.out_frames,
            self.out_height,
            self.out_width,
        )
    }

    /// Elements of the output, `[B, O, T', H', W']`.
    pub fn output_len(&self) -> usize {
        self.batch * self.outputs * self.out_frames * self.out_height * self.out_width
    }

    /// The clip, output frame and block of parallel task `task`, with `blocks` blocks per
    /// output frame.
    pub fn task(&self, task: usize, blocks: usize) -> (usize, usize, usize) {
        (
            task / blocks / self.out_frames,
            task / blocks % self.out_frames,
            task % blocks,
        )
    }
}

/// [`conv3d`] as one matrix product per kernel tap over shifted views of the padded frames.
fn direct(shape: &Conv, padded: &[f32], weight: &[f32], bias: &[f32]) -> Vec<f32> {
    let Conv {
        batch,
        channels,
        frames,
        padded_height,
        padded_width,
        outputs,
        kernel: (kt, kh, kw),
        time_stride,
        out_frames,
        out_height,
        out_width,
    } = *shape;
    let frame_size = padded_height * padded_width;
    let rows_per_block = (BLOCK_FLOATS / (outputs * padded_width)).clamp(1, out_height);
    let blocks_per_frame = out_height.div_ceil(rows_per_block);
    let mut out = Unfilled::new(shape.output_len());
    let out_ptr = out.target();
    let taps = kt * kh * kw;
    (0..batch * out_frames * blocks_per_frame)
        .into_par_iter()
        .for_each(|task| {
            let (item, frame, block) = shape.task(task, blocks_per_frame);
            let first_row = block * rows_per_block;
            let rows = rows_per_block.min(out_height - first_row);
            let columns = rows * padded_width;
            let mut accumulator = vec![0f32; outputs * columns];
            for (row, &value) in accumulator.chunks_exact_mut(columns).zip(bias) {
                row.fill(value);
            }
            for dt in 0..kt {
                let source_frame = item * channels * frames + frame * time_stride + dt;
                for dy in 0..kh {
                    for dx in 0..kw {
                        let rhs = source_frame * frame_size + (first_row + dy) * padded_width + dx;
                        let lhs = (dt * kh + dy) * kw + dx;
                        // SAFETY: every read stays inside `padded` (its slack covers the
                        // unused columns of the last row) and `weight`; `accumulator` is
                        // `outputs x columns`.
                        unsafe {
                            product(
                                (outputs, columns, channels),
                                (accumulator.as_mut_ptr(), columns),
                                (weight.as_ptr().add(lhs), channels * taps, taps),
                                (padded.as_ptr().add(rhs), frames * frame_size, 1),
                                true,
                                1.0,
                            );
                        }
                    }
                }
            }
            for (output, accumulated) in accumulator.chunks_exact(columns).enumerate() {
                let start = (((item * outputs + output) * out_frames + frame) * out_height
                    + first_row)
                    * out_width;
                for (row, values) in accumulated.chunks_exact(padded_width).enumerate() {
                    // SAFETY: tasks write disjoint rows of `out` (one frame's block of rows
                    // per output channel), each inside its bounds.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            values.as_ptr(),
                            out_ptr.get().add(start + row * out_width),
                            out_width,
                        );
                    }
                }
            }
        });
    // SAFETY: the tasks' blocks of rows cover every output frame of every channel.
    unsafe { out.filled() }
}

/// Normalises `x` `[B, C, ...]` to unit L2 norm over channels (at least 1e-12), times `gain`
/// `[C]`, and with `silu` applies SiLU after: what the VAE's `WanRMS_norm` and activation do,
/// in one pass over the input and one over the output.
pub fn channel_rms_norm(x: &Tensor, gain: &Tensor, silu: bool) -> Result<Tensor> {
    let (batch, channels) = (x.dim(0)?, x.dim(1)?);
    let gain = gain.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    if gain.len() != channels {
        bail!(
            "channel_rms_norm: {} gains for {channels} channels",
            gain.len()
        );
    }
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let data = cpu_slice(&storage, layout.start_offset(), x.elem_count())?;
    let out = normalise_channels(data, &gain, batch, silu);
    Tensor::from_vec(out, x.shape(), x.device())
}

/// Positions each task of the channel norm takes.
pub(super) const SPAN: usize = 4096;

/// [`channel_rms_norm`] of `data` `[batch, gain.len(), positions]`.
pub(super) fn normalise_channels(data: &[f32], gain: &[f32], batch: usize, silu: bool) -> Vec<f32> {
    let channels = gain.len();
    let positions = data.len() / (batch * channels).max(1);
    let mut out = Unfilled::new(data.len());
    let out_ptr = out.target();
    let spans = positions.div_ceil(SPAN);
    (0..batch * spans).into_par_iter().for_each(|task| {
        let (item, first) = (task / spans, task % spans * SPAN);
        let length = SPAN.min(positions - first);
        let offset = |channel: usize| (item * channels + channel) * positions + first;
        let mut sums = vec![0f32; length];
        for channel in 0..channels {
            elementwise::add_squares(&mut sums, &data[offset(channel)..offset(channel) + length]);
        }
        for sum in &mut sums {
            *sum = 1.0 / sum.sqrt().max(1e-12);
        }
        for (channel, &gain) in gain.iter().enumerate() {
            let values = &data[offset(channel)..offset(channel) + length];
            // SAFETY: tasks write disjoint spans of `out`, each inside its bounds; zeroed here
            // (in cache, on the task's own core) before the slice is made of them.
            let target = unsafe {
                let start = out_ptr.get().add(offset(channel));
                std::ptr::write_bytes(start, 0, length);
                std::slice::from_raw_parts_mut(start, length)
            };
            elementwise::scale_silu(target, values, &sums, gain, silu);
        }
    });
    // SAFETY: the tasks' spans cover every position of every channel.
    unsafe { out.filled() }
}

/// The frames of `clip` with `padding` zeros around each (the sizes `shape` gives), flattened,
/// plus a row and a strip of slack at the end for the last taps' reads of unused columns.
pub(super) fn pad_frames(shape: &Conv, clip: &Clip, padding: usize) -> Vec<f32> {
    let padded_width = shape.padded_width;
    let width = padded_width - 2 * padding;
    let frame_size = shape.padded_height * padded_width;
    let (channels, frames) = (shape.channels, shape.frames);
    let count = shape.batch * channels * frames * frame_size;
    // Each plane's task writes its zeros as well as its values (no zeroing of the whole on the
    // calling thread first).
    let zero = MaybeUninit::new(0.0);
    let mut padded = Unfilled::new(count + padded_width + few_outputs::STRIP);
    let (planes, slack) = padded.slots().split_at_mut(count);
    slack.fill(zero);
    planes
        .par_chunks_mut(frame_size)
        .enumerate()
        .for_each(|(index, target)| {
            let source = clip.plane(
                index / frames / channels,
                index / frames % channels,
                index % frames,
            );
            let (above, rest) = target.split_at_mut(padding * padded_width);
            let (rows, below) = rest.split_at_mut(source.len() / width * padded_width);
            above.fill(zero);
            below.fill(zero);
            for (row, values) in rows
                .chunks_exact_mut(padded_width)
                .zip(source.chunks_exact(width))
            {
                let (left, rest) = row.split_at_mut(padding);
                let (middle, right) = rest.split_at_mut(width);
                left.fill(zero);
                for (slot, &value) in middle.iter_mut().zip(values) {
                    *slot = MaybeUninit::new(value);
                }
                right.fill(zero);
            }
        });
    // SAFETY: the slack and every plane's margins and values are written above.
    unsafe { padded.filled() }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use candle_core::Device;
    use himmel_core::compare::max_abs_difference;

    /// The same convolution composed from candle's conv2d, one time tap at a time.
    pub(in crate::kernels) fn reference(
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        padding: usize,
        time_stride: usize,
    ) -> Result<Tensor> {
        let frames = x.dim(2)?;
        let kt = weight.dim(2)?;
        let out_frames = (frames - kt) / time_stride + 1;
        let mut outputs = Vec::new();
        for frame in 0..out_frames {
            let mut sum: Option<Tensor> = None;
            for dt in 0..kt {
                let input = x.narrow(2, frame * time_stride + dt, 1)?.squeeze(2)?;
                let tap = weight.narrow(2, dt, 1)?.squeeze(2)?.contiguous()?;
                let part = input.contiguous()?.conv2d(&tap, padding, 1, 1, 1)?;
                sum = Some(match sum {
                    Some(total) => (total + part)?,
                    None => part,
                });
            }
            outputs.push(sum.unwrap().unsqueeze(2)?);
        }
        Tensor::cat(&outputs, 2)?.broadcast_add(&bias.reshape((1, (), 1, 1, 1))?)
    }

    /// `(batch, channels, frames, height, width, outputs, kt, k, padding, time stride)`.
    pub(in crate::kernels) type Case = (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
    );

    /// Convolutions to check: ragged sizes, both time strides, both kernel paths.
    pub(in crate::kernels) const CASES: [Case; 13] = [
        (1, 3, 3, 5, 7, 4, 3, 3, 1, 1),
        (2, 5, 4, 6, 4, 3, 3, 3, 1, 1),
        (1, 4, 5, 3, 9, 6, 3, 1, 0, 2),
        (2, 3, 2, 4, 4, 5, 1, 1, 0, 1),
        (1, 2, 1, 17, 3, 70, 1, 3, 1, 1),
        (1, 6, 3, 8, 8, 2, 2, 3, 0, 1),
        (2, 4, 6, 4, 5, 4, 3, 1, 0, 2),
        // Winograd's path: 3x3 in space with 16 or more channels on both sides.
        (1, 16, 4, 7, 9, 17, 3, 3, 1, 1),
        (2, 20, 5, 5, 6, 16, 3, 3, 1, 2),
        (1, 16, 1, 33, 3, 24, 1, 3, 1, 1),
        (1, 17, 2, 6, 5, 16, 2, 3, 0, 1),
        // Several blocks of whole product tiles and a ragged last one; outputs past a panel.
        (1, 24, 3, 42, 38, 29, 3, 3, 1, 1),
        // Rows of tiles wider than a vector's worth of tiles (their inputs split 16 at a time).
        (1, 16, 3, 5, 70, 16, 3, 3, 1, 1),
    ];

    /// The largest difference relative to the largest magnitude of `theirs` (Winograd's
    /// transforms round differently, so errors scale with the outputs).
    pub(in crate::kernels) fn relative_error(ours: &Tensor, theirs: &Tensor) -> Result<f32> {
        let largest = |t: &Tensor| t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>();
        Ok(largest(&(ours - theirs)?)? / largest(theirs)?.max(1e-12))
    }

    #[test]
    fn matches_candles_conv2d_summed_over_time_taps() -> Result<()> {
        let device = Device::Cpu;
        for (batch, channels, frames, height, width, outputs, kt, k, padding, stride) in CASES {
            let x = Tensor::randn(0f32, 1.0, (batch, channels, frames, height, width), &device)?;
            let weight = Tensor::randn(0f32, 1.0, (outputs, channels, kt, k, k), &device)?;
            let bias = Tensor::randn(0f32, 1.0, outputs, &device)?;
            let ours = conv3d(&x, &weight, &bias, padding, stride)?;
            let theirs = reference(&x, &weight, &bias, padding, stride)?;
            assert_eq!(ours.dims(), theirs.dims());
            let error = relative_error(&ours, &theirs)?;
            assert!(
                error < 3e-5,
                "case {channels}x{frames}x{height}x{width}: {error}"
            );
        }
        Ok(())
    }

    #[test]
    fn frames_in_front_convolve_as_if_joined() -> Result<()> {
        let device = Device::Cpu;
        // (batch, channels, front frames, frames, kt, k): Winograd's path, then the direct one;
        // the front frames are passed one tensor per frame, as a causal cache holds them.
        for (batch, channels, front, frames, kt, k) in [
            (2, 16, 2, 3, 3, 3),
            (1, 16, 1, 1, 2, 3),
            (1, 16, 3, 2, 3, 3),
            (2, 5, 2, 2, 3, 3),
        ] {
            let before = Tensor::randn(0f32, 1.0, (batch, channels, front, 6, 7), &device)?;
            let x = Tensor::randn(0f32, 1.0, (batch, channels, frames, 6, 7), &device)?;
            let weight = Tensor::randn(0f32, 1.0, (16, channels, kt, k, k), &device)?;
            let bias = Tensor::randn(0f32, 1.0, 16, &device)?;
            let joined = conv3d(&Tensor::cat(&[&before, &x], 2)?, &weight, &bias, 1, 1)?;
            let parts = (0..front)
                .map(|t| before.narrow(2, t, 1))
                .collect::<Result<Vec<_>>>()?;
            let apart = conv3d_after(&parts, &x, &weight, &bias, 1, 1, None)?;
            assert_eq!(max_abs_difference(&apart, &joined)?, 0.0);
        }
        let other = Tensor::zeros((1, 16, 2, 5, 7), DType::F32, &device)?;
        let x = Tensor::zeros((1, 16, 1, 6, 7), DType::F32, &device)?;
        let weight = Tensor::zeros((16, 16, 3, 3, 3), DType::F32, &device)?;
        let bias = Tensor::zeros(16, DType::F32, &device)?;
        let error = conv3d_after(&[other], &x, &weight, &bias, 1, 1, None).unwrap_err();
        assert!(error.to_string().contains("frames in front"), "{error}");
        Ok(())
    }

    #[test]
    fn a_residual_is_added_to_the_output() -> Result<()> {
        let device = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (1, 16, 1, 6, 7), &device)?;
        let before = Tensor::randn(0f32, 1.0, (1, 16, 2, 6, 7), &device)?;
        let weight = Tensor::randn(0f32, 1.0, (16, 16, 3, 3, 3), &device)?;
        let bias = Tensor::randn(0f32, 1.0, 16, &device)?;
        let residual = Tensor::randn(0f32, 1.0, (1, 16, 1, 6, 7), &device)?;
        let front = std::slice::from_ref(&before);
        let plain = conv3d_after(front, &x, &weight, &bias, 1, 1, None)?;
        let added = conv3d_after(front, &x, &weight, &bias, 1, 1, Some(&residual))?;
        assert_eq!(max_abs_difference(&added, &(plain + &residual)?)?, 0.0);
        let wrong = Tensor::zeros((1, 16, 2, 6, 7), DType::F32, &device)?;
        let error = conv3d_after(&[before], &x, &weight, &bias, 1, 1, Some(&wrong)).unwrap_err();
        assert!(error.to_string().contains("residual"), "{error}");
        Ok(())
    }

    #[test]
    fn nearest_upsampling_matches_candles() -> Result<()> {
        let device = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 2, 5, 7), &device)?;
        let ours = upsample_nearest_twice(&x)?;
        let theirs = x
            .reshape((2, 6, 5, 7))?
            .upsample_nearest2d(10, 14)?
            .reshape((2, 3, 2, 10, 14))?;
        assert_eq!(max_abs_difference(&ours, &theirs)?, 0.0);
        Ok(())
    }

    #[test]
    fn channel_rms_norm_matches_the_composed_formula() -> Result<()> {
        let device = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 3, 70, 61), &device)?;
        let gain = Tensor::randn(0f32, 1.0, 5, &device)?;
        let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?;
        let expected = x
            .broadcast_div(&norm)?
            .broadcast_mul(&gain.reshape((1, 5, 1, 1, 1))?)?;
        for silu in [false, true] {
            let expected = if silu {
                expected.silu()?
            } else {
                expected.clone()
            };
            let ours = channel_rms_norm(&x, &gain, silu)?;
            let error = (ours - expected)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(error < 3e-5, "silu {silu}: {error}");
        }
        Ok(())
    }

    #[test]
    fn views_into_larger_storages_read_only_their_own_part() -> Result<()> {
        let device = Device::Cpu;
        let whole = Tensor::randn(0f32, 1.0, (3, 4, 2, 5, 6), &device)?;
        let weight = Tensor::randn(0f32, 1.0, (2, 4, 1, 3, 3), &device)?;
        let bias = Tensor::randn(0f32, 1.0, 2, &device)?;
        let gain = Tensor::ones(4, DType::F32, &device)?;
        for start in [0, 1, 2] {
            let view = whole.narrow(0, start, 1)?;
            let copy = view.copy()?;
            let ours = conv3d(&view, &weight, &bias, 1, 1)?;
            let theirs = conv3d(&copy, &weight, &bias, 1, 1)?;
            assert_eq!((ours - theirs)?.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
            let ours = channel_rms_norm(&view, &gain, true)?;
            let theirs = channel_rms_norm(&copy, &gain, true)?;
            assert_eq!((ours - theirs)?.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
        }
        Ok(())
    }

    #[test]
    fn a_kernel_larger_than_the_input_is_an_error() -> Result<()> {
        let device = Device::Cpu;
        let x = Tensor::zeros((1, 2, 2, 4, 4), DType::F32, &device)?;
        let weight = Tensor::zeros((1, 2, 3, 3, 3), DType::F32, &device)?;
        let bias = Tensor::zeros(1, DType::F32, &device)?;
        let error = conv3d(&x, &weight, &bias, 1, 1).unwrap_err().to_string();
        assert!(error.contains("smaller than the kernel"), "{error}");
        Ok(())
    }
}
