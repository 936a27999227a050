//! Linear layers for inference ([`Dense`]), bf16 weights summed in f32. Where the CPU has
//! AVX-512 BF16 the weights are packed once and the inputs rounded to bf16 and multiplied
//! pairwise by [`super::bf16_gemm`] (as PyTorch does in bf16); on request, with AVX-512 VNNI or
//! AVX2, in int8 by [`super::int8_gemm`]. Elsewhere candle's bf16 matrix product has no fast kernel (it
//! ran at two thirds of its f32 speed), so the weights stay bf16 in memory (half of f32's) and
//! are widened to f32 a panel of rows at a time, each panel small enough to stay in cache while
//! one f32 product uses it.

use candle_core::{CpuStorage, DType, Result, Storage, Tensor, bail};
use candle_nn::{Linear, VarBuilder};
use rayon::prelude::*;

use super::elementwise::add_bias;
use super::{SendPtr, cpu_slice, narrow, product};

/// Weight rows widened and multiplied at once (128 rows of 1536 are 768 KiB of f32). On
/// `himmel bench wan --width 256 --height 256 --frames 5 --no-vae`: 32 to 128 rows 16.4-17.0 s,
/// 256 rows 19.5 s, 1024 rows 21.7 s.
const PANEL_ROWS: usize = 128;

/// A linear layer for inference and training: with a bf16 weight on a CPU with AVX-512 BF16
/// and no gradients wanted, the weight is packed once for [`super::bf16_gemm`] (in place of the
/// stored one: the same memory) and each product's tiles get bias and activation and are
/// written in the input's dtype while in cache; otherwise candle's layer as [`forward`] runs it.
pub struct Dense(Kind);

/// How a [`Dense`] layer runs.
enum Kind {
    /// candle's layer.
    Layer(Linear),
    /// The weight packed for the bf16 products, with the bias in f32.
    #[cfg(target_arch = "x86_64")]
    Packed {
        weight: super::bf16_gemm::Panels,
        bias: Vec<f32>,
    },
    /// The weight quantised to int8 per output channel for the int8 products, with the bias in
    /// f32.
    #[cfg(target_arch = "x86_64")]
    Int8 {
        weight: super::int8_gemm::QuantizedWeight,
        bias: Vec<f32>,
    },
}

impl Dense {
    /// The layer `inputs -> outputs` with bias from `vb` (`weight`, `bias`).
    pub fn load(inputs: usize, outputs: usize, vb: VarBuilder) -> Result<Self> {
        Self::load_in(inputs, outputs, vb, false)
    }

    /// [`Self::load`], quantised to int8 with `int8` where [`Self::quantised`] runs.
    pub fn load_in(inputs: usize, outputs: usize, vb: VarBuilder, int8: bool) -> Result<Self> {
        let layer = candle_nn::linear(inputs, outputs, vb)?;
        if int8 && let Some(quantised) = Self::quantised(&layer)? {
            return Ok(quantised);
        }
        Self::new(layer)
    }

    /// The layer `inputs -> outputs` without bias from `vb` (`weight`).
    pub fn load_no_bias(inputs: usize, outputs: usize, vb: VarBuilder) -> Result<Self> {
        Self::new(candle_nn::linear_no_bias(inputs, outputs, vb)?)
    }

