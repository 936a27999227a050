//! Flow-matching noise schedules: sigma goes from (almost) 1 to 0, bent by the flow shift
//! `sigma' = shift * sigma / (1 + (shift - 1) * sigma)`, which spends more steps at high noise.

/// Applies the flow shift to one sigma.
pub fn shift_sigma(sigma: f64, shift: f64) -> f64 {
    shift * sigma / (1.0 + (shift - 1.0) * sigma)
}

/// UniPC's flow schedule (diffusers `use_flow_sigmas`): `steps` sigmas from
/// `linspace(1, 1/train_steps, steps + 1)` without its last point, shifted, the first nudged
/// below 1 by 1e-6, then a final 0. Returns `(sigmas, timesteps)`; timesteps are
/// `trunc(train_steps * sigma)`, as the reference casts them to integers.
pub fn unipc_flow_schedule(steps: usize, shift: f64, train_steps: usize) -> (Vec<f64>, Vec<f64>) {
    let train = train_steps as f64;
    let mut sigmas: Vec<f64> = (0..steps)
        .map(|i| {
            let linear = 1.0 + (1.0 / train - 1.0) * i as f64 / steps as f64;
            shift_sigma(linear, shift)
        })
        .collect();
    if let Some(first) = sigmas.first_mut()
        && (*first - 1.0).abs() < 1e-6
    {
        *first -= 1e-6;
    }
    let timesteps = sigmas.iter().map(|s| (s * train).trunc()).collect();
    sigmas.push(0.0);
    (round_f32(sigmas), timesteps)
}

/// FlowMatchEuler's schedule (diffusers `FlowMatchEulerDiscreteScheduler` with a static
/// shift): the training sigmas are shifted once when built and again when the steps are set.
/// Returns `(sigmas, timesteps)` with `timesteps = train_steps * sigma` (not truncated).
pub fn euler_flow_schedule(steps: usize, shift: f64, train_steps: usize) -> (Vec<f64>, Vec<f64>) {
    let train = train_steps as f64;
    let sigma_max = shift_sigma(1.0, shift);
    let sigma_min = shift_sigma(1.0 / train, shift);
    let mut sigmas: Vec<f64> = (0..steps)
        .map(|i| {
            let fraction = if steps > 1 {
                i as f64 / (steps - 1) as f64
            } else {
                0.0
            };
            let timestep = train * sigma_max + (train * sigma_min - train * sigma_max) * fraction;
            shift_sigma(timestep / train, shift)
        })
        .collect();
    let sigmas_f32 = round_f32(std::mem::take(&mut sigmas));
    let timesteps = sigmas_f32.iter().map(|s| s * train).collect();
    let mut sigmas = sigmas_f32;
    sigmas.push(0.0);
    (sigmas, timesteps)
}

/// Rounds to f32 precision, as the reference stores its sigmas.
fn round_f32(values: Vec<f64>) -> Vec<f64> {
    values.into_iter().map(|v| f64::from(v as f32)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unipc_schedule_matches_the_published_values() {
        let (sigmas, timesteps) = unipc_flow_schedule(50, 3.0, 1000);
        assert_eq!(&timesteps[..5], &[999.0, 993.0, 986.0, 979.0, 971.0]);
        assert_eq!(&timesteps[45..], &[251.0, 208.0, 162.0, 113.0, 60.0]);
        assert!((sigmas[1] - 0.993_250_07).abs() < 1e-7);
        assert!((sigmas[49] - 0.060_405_39).abs() < 1e-7);
        assert_eq!(sigmas.len(), 51);
        assert_eq!(sigmas[50], 0.0);
    }
}
