//! Linear layers with bf16 weights on the CPU, summed in f32. Where the CPU has AVX-512 BF16 the
//! inputs are rounded to bf16 and multiplied pairwise by [`super::bf16_gemm`] (as PyTorch does
//! in bf16). Elsewhere candle's bf16 matrix product has no fast kernel (it ran at two thirds of
//! its f32 speed), so the weights stay bf16 in memory (half of f32's) and are widened to f32 a
//! panel of rows at a time, each panel small enough to stay in cache while one f32 product uses
//! it.

use candle_core::{CpuStorage, DType, Result, Storage, Tensor, bail};
use candle_nn::Linear;
use rayon::prelude::*;

use super::{SendPtr, cpu_slice, narrow, product};

/// Weight rows widened and multiplied at once (128 rows of 1536 are 768 KiB of f32). On
/// `himmel bench wan --width 256 --height 256 --frames 5 --no-vae`: 32 to 128 rows 16.4-17.0 s,
/// 256 rows 19.5 s, 1024 rows 21.7 s.
const PANEL_ROWS: usize = 128;

/// `layer` applied to `x` `[..., in]`: in f32 over bf16 weights on the CPU when inference runs
/// in bf16 there, else candle's own. The result has `x`'s dtype.
pub fn forward(layer: &Linear, x: &Tensor) -> Result<Tensor> {
    match widened(layer, x, |v| v)? {
        Some(out) => Ok(out),
        None => crate::ops::linear(layer, x),
    }
}

/// [`forward`] followed by the tanh-approximated GELU, applied in f32 before narrowing back to
/// bf16 where the product ran in f32.
pub fn forward_gelu(layer: &Linear, x: &Tensor) -> Result<Tensor> {
    // 0.5 v (1 + tanh(u)) = v / (1 + exp(-2u)), u = sqrt(2/pi) (v + 0.044715 v^3).
    let gelu = |v: f32| v / (1.0 + (-2.0 * 0.797_884_6 * (v + 0.044_715 * v * v * v)).exp());
    match widened(layer, x, gelu)? {
        Some(out) => Ok(out),
        None => crate::ops::gelu(&crate::ops::linear(layer, x)?),
    }
}

/// `activation(x w^T + bias)` in `x`'s dtype, the sums through [`matmul_transposed`] and the
/// rest in one pass over them, or `None` where that does not apply (other devices or dtypes,
/// or gradients wanted).
fn widened(
    layer: &Linear,
    x: &Tensor,
    activation: impl Fn(f32) -> f32 + Sync,
) -> Result<Option<Tensor>> {
    let weight = layer.weight();
    let applies =
        x.device().is_cpu() && weight.dtype() == DType::BF16 && !x.track_op() && !weight.track_op();
    if !applies {
        return Ok(None);
    }
    let (mut sums, shape) = sums(x, weight)?;
    let outputs = weight.dim(0)?;
    let bias = match layer.bias() {
        Some(bias) => bias.to_dtype(DType::F32)?.to_vec1::<f32>()?,
        None => vec![0.0; outputs],
    };
    let finish = |row: &mut [f32]| {
        for (value, bias) in row.iter_mut().zip(&bias) {
            *value = activation(*value + bias);
        }
    };
    let out = if x.dtype() == DType::BF16 {
        let mut narrowed = vec![half::bf16::ZERO; sums.len()];
        let rows = narrowed
            .par_chunks_mut(outputs)
            .zip(sums.par_chunks_mut(outputs));
        rows.for_each(|(narrowed, row)| {
            finish(row);
            narrow(row, narrowed);
        });
        Tensor::from_vec(narrowed, shape, x.device())?
    } else {
        sums.par_chunks_mut(outputs).for_each(finish);
        Tensor::from_vec(sums, shape, x.device())?.to_dtype(x.dtype())?
    };
    Ok(Some(out))
}

/// `x` `[..., K]` (f32 or bf16) times the transpose of `weight` `[N, K]` (bf16): `[..., N]` in
/// f32.
pub fn matmul_transposed(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (sums, shape) = sums(x, weight)?;
    Tensor::from_vec(sums, shape, x.device())
}