    /// `layer` with its weight quantised to int8 per output channel, its activations per row
    /// when it runs, for AVX-512 VNNI or AVX2; `None` where the CPU has neither or the layer is
    /// trained or on another device.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    pub fn quantised(layer: &Linear) -> Result<Option<Self>> {
        #[cfg(target_arch = "x86_64")]
        if let Some(kernel) = super::int8_gemm::Kernel::detect()
            && layer.weight().device().is_cpu()
            && !layer.weight().track_op()
        {
            let (outputs, inputs) = layer.weight().dims2()?;
            let weight = layer
                .weight()
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let weight = super::int8_gemm::QuantizedWeight::new(&weight, outputs, inputs, kernel);
            let bias = bias_f32(layer, outputs)?;
            return Ok(Some(Self(Kind::Int8 { weight, bias })));
        }
        Ok(None)
    }

    /// `layer`, its weight packed where that applies.
    pub fn new(layer: Linear) -> Result<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            let weight = layer.weight();
            let packs = super::bf16_gemm::is_available()
                && weight.device().is_cpu()
                && weight.dtype() == DType::BF16
                && !weight.track_op();
            if packs {
                let (outputs, inputs) = weight.dims2()?;
                let weight = weight.contiguous()?;
                let (storage, layout) = weight.storage_and_layout();
                let Storage::Cpu(CpuStorage::BF16(data)) = &*storage else {
                    bail!("dense: a bf16 weight on the CPU holds bf16 values")
                };
                let data = &data[layout.start_offset()..layout.start_offset() + outputs * inputs];
                let packed = super::bf16_gemm::Panels::new(data, outputs, inputs);
                let bias = bias_f32(&layer, outputs)?;
                return Ok(Self(Kind::Packed {
                    weight: packed,
                    bias,
                }));
            }
        }
        Ok(Self(Kind::Layer(layer)))
    }

    /// The layer applied to `x` `[..., in]`, in `x`'s dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, false)
    }

    /// [`Self::forward`] followed by the tanh-approximated GELU, applied in f32 before the
    /// result is written in `x`'s dtype.
    pub fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, true)
    }

    /// `next` applied to [`Self::forward_gelu`] of `x`; where both layers are packed, the
    /// hidden values go from one product to the next in the products' own layout, never as a
    /// tensor (the same values: both round them to bf16).
    pub fn forward_gelu_into(&self, next: &Dense, x: &Tensor) -> Result<Tensor> {
        #[cfg(target_arch = "x86_64")]
        if let (
            Kind::Packed { weight, bias },
            Kind::Packed {
                weight: next_weight,
                bias: next_bias,
            },
        ) = (&self.0, &next.0)
        {
            let (hidden, inputs) = weight.dims();
            if next_weight.dims().1 != hidden {
                bail!(
                    "dense: {hidden} outputs feed a layer of {} inputs",
                    next_weight.dims().1
                );
            }
            let write = |columns: std::ops::Range<usize>, sums: &mut [f32], out: &mut [_]| {
                super::bf16_gemm::narrow_finished(sums, &bias[columns], true, out)
            };
            let hidden = with_input_rows(x, inputs, |rows| {
                Ok(super::bf16_gemm::product_rows(rows, weight, write))
            })?;
            return written(&hidden, (next_weight, next_bias, false), x);
        }
        next.forward(&self.forward_gelu(x)?)
    }

    fn apply(&self, x: &Tensor, gelu: bool) -> Result<Tensor> {
        match &self.0 {
            Kind::Layer(layer) if gelu => forward_gelu(layer, x),
            Kind::Layer(layer) => forward(layer, x),
            #[cfg(target_arch = "x86_64")]
            Kind::Packed { weight, bias } => packed(weight, bias, x, gelu),
            #[cfg(target_arch = "x86_64")]
            Kind::Int8 { weight, bias } => int8(weight, bias, x, gelu),
        }
    }
}

/// `layer`'s bias in f32 (zeros without one).
fn bias_f32(layer: &Linear, outputs: usize) -> Result<Vec<f32>> {
    let bias = match layer.bias() {
        Some(bias) => bias.to_dtype(DType::F32)?.to_vec1::<f32>()?,
        None => vec![0.0; outputs],
    };
    if bias.len() != outputs {
        bail!("dense: {} biases for {outputs} outputs", bias.len());
    }
    Ok(bias)
}

/// `x w^T + bias` (then GELU with `gelu`) through the packed weight, written in `x`'s dtype
/// (bf16 or f32) tile by tile.
#[cfg(target_arch = "x86_64")]
fn packed(
    weight: &super::bf16_gemm::Panels,
    bias: &[f32],
    x: &Tensor,
    gelu: bool,
) -> Result<Tensor> {
    with_input_rows(x, weight.dims().1, |rows| {
        written(rows, (weight, bias, gelu), x)
    })
}

/// An error unless `x` is a CPU tensor without gradients ending in `inputs`.
#[cfg(target_arch = "x86_64")]
fn check_input(x: &Tensor, inputs: usize) -> Result<()> {
    if x.dims().last() != Some(&inputs) || x.track_op() || !x.device().is_cpu() {
        bail!(
            "dense: input {:?} is not a CPU tensor without gradients ending in {inputs}",
            x.dims()
        );
    }
    Ok(())
}

