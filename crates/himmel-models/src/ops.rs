//! Tensor operations with a fast path for each way models run: candle's fused kernels for
//! inference, and for training on the CPU in f32 our own fused forward and backward passes
//! (candle's fused softmax and RMS norm have no backward pass, and its composed GELU and
//! broadcast gradients spend most of a small model's training step in temporaries and strided
//! sums). Other devices and dtypes take candle's composed formulas.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, D, DType, Layout, Result, Shape, Tensor, bail,
};
use candle_nn::Linear;
use rayon::prelude::*;

/// Elements each thread takes at once in the element-wise passes.
const CHUNK: usize = 1 << 14;

/// Whether `x` trains on the CPU in f32, where the fused backward passes apply.
fn trains_on_cpu(x: &Tensor) -> bool {
    x.track_op() && x.device().is_cpu() && x.dtype() == DType::F32
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if trains_on_cpu(x) {
        x.contiguous()?.apply_op1(Softmax)
    } else if x.track_op() {
        candle_nn::ops::softmax(x, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// RMS norm over the last dimension with a learned `weight`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    if trains_on_cpu(x) || trains_on_cpu(weight) {
        let variance = x.sqr()?.mean_keepdim(D::Minus1)?;
        broadcast_mul(
            &x.broadcast_div(&(variance + f64::from(eps))?.sqrt()?)?,
            weight,
        )
    } else if x.track_op() || weight.track_op() {
        candle_nn::ops::rms_norm_slow(x, weight, eps)
    } else {
        candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps)
    }
}

/// `a * b` with broadcasting, as candle's `broadcast_mul`.
pub fn broadcast_mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if trains_on_cpu(a) || trains_on_cpu(b) {
        let (a, b) = expanded(a, b)?;
        a.mul(&b)
    } else {
        a.broadcast_mul(b)
    }
}

/// `a + b` with broadcasting, as candle's `broadcast_add`.
pub fn broadcast_add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if trains_on_cpu(a) || trains_on_cpu(b) {
        let (a, b) = expanded(a, b)?;
        a.add(&b)
    } else {
        a.broadcast_add(b)
    }
}

/// `a` and `b` expanded to their common shape by [`Expand`], whose gradient sums back without
/// candle's per-element index arithmetic.
fn expanded(a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
    let shape = a
        .shape()
        .broadcast_shape_binary_op(b.shape(), "broadcast")?;
    let expand = |t: &Tensor| -> Result<Tensor> {
        if t.shape() == &shape {
            Ok(t.clone())
        } else if trains_on_cpu(t) {
            t.apply_op1(Expand(shape.clone()))
        } else {
            // No gradient to sum back: a strided view, not a copy.
            t.broadcast_as(&shape)
        }
    };
    Ok((expand(a)?, expand(b)?))
}

/// GELU with the tanh approximation (PyTorch's `approximate="tanh"`), as candle's `gelu`; on
/// the CPU in f32 (training or not) through the fused kernel and its fast tanh.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(GeluTanh)
    } else {
        x.gelu()
    }
}

/// `layer` applied to `x` `[..., in]` as one matrix product over all leading dimensions: the
/// weight is not broadcast per batch, so its gradient is one product rather than a product per
/// batch element summed afterwards.
pub fn linear(layer: &Linear, x: &Tensor) -> Result<Tensor> {
    let weight = layer.weight();
    let (out_features, in_features) = weight.dims2()?;
    let mut dims = x.dims().to_vec();
    let Some(last) = dims.last_mut() else {
        bail!("a linear layer needs an input with at least one dimension")
    };
    *last = out_features;
    let rows = x.elem_count() / in_features.max(1);
    let product = x.reshape((rows, in_features))?.matmul(&weight.t()?)?;
    let product = match layer.bias() {
        Some(bias) if trains_on_cpu(&product) || trains_on_cpu(bias) => product
            .contiguous()?
            .apply_op2(&bias.contiguous()?, BiasAdd)?,
        Some(bias) => product.broadcast_add(bias)?,
        None => product,
    };
    product.reshape(dims)
}

