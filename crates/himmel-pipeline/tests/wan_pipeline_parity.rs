//! The whole Wan pipeline against diffusers on a tiny random model saved with `save_pretrained`:
//! text to video against `WanPipeline` (fixture made by `tools/reference/wan_pipeline.py`) and
//! video to video against `WanVideoToVideoPipeline` (`tools/reference/wan_video_to_video.py`);
//! the same initial latents must give the same frames.

use himmel_core::compare::max_abs_difference;
use std::path::PathBuf;

use candle_core::Device;
use himmel_core::Silent;
use himmel_core::Video;
use himmel_pipeline::{GenerationRequest, ModelSource, Precision, SourceClip, WanPipeline};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/wan")
}

const PROMPT: &str = "a red ball bounces  on the grass &amp; sky";

fn tiny_pipeline() -> WanPipeline {
    let source = ModelSource::Folder(fixtures().join("pipeline_tiny"));
    WanPipeline::load(&source, Precision::F32, &Device::Cpu)
        .unwrap()
        .with_max_sequence_length(16)
}

#[test]
fn frames_match_diffusers_from_the_same_latents() {
    let pipeline = tiny_pipeline();
    let io = candle_core::safetensors::load(
        fixtures().join("pipeline_tiny_io.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    for (name, height, width, frames, steps) in [("square", 32, 32, 5, 3), ("wide", 16, 48, 9, 4)] {
        let request = GenerationRequest {
            negative_prompt: "blurry".into(),
            steps,
            guidance: 4.0,
            initial_latents: Some(io[&format!("{name}_latents")].clone()),
            ..GenerationRequest::new(PROMPT, (width, height, frames), 16.0)
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

#[test]
fn video_to_video_matches_diffusers_from_the_same_noise() {
    let pipeline = tiny_pipeline();
    let io = candle_core::safetensors::load(
        fixtures().join("video_to_video_tiny_io.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let clip = Video::new(io["video_clip"].clone(), 16.0).unwrap();
    let request = GenerationRequest {
        negative_prompt: "blurry".into(),
        steps: 4,
        guidance: 4.0,
        initial_latents: Some(io["video_noise"].clone()),
        source: Some(SourceClip {
            video: clip,
            strength: 0.5,
        }),
        ..GenerationRequest::new(PROMPT, (32, 32, 5), 16.0)
    };
    let request = pipeline.validate(request).unwrap();
    let video = pipeline.generate(&request, &Silent).unwrap();
    let error = max_abs_difference(video.frames(), &io["video_frames"]).unwrap();
    println!("video to video: max abs error {error}");
    assert!(error <= 2e-3, "max abs error {error}");
}

/// Frames of the fixture's square clip made by the tiny pipeline in `precision`.
fn square_clip(precision: Precision) -> candle_core::Tensor {
    let source = ModelSource::Folder(fixtures().join("pipeline_tiny"));
    let pipeline = WanPipeline::load(&source, precision, &Device::Cpu)
        .unwrap()
        .with_max_sequence_length(16);
    let io = candle_core::safetensors::load(
        fixtures().join("pipeline_tiny_io.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let request = GenerationRequest {
        negative_prompt: "blurry".into(),
        steps: 3,
        guidance: 4.0,
        initial_latents: Some(io["square_latents"].clone()),
        ..GenerationRequest::new(PROMPT, (32, 32, 5), 16.0)
    };
    let request = pipeline.validate(request).unwrap();
    pipeline
        .generate(&request, &Silent)
        .unwrap()
        .frames()
        .clone()
}

#[test]
fn int8_transformer_stays_close_to_diffusers_and_bf16() {
    if !himmel_models::kernels::int8_available() {
        println!("skipped: this CPU lacks AVX2 and AVX-512 VNNI");
        return;
    }
    let expected = &candle_core::safetensors::load(
        fixtures().join("pipeline_tiny_io.safetensors"),
        &Device::Cpu,
    )
    .unwrap()["square_frames"];
    let mean_square = |a: &candle_core::Tensor, b: &candle_core::Tensor| {
        let difference = (a - b).unwrap();
        let mean = difference.sqr().unwrap().mean_all().unwrap();
        mean.to_scalar::<f32>().unwrap()
    };
    let zeros = expected.zeros_like().unwrap();
    let int8 = square_clip(Precision::Int8);
    let bf16 = square_clip(Precision::Bf16);
    let relative = |frames| (mean_square(frames, expected) / mean_square(expected, &zeros)).sqrt();
    let (int8_error, bf16_error) = (relative(&int8), relative(&bf16));
    // Frames are 0..1: PSNR against bf16's frames from the same noise.
    let psnr = -10.0 * mean_square(&int8, &bf16).log10();
    println!("relative RMS error: int8 {int8_error}, bf16 {bf16_error}; int8 vs bf16 {psnr:.1} dB");
    assert!(int8_error <= 0.05, "int8 relative RMS error {int8_error}");
}
