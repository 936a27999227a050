//! The elementwise steps around a Wan block's attention and feed-forward, each fused into one
//! pass over the tokens for inference on the CPU: the modulated LayerNorm
//! (`norm(x) (1 + scale) + shift`), the LayerNorm with weight and bias, the queries' and keys'
//! RMSNorm, and the gated residual (`x + y gate`). Both compute in f32
//! from f32 or bf16 inputs and write the block's dtype; composed in candle's ops they took a
//! dozen passes, each with a fresh tensor.

use candle_core::{CpuStorage, DType, Result, Storage, Tensor, bail};
use half::bf16;
use rayon::prelude::*;

use super::elementwise::sum_lanes;

/// Whether the fused passes apply to `x`: on the CPU, without gradients, in f32 or bf16.
pub fn applies(x: &Tensor) -> bool {
    x.device().is_cpu() && !x.track_op() && matches!(x.dtype(), DType::F32 | DType::BF16)
}

/// `norm(x) * (1 + scale) + shift` for `x` `[B, L, D]` (LayerNorm over `D` without learned
/// parameters, in f32) with `shift` and `scale` `[B, 1, D]`, in `dtype`.
pub fn modulated_layer_norm(
    x: &Tensor,
    shift: &Tensor,
    scale: &Tensor,
    eps: f64,
    dtype: DType,
) -> Result<Tensor> {
    let factor = per_batch(&(scale.to_dtype(DType::F32)? + 1.0)?, x)?;
    layer_norm(x, &per_batch(shift, x)?, &factor, eps, dtype)
}

/// LayerNorm over `D` of `x` `[B, L, D]` with `weight` and `bias` `[D]`, in f32, written in
/// `dtype`.
pub fn affine_layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    dtype: DType,
) -> Result<Tensor> {
    let batch = x.dim(0)?;
    let factor = vec![weight.to_dtype(DType::F32)?.to_vec1::<f32>()?; batch];
    let shift = vec![bias.to_dtype(DType::F32)?.to_vec1::<f32>()?; batch];
    layer_norm(x, &shift, &factor, eps, dtype)
}

/// `norm(x) * factor + shift`, one `factor` and `shift` row per batch.
fn layer_norm(
    x: &Tensor,
    shift: &[Vec<f32>],
    factor: &[Vec<f32>],
    eps: f64,
    dtype: DType,
) -> Result<Tensor> {
    let dim = x.dim(2)?;
    if shift.iter().chain(factor).any(|row| row.len() != dim) {
        bail!(
            "layer norm: parameters do not match the {dim} channels of {:?}",
            x.dims()
        );
    }
    let tokens = x.dim(1)?.max(1);
    map_rows(x, None, dtype, |index, row, _, out| {
        let (batch, dim) = (index / tokens, row.len() as f32);
        let mean = sum_lanes(row, |v| v) / dim;
        let variance = sum_lanes(row, |v| (v - mean) * (v - mean)) / dim;
        let inverse = 1.0 / (variance + eps as f32).sqrt();
        let (shift, factor) = (&shift[batch], &factor[batch]);
        for (((out, value), shift), factor) in out.iter_mut().zip(row).zip(shift).zip(factor) {
            *out = (value - mean) * inverse * factor + shift;
        }
    })
}

/// RMSNorm over `D` of `x` `[B, L, D]` with `weight` `[D]`: `x / sqrt(mean(x^2) + eps) * weight`
/// in f32, written in `dtype`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, dtype: DType) -> Result<Tensor> {
    let weight = weight.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    if weight.len() != x.dim(2)? {
        bail!("rms norm: {} weights for {:?}", weight.len(), x.dims());
    }
    map_rows(x, None, dtype, |_, row, _, out| {
        let mean_square = sum_lanes(row, |v| v * v) / row.len() as f32;
        let inverse = 1.0 / (mean_square + eps as f32).sqrt();
        for ((out, value), weight) in out.iter_mut().zip(row).zip(&weight) {
            *out = value * inverse * weight;
        }
    })
}

/// `x + y * gate` for `x` and `y` `[B, L, D]` and `gate` `[B, 1, D]`, in f32, written in
/// `dtype`.
pub fn gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor, dtype: DType) -> Result<Tensor> {
    if x.dims() != y.dims() {
        bail!("gated residual: {:?} and {:?} differ", x.dims(), y.dims());
    }
    let (gate, tokens) = (per_batch(gate, x)?, x.dim(1)?.max(1));
    map_rows(x, Some(y), dtype, |index, row, other, out| {
        let gate = &gate[index / tokens];
        for (((out, value), other), gate) in out.iter_mut().zip(row).zip(other).zip(gate) {
            *out = value + other * gate;
        }
    })
}