/// The f32 values of a contiguous CPU tensor.
pub(crate) fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(values) = storage else {
        bail!("the fused training ops take f32 tensors")
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&values[start..end]),
        None => bail!("the fused training ops take contiguous tensors"),
    }
}

/// `tanh(sqrt(2/pi) (v + 0.044715 v^3))`, the tanh of GELU's approximation.
fn gelu_tanh_inner(v: f32) -> f32 {
    tanh(0.797_884_6 * v * (1.0 + 0.044_715 * v * v))
}

/// `tanh(x)` within 5e-7 (f32 rounds to 6e-8 near 1), as a ratio of polynomials (Eigen's float
/// approximation) with no branches, so that loops over it vectorise; libm's `tanhf` took a
/// sixth of a training step of the himmel-mini denoiser.
fn tanh(x: f32) -> f32 {
    // Beyond this, tanh rounds to +-1 in f32.
    let x = x.clamp(-7.905_311, 7.905_311);
    let x2 = x * x;
    let numerator = x
        * (4.893_524_6e-3
            + x2 * (6.372_619_3e-4
                + x2 * (1.485_722_4e-5
                    + x2 * (5.122_297e-8
                        + x2 * (-8.604_672e-11 + x2 * (2.000_188e-13 + x2 * -2.760_768_5e-16))))));
    let denominator =
        4.893_525e-3 + x2 * (2.268_434_6e-3 + x2 * (1.185_347e-4 + x2 * 1.198_258_4e-6));
    numerator / denominator
}

/// GELU (tanh approximation) with a fused backward pass.
struct GeluTanh;

impl CustomOp1 for GeluTanh {
    fn name(&self) -> &'static str {
        "gelu-tanh"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout)?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(out, x)| {
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = 0.5 * v * (1.0 + gelu_tanh_inner(v));
                }
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(
            &grad_res.contiguous()?,
            &GeluTanhGrad,
        )?))
    }
}

/// The gradient of [`GeluTanh`] at `x` times the incoming gradient.
struct GeluTanhGrad;

impl CustomOp2 for GeluTanhGrad {
    fn name(&self) -> &'static str {
        "gelu-tanh-grad"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x, x_layout)?;
        let grad = contiguous_f32(grad, grad_layout)?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(grad.par_chunks(CHUNK)))
            .for_each(|(out, (x, grad))| {
                for ((o, &v), &g) in out.iter_mut().zip(x).zip(grad) {
                    let t = gelu_tanh_inner(v);
                    let du = 0.797_884_6 * (1.0 + 3.0 * 0.044_715 * v * v);
                    *o = g * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * du);
                }
            });
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }
}

/// Softmax over the last dimension with a fused backward pass.
struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout)?;
        let width = layout.dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(width)
            .zip(x.par_chunks(width))
            .for_each(|(out, x)| {
                let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = (v - max).exp();
                    sum += *o;
                }
                out.iter_mut().for_each(|o| *o /= sum);
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            res.apply_op2_no_bwd(&grad_res.contiguous()?, &SoftmaxGrad)?,
        ))
    }
}

/// The gradient of [`Softmax`] given its output `y` and the incoming gradient `g`:
/// `y (g - sum(g y))` per row.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "softmax-last-dim-grad"
    }

    fn cpu_fwd(
        &self,
        y: &CpuStorage,
        y_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = contiguous_f32(y, y_layout)?;
        let grad = contiguous_f32(grad, grad_layout)?;
        let width = y_layout.dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; y.len()];
        out.par_chunks_mut(width)
            .zip(y.par_chunks(width).zip(grad.par_chunks(width)))
            .for_each(|(out, (y, grad))| {
                let dot: f32 = y.iter().zip(grad).map(|(y, g)| y * g).sum();
                for ((o, &y), &g) in out.iter_mut().zip(y).zip(grad) {
                    *o = y * (g - dot);
                }
            });
        Ok((CpuStorage::F32(out), y_layout.shape().clone()))
    }
}

