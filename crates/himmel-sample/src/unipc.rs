//! [`UniPc`]: UniPC multistep (Zhao et al., 2023, "UniPC: A Unified Predictor-Corrector
//! Framework for Fast Sampling of Diffusion Models") for flow prediction, order 2, B(h) =
//! expm1(h) ("bh2"), predicting x0, lower order on the last step; diffusers'
//! `UniPCMultistepScheduler` as Wan configures it.

use candle_core::{DType, Result, Tensor};

use crate::Solver;
use crate::schedule::unipc_flow_schedule;

/// UniPC state: the schedule, the last two data predictions and the last corrected sample.
#[derive(Debug, Clone)]
pub struct UniPc {
    sigmas: Vec<f64>,
    timesteps: Vec<f64>,
    step_index: usize,
    /// Data predictions `x - sigma * v` of the previous two steps, newest last.
    history: Vec<Tensor>,
    /// The corrected sample the last predictor started from.
    last_sample: Option<Tensor>,
    /// The order the last predictor used.
    last_order: usize,
}

/// `ln(alpha) - ln(sigma)` with `alpha = 1 - sigma`; +inf at sigma 0.
fn lambda(sigma: f64) -> f64 {
    (1.0 - sigma).ln() - sigma.ln()
}

impl UniPc {
    /// A solver for `steps` steps with flow `shift` over `train_steps` training timesteps.
    pub fn new(steps: usize, shift: f64, train_steps: usize) -> Self {
        let (sigmas, timesteps) = unipc_flow_schedule(steps, shift, train_steps);
        Self {
            sigmas,
            timesteps,
            step_index: 0,
            history: Vec::new(),
            last_sample: None,
            last_order: 0,
        }
    }

    /// UniC: corrects the sample at step `i` using this step's data prediction `current`.
    fn correct(&self, current: &Tensor, previous_sample: &Tensor) -> Result<Tensor> {
        let i = self.step_index;
        let (sigma, sigma_prev) = (self.sigmas[i], self.sigmas[i - 1]);
        let alpha = 1.0 - sigma;
        let h = lambda(sigma) - lambda(sigma_prev);
        let phi = (-h).exp_m1();
        let last = &self.history[self.history.len() - 1];
        let base = ((previous_sample * (sigma / sigma_prev))? - (last * (alpha * phi))?)?;
        let change = (current - last)?;
        let correction = if self.last_order == 2 {
            let before = &self.history[self.history.len() - 2];
            let r = (lambda(self.sigmas[i - 2]) - lambda(sigma_prev)) / h;
            let difference = ((before - last)? / r)?;
            // Solve [[1, 1], [r, 1]] rho = [b1, b2].
            let hh = -h;
            let phi_k1 = phi / hh - 1.0;
            let b1 = phi_k1 / phi;
            let b2 = 2.0 * (phi_k1 / hh - 0.5) / phi;
            let rho_1 = (b1 - b2) / (1.0 - r);
            let rho_2 = b1 - rho_1;
            ((difference * rho_1)? + (change * rho_2)?)?
        } else {
            (change * 0.5)?
        };
        base - (correction * (alpha * phi))?
    }

    /// UniP: predicts the sample at step `i + 1` from the (corrected) sample at step `i`.
    fn predict(&self, sample: &Tensor, order: usize) -> Result<Tensor> {
        let i = self.step_index;
        let (sigma_next, sigma) = (self.sigmas[i + 1], self.sigmas[i]);
        let current = &self.history[self.history.len() - 1];
        if sigma_next == 0.0 {
            // alpha = 1 and expm1(-inf) = -1: the sample becomes the data prediction.
            return Ok(current.clone());
        }
        let alpha_next = 1.0 - sigma_next;
        let h = lambda(sigma_next) - lambda(sigma);
        let phi = (-h).exp_m1();
        let next = ((sample * (sigma_next / sigma))? - (current * (alpha_next * phi))?)?;
        if order == 2 {
            let before = &self.history[self.history.len() - 2];
            let r = (lambda(self.sigmas[i - 1]) - lambda(sigma)) / h;
            let difference = ((before - current)? / r)?;
            next - (difference * (alpha_next * phi * 0.5))?
        } else {
            Ok(next)
        }
    }
}

impl Solver for UniPc {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    fn start_at(&mut self, index: usize) {
        self.step_index = index;
        self.history.clear();
        self.last_sample = None;
        self.last_order = 0;
    }

    fn step(&mut self, prediction: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let steps = self.timesteps.len();
        let i = self.step_index.min(steps - 1);
        self.step_index = i;
        let sample = sample.to_dtype(DType::F32)?;
        let data = (&sample - (prediction.to_dtype(DType::F32)? * self.sigmas[i])?)?;
        let sample = match &self.last_sample {
            Some(previous) if i > 0 => self.correct(&data, previous)?,
            _ => sample,
        };
        self.history.push(data);
        if self.history.len() > 2 {
            self.history.remove(0);
        }
        let order = 2.min(steps - i).min(self.history.len());
        let next = self.predict(&sample, order)?;
        self.last_sample = Some(sample);
        self.last_order = order;
        self.step_index += 1;
        Ok(next)
    }
}
