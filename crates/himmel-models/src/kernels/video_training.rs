//! The video convolution and channel norm of [`super::video`] with gradients, for training on
//! the CPU in f32 (composed from candle's ops, their shifted views, stacks, permutes and
//! strided sums and those of their backward passes cost most of an autoencoder's training step).
//!
//! - Forward: the inference kernel.
//! - The input's gradient: the same kernel over the output's gradient, spread out by the time
//!   stride and padded by the kernel's extent, with the weight flipped along every axis and its
//!   input and output channels swapped (a transposed convolution).
//! - The weight's gradient: per kernel tap, one product of the output's gradient with the
//!   input's shifted view (the padded-rows trick of [`super::video`]: the gradient gets the same
//!   unused columns, as zeros), summed over clips and frames; taps in parallel.
//! - The channel norm (and its SiLU): forward by the inference kernel, backward in one pass per
//!   span of positions that recomputes each position's norm.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::video::{Clip, Conv, SPAN, convolve, normalise_channels, pad_frames};
use super::{SendPtr, cpu_slice, product};
use crate::ops::contiguous_f32;

/// Whether [`conv3d`] can run on `x` with `weight`: both f32 on the CPU.
pub fn applies(x: &Tensor, weight: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && weight.dtype() == DType::F32
}

/// Convolves `x` `[B, C, T, H, W]` with `weight` `[O, C, kt, k, k]` and `bias` `[O]` as
/// [`super::video::conv3d`] does (time stride `time_stride`, no time padding, `padding` zeros on
/// each side in space), with gradients for all three.
pub fn conv3d(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    padding: usize,
    time_stride: usize,
) -> Result<Tensor> {
    let (_, _, _, kh, kw) = weight.dims5()?;
    if kh != kw || padding >= kh {
        bail!(
            "conv3d with gradients takes square kernels larger than their padding; got {kh}x{kw}, padding {padding}"
        );
    }
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        Conv3d {
            padding,
            time_stride,
        },
    )
}

/// The operation candle records.
struct Conv3d {
    padding: usize,
    time_stride: usize,
}

/// `x`'s sizes as a [`Conv`] with a weight of `weight_dims`, and `x` as its clip.
fn clip_of<'a>(
    x: &'a [f32],
    x_dims: &[usize],
    weight_dims: &[usize],
    padding: usize,
    time_stride: usize,
) -> Result<(Conv, Clip<'a>)> {
    let (&[batch, channels, frames, height, width], &[outputs, inputs, kt, kh, kw]) =
        (x_dims, weight_dims)
    else {
        bail!("conv3d takes 5-D inputs and weights; got {x_dims:?} and {weight_dims:?}");
    };
    let shape = Conv::new(
        (batch, channels, frames, height, width),
        (outputs, inputs, kt, kh, kw),
        padding,
        time_stride,
    )?;
    let clip = Clip::new(vec![(x, frames)], channels, height * width);
    Ok((shape, clip))
}