/// A tensor broadcast to a larger shape and written out; its backward pass sums the gradient
/// back over the broadcast dimensions.
struct Expand(Shape);

impl CustomOp1 for Expand {
    fn name(&self) -> &'static str {
        "expand"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(values) = storage else {
            bail!("the fused training ops take f32 tensors")
        };
        let layout = layout.broadcast_as(&self.0)?;
        let mut out = Vec::with_capacity(self.0.elem_count());
        if self.0.elem_count() > 0 {
            gather(
                values,
                layout.dims(),
                layout.stride(),
                layout.start_offset(),
                &mut out,
            );
        }
        Ok((CpuStorage::F32(out), self.0.clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let summed = grad_res
            .contiguous()?
            .apply_op1_no_bwd(&SumTo(arg.shape().clone()))?;
        Ok(Some(summed))
    }
}

/// A gradient summed over the dimensions its tensor was broadcast along, back to that tensor's
/// shape.
struct SumTo(Shape);

impl CustomOp1 for SumTo {
    fn name(&self) -> &'static str {
        "sum-to"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let grad = contiguous_f32(storage, layout)?;
        let dims = layout.dims();
        let Some(padding) = dims.len().checked_sub(self.0.rank()) else {
            bail!("cannot sum {dims:?} to the larger {:?}", self.0.dims())
        };
        let target: Vec<usize> = std::iter::repeat_n(1, padding)
            .chain(self.0.dims().iter().copied())
            .collect();
        // The target's stride along each dimension, 0 along the ones it was broadcast on.
        let mut strides = vec![0; dims.len()];
        let mut stride = 1;
        for d in (0..dims.len()).rev() {
            if target[d] == dims[d] {
                strides[d] = stride;
            } else if target[d] != 1 {
                bail!("cannot sum {dims:?} to {:?}", self.0.dims())
            }
            stride *= target[d];
        }
        let mut out = vec![0f32; self.0.elem_count()];
        if !grad.is_empty() {
            sum_into(grad, dims, &strides, &mut out, 0);
        }
        Ok((CpuStorage::F32(out), self.0.clone()))
    }
}

/// Appends the elements of `src` laid out by `dims` and `strides` from `offset` to `out`, in
/// row-major order.
fn gather(src: &[f32], dims: &[usize], strides: &[usize], offset: usize, out: &mut Vec<f32>) {
    match (dims, strides) {
        ([count, rest @ ..], [stride, rest_strides @ ..]) if !rest.is_empty() => {
            for i in 0..*count {
                gather(src, rest, rest_strides, offset + i * stride, out);
            }
        }
        ([count], [1]) => out.extend_from_slice(&src[offset..offset + count]),
        ([count], [stride]) => out.extend((0..*count).map(|i| src[offset + i * stride])),
        _ => out.push(src[offset]),
    }
}

/// Adds the contiguous `src` of shape `dims` into `dst` at `offset`, stepping `strides` (0
/// where a dimension is summed).
fn sum_into(src: &[f32], dims: &[usize], strides: &[usize], dst: &mut [f32], offset: usize) {
    match (dims, strides) {
        ([count, rest @ ..], [stride, rest_strides @ ..]) if !rest.is_empty() => {
            let inner = src.len() / count;
            for (i, part) in src.chunks_exact(inner).enumerate() {
                sum_into(part, rest, rest_strides, dst, offset + i * stride);
            }
        }
        (_, [0]) => dst[offset] += src.iter().sum::<f32>(),
        _ => dst[offset..offset + src.len()]
            .iter_mut()
            .zip(src)
            .for_each(|(d, s)| *d += s),
    }
}

