//! `himmel generate "PROMPT" -o OUT`: text to video with a Wan 2.1 model.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::Device;
use clap::{Args, ValueEnum};
use himmel_core::Progress;
use himmel_media::{Format, WriteOptions, check_output_path, write_video};
use himmel_pipeline::{GenerationRequest, ModelSource, Precision, SingleFiles, WanPipeline};

/// Compute precision of the transformer and text encoder.
#[derive(Clone, Copy, ValueEnum)]
enum DtypeArg {
    F32,
    Bf16,
    F16,
}

/// Arguments of `himmel generate`.
#[derive(Args)]
pub struct GenerateArgs {
    /// What the video should show.
    prompt: String,
    /// Output file: .mp4, .gif, .png (a folder of frames) or .safetensors (raw f32 frames).
    #[arg(short, long)]
    output: PathBuf,
    /// Model: a Wan 2.1 diffusers folder (with model_index.json), or a single transformer file
    /// (original Wan or ComfyUI names) with --vae, --text-encoder and --tokenizer.
    #[arg(long)]
    model: Option<PathBuf>,
    /// With a single-file model: the VAE file (safetensors, or the original Wan2.1_VAE.pth).
    #[arg(long)]
    vae: Option<PathBuf>,
    /// With a single-file model: the UMT5 text encoder file (safetensors or the original .pth).
    #[arg(long)]
    text_encoder: Option<PathBuf>,
    /// With a single-file model: the UMT5 tokenizer's tokenizer.json.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// What the video should not show.
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Frame width in pixels (a multiple of 16 for Wan).
    #[arg(long, default_value_t = 832)]
    width: usize,
    /// Frame height in pixels (a multiple of 16 for Wan).
    #[arg(long, default_value_t = 480)]
    height: usize,
    /// Number of frames (1 + 4k for Wan).
    #[arg(long, default_value_t = 81, conflicts_with = "seconds")]
    frames: usize,
    /// Duration in seconds instead of --frames (rounded up to a valid frame count).
    #[arg(long)]
    seconds: Option<f64>,
    /// Frames per second of the output.
    #[arg(long, default_value_t = 16.0)]
    fps: f64,
    /// Denoising steps.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Classifier-free guidance scale (1 turns guidance off).
    #[arg(long, default_value_t = 5.0)]
    guidance: f64,
    /// Flow shift, overriding the model's scheduler configuration (Wan: 3 for 480p, 5 for 720p).
    #[arg(long)]
    shift: Option<f64>,
    /// Seed of the initial noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Initial noise from a safetensors file holding a tensor named `latents` (for exact
    /// comparison with other implementations).
    #[arg(long)]
    latents: Option<PathBuf>,
    /// Compute precision of the transformer and text encoder (the VAE runs in f32).
    #[arg(long, value_enum, default_value_t = DtypeArg::Bf16)]
    dtype: DtypeArg,
    /// Prompt tokens (padded or truncated); Wan was trained with 512.
    #[arg(long, default_value_t = himmel_pipeline::wan::MAX_SEQUENCE_LENGTH)]
    max_sequence_length: usize,
    /// MP4 quality as a constant quantiser, 0 (best) to 51.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u8).range(0..=51))]
    crf: u8,
}

/// Frames of `seconds` at `fps`, rounded up to 1 + 4k.
fn frames_for(seconds: f64, fps: f64) -> usize {
    let wanted = (seconds * fps).ceil().max(1.0) as usize;
    (wanted.saturating_sub(1)).div_ceil(4) * 4 + 1
}

/// Loads the model, generates and writes the video.
pub fn run(args: &GenerateArgs, progress: &dyn Progress) -> Result<()> {
    Format::of_output(&args.output)?;
    check_output_path(&args.output)?;
    let Some(model) = &args.model else {
        bail!(
            "no built-in model yet: pass --model PATH to a Wan 2.1 diffusers folder (the built-in himmel-mini is planned)"
        );
    };
    if !(1..=4096).contains(&args.max_sequence_length) {
        bail!(
            "--max-sequence-length must be between 1 and 4096, got {}",
            args.max_sequence_length
        );
    }
    let frames = match args.seconds {
        Some(seconds) if seconds.is_finite() && seconds > 0.0 => frames_for(seconds, args.fps),
        Some(seconds) => bail!("--seconds must be a positive number, got {seconds}"),
        None => args.frames,
    };
    let initial_latents = match &args.latents {
        Some(path) => {
            let tensors = candle_core::safetensors::load(path, &Device::Cpu)
                .with_context(|| format!("cannot read latents from {}", path.display()))?;
            let latents = tensors
                .get("latents")
                .with_context(|| format!("{} has no tensor named `latents`", path.display()))?;
            Some(latents.clone())
        }
        None => None,
    };
    let precision = match args.dtype {
        DtypeArg::F32 => Precision::F32,
        DtypeArg::Bf16 => Precision::Bf16,
        DtypeArg::F16 => Precision::F16,
    };

    let started = Instant::now();
    let source = if model.is_file() {
        let needed = |value: &Option<PathBuf>, flag: &str| {
            value
                .clone()
                .with_context(|| format!("{} is a single file: also pass {flag}", model.display()))
        };
        ModelSource::Files(SingleFiles {
            transformer: model.clone(),
            vae: needed(&args.vae, "--vae FILE")?,
            text_encoder: needed(&args.text_encoder, "--text-encoder FILE")?,
            tokenizer: needed(&args.tokenizer, "--tokenizer tokenizer.json")?,
        })
    } else {
        ModelSource::Folder(model.clone())
    };
    let pipeline = WanPipeline::load(&source, precision, &Device::Cpu)?
        .with_max_sequence_length(args.max_sequence_length);
    let request = pipeline.validate(GenerationRequest {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        width: args.width,
        height: args.height,
        frames,
        fps: args.fps,
        steps: args.steps,
        guidance: args.guidance,
        shift: args.shift,
        seed: args.seed,
        initial_latents,
    })?;
    let video = pipeline.generate(&request, progress)?;
    let options = WriteOptions {
        quality: himmel_media::Quality::Constant(args.crf),
    };
    write_video(&video, &args.output, &options, progress)?;
    eprintln!(
        "wrote {} ({} frames of {}x{}) in {:.1}s; peak memory {}",
        args.output.display(),
        video.num_frames(),
        video.width(),
        video.height(),
        started.elapsed().as_secs_f64(),
        peak_memory().unwrap_or_else(|| "unknown".into())
    );
    Ok(())
}

/// The process's peak resident memory, from /proc (Linux).
pub fn peak_memory() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(format!("{:.2} GiB", kib / 1024.0 / 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_up_to_valid_frame_counts() {
        assert_eq!(frames_for(5.0, 16.0), 81);
        assert_eq!(frames_for(1.0, 16.0), 17);
        assert_eq!(frames_for(0.01, 16.0), 1);
        assert_eq!(frames_for(1.1, 16.0), 21);
    }
}