/// `x + y` for `x` and `y` `[B, L, D]`, in f32, written in `dtype` (a residual without gate).
pub fn residual(x: &Tensor, y: &Tensor, dtype: DType) -> Result<Tensor> {
    if x.dims() != y.dims() {
        bail!("residual: {:?} and {:?} differ", x.dims(), y.dims());
    }
    map_rows(x, Some(y), dtype, |_, row, other, out| {
        for ((out, value), other) in out.iter_mut().zip(row).zip(other) {
            *out = value + other;
        }
    })
}

/// `[B, 1, D]` `values` as one f32 vector per batch of `x` `[B, L, D]`.
fn per_batch(values: &Tensor, x: &Tensor) -> Result<Vec<Vec<f32>>> {
    let (batch, _, dim) = x.dims3()?;
    values
        .to_dtype(DType::F32)?
        .reshape((batch, dim))?
        .to_vec2()
}

/// The rows of a contiguous f32 or bf16 CPU tensor.
enum Rows<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

impl Rows<'_> {
    /// Row `index` (`dim` wide) widened into `out`.
    fn read(&self, index: usize, out: &mut [f32]) {
        let dim = out.len();
        match self {
            Rows::F32(values) => out.copy_from_slice(&values[index * dim..(index + 1) * dim]),
            Rows::Bf16(values) => {
                let row = &values[index * dim..(index + 1) * dim];
                out.iter_mut()
                    .zip(row)
                    .for_each(|(out, value)| *out = value.to_f32());
            }
        }
    }
}

/// `x` `[B, L, D]` row by row through `f(row index, x row, y row, out row)` (row index
/// `batch * L + token`; `y` rows are empty without `y`), all in f32, the result written in
/// `dtype`.
pub(crate) fn map_rows(
    x: &Tensor,
    y: Option<&Tensor>,
    dtype: DType,
    f: impl Fn(usize, &[f32], &[f32], &mut [f32]) + Sync,
) -> Result<Tensor> {
    let dim = x.dim(2)?;
    let x = x.contiguous()?;
    let y = y.map(Tensor::contiguous).transpose()?;
    let (x_storage, x_layout) = x.storage_and_layout();
    let x_rows = rows(&x_storage, x_layout.start_offset(), x.elem_count())?;
    let y_guard = y.as_ref().map(|y| (y.storage_and_layout(), y.elem_count()));
    let y_rows = match &y_guard {
        Some(((storage, layout), count)) => Some(rows(storage, layout.start_offset(), *count)?),
        None => None,
    };
    // Row `index` computed into the last third of `scratch` (x's row, y's row, the result).
    let row = |index: usize, scratch: &mut Vec<f32>| {
        scratch.resize(3 * dim, 0.0);
        let (value, rest) = scratch.split_at_mut(dim);
        let (other, out) = rest.split_at_mut(dim);
        x_rows.read(index, value);
        let other: &[f32] = match &y_rows {
            Some(y_rows) => {
                y_rows.read(index, other);
                other
            }
            None => &[],
        };
        row_built_for_cpu(&f, (index, value, other, out));
    };
    let dim = dim.max(1);
    let count = x.elem_count() / dim;
    match dtype {
        DType::F32 => {
            let mut out = vec![0f32; count * dim];
            let rows = out.par_chunks_mut(dim).enumerate();
            rows.for_each_init(Vec::new, |scratch, (index, out)| {
                row(index, scratch);
                out.copy_from_slice(&scratch[2 * dim..]);
            });
            Tensor::from_vec(out, x.dims(), x.device())
        }
        DType::BF16 => {
            let mut out = vec![bf16::ZERO; count * dim];
            let rows = out.par_chunks_mut(dim).enumerate();
            rows.for_each_init(Vec::new, |scratch, (index, out)| {
                row(index, scratch);
                super::narrow(&scratch[2 * dim..], out);
            });
            Tensor::from_vec(out, x.dims(), x.device())
        }
        other => bail!("fused modulation writes f32 or bf16, not {other:?}"),
    }
}