/// `f` of `x` (`[..., inputs]`, a CPU tensor without gradients) rounded to bf16 as a left
/// operand (borrowed from `x` where it is bf16 already).
#[cfg(target_arch = "x86_64")]
fn with_input_rows<T>(
    x: &Tensor,
    inputs: usize,
    f: impl FnOnce(&super::bf16_gemm::Rows) -> Result<T>,
) -> Result<T> {
    check_input(x, inputs)?;
    let x = x.to_dtype(DType::BF16)?.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let Storage::Cpu(CpuStorage::BF16(data)) = &*storage else {
        bail!("dense: the input must be on the CPU")
    };
    let start = layout.start_offset();
    f(&super::bf16_gemm::Rows::new(
        &data[start..start + x.elem_count()],
        inputs,
    ))
}

/// A packed layer `(weight, bias, gelu)` applied to `rows` (the rows of `x`, or of what was
/// computed from them): a tensor of `x`'s leading dimensions, dtype (bf16 or f32) and device.
#[cfg(target_arch = "x86_64")]
fn written(
    rows: &super::bf16_gemm::Rows,
    (weight, bias, gelu): (&super::bf16_gemm::Panels, &[f32], bool),
    x: &Tensor,
) -> Result<Tensor> {
    let outputs = weight.dims().0;
    let tiles = |each: &Tile| super::bf16_gemm::product_tiles(rows, weight, each);
    tensor_of_tiles(tiles, (rows.dims().0, outputs), (bias, gelu), x)
}

/// `x w^T + bias` (then GELU with `gelu`) through the int8 weight, `x` quantised per row,
/// written in `x`'s dtype (bf16 or f32) tile by tile.
#[cfg(target_arch = "x86_64")]
fn int8(
    weight: &super::int8_gemm::QuantizedWeight,
    bias: &[f32],
    x: &Tensor,
    gelu: bool,
) -> Result<Tensor> {
    let (outputs, inputs) = weight.dims();
    check_input(x, inputs)?;
    let rows = {
        let x = match x.dtype() {
            DType::F32 | DType::BF16 => x.contiguous()?,
            _ => x.to_dtype(DType::F32)?.contiguous()?,
        };
        let (storage, layout) = x.storage_and_layout();
        let (start, count) = (layout.start_offset(), x.elem_count());
        match &*storage {
            Storage::Cpu(CpuStorage::BF16(values)) => {
                super::int8_gemm::QuantizedRows::new(&values[start..start + count], inputs)
            }
            _ => super::int8_gemm::QuantizedRows::new(cpu_slice(&storage, start, count)?, inputs),
        }
    };
    let tiles = |each: &Tile| super::int8_gemm::product_tiles(&rows, weight, each);
    let count = x.elem_count() / inputs.max(1);
    tensor_of_tiles(tiles, (count, outputs), (bias, gelu), x)
}

/// What a product hands each finished row of a tile to: `(row, columns, values)`.
#[cfg(target_arch = "x86_64")]
type Tile<'a> = dyn Fn(usize, std::ops::Range<usize>, &mut [f32]) + Sync + 'a;

/// The `rows x outputs` result of a product `tiles` (run with what to do with each row of a
/// tile) with `(bias, gelu)` applied, as a tensor of `x`'s leading dimensions, dtype (bf16 or
/// f32) and device.
#[cfg(target_arch = "x86_64")]
fn tensor_of_tiles(
    tiles: impl FnOnce(&Tile),
    (rows, outputs): (usize, usize),
    (bias, gelu): (&[f32], bool),
    x: &Tensor,
) -> Result<Tensor> {
    let mut shape = x.dims().to_vec();
    *shape.last_mut().expect("inputs have a last dimension") = outputs;
    match x.dtype() {
        DType::BF16 => {
            let write = |columns: std::ops::Range<usize>, sums: &mut [f32], out: &mut [_]| {
                super::bf16_gemm::narrow_finished(sums, &bias[columns], gelu, out)
            };
            let out = tiles_written(tiles, rows * outputs, outputs, write);
            Tensor::from_vec(out, shape, x.device())
        }
        dtype => {
            let write = |columns, sums: &mut [f32], out: &mut [f32]| {
                add_bias(sums, &bias[columns], gelu);
                out.copy_from_slice(sums)
            };
            let out = tiles_written(tiles, rows * outputs, outputs, write);
            Tensor::from_vec(out, shape, x.device())?.to_dtype(dtype)
        }
    }
}

