//! Comparing tensors, for parity checks against reference implementations.

use candle_core::{DType, Result, Tensor};

/// The largest absolute difference between two tensors of one shape, in f32.
pub fn max_abs_difference(a: &Tensor, b: &Tensor) -> Result<f32> {
    let difference = (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?;
    difference.abs()?.max_all()?.to_scalar::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn finds_the_largest_gap() {
        let a = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[[1f32, 2.5], [2.0, 4.0]], &Device::Cpu).unwrap();
        assert_eq!(max_abs_difference(&a, &b).unwrap(), 1.0);
    }
}