/// `f(args)` compiled, with `f` inlined, for AVX-512 where the CPU has it (the passes' loops
/// then run sixteen lanes wide), else for the baseline CPU.
#[inline(always)]
fn row_built_for_cpu<F>(f: &F, args: (usize, &[f32], &[f32], &mut [f32]))
where
    F: Fn(usize, &[f32], &[f32], &mut [f32]),
{
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn build<F>(f: &F, (index, value, other, out): (usize, &[f32], &[f32], &mut [f32]))
        where
            F: Fn(usize, &[f32], &[f32], &mut [f32]),
        {
            f(index, value, other, out)
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { build(f, args) };
        }
    }
    let (index, value, other, out) = args;
    f(index, value, other, out)
}

/// The `count` values of a CPU storage from `start` as rows to read.
fn rows(storage: &Storage, start: usize, count: usize) -> Result<Rows<'_>> {
    match storage {
        Storage::Cpu(CpuStorage::F32(values)) => Ok(Rows::F32(&values[start..start + count])),
        Storage::Cpu(CpuStorage::BF16(values)) => Ok(Rows::Bf16(&values[start..start + count])),
        _ => bail!("fused modulation reads f32 or bf16 tensors on the CPU"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Device};

    fn max_difference(a: &Tensor, b: &Tensor) -> Result<f32> {
        let a = a.to_dtype(DType::F32)?;
        (a - b.to_dtype(DType::F32)?)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar()
    }

    #[test]
    fn match_the_composed_formulas_in_f32_and_bf16() -> Result<()> {
        let device = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 48), &device)?.affine(3.0, 1.0)?;
        let y = Tensor::randn(0f32, 1.0, (2, 5, 48), &device)?;
        let shift = Tensor::randn(0f32, 1.0, (2, 1, 48), &device)?;
        let scale = Tensor::randn(0f32, 1.0, (2, 1, 48), &device)?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(variance + 1e-6)?.sqrt()?)?;
        let modulated = normed
            .broadcast_mul(&(&scale + 1.0)?)?
            .broadcast_add(&shift)?;
        let residual = (&x + y.broadcast_mul(&scale)?)?;
        let (weight, bias) = (
            scale.flatten_all()?.narrow(0, 0, 48)?,
            shift.flatten_all()?.narrow(0, 0, 48)?,
        );
        let affine = normed.broadcast_mul(&weight)?.broadcast_add(&bias)?;
        let rms = candle_nn::ops::rms_norm(&x, &weight, 1e-6)?;
        for dtype in [DType::F32, DType::BF16] {
            let (xd, yd) = (x.to_dtype(dtype)?, y.to_dtype(dtype)?);
            // bf16 rounds x by up to 2^-9 of its size before the norm, and the results (up to
            // about 15 here) by 2^-9 of theirs.
            let tolerance = if dtype == DType::F32 { 1e-5 } else { 0.08 };
            let ours = modulated_layer_norm(&xd, &shift, &scale, 1e-6, dtype)?;
            assert_eq!(ours.dtype(), dtype);
            let error = max_difference(&ours, &modulated)?;
            assert!(error < tolerance, "{dtype:?} modulated norm: {error}");
            let ours = affine_layer_norm(&xd, &weight, &bias, 1e-6, dtype)?;
            let error = max_difference(&ours, &affine)?;
            assert!(error < tolerance, "{dtype:?} affine norm: {error}");
            let ours = rms_norm(&xd, &weight.to_dtype(dtype)?, 1e-6, dtype)?;
            let error = max_difference(&ours, &rms)?;
            assert!(error < tolerance, "{dtype:?} rms norm: {error}");
            let ours = gated_residual(&xd, &yd, &scale, dtype)?;
            let error = max_difference(&ours, &residual)?;
            assert!(error < tolerance * 4.0, "{dtype:?} gated residual: {error}");
            let ours = super::residual(&xd, &yd, dtype)?;
            let error = max_difference(&ours, &(&x + &y)?)?;
            assert!(error < tolerance * 4.0, "{dtype:?} residual: {error}");
        }
        let wrong = Tensor::zeros((2, 4, 48), DType::F32, &device)?;
        assert!(gated_residual(&x, &wrong, &scale, DType::F32).is_err());
        assert!(super::residual(&x, &wrong, DType::F32).is_err());
        assert!(rms_norm(&wrong, &weight.narrow(0, 0, 47)?, 1e-6, DType::F32).is_err());
        Ok(())
    }
}
