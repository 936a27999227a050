//! [`SchedulerConfig`]: a diffusers `scheduler/scheduler_config.json`, and the solver it names.

use serde::Deserialize;

use crate::{FlowEuler, Solver, UniPc};

/// Why a scheduler configuration cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SchedulerError {
    /// The scheduler class is not one Himmel implements.
    #[error(
        "scheduler {0:?} is not supported; Himmel runs UniPCMultistepScheduler and FlowMatchEulerDiscreteScheduler"
    )]
    UnknownClass(String),
    /// A setting has a value Himmel does not implement.
    #[error("scheduler setting {field} = {value} is not supported (supported: {supported})")]
    Unsupported {
        /// The setting.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is supported.
        supported: &'static str,
    },
    /// The number of steps must be at least one.
    #[error("the number of steps must be at least 1")]
    NoSteps,
    /// The shift must be a positive number.
    #[error("the flow shift must be a positive number, got {0}")]
    BadShift(f64),
}

/// The fields of `scheduler_config.json` that flow-matching video models use.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SchedulerConfig {
    /// `UniPCMultistepScheduler` (Wan's default) or `FlowMatchEulerDiscreteScheduler`.
    #[serde(rename = "_class_name")]
    pub class_name: String,
    /// Training timesteps; default 1000.
    #[serde(default = "default_train_steps")]
    pub num_train_timesteps: usize,
    /// UniPC's flow shift; default 1.0 (Wan 2.1 ships 3.0).
    #[serde(default = "default_shift")]
    pub flow_shift: f64,
    /// Euler's flow shift; default 1.0.
    #[serde(default = "default_shift")]
    pub shift: f64,
    /// UniPC's order; default 2 (the only one supported).
    #[serde(default = "default_order")]
    pub solver_order: usize,
    /// UniPC's solver type; default "bh2" (the only one supported).
    #[serde(default = "default_solver_type")]
    pub solver_type: String,
    /// What the model predicts; default "flow_prediction" (the only one supported).
    #[serde(default = "default_prediction")]
    pub prediction_type: String,
    /// Whether UniPC uses flow sigmas; must be true.
    #[serde(default)]
    pub use_flow_sigmas: bool,
    /// Whether Euler shifts per resolution; must be false.
    #[serde(default)]
    pub use_dynamic_shifting: bool,
}

fn default_train_steps() -> usize {
    1000
}
fn default_shift() -> f64 {
    1.0
}
fn default_order() -> usize {
    2
}
fn default_solver_type() -> String {
    "bh2".into()
}
fn default_prediction() -> String {
    "flow_prediction".into()
}

impl SchedulerConfig {
    /// Builds the solver this configuration names for `steps` steps, with `shift` overriding
    /// the configured flow shift when given.
    pub fn solver(
        &self,
        steps: usize,
        shift: Option<f64>,
    ) -> Result<Box<dyn Solver>, SchedulerError> {
        if steps == 0 {
            return Err(SchedulerError::NoSteps);
        }
        let unsupported = |field, value: String, supported| {
            Err(SchedulerError::Unsupported {
                field,
                value,
                supported,
            })
        };
        match self.class_name.as_str() {
            "UniPCMultistepScheduler" => {
                let shift = shift.unwrap_or(self.flow_shift);
                check_shift(shift)?;
                if !self.use_flow_sigmas {
                    return unsupported("use_flow_sigmas", "false".into(), "true");
                }
                if self.prediction_type != "flow_prediction" {
                    return unsupported(
                        "prediction_type",
                        self.prediction_type.clone(),
                        "flow_prediction",
                    );
                }
                if self.solver_order != 2 || self.solver_type != "bh2" {
                    return unsupported(
                        "solver_order/solver_type",
                        format!("{}/{}", self.solver_order, self.solver_type),
                        "2/bh2",
                    );
                }
                Ok(Box::new(UniPc::new(steps, shift, self.num_train_timesteps)))
            }
            "FlowMatchEulerDiscreteScheduler" => {
                let shift = shift.unwrap_or(self.shift);
                check_shift(shift)?;
                if self.use_dynamic_shifting {
                    return unsupported("use_dynamic_shifting", "true".into(), "false");
                }
                Ok(Box::new(FlowEuler::new(
                    steps,
                    shift,
                    self.num_train_timesteps,
                )))
            }
            other => Err(SchedulerError::UnknownClass(other.into())),
        }
    }
}

/// Accepts a flow shift only if it is a finite number above 0.
pub fn check_shift(shift: f64) -> Result<(), SchedulerError> {
    if shift.is_finite() && shift > 0.0 {
        Ok(())
    } else {
        Err(SchedulerError::BadShift(shift))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wans_scheduler_config() {
        let json = r#"{"_class_name": "UniPCMultistepScheduler", "flow_shift": 3.0, "use_flow_sigmas": true,
            "prediction_type": "flow_prediction", "solver_order": 2, "num_train_timesteps": 1000}"#;
        let config: SchedulerConfig = serde_json::from_str(json).unwrap();
        let solver = config.solver(50, None).unwrap();
        assert_eq!(solver.timesteps()[..3], [999.0, 993.0, 986.0]);
        assert_eq!(config.solver(0, None).err(), Some(SchedulerError::NoSteps));
        assert_eq!(
            config.solver(5, Some(-1.0)).err(),
            Some(SchedulerError::BadShift(-1.0))
        );
        let ddim: SchedulerConfig =
            serde_json::from_str(r#"{"_class_name": "DDIMScheduler"}"#).unwrap();
        assert!(matches!(
            ddim.solver(5, None),
            Err(SchedulerError::UnknownClass(_))
        ));
    }
}
