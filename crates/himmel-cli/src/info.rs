//! `himmel info PATH`: what a video file or a himmel-mini model folder holds.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use himmel_core::Progress;
use himmel_media::{Format, ReadOptions, read_video};
use himmel_models::mini::Prediction;
use himmel_pipeline::mini::{HIGH_NOISE_DIR, is_mini_dir};
use himmel_pipeline::preview::PREVIEW_FILE;
use himmel_train::denoiser::{ModelSummary, read_summary};

/// Arguments of `himmel info`.
#[derive(Args)]
pub struct InfoArgs {
    /// The video, image or PNG folder, or the himmel-mini model folder, to describe.
    input: PathBuf,
}

/// Reads the input and prints one `key: value` line per property.
pub fn run(args: &InfoArgs, progress: &dyn Progress) -> Result<()> {
    if is_mini_dir(&args.input) {
        return describe_model(&args.input);
    }
    let video = read_video(&args.input, &ReadOptions::default(), progress)?;
    let format = Format::of_input(&args.input)?;
    println!("format: {}", format.name());
    println!("frames: {}", video.num_frames());
    println!("width: {}", video.width());
    println!("height: {}", video.height());
    println!("fps: {}", round3(video.fps()));
    println!("duration: {}s", round3(video.duration()));
    Ok(())
}

/// Prints a himmel-mini model's size, parts, sampling defaults, training steps and expert.
fn describe_model(dir: &Path) -> Result<()> {
    let model = read(dir)?;
    let config = &model.config;
    let video = config.video;
    println!("format: himmel-mini");
    println!(
        "video: {}x{}, {} frames at {} fps",
        video.width, video.height, video.frames, video.fps
    );
    println!("autoencoder: {} latent channels", config.autoencoder.z_dim);
    println!("denoiser: {}", denoiser(&model));
    println!(
        "text encoder: {} layers of width {}, {} words",
        config.text_encoder.num_layers,
        config.text_encoder.d_model,
        config.vocabulary.len()
    );
    let sampling = config.sampling;
    println!(
        "sampling: {} steps, guidance {}, shift {}",
        sampling.steps, sampling.guidance, sampling.shift
    );
    if let Some(skip) = sampling.skip_guidance {
        println!(
            "skip guidance: scale {}, self-attention of block {} skipped",
            skip.scale, skip.layer
        );
    }
    if let Some(step) = model.autoencoder_step {
        println!("autoencoder: exported at step {step} of its run");
    }
    if let Some(boundary) = sampling.boundary {
        let expert = read(&dir.join(HIGH_NOISE_DIR))?;
        let guidance = sampling.expert_guidance.unwrap_or(sampling.guidance);
        println!(
            "high-noise expert ({HIGH_NOISE_DIR}/): from noise level {boundary}, guidance \
             {guidance}; {}",
            denoiser(&expert)
        );
    }
    let preview = dir.join(PREVIEW_FILE).is_file();
    println!("preview: {}", if preview { "yes" } else { "no" });
    Ok(())
}

/// The model in `dir` (its config and recorded steps, not its weights), its folder named if
/// it cannot be read.
fn read(dir: &Path) -> Result<ModelSummary> {
    read_summary(dir).with_context(|| format!("reading the himmel-mini model in {}", dir.display()))
}

/// A denoiser in words: its size, what it predicts and the step of its run it was exported at.
fn denoiser(model: &ModelSummary) -> String {
    let config = &model.config.denoiser;
    let [t, h, w] = config.patch_size;
    let prediction = match model.config.prediction {
        Prediction::Flow => "the flow",
        Prediction::Sample => "clean latents",
    };
    let trained = model
        .step
        .map(|step| format!(", exported at step {step} of its run"))
        .unwrap_or_default();
    format!(
        "{} blocks of width {}, patches {t}x{h}x{w}, predicts {prediction}{trained}",
        config.num_layers,
        config.inner_dim()
    )
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}