impl CustomOp3 for Conv3d {
    fn name(&self) -> &'static str {
        "himmel-video-conv3d"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (shape, clip) = clip_of(
            contiguous_f32(x, x_layout)?,
            x_layout.dims(),
            weight_layout.dims(),
            self.padding,
            self.time_stride,
        )?;
        let bias = contiguous_f32(bias, bias_layout)?;
        if bias.len() != shape.outputs {
            bail!(
                "conv3d: {} biases for {} outputs",
                bias.len(),
                shape.outputs
            );
        }
        let out = convolve(
            &shape,
            &clip,
            self.padding,
            contiguous_f32(weight, weight_layout)?,
            bias,
        );
        Ok((CpuStorage::F32(out), Shape::from(shape.output_dims())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.detach().contiguous()?;
        let bias_grad = sum_per_channel(&grad)?;
        let input_grad = self.input_gradient(x, weight, &grad)?;
        let weight_grad = self.weight_gradient(x, weight, &grad)?;
        Ok((Some(input_grad), Some(weight_grad), Some(bias_grad)))
    }
}

/// The sums over everything but channels of `[B, C, ...]` (candle's strided sums are slow).
fn sum_per_channel(x: &Tensor) -> Result<Tensor> {
    let (batch, channels) = (x.dim(0)?, x.dim(1)?);
    let values = x.flatten_all()?.to_vec1::<f32>()?;
    let positions = values.len() / (batch * channels).max(1);
    let mut sums = vec![0f32; channels];
    for (index, plane) in values.chunks_exact(positions.max(1)).enumerate() {
        sums[index % channels] += plane.iter().sum::<f32>();
    }
    Tensor::from_vec(sums, channels, x.device())
}

impl Conv3d {
    /// The transposed convolution of `grad` `[B, O, T', H', W']`: `[B, C, T, H, W]`.
    fn input_gradient(&self, x: &Tensor, weight: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let (outputs, channels, kt, kh, kw) = weight.dims5()?;
        let frames = x.dim(2)?;
        let (batch, _, out_frames, height, width) = grad.dims5()?;
        let stride = self.time_stride;
        // Output frame f's gradient belongs at input frame f * stride.
        let spread = if stride == 1 {
            grad.clone()
        } else {
            grad.unsqueeze(3)?
                .pad_with_zeros(3, 0, stride - 1)?
                .reshape((batch, outputs, out_frames * stride, height, width))?
                .narrow(2, 0, (out_frames - 1) * stride + 1)?
        };
        let spread_frames = spread.dim(2)?;
        let padded = spread.pad_with_zeros(2, kt - 1, frames - spread_frames)?;
        // [C, O, kt, kh, kw], every kernel axis reversed.
        let taps = kt * kh * kw;
        let source = weight.detach().flatten_all()?.to_vec1::<f32>()?;
        let mut flipped = vec![0f32; source.len()];
        for o in 0..outputs {
            for c in 0..channels {
                for tap in 0..taps {
                    flipped[(c * outputs + o) * taps + taps - 1 - tap] =
                        source[(o * channels + c) * taps + tap];
                }
            }
        }
        let flipped = Tensor::from_vec(flipped, (channels, outputs, kt, kh, kw), x.device())?;
        let zeros = Tensor::zeros(channels, DType::F32, x.device())?;
        padded.contiguous()?.apply_op3_no_bwd(
            &flipped,
            &zeros,
            &Conv3d {
                padding: kh - 1 - self.padding,
                time_stride: 1,
            },
        )
    }

    /// `[O, C, kt, kh, kw]`: per tap, the output's gradient times the input's shifted view.
    fn weight_gradient(&self, x: &Tensor, weight: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let x = x.detach().contiguous()?;
        let (storage, layout) = x.storage_and_layout();
        let (shape, clip) = clip_of(
            cpu_slice(&storage, layout.start_offset(), x.elem_count())?,
            x.dims(),
            weight.dims(),
            self.padding,
            self.time_stride,
        )?;
        let padded = pad_frames(&shape, &clip, self.padding);
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
        } = shape;
        // The gradient with the input's row length; the extra columns are zeros.
        let grad = grad
            .pad_with_zeros(4, 0, padded_width - out_width)?
            .contiguous()?;
        let (grad_storage, grad_layout) = grad.storage_and_layout();
        let grad = cpu_slice(&grad_storage, grad_layout.start_offset(), grad.elem_count())?;
        let frame_size = padded_height * padded_width;
        let rows = out_height * padded_width;
        let per_tap: Vec<Vec<f32>> = (0..kt * kh * kw)
            .into_par_iter()
            .map(|tap| {
                let (dt, dy, dx) = (tap / (kh * kw), tap / kw % kh, tap % kw);
                let mut sum = vec![0f32; outputs * channels];
                for item in 0..batch {
                    for frame in 0..out_frames {
                        let lhs = (item * outputs * out_frames + frame) * rows;
                        let source = item * channels * frames + frame * time_stride + dt;
                        let rhs = source * frame_size + dy * padded_width + dx;
                        // SAFETY: the gradient is `[B, O, T', H', padded_width]`, the padded
                        // input `[B, C, T, Hp, padded_width]` plus a row of slack that covers
                        // the last shifted reads (they meet zero gradient columns); `sum` is
                        // `outputs x channels`.
                        unsafe {
                            product(
                                (outputs, channels, rows),
                                (sum.as_mut_ptr(), channels),
                                (grad.as_ptr().add(lhs), out_frames * rows, 1),
                                (padded.as_ptr().add(rhs), 1, frames * frame_size),
                                true,
                                1.0,
                            );
                        }
                    }
                }
                sum
            })
            .collect();
        let taps = per_tap.len();
        let mut gradient = vec![0f32; outputs * channels * taps];
        for (tap, sums) in per_tap.iter().enumerate() {
            for (pair, &value) in sums.iter().enumerate() {
                gradient[pair * taps + tap] = value;
            }
        }
        Tensor::from_vec(gradient, (outputs, channels, kt, kh, kw), x.device())
    }
}