/// The `count` values (rows of `outputs`) of a product `tiles`, each tile's row of sums
/// finished and written by `write(columns, sums, out)` while in cache.
#[cfg(target_arch = "x86_64")]
fn tiles_written<T: Copy + Send>(
    tiles: impl FnOnce(&Tile),
    count: usize,
    outputs: usize,
    write: impl Fn(std::ops::Range<usize>, &mut [f32], &mut [T]) + Sync,
) -> Vec<T> {
    // Not zeroed first: the tiles write every value.
    let mut out = Vec::<T>::with_capacity(count);
    let at = SendPtr(out.as_mut_ptr());
    tiles(&|row, columns, sums| {
        let start = row * outputs + columns.start;
        // SAFETY: tiles are disjoint parts of `out`'s `count` values, in its capacity; each is
        // written whole before it is read.
        let out = unsafe { std::slice::from_raw_parts_mut(at.get().add(start), sums.len()) };
        write(columns, sums, out);
    });
    // SAFETY: the tiles cover all rows and columns: every value was written.
    unsafe { out.set_len(count) };
    out
}

/// `layer` applied to `x` `[..., in]`: in f32 over bf16 weights on the CPU when inference runs
/// in bf16 there, else candle's own. The result has `x`'s dtype.
fn forward(layer: &Linear, x: &Tensor) -> Result<Tensor> {
    match widened(layer, x, false)? {
        Some(out) => Ok(out),
        None => crate::ops::linear(layer, x),
    }
}

/// [`forward`] followed by the tanh-approximated GELU, applied in f32 before narrowing back to
/// bf16 where the product ran in f32.
fn forward_gelu(layer: &Linear, x: &Tensor) -> Result<Tensor> {
    match widened(layer, x, true)? {
        Some(out) => Ok(out),
        None => crate::ops::gelu(&crate::ops::linear(layer, x)?),
    }
}

