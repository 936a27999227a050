//! The video convolution of layers with few output channels (the VAE decoder's last layer, 96
//! channels to RGB). As matrix products (`video::direct`) each would be three rows deep and run
//! at a tenth of the CPU's rate; here each strip of `STRIP` outputs of a row holds the sums of
//! all its outputs in registers over every channel and kernel tap, reading the padded input
//! rows in place.

use rayon::prelude::*;

use super::Unfilled;
use super::video::Conv;

/// Output channels summed together: an RGB layer's three.
const GROUP: usize = 3;

/// Outputs of a row summed together: four 16-lane vectors.
pub(super) const STRIP: usize = 64;

/// Whether a convolution takes this path: one group of outputs.
pub(super) fn applies(shape: &Conv) -> bool {
    shape.outputs <= GROUP
}

/// The convolution `shape` describes of `padded` (its frames padded in space, as
/// `video::pad_frames` gives them, with at least `STRIP` floats of slack after the last row)
/// with `weight` `[O, C, kt, kh, kw]` and `bias` `[O]`, as `[B, O, T', H', W']` values. Output
/// rows run in parallel.
pub(super) fn conv(shape: &Conv, padded: &[f32], weight: &[f32], bias: &[f32]) -> Vec<f32> {
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
    let taps = kt * kh * kw;
    // `[C][kt][kh][kw][GROUP]`, zeros past the last output.
    let mut packed = vec![0f32; channels * taps * GROUP];
    for (o, kernels) in weight.chunks_exact(channels * taps).enumerate() {
        for (index, &value) in kernels.iter().enumerate() {
            packed[index * GROUP + o] = value;
        }
    }
    let frame_size = padded_height * padded_width;
    let mut out = Unfilled::new(shape.output_len());
    let out_ptr = out.target();
    (0..batch * out_frames * out_height)
        .into_par_iter()
        .for_each(|task| {
            let (item, frame, y) = shape.task(task, out_height);
            // Where input row `dy` of channel `c`, time tap `dt` starts (then `x0` on).
            let row_start = |c: usize, dt: usize, dy: usize| {
                ((item * channels + c) * frames + frame * time_stride + dt) * frame_size
                    + (y + dy) * padded_width
            };
            let rows: Vec<usize> = (0..channels)
                .flat_map(|c| (0..kt).flat_map(move |dt| (0..kh).map(move |dy| (c, dt, dy))))
                .map(|(c, dt, dy)| row_start(c, dt, dy))
                .collect();
            for x0 in (0..out_width).step_by(STRIP) {
                let sums = strip(padded, &rows, x0, &packed, kw);
                let count = STRIP.min(out_width - x0);
                for (o, (sums, &b)) in sums.iter().zip(bias).enumerate() {
                    let start = (((item * outputs + o) * out_frames + frame) * out_height + y)
                        * out_width
                        + x0;
                    for (i, &sum) in sums[..count].iter().enumerate() {
                        // SAFETY: tasks write disjoint rows of `out`; this one lies inside.
                        unsafe { *out_ptr.get().add(start + i) = sum + b };
                    }
                }
            }
        });
    // SAFETY: the tasks' rows and strips cover every output.
    unsafe { out.filled() }
}

/// The sums of outputs `x0..x0 + STRIP` of one output row for each of the `GROUP` outputs:
/// `rows` are where the input rows the kernel reads start in `padded` (channel by channel, then
/// time tap, then kernel row), `packed` the weights in that order, `kw` taps per row each.
fn strip(
    padded: &[f32],
    rows: &[usize],
    x0: usize,
    packed: &[f32],
    kw: usize,
) -> [[f32; STRIP]; GROUP] {
    return_built_for!(
        [("avx512f"), ("avx2", "fma")],
        strip_portable(
            padded: &[f32],
            rows: &[usize],
            x0: usize,
            packed: &[f32],
            kw: usize,
        ) -> [[f32; STRIP]; GROUP]
    );
    strip_portable(padded, rows, x0, packed, kw)
}

/// [`strip`] as built for any CPU of the target.
#[inline(always)]
fn strip_portable(
    padded: &[f32],
    rows: &[usize],
    x0: usize,
    packed: &[f32],
    kw: usize,
) -> [[f32; STRIP]; GROUP] {
    let mut sums = [[0f32; STRIP]; GROUP];
    for (&row, weights) in rows.iter().zip(packed.chunks_exact(kw * GROUP)) {
        for (dx, weights) in weights.chunks_exact(GROUP).enumerate() {
            let values: &[f32; STRIP] = padded[row + x0 + dx..][..STRIP].try_into().unwrap();
            for (sum, &weight) in sums.iter_mut().zip(weights) {
                for (sum, &value) in sum.iter_mut().zip(values) {
                    *sum = weight.mul_add(value, *sum);
                }
            }
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Result, Tensor};

    use super::super::video::conv3d;
    use super::super::video::tests::{reference, relative_error};

    /// Few outputs against candle's conv2d summed over time taps: ragged strips, two clips, a
    /// time stride, and one and three outputs.
    #[test]
    fn matches_candles_conv2d_summed_over_time_taps() -> Result<()> {
        let device = Device::Cpu;
        for (batch, channels, frames, height, width, outputs, stride) in
            [(2, 5, 4, 7, 70, 3, 1), (1, 16, 5, 9, 13, 1, 2)]
        {
            let x = Tensor::randn(0f32, 1.0, (batch, channels, frames, height, width), &device)?;
            let weight = Tensor::randn(0f32, 1.0, (outputs, channels, 3, 3, 3), &device)?;
            let bias = Tensor::randn(0f32, 1.0, outputs, &device)?;
            let ours = conv3d(&x, &weight, &bias, 1, stride)?;
            let theirs = reference(&x, &weight, &bias, 1, stride)?;
            assert_eq!(ours.dims(), theirs.dims());
            let error = relative_error(&ours, &theirs)?;
            assert!(error < 3e-6, "case {channels}x{width}, {outputs}: {error}");
        }
        Ok(())
    }
}
