//! [`FlowEuler`]: the flow-matching Euler step `x <- x + (sigma_next - sigma) * v`.

use candle_core::{Result, Tensor};

use crate::Solver;
use crate::schedule::euler_flow_schedule;

/// Flow-matching Euler (diffusers `FlowMatchEulerDiscreteScheduler` with a static shift).
#[derive(Debug, Clone)]
pub struct FlowEuler {
    sigmas: Vec<f64>,
    timesteps: Vec<f64>,
    step_index: usize,
}

impl FlowEuler {
    /// A solver for `steps` steps with flow `shift` over `train_steps` training timesteps.
    pub fn new(steps: usize, shift: f64, train_steps: usize) -> Self {
        let (sigmas, timesteps) = euler_flow_schedule(steps, shift, train_steps);
        Self {
            sigmas,
            timesteps,
            step_index: 0,
        }
    }
}

impl Solver for FlowEuler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    fn start_at(&mut self, index: usize) {
        self.step_index = index;
    }

    fn step(&mut self, prediction: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let index = self.step_index.min(self.sigmas.len() - 2);
        let delta = self.sigmas[index + 1] - self.sigmas[index];
        self.step_index += 1;
        let next = (sample.to_dtype(candle_core::DType::F32)?
            + (prediction.to_dtype(candle_core::DType::F32)? * delta)?)?;
        next.to_dtype(prediction.dtype())
    }
}