/// [`matmul_transposed`]'s values and shape.
fn sums(x: &Tensor, weight: &Tensor) -> Result<(Vec<f32>, Vec<usize>)> {
    let (outputs, inner) = weight.dims2()?;
    let mut shape = x.dims().to_vec();
    if shape.last() != Some(&inner) {
        bail!("bf16 linear: input {:?} does not end in {inner}", x.dims());
    }
    *shape.last_mut().expect("checked above") = outputs;
    let weight = weight.contiguous()?;
    let (w_storage, w_layout) = weight.storage_and_layout();
    let w_data = match &*w_storage {
        Storage::Cpu(CpuStorage::BF16(data)) => &data[w_layout.start_offset()..],
        _ => bail!("bf16 linear: the weight must be bf16 on the CPU"),
    };
    let rows = x.elem_count() / inner.max(1);
    let mut out = vec![0f32; rows * outputs];
    #[cfg(target_arch = "x86_64")]
    if super::bf16_gemm::is_available() {
        let x = x.to_dtype(DType::BF16)?.contiguous()?;
        let (x_storage, x_layout) = x.storage_and_layout();
        let x_rows = match &*x_storage {
            Storage::Cpu(CpuStorage::BF16(data)) => {
                let start = x_layout.start_offset();
                super::bf16_gemm::Rows::new(&data[start..start + x.elem_count()], inner)
            }
            _ => bail!("bf16 linear: the input must be on the CPU"),
        };
        super::bf16_gemm::matmul_transposed(&x_rows, &w_data[..outputs * inner], outputs, &mut out);
        return Ok((out, shape));
    }
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    let (x_storage, x_layout) = x.storage_and_layout();
    let x_data = cpu_slice(&x_storage, x_layout.start_offset(), x.elem_count())?;
    let out_ptr = SendPtr(out.as_mut_ptr());
    w_data[..outputs * inner]
        .par_chunks(PANEL_ROWS * inner)
        .enumerate()
        .for_each(|(panel, weights)| {
            let widened: Vec<f32> = weights.iter().map(|w| w.to_f32()).collect();
            let columns = widened.len() / inner;
            // SAFETY: `x_data` is `rows x inner`, `widened` is `columns x inner` (read as its
            // transpose), and each panel writes its own columns of `out` (`rows x outputs`).
            unsafe {
                product(
                    (rows, columns, inner),
                    (out_ptr.get().add(panel * PANEL_ROWS), outputs),
                    (x_data.as_ptr(), inner, 1),
                    (widened.as_ptr(), 1, inner),
                    false,
                    1.0,
                );
            }
        });
    Ok((out, shape))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_the_f32_product_of_the_widened_weights() -> Result<()> {
        let device = Device::Cpu;
        for (batch, tokens, inner, outputs) in [(1, 7, 16, 5), (2, 33, 48, 300), (1, 1, 3, 513)] {
            // Values bf16 holds exactly: the AVX-512 BF16 path rounds inputs to bf16.
            let x = Tensor::randn(0f32, 1.0, (batch, tokens, inner), &device)?
                .to_dtype(DType::BF16)?
                .to_dtype(DType::F32)?;
            let weight =
                Tensor::randn(0f32, 1.0, (outputs, inner), &device)?.to_dtype(DType::BF16)?;
            let bias = Tensor::randn(0f32, 1.0, outputs, &device)?.to_dtype(DType::BF16)?;
            let layer = Linear::new(weight.clone(), Some(bias.clone()));
            let ours = forward(&layer, &x)?;
            let expected = x
                .broadcast_matmul(&weight.to_dtype(DType::F32)?.t()?)?
                .broadcast_add(&bias.to_dtype(DType::F32)?)?;
            assert_eq!(ours.dims(), expected.dims());
            let error = (ours - &expected)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(error < 1e-4, "{tokens}x{inner}x{outputs}: {error}");
            let ours = forward_gelu(&layer, &x)?;
            let error = (ours - expected.gelu()?)?.abs()?.flatten_all()?.max(0)?;
            assert!(
                error.to_scalar::<f32>()? < 1e-4,
                "gelu {tokens}x{inner}x{outputs}"
            );
        }
        Ok(())
    }
}