/// Normalises `x` `[B, C, ...]` to unit L2 norm over channels, times `gain` `[C]`, then SiLU
/// with `silu`, as [`super::video::channel_rms_norm`] does, with gradients for both.
pub fn channel_rms_norm(x: &Tensor, gain: &Tensor, silu: bool) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&gain.flatten_all()?.contiguous()?, ChannelRmsNorm { silu })
}

/// The norm's operation as candle records it.
struct ChannelRmsNorm {
    silu: bool,
}

impl CustomOp2 for ChannelRmsNorm {
    fn name(&self) -> &'static str {
        "himmel-channel-rms-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        gain: &CpuStorage,
        gain_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let gain = contiguous_f32(gain, gain_layout)?;
        if x_layout.dims().get(1) != Some(&gain.len()) {
            bail!(
                "channel_rms_norm: {} gains for input {:?}",
                gain.len(),
                x_layout.dims()
            );
        }
        let out = normalise_channels(
            contiguous_f32(x, x_layout)?,
            gain,
            x_layout.dims()[0],
            self.silu,
        );
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gain: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let x = x.detach().contiguous()?.flatten_from(2)?;
        let grad = grad.detach().contiguous()?;
        let gain_values = gain.detach().to_vec1::<f32>()?;
        let (batch, channels, positions) = x.dims3()?;
        let (x_storage, x_layout) = x.storage_and_layout();
        let x_values = cpu_slice(&x_storage, x_layout.start_offset(), x.elem_count())?;
        let (grad_storage, grad_layout) = grad.storage_and_layout();
        let grad_values = cpu_slice(&grad_storage, grad_layout.start_offset(), grad.elem_count())?;
        let mut input_grad = vec![0f32; x_values.len()];
        let input_ptr = SendPtr(input_grad.as_mut_ptr());
        let spans = positions.div_ceil(SPAN);
        let silu = self.silu;
        let gain_grad = (0..batch * spans)
            .into_par_iter()
            .map(|task| {
                let (item, first) = (task / spans, task % spans * SPAN);
                let length = SPAN.min(positions - first);
                let offset = |channel: usize| (item * channels + channel) * positions + first;
                let mut inverse = vec![0f32; length];
                for channel in 0..channels {
                    let values = &x_values[offset(channel)..][..length];
                    for (sum, value) in inverse.iter_mut().zip(values) {
                        *sum += value * value;
                    }
                }
                for sum in &mut inverse {
                    *sum = 1.0 / sum.sqrt().max(1e-12);
                }
                // Per channel: the gradient reaching the normalised value, and its
                // projection on the normalised vector per position.
                let mut normed_grad = vec![0f32; channels * length];
                let mut along = vec![0f32; length];
                let mut gain_part = vec![0f32; channels];
                for (channel, &gain) in gain_values.iter().enumerate() {
                    let values = &x_values[offset(channel)..][..length];
                    let grads = &grad_values[offset(channel)..][..length];
                    let target = &mut normed_grad[channel * length..][..length];
                    for p in 0..length {
                        let unit = values[p] * inverse[p];
                        let mut g = grads[p];
                        if silu {
                            let y = unit * gain;
                            let sigmoid = 1.0 / (1.0 + (-y).exp());
                            g *= sigmoid * (1.0 + y * (1.0 - sigmoid));
                        }
                        gain_part[channel] += g * unit;
                        target[p] = g * gain;
                        along[p] += target[p] * unit;
                    }
                }
                for channel in 0..channels {
                    let values = &x_values[offset(channel)..][..length];
                    let normed = &normed_grad[channel * length..][..length];
                    // SAFETY: tasks write disjoint spans of `input_grad`, each inside it.
                    let target = unsafe {
                        std::slice::from_raw_parts_mut(input_ptr.get().add(offset(channel)), length)
                    };
                    for p in 0..length {
                        let unit = values[p] * inverse[p];
                        target[p] = (normed[p] - unit * along[p]) * inverse[p];
                    }
                }
                gain_part
            })
            .reduce(
                || vec![0f32; channels],
                |mut total, part| {
                    total.iter_mut().zip(&part).for_each(|(t, p)| *t += p);
                    total
                },
            );
        Ok((
            Some(Tensor::from_vec(input_grad, grad.shape(), grad.device())?),
            Some(Tensor::from_vec(gain_grad, gain.shape(), gain.device())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::video::tests::{CASES, reference, relative_error};
    use candle_core::{Device, Var};

    #[test]
    fn output_and_gradients_match_candles_ops() -> Result<()> {
        let device = Device::Cpu;
        for (batch, channels, frames, height, width, outputs, kt, k, padding, stride) in CASES {
            let x = Var::randn(0f32, 1.0, (batch, channels, frames, height, width), &device)?;
            let weight = Var::randn(0f32, 1.0, (outputs, channels, kt, k, k), &device)?;
            let bias = Var::randn(0f32, 1.0, outputs, &device)?;
            let ours = conv3d(&x, &weight, &bias, padding, stride)?;
            let theirs = reference(&x, &weight, &bias, padding, stride)?;
            assert_eq!(ours.dims(), theirs.dims());
            let case = format!("{channels}x{frames}x{height}x{width} k{kt}x{k} s{stride}");
            let error = relative_error(&ours, &theirs)?;
            assert!(error < 3e-5, "{case}: output {error}");
            // A loss that weighs every output differently.
            let mix = Tensor::randn(0f32, 1.0, ours.dims(), &device)?;
            let our_grads = (ours * &mix)?.sum_all()?.backward()?;
            let their_grads = (theirs * &mix)?.sum_all()?.backward()?;
            for (name, var) in [("input", &x), ("weight", &weight), ("bias", &bias)] {
                let ours = our_grads.get(var).unwrap();
                let theirs = their_grads.get(var).unwrap();
                assert_eq!(ours.dims(), theirs.dims(), "{case}: {name}");
                let error = relative_error(ours, theirs)?;
                assert!(error < 3e-5, "{case}: {name} gradient {error}");
            }
        }
        Ok(())
    }

    #[test]
    fn channel_norm_and_its_gradients_match_candles_ops() -> Result<()> {
        let device = Device::Cpu;
        for (dims, silu) in [(vec![2, 5, 3, 70, 61], true), (vec![3, 16, 9, 7], false)] {
            let channels = dims[1];
            let x = Var::randn(0f32, 1.0, dims.as_slice(), &device)?;
            let gain = Var::randn(0f32, 1.0, channels, &device)?;
            let ours = channel_rms_norm(&x, &gain, silu)?;
            let mut gain_shape = vec![1; dims.len()];
            gain_shape[1] = channels;
            let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?;
            let theirs = x
                .broadcast_div(&norm)?
                .broadcast_mul(&gain.reshape(gain_shape)?)?;
            let theirs = if silu { theirs.silu()? } else { theirs };
            let error = relative_error(&ours, &theirs)?;
            assert!(error < 3e-5, "silu {silu}: output {error}");
            let mix = Tensor::randn(0f32, 1.0, ours.dims(), &device)?;
            let our_grads = (ours * &mix)?.sum_all()?.backward()?;
            let their_grads = (theirs * &mix)?.sum_all()?.backward()?;
            for (name, var) in [("input", &x), ("gain", &gain)] {
                let error =
                    relative_error(our_grads.get(var).unwrap(), their_grads.get(var).unwrap())?;
                assert!(error < 1e-4, "silu {silu}: {name} gradient {error}");
            }
        }
        Ok(())
    }

    #[test]
    fn kernels_that_do_not_fit_are_errors() -> Result<()> {
        let device = Device::Cpu;
        let x = Tensor::zeros((1, 2, 2, 4, 4), DType::F32, &device)?;
        let bias = Tensor::zeros(1, DType::F32, &device)?;
        let weight = Tensor::zeros((1, 2, 3, 3, 3), DType::F32, &device)?;
        let error = conv3d(&x, &weight, &bias, 1, 1).unwrap_err().to_string();
        assert!(error.contains("smaller than the kernel"), "{error}");
        let weight = Tensor::zeros((1, 2, 1, 1, 3), DType::F32, &device)?;
        let error = conv3d(&x, &weight, &bias, 0, 1).unwrap_err().to_string();
        assert!(error.contains("square kernels"), "{error}");
        Ok(())
    }
}