/// `x w^T + bias` (then GELU with `gelu`) in `x`'s dtype, the sums through [`sums`] and the
/// rest in one pass over them, or `None` where that does not apply (other devices or dtypes,
/// or gradients wanted).
fn widened(layer: &Linear, x: &Tensor, gelu: bool) -> Result<Option<Tensor>> {
    let weight = layer.weight();
    let applies =
        x.device().is_cpu() && weight.dtype() == DType::BF16 && !x.track_op() && !weight.track_op();
    if !applies {
        return Ok(None);
    }
    let (mut sums, shape) = sums(x, weight)?;
    let outputs = weight.dim(0)?;
    let bias = bias_f32(layer, outputs)?;
    let finish = |row: &mut [f32]| add_bias(row, &bias, gelu);
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

/// `x` `[..., K]` (f32 or bf16) times the transpose of `weight` `[N, K]` (bf16), each panel of
/// the weight widened to f32: values and shape `[..., N]`.
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
        // Rows and columns past the packed products' tiles; odd depths.
        for (batch, tokens, inner, outputs) in [
            (1, 7, 16, 5),
            (2, 33, 48, 300),
            (1, 1, 3, 513),
            (1, 200, 129, 260),
        ] {
            // Values bf16 holds exactly: the AVX-512 BF16 path rounds inputs to bf16.
            let x = Tensor::randn(0f32, 1.0, (batch, tokens, inner), &device)?
                .to_dtype(DType::BF16)?
                .to_dtype(DType::F32)?;
            let weight =
                Tensor::randn(0f32, 1.0, (outputs, inner), &device)?.to_dtype(DType::BF16)?;
            let bias = Tensor::randn(0f32, 1.0, outputs, &device)?.to_dtype(DType::BF16)?;
            let layer = Linear::new(weight.clone(), Some(bias.clone()));
            let expected = x
                .broadcast_matmul(&weight.to_dtype(DType::F32)?.t()?)?
                .broadcast_add(&bias.to_dtype(DType::F32)?)?;
            let largest = |t: &Tensor| t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>();
            // Packed where the CPU has AVX-512 BF16, and candle's layer over widened weights.
            for dense in [
                Dense::new(layer.clone())?,
                Dense(Kind::Layer(layer.clone())),
            ] {
                let shape = format!("{tokens}x{inner}x{outputs}");
                let ours = dense.forward(&x)?;
                assert_eq!(ours.dims(), expected.dims());
                assert!(largest(&(ours - &expected)?)? < 1e-4, "{shape}");
                let ours = dense.forward_gelu(&x)?;
                assert!(largest(&(ours - expected.gelu()?)?)? < 1e-4, "gelu {shape}");
                // bf16 inputs give the same sums, rounded to bf16.
                let ours = dense.forward(&x.to_dtype(DType::BF16)?)?;
                assert_eq!(ours.dtype(), DType::BF16);
                let error = largest(&(ours.to_dtype(DType::F32)? - &expected)?)?;
                assert!(
                    error <= largest(&expected)? / 128.0,
                    "bf16 {shape}: {error}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn a_feed_forward_gives_the_same_values_as_its_layers_one_after_the_other() -> Result<()> {
        let device = Device::Cpu;
        let random = |shape: (usize, usize)| -> Result<Tensor> {
            Tensor::randn(0f32, 1.0, shape, &device)?.to_dtype(DType::BF16)
        };
        let layer = |outputs, inputs| -> Result<Dense> {
            let bias = random((1, outputs))?.flatten_all()?;
            Dense::new(Linear::new(random((outputs, inputs))?, Some(bias)))
        };
        // Hidden widths past a tile and odd; rows past a tile.
        for (tokens, inner, hidden) in [(7, 16, 40), (200, 48, 301), (3, 5, 513)] {
            let (up, down) = (layer(hidden, inner)?, layer(inner, hidden)?);
            let x = random((tokens, inner))?.unsqueeze(0)?;
            let fused = up.forward_gelu_into(&down, &x)?;
            let apart = down.forward(&up.forward_gelu(&x)?)?;
            assert_eq!(fused.dims(), &[1, tokens, inner]);
            let difference = (fused.to_dtype(DType::F32)? - apart.to_dtype(DType::F32)?)?;
            let largest = difference
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert_eq!(largest, 0.0, "{tokens}x{inner}x{hidden}");
        }
        let (up, wrong) = (layer(40, 16)?, layer(16, 41)?);
        let x = random((2, 16))?;
        assert!(up.forward_gelu_into(&wrong, &x).is_err());
        Ok(())
    }

    #[test]
    fn an_int8_layer_stays_within_its_quantisation_error() -> Result<()> {
        let device = Device::Cpu;
        let (tokens, inner, outputs) = (200, 300, 70);
        let x = Tensor::randn(0f32, 1.0, (1, tokens, inner), &device)?;
        let weight = Tensor::randn(0f32, 1.0, (outputs, inner), &device)?;
        let bias = Tensor::randn(0f32, 1.0, outputs, &device)?;
        let layer = Linear::new(weight.clone(), Some(bias.clone()));
        let Some(dense) = Dense::quantised(&layer)? else {
            eprintln!("skipped: this CPU lacks AVX2 and AVX-512 VNNI");
            return Ok(());
        };
        let expected = x.broadcast_matmul(&weight.t()?)?.broadcast_add(&bias)?;
        let ours = dense.forward(&x)?;
        assert_eq!(ours.dims(), expected.dims());
        // Each term off by at most half a step of either operand (max / 127 / 2, or max / 63 / 2
        // for AVX2's weights): typically a
        // few tenths of a percent of the sums' spread.
        let relative = |ours: &Tensor, expected: &Tensor| -> Result<f32> {
            let error = (ours - expected)?.sqr()?.mean_all()?.sqrt()?;
            let spread = expected.sqr()?.mean_all()?.sqrt()?;
            (error / spread)?.to_scalar::<f32>()
        };
        let error = relative(&ours, &expected)?;
        assert!(error < 0.02, "relative error {error}");
        let ours = dense.forward_gelu(&x.to_dtype(DType::BF16)?)?;
        assert_eq!(ours.dtype(), DType::BF16);
        let error = relative(&ours.to_dtype(DType::F32)?, &expected.gelu()?)?;
        assert!(error < 0.03, "gelu relative error {error}");
        Ok(())
    }
}