/// `x` `[rows, n]` plus `bias` `[n]` on every row; the bias's gradient is the column sum of the
/// incoming gradient, taken as one matrix product.
struct BiasAdd;

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "bias-add"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x, x_layout)?;
        let bias = contiguous_f32(bias, bias_layout)?;
        if x_layout.dims().last() != Some(&bias.len()) {
            bail!(
                "bias of {} values for rows of shape {:?}",
                bias.len(),
                x_layout.dims()
            )
        }
        let mut out = x.to_vec();
        out.par_chunks_mut(bias.len().max(1)).for_each(|row| {
            row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
        });
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let rows = x.dim(0)?;
        let ones = Tensor::ones((1, rows), DType::F32, x.device())?;
        let bias_grad = ones.matmul(&grad_res.contiguous()?)?.squeeze(0)?;
        Ok((Some(grad_res.clone()), Some(bias_grad)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn tanh_matches_f64_within_5e_7() {
        let grid = (-200_000..=200_000).map(|i| i as f32 * 1e-4);
        let extremes = [-1e30f32, -50.0, -9.0, 9.0, 50.0, 1e30, 1e-30, -1e-30, 0.0];
        let worst = grid
            .chain(extremes)
            .map(|x| (f64::from(tanh(x)) - f64::from(x).tanh()).abs())
            .fold(0f64, f64::max);
        assert!(worst < 5e-7, "worst error {worst}");
        assert!(tanh(f32::NAN).is_nan());
    }

    /// Random values in -3..3 of `shape`, reproducible.
    fn random(shape: &[usize], seed: u64) -> Result<Tensor> {
        let count: usize = shape.iter().product();
        let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let values = (0..count)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 6.0 - 3.0
            })
            .collect::<Vec<_>>();
        Tensor::from_vec(values, shape, &Device::Cpu)
    }

    /// The value of `f` and the gradients of the sum of its output times fixed random weights
    /// with respect to each of `inputs`.
    fn value_and_gradients(
        inputs: &[Var],
        f: impl Fn(&[Tensor]) -> Result<Tensor>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let tensors: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&tensors)?;
        let weights = random(out.dims(), 99)?;
        let grads = (&out * &weights)?.sum_all()?.backward()?;
        let gradients = tensors
            .iter()
            .map(|t| grads.get(t).cloned().expect("every input has a gradient"))
            .collect();
        Ok((out, gradients))
    }

    fn assert_close(a: &Tensor, b: &Tensor, tolerance: f32) -> Result<()> {
        let error = himmel_core::compare::max_abs_difference(a, b)?;
        assert!(error < tolerance, "max abs difference {error}");
        Ok(())
    }

    #[test]
    fn fused_training_ops_match_candles_composed_gradients() -> Result<()> {
        // Ragged shapes: rows and widths that fill no SIMD lane or thread chunk evenly.
        let x = Var::from_tensor(&random(&[3, 7, 13], 1)?)?;
        let ours = value_and_gradients(std::slice::from_ref(&x), |t| gelu(&t[0]))?;
        let candles = value_and_gradients(std::slice::from_ref(&x), |t| t[0].gelu())?;
        assert_close(&ours.0, &candles.0, 1e-5)?;
        assert_close(&ours.1[0], &candles.1[0], 1e-4)?;
        // Without gradients (inference), the same values.
        assert_close(&gelu(&x.as_tensor().detach())?, &ours.0, 1e-7)?;

        let ours = value_and_gradients(std::slice::from_ref(&x), |t| softmax_last_dim(&t[0]))?;
        let candles = value_and_gradients(std::slice::from_ref(&x), |t| {
            candle_nn::ops::softmax(&t[0], D::Minus1)
        })?;
        assert_close(&ours.0, &candles.0, 1e-6)?;
        assert_close(&ours.1[0], &candles.1[0], 1e-5)?;

        let weight = Var::from_tensor(&random(&[5, 13], 2)?)?;
        let bias = Var::from_tensor(&random(&[5], 3)?)?;
        let inputs = [x, weight, bias];
        let layer = |t: &[Tensor]| Linear::new(t[1].clone(), Some(t[2].clone()));
        let ours = value_and_gradients(&inputs, |t| linear(&layer(t), &t[0]))?;
        let candles =
            value_and_gradients(&inputs, |t| candle_nn::Module::forward(&layer(t), &t[0]))?;
        let detached: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().detach()).collect();
        // Without gradients, the same values.
        assert_close(&linear(&layer(&detached), &detached[0])?, &ours.0, 1e-6)?;
        assert_close(&ours.0, &candles.0, 1e-5)?;
        for (ours, candles) in ours.1.iter().zip(&candles.1) {
            assert_close(ours, candles, 1e-4)?;
        }
        let wide = Var::from_tensor(&random(&[2, 1, 4, 1, 3], 4)?)?;
        // The narrow side is a view into a larger tensor, as the modulation's parts are.
        let narrow = Var::from_tensor(&random(&[5, 3, 6, 1], 5)?)?;
        let inputs = [wide, narrow];
        let f = |mul: bool, t: &[Tensor]| -> Result<Tensor> {
            let view = t[1].narrow(1, 1, 1)?;
            match mul {
                true => broadcast_mul(&t[0], &view),
                false => broadcast_add(&t[0], &view),
            }
        };
        for mul in [true, false] {
            let ours = value_and_gradients(&inputs, |t| f(mul, t))?;
            let candles = value_and_gradients(&inputs, |t| {
                let view = t[1].narrow(1, 1, 1)?;
                match mul {
                    true => t[0].broadcast_mul(&view),
                    false => t[0].broadcast_add(&view),
                }
            })?;
            assert_eq!(ours.0.dims(), &[2, 5, 4, 6, 3]);
            assert_close(&ours.0, &candles.0, 1e-6)?;
            for (ours, candles) in ours.1.iter().zip(&candles.1) {
                assert_close(ours, candles, 1e-4)?;
            }
        }

        let x = Var::from_tensor(&random(&[3, 7, 13], 6)?)?;
        let weight = Var::from_tensor(&random(&[13], 7)?)?;
        let inputs = [x, weight];
        let ours = value_and_gradients(&inputs, |t| rms_norm(&t[0], &t[1], 1e-6))?;
        let candles = value_and_gradients(&inputs, |t| {
            candle_nn::ops::rms_norm_slow(&t[0], &t[1], 1e-6)
        })?;
        assert_close(&ours.0, &candles.0, 1e-5)?;
        for (ours, candles) in ours.1.iter().zip(&candles.1) {
            assert_close(ours, candles, 1e-3)?;
        }

        Ok(())
    }

    #[test]
    fn fallbacks_match_the_fused_kernels_and_carry_gradients() -> Result<()> {
        let device = Device::Cpu;
        let x = Var::new(&[[0.5f32, -1.0, 2.0, 0.25], [1.5, 0.0, -0.5, 3.0]], &device)?;
        let weight = Tensor::new(&[1.0f32, 0.5, 2.0, -1.0], &device)?;
        let fused = softmax_last_dim(&x.as_tensor().detach())?;
        let composed = softmax_last_dim(x.as_tensor())?;
        assert!(himmel_core::compare::max_abs_difference(&fused, &composed)? < 1e-6);
        let fused = rms_norm(&x.as_tensor().detach(), &weight, 1e-6)?;
        let composed = rms_norm(x.as_tensor(), &weight, 1e-6)?;
        assert!(himmel_core::compare::max_abs_difference(&fused, &composed)? < 1e-5);
        let grads = (composed.sqr()?.sum_all()? + softmax_last_dim(x.as_tensor())?.sum_all()?)?
            .backward()?;
        assert!(grads.get(x.as_tensor()).is_some());
        Ok(())
    }
}
