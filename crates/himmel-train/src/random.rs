//! Randomness of a training step: one ChaCha stream per (seed, purpose, step), so a step's
//! crops, noise and masks are the same whenever it runs.

use candle_core::{Device, Result, Shape, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// What a random stream is for; each gets its own streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Crops, caption choices, masks and timesteps.
    Choices = 1,
    /// Gaussian noise.
    Noise = 2,
}

/// The stream of `purpose` at `step` of the run with `seed`.
pub fn step_rng(seed: u64, purpose: Purpose, step: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ ((purpose as u64) << 56));
    rng.set_stream(step);
    rng
}

/// A standard normal f32 tensor of `shape` drawn from `rng`.
pub fn gaussian(shape: impl Into<Shape>, rng: &mut ChaCha8Rng, device: &Device) -> Result<Tensor> {
    let shape = shape.into();
    let values: Vec<f32> = (0..shape.elem_count())
        .map(|_| StandardNormal.sample(rng))
        .collect();
    Tensor::from_vec(values, shape, device)
}
