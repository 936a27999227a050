//! UniPC and flow Euler against diffusers 0.42.1: schedules and a sequence of steps
//! (fixture made by `tools/reference/schedulers.py`).

use himmel_core::compare::max_abs_difference;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use himmel_sample::{FlowEuler, Solver, UniPc};

fn fixture() -> std::collections::HashMap<String, Tensor> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/sample/schedulers.safetensors");
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn check(name: &str, solver: &mut dyn Solver, sigmas: &[f64]) {
    let io = fixture();
    let steps = io["outputs"].dim(0).unwrap();
    let expected_timesteps = io[&format!("{name}_timesteps")].to_vec1::<f64>().unwrap();
    for (ours, theirs) in solver.timesteps().iter().zip(&expected_timesteps) {
        assert!(
            (ours - theirs).abs() < 1e-3,
            "{name} timesteps {:?} vs {expected_timesteps:?}",
            solver.timesteps()
        );
    }
    let expected_sigmas = io[&format!("{name}_sigmas")].to_vec1::<f64>().unwrap();
    for (ours, theirs) in sigmas.iter().zip(&expected_sigmas) {
        assert!(
            (ours - theirs).abs() < 1e-6,
            "{name} sigmas {sigmas:?} vs {expected_sigmas:?}"
        );
    }
    let mut sample = io["sample"].clone();
    for step in 0..steps {
        let prediction = io["outputs"].get(step).unwrap();
        sample = solver.step(&prediction, &sample).unwrap();
        let expected = io[&format!("{name}_trajectory")].get(step).unwrap();
        let error = max_abs_difference(&sample, &expected).unwrap();
        assert!(error <= 1e-5, "{name} step {step}: max abs error {error}");
    }
}

#[test]
fn unipc_matches_diffusers() {
    let mut solver = UniPc::new(7, 3.0, 1000);
    let sigmas = solver.sigmas().to_vec();
    check("unipc", &mut solver, &sigmas);
}

#[test]
fn flow_euler_matches_diffusers() {
    let mut solver = FlowEuler::new(7, 3.0, 1000);
    let sigmas = solver.sigmas().to_vec();
    check("euler", &mut solver, &sigmas);
}
