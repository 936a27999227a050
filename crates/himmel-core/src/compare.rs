//! Comparing tensors and frames: parity checks against reference implementations and the
//! fidelity of reconstructed frames.

use candle_core::{DType, Result, Tensor};

/// The largest absolute difference between two tensors of one shape, in f32.
pub fn max_abs_difference(a: &Tensor, b: &Tensor) -> Result<f32> {
    let difference = (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?;
    difference.abs()?.max_all()?.to_scalar::<f32>()
}

/// Peak signal-to-noise ratio in dB between two 8-bit buffers of one length (infinite when
/// they are equal).
///
/// # Panics
/// If the lengths differ.
pub fn psnr(reference: &[u8], test: &[u8]) -> f64 {
    assert_eq!(
        reference.len(),
        test.len(),
        "PSNR of buffers of different lengths"
    );
    let squared: f64 = reference
        .iter()
        .zip(test)
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
        .sum();
    let mse = squared / reference.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
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

    #[test]
    fn psnr_of_a_uniform_error() {
        assert_eq!(psnr(&[7, 9], &[7, 9]), f64::INFINITY);
        // An error of 1 everywhere: 20 log10(255).
        assert!((psnr(&[0, 10], &[1, 11]) - 48.1308).abs() < 1e-3);
    }
}
