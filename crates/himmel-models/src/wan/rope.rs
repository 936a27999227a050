//! Wan's 3-D rotary position embedding: the head's channels split into time, height and width
//! parts (44:42:42 for 128), each with its own frequencies, rotating interleaved channel pairs.

use candle_core::{DType, Device, Result, Tensor, bail};

use crate::kernels::modulation;

/// Rotation angles' cosines and sines for every token of a latent grid, `[L, head_dim]` each,
/// repeated per channel pair (`[c0, c0, c1, c1, ...]`) as diffusers stores them.
#[derive(Debug, Clone)]
pub struct Rotary {
    /// Cosines, `[L, head_dim]`, f32.
    pub cos: Tensor,
    /// Sines, `[L, head_dim]`, f32.
    pub sin: Tensor,
}

/// Channels of each axis: `(time, height, width)`, with height = width = 2 * (head_dim / 6).
pub fn axis_dims(head_dim: usize) -> (usize, usize, usize) {
    let spatial = 2 * (head_dim / 6);
    (head_dim - 2 * spatial, spatial, spatial)
}

/// Angles `position * theta^(-2j/dims)` for one axis, repeated per pair: `[positions, dims]`.
fn axis_angles(dims: usize, positions: usize) -> Vec<f64> {
    const THETA: f64 = 10_000.0;
    let mut angles = Vec::with_capacity(positions * dims);
    for position in 0..positions {
        for j in 0..dims / 2 {
            let frequency = THETA.powf(-((2 * j) as f64) / dims as f64);
            let angle = position as f64 * frequency;
            angles.extend([angle, angle]);
        }
    }
    angles
}

impl Rotary {
    /// Tables for a grid of `frames` x `height` x `width` patches, tokens in row-major order
    /// (frame slowest). Angles are computed in f64, as the reference does.
    pub fn for_grid(
        head_dim: usize,
        (frames, height, width): (usize, usize, usize),
        device: &Device,
    ) -> Result<Self> {
        let (time_dims, height_dims, width_dims) = axis_dims(head_dim);
        let time = axis_angles(time_dims, frames);
        let rows = axis_angles(height_dims, height);
        let columns = axis_angles(width_dims, width);
        let tokens = frames * height * width;
        let (mut cos, mut sin) = (
            Vec::with_capacity(tokens * head_dim),
            Vec::with_capacity(tokens * head_dim),
        );
        for f in 0..frames {
            for h in 0..height {
                for w in 0..width {
                    let parts = [
                        &time[f * time_dims..(f + 1) * time_dims],
                        &rows[h * height_dims..(h + 1) * height_dims],
                        &columns[w * width_dims..(w + 1) * width_dims],
                    ];
                    for angle in parts.into_iter().flatten() {
                        cos.push(angle.cos() as f32);
                        sin.push(angle.sin() as f32);
                    }
                }
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (tokens, head_dim), device)?,
            sin: Tensor::from_vec(sin, (tokens, head_dim), device)?,
        })
    }

    /// Rotates `x` `[B, L, heads, head_dim]`: each pair (2j, 2j+1) as a complex number by its
    /// angle. Computed in f32 (in one pass for inference on the CPU), returned in `x`'s dtype.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if !modulation::applies(x) {
            return self.apply_composed(x);
        }
        let (batch, tokens, heads, head_dim) = x.dims4()?;
        if self.cos.dims() != [tokens, head_dim] {
            bail!(
                "rotary: table {:?} for input {:?}",
                self.cos.dims(),
                x.dims()
            );
        }
        let (cos, sin) = (
            self.cos.flatten_all()?.to_vec1::<f32>()?,
            self.sin.flatten_all()?.to_vec1::<f32>()?,
        );
        let flat = x.reshape((batch, tokens, heads * head_dim))?;
        let rotated = modulation::map_rows(&flat, None, x.dtype(), |index, row, _, out| {
            let token = index % tokens;
            let (cos, sin) = (&cos[token * head_dim..], &sin[token * head_dim..]);
            for (row, out) in row
                .chunks_exact(head_dim)
                .zip(out.chunks_exact_mut(head_dim))
            {
                for j in (0..head_dim).step_by(2) {
                    let (even, odd, cos, sin) = (row[j], row[j + 1], cos[j], sin[j]);
                    out[j] = even * cos - odd * sin;
                    out[j + 1] = even * sin + odd * cos;
                }
            }
        })?;
        rotated.reshape((batch, tokens, heads, head_dim))
    }

    /// [`Self::apply`] in candle's ops (other devices, gradients).
    fn apply_composed(&self, x: &Tensor) -> Result<Tensor> {
        let (batch, tokens, heads, head_dim) = x.dims4()?;
        let dtype = x.dtype();
        let pairs = x
            .to_dtype(DType::F32)?
            .reshape((batch, tokens, heads, head_dim / 2, 2))?;
        let even = pairs.narrow(4, 0, 1)?;
        let odd = pairs.narrow(4, 1, 1)?;
        let table = |t: &Tensor| -> Result<Tensor> {
            t.reshape((1, tokens, 1, head_dim / 2, 2))?.narrow(4, 0, 1)
        };
        let (cos, sin) = (table(&self.cos)?, table(&self.sin)?);
        let rotated_even = (even.broadcast_mul(&cos)? - odd.broadcast_mul(&sin)?)?;
        let rotated_odd = (even.broadcast_mul(&sin)? + odd.broadcast_mul(&cos)?)?;
        Tensor::cat(&[rotated_even, rotated_odd], 4)?
            .reshape((batch, tokens, heads, head_dim))?
            .to_dtype(dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_heads_like_the_reference() {
        assert_eq!(axis_dims(128), (44, 42, 42));
        assert_eq!(axis_dims(12), (4, 4, 4));
    }

    #[test]
    fn rotation_keeps_norms_and_position_zero_is_identity() {
        let device = Device::Cpu;
        let rotary = Rotary::for_grid(12, (2, 2, 3), &device).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, 12, 2, 12), &device).unwrap();
        let y = rotary.apply(&x).unwrap();
        let norms = |t: &Tensor| {
            t.sqr()
                .unwrap()
                .sum(3)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        for (a, b) in norms(&x).iter().zip(norms(&y)) {
            assert!((a - b).abs() < 1e-4);
        }
        let first =
            (x.get(0).unwrap().get(0).unwrap() - y.get(0).unwrap().get(0).unwrap()).unwrap();
        assert!(
            first
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                < 1e-6
        );
    }

    #[test]
    fn one_pass_rotation_matches_the_composed_ops() -> Result<()> {
        let device = Device::Cpu;
        let rotary = Rotary::for_grid(12, (2, 2, 3), &device)?;
        let x = Tensor::randn(0f32, 1.0, (2, 12, 3, 12), &device)?;
        for dtype in [DType::F32, DType::BF16] {
            let x = x.to_dtype(dtype)?;
            let ours = rotary.apply(&x)?;
            assert_eq!((ours.dims(), ours.dtype()), (x.dims(), dtype));
            let theirs = rotary.apply_composed(&x)?;
            let difference = (ours.to_dtype(DType::F32)? - theirs.to_dtype(DType::F32)?)?;
            let error = difference.abs()?.max_all()?.to_scalar::<f32>()?;
            // bf16 results may round one step (2^-8 of values below 4) apart.
            assert!(
                error < if dtype == DType::F32 { 1e-6 } else { 2e-2 },
                "{dtype:?}: {error}"
            );
        }
        Ok(())
    }
}
