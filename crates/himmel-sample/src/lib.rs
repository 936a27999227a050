//! Sampling in three small parts: the schedule (sigmas and the timesteps the model sees, with
//! the flow shift), the solver (a state machine that turns one prediction into the next
//! sample: [`UniPc`], [`FlowEuler`]) and the guidance ([`guide`]). The model is not known here.
#![deny(missing_docs)]

pub mod config;
pub mod euler;
pub mod schedule;
pub mod unipc;

pub use config::{SchedulerConfig, SchedulerError};
pub use euler::FlowEuler;
pub use unipc::UniPc;

use candle_core::{Result, Tensor};

/// A solver that walks a flow-matching sample from noise (sigma 1) to data (sigma 0).
pub trait Solver {
    /// The timesteps to show the model, one per step, in order.
    fn timesteps(&self) -> &[f64];
    /// Sigmas, one per step plus the final 0.
    fn sigmas(&self) -> &[f64];
    /// Starts at step `index` instead of 0, with no history (video to video: the first sample
    /// is already partly noised), as the reference does when its timesteps start later.
    fn start_at(&mut self, index: usize);
    /// Takes the model's flow prediction for the current sample and returns the next sample.
    fn step(&mut self, prediction: &Tensor, sample: &Tensor) -> Result<Tensor>;
}

/// Flow matching's sample at noise level `sigma`: `(1 - sigma) * clean + sigma * noise`, with
/// `sigma` broadcast over `clean` (one level per clip as `[B, 1, 1, 1, 1]`, say).
pub fn noised(clean: &Tensor, noise: &Tensor, sigma: &Tensor) -> Result<Tensor> {
    clean.broadcast_mul(&(1.0 - sigma)?)? + noise.broadcast_mul(sigma)?
}

/// [`noised`] at one noise level `sigma` for the whole of `clean` (sampling's start and known
/// frames).
pub fn noised_at(clean: &Tensor, noise: &Tensor, sigma: f64) -> Result<Tensor> {
    (clean * (1.0 - sigma))? + (noise * sigma)?
}

/// Classifier-free guidance: `unconditional + scale * (conditional - unconditional)`.
pub fn guide(conditional: &Tensor, unconditional: &Tensor, scale: f64) -> Result<Tensor> {
    unconditional + ((conditional - unconditional)? * scale)?
}
