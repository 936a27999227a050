//! The whole Wan text-to-video pipeline against diffusers' `WanPipeline` on a tiny random model
//! saved with `save_pretrained` (fixture made by `tools/reference/wan_pipeline.py`): the same
//! initial latents must give the same frames.

use himmel_core::compare::max_abs_difference;
use std::path::PathBuf;

use candle_core::Device;
use himmel_core::Silent;
use himmel_pipeline::{GenerationRequest, ModelSource, Precision, WanPipeline};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/wan")
}

#[test]
fn frames_match_diffusers_from_the_same_latents() {
    let source = ModelSource::Folder(fixtures().join("pipeline_tiny"));
    let pipeline = WanPipeline::load(&source, Precision::F32, &Device::Cpu)
        .unwrap()
        .with_max_sequence_length(16);
    let io = candle_core::safetensors::load(
        fixtures().join("pipeline_tiny_io.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    for (name, height, width, frames, steps) in [("square", 32, 32, 5, 3), ("wide", 16, 48, 9, 4)] {
        let request = GenerationRequest {
            prompt: "a red ball bounces  on the grass &amp; sky".into(),
            negative_prompt: "blurry".into(),
            width,
            height,
            frames,
            fps: 16.0,
            steps,
            guidance: 4.0,
            shift: None,
            seed: 0,
            initial_latents: Some(io[&format!("{name}_latents")].clone()),
        };
        let request = pipeline.validate(request).unwrap();
        let video = pipeline.generate(&request, &Silent).unwrap();
        let expected = &io[&format!("{name}_frames")];
        assert_eq!(video.frames().dims(), expected.dims(), "{name}");
        let error = max_abs_difference(video.frames(), expected).unwrap();
        println!("{name}: max abs error {error}");
        assert!(error <= 2e-3, "{name}: max abs error {error}");
    }
}
