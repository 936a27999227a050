//! Initial weights, chosen by the role a variable's name gives it, from a seed.

use candle_core::{Result, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// How a variable starts.
fn initial_std(name: &str, dims: &[usize]) -> Option<f64> {
    let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
    if name.ends_with("scale_shift_table") {
        Some(1.0 / (*dims.last().unwrap_or(&1) as f64).sqrt())
    } else if name.ends_with("shared.weight") || name.ends_with("embed_tokens.weight") {
        Some(1.0)
    } else if name.ends_with("relative_attention_bias.weight") {
        Some(0.1)
    } else if dims.len() >= 2 && !name.ends_with("gamma") {
        Some(1.0 / (fan_in as f64).sqrt())
    } else {
        None
    }
}

/// Sets every variable: matrices and kernels Gaussian with variance 1/fan-in, the denoiser's
/// output projection zero (it starts by predicting no flow), biases zero, norm gains one.
pub fn initialize(vars: &[(String, Var)], seed: u64) -> Result<()> {
    for (index, (name, var)) in vars.iter().enumerate() {
        let dims = var.dims().to_vec();
        let value = if name.ends_with("proj_out.weight") || name.ends_with("bias") {
            var.zeros_like()?
        } else if let Some(std) = initial_std(name, &dims) {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(index as u64);
            let normal = Normal::new(0.0, std as f32).map_err(candle_core::Error::wrap)?;
            let values: Vec<f32> = (0..var.elem_count())
                .map(|_| normal.sample(&mut rng))
                .collect();
            Tensor::from_vec(values, dims.as_slice(), var.device())?.to_dtype(var.dtype())?
        } else {
            var.ones_like()?
        };
        var.set(&value)?;
    }
    Ok(())
}
