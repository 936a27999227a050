//! Fused kernels where candle has them, with differentiable fallbacks while training: candle's
//! fused softmax and RMS norm have no backward pass, so a graph that tracks gradients takes the
//! composed versions of the same formulas.

use candle_core::{D, Result, Tensor};

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.track_op() {
        candle_nn::ops::softmax(x, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// RMS norm over the last dimension with a learned `weight`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    if x.track_op() || weight.track_op() {
        candle_nn::ops::rms_norm_slow(x, weight, eps)
    } else {
        candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

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
