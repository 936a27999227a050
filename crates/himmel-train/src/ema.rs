//! An exponential moving average of the weights: what a run exports, smoother than the weights
//! the optimizer last left.

use candle_core::{Result, Tensor, Var};

/// Averages of named variables.
pub struct Ema {
    decay: f64,
    /// `(name, average)` in the variables' order.
    pub averages: Vec<(String, Tensor)>,
}

impl Ema {
    /// Starts the averages at the variables' current values.
    pub fn new(decay: f64, vars: &[(String, Var)]) -> Result<Self> {
        let averages = vars
            .iter()
            .map(|(name, var)| Ok((name.clone(), var.as_tensor().detach().copy()?)))
            .collect::<Result<_>>()?;
        Ok(Self { decay, averages })
    }

    /// Moves the averages towards the variables after step `step` (0-based); the decay ramps up
    /// over the first steps so early weights fade quickly.
    pub fn update(&mut self, vars: &[(String, Var)], step: u64) -> Result<()> {
        let decay = self.decay.min((1.0 + step as f64) / (10.0 + step as f64));
        for ((_, average), (_, var)) in self.averages.iter_mut().zip(vars) {
            *average = ((&*average * decay)? + (var.as_tensor().detach() * (1.0 - decay))?)?;
        }
        Ok(())
    }
}
