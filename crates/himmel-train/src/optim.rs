//! AdamW with decoupled weight decay, a warm-up and cosine learning-rate schedule, and
//! clipping by the global gradient norm. Its moments are plain tensors so checkpoints can hold
//! them and a resumed run continues exactly. A warm start (weights from an export, fresh
//! moments) warms the learning rate up again from the step it starts at.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

use crate::config::OptimizerConfig;

/// The learning rate at `step` (0-based) of a run of `total` steps whose optimizer moments
/// started at step `origin` (0, or where a warm start began): the cosine schedule, scaled by a
/// linear warm-up over the first `warmup_steps` steps from `origin`.
pub fn learning_rate(config: &OptimizerConfig, step: u64, origin: u64, total: u64) -> f64 {
    let peak = config.learning_rate;
    let decay_steps = total.saturating_sub(config.warmup_steps).max(1);
    let progress = (step.saturating_sub(config.warmup_steps) as f64 / decay_steps as f64).min(1.0);
    let floor = peak * config.final_learning_rate_ratio;
    let scheduled = floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    let since = step.saturating_sub(origin);
    if since < config.warmup_steps {
        scheduled * (since + 1) as f64 / config.warmup_steps as f64
    } else {
        scheduled
    }
}

/// One trained variable and its Adam moments.
pub struct Slot {
    /// The variable's name in checkpoints.
    pub name: String,
    /// The variable.
    pub var: Var,
    /// First moment.
    pub first: Tensor,
    /// Second moment.
    pub second: Tensor,
    /// Whether weight decay applies (matrices and kernels, not biases, norms or embeddings' gains).
    decays: bool,
}

/// AdamW over named variables.
pub struct AdamW {
    config: OptimizerConfig,
    /// The variables and their moments, in name order.
    pub slots: Vec<Slot>,
    /// The step the moments started at: 0, or where a warm start began. Bias correction and
    /// warm-up count from it.
    pub origin: u64,
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// The learning rate used.
    pub learning_rate: f64,
    /// The global gradient norm before clipping.
    pub gradient_norm: f64,
}

impl AdamW {
    /// An optimizer with zero moments for `vars`.
    pub fn new(config: &OptimizerConfig, vars: &[(String, Var)]) -> Result<Self> {
        let slots = vars
            .iter()
            .map(|(name, var)| {
                Ok(Slot {
                    name: name.clone(),
                    var: var.clone(),
                    first: var.zeros_like()?,
                    second: var.zeros_like()?,
                    decays: var.rank() >= 2 && !name.ends_with("gamma"),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            config: config.clone(),
            slots,
            origin: 0,
        })
    }

    /// Applies `gradients` as step `step` (0-based) of `total`; variables without a gradient
    /// are left alone.
    pub fn step(&mut self, gradients: &GradStore, step: u64, total: u64) -> Result<StepReport> {
        let mut squared = 0.0;
        for slot in &self.slots {
            if let Some(gradient) = gradients.get(slot.var.as_tensor()) {
                squared += f64::from(gradient.sqr()?.sum_all()?.to_scalar::<f32>()?);
            }
        }
        let gradient_norm = squared.sqrt();
        let clip = (self.config.gradient_clip / (gradient_norm + 1e-6)).min(1.0);
        let learning_rate = learning_rate(&self.config, step, self.origin, total);
        let (beta1, beta2) = self.config.betas;
        let t = i32::try_from(step.saturating_sub(self.origin) + 1).unwrap_or(i32::MAX);
        let first_correction = 1.0 - beta1.powi(t);
        let second_correction = 1.0 - beta2.powi(t);
        for slot in &mut self.slots {
            let Some(gradient) = gradients.get(slot.var.as_tensor()) else {
                continue;
            };
            let gradient = (gradient.detach() * clip)?;
            slot.first = ((&slot.first * beta1)? + (&gradient * (1.0 - beta1))?)?;
            slot.second = ((&slot.second * beta2)? + (gradient.sqr()? * (1.0 - beta2))?)?;
            let update = (&slot.first / first_correction)?
                .div(&((&slot.second / second_correction)?.sqrt()? + self.config.epsilon)?)?;
            let mut weight = slot.var.as_tensor().clone();
            if slot.decays {
                weight = (weight * (1.0 - learning_rate * self.config.weight_decay))?;
            }
            slot.var.set(&(weight - (update * learning_rate)?)?)?;
        }
        Ok(StepReport {
            learning_rate,
            gradient_norm,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn config() -> OptimizerConfig {
        OptimizerConfig {
            learning_rate: 0.1,
            warmup_steps: 10,
            final_learning_rate_ratio: 0.1,
            weight_decay: 0.0,
            betas: (0.9, 0.999),
            epsilon: 1e-8,
            gradient_clip: 1.0,
            ema_decay: 0.9,
        }
    }

    #[test]
    fn schedule_warms_up_then_decays_to_its_floor() {
        let config = config();
        assert!((learning_rate(&config, 0, 0, 110) - 0.01).abs() < 1e-12);
        assert!((learning_rate(&config, 9, 0, 110) - 0.1).abs() < 1e-12);
        assert!((learning_rate(&config, 60, 0, 110) - 0.055).abs() < 1e-9);
        assert!((learning_rate(&config, 110, 0, 110) - 0.01).abs() < 1e-12);
    }

    #[test]
    fn a_warm_start_warms_the_schedule_up_again() {
        let config = config();
        let scheduled = learning_rate(&config, 60, 0, 110);
        assert!((learning_rate(&config, 60, 60, 110) - scheduled / 10.0).abs() < 1e-12);
        assert!(
            (learning_rate(&config, 64, 60, 110) / learning_rate(&config, 64, 0, 110) - 0.5).abs()
                < 1e-12
        );
        assert_eq!(
            learning_rate(&config, 70, 60, 110),
            learning_rate(&config, 70, 0, 110)
        );
    }

    #[test]
    fn minimises_a_quadratic() -> Result<()> {
        let target = Tensor::new(&[3f32, -2.0, 0.5], &Device::Cpu)?;
        let x = Var::zeros(3, candle_core::DType::F32, &Device::Cpu)?;
        let mut adam = AdamW::new(&config(), &[("x".into(), x.clone())])?;
        for step in 0..300 {
            let loss = (x.as_tensor() - &target)?.sqr()?.sum_all()?;
            adam.step(&loss.backward()?, step, 300)?;
        }
        let error = (x.as_tensor() - &target)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(error < 0.05, "error {error}");
        Ok(())
    }
}
