//! `himmel convert IN OUT`: between every readable and writable format, with trim, frame
//! rate and resize.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use himmel_core::Progress;
use himmel_media::{
    DEFAULT_FPS, Format, FrameRange, Quality, ReadOptions, WriteOptions, check_output_path,
    read_video, resample, resize, trim, write_video,
};

/// Arguments of `himmel convert`.
#[derive(Args)]
#[command(
    after_help = "Formats are chosen by extension. Inputs: .mp4/.mov/.m4v (H.264), .gif, .safetensors, \
.png/.jpg/.jpeg/.webp stills, or a folder of PNG frames. Outputs: .mp4 (H.264), .gif (looping), \
.safetensors (f32 tensor `video` [F, H, W, 3] in 0..=1), or .png / no extension (a folder of PNG frames)."
)]
pub struct ConvertArgs {
    /// Input video, image or folder of PNG frames.
    input: PathBuf,
    /// Output file (or folder, for PNG frames).
    output: PathBuf,
    /// Keep only frames A..B of the input (0-based, B excluded; A.. and ..B work too).
    #[arg(long, value_name = "A..B")]
    frames: Option<FrameRange>,
    /// Output frame rate; frames are dropped or repeated so the duration stays the same.
    #[arg(long, value_name = "FPS")]
    fps: Option<f64>,
    /// Frame rate of inputs that carry none (PNG folders, still images).
    #[arg(long, value_name = "FPS", default_value_t = DEFAULT_FPS)]
    input_fps: f64,
    /// Output width in pixels; alone, the height follows the aspect ratio.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    width: Option<u32>,
    /// Output height in pixels; alone, the width follows the aspect ratio.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    height: Option<u32>,
    /// MP4 quality as a constant quantiser, 0 (best) to 51 (smallest file).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u8).range(0..=51), conflicts_with = "bitrate")]
    crf: u8,
    /// MP4 average bitrate in kbit/s, instead of a constant quality.
    #[arg(long, value_name = "KBPS", value_parser = clap::value_parser!(u32).range(1..))]
    bitrate: Option<u32>,
}

/// Reads, edits and writes one clip.
pub fn run(args: &ConvertArgs, progress: &dyn Progress) -> Result<()> {
    for fps in [Some(args.input_fps), args.fps].into_iter().flatten() {
        if !(fps.is_finite() && fps > 0.0) {
            bail!("frame rate must be a positive number, got {fps}");
        }
    }
    let output_format = Format::of_output(&args.output)?;
    check_output_path(&args.output)?;

    let mut video = read_video(
        &args.input,
        &ReadOptions {
            fps: args.input_fps,
        },
        progress,
    )?;
    if let Some(range) = args.frames {
        video = trim(&video, range)?;
    }
    if let Some(fps) = args.fps {
        video = resample(&video, fps)?;
    }
    if args.width.is_some() || args.height.is_some() {
        let (width, height) = target_size(args, video.width(), video.height(), output_format);
        video = resize(&video, width, height)?;
    }
    let quality = match args.bitrate {
        Some(kbps) => Quality::Bitrate(kbps),
        None => Quality::Constant(args.crf),
    };
    write_video(&video, &args.output, &WriteOptions { quality }, progress)?;
    Ok(())
}

/// The requested size; a missing side follows the aspect ratio (even for MP4).
fn target_size(args: &ConvertArgs, width: usize, height: usize, format: Format) -> (usize, usize) {
    let follow = |given: usize, from: usize, to: usize| {
        let exact = (given as f64 * to as f64 / from as f64).round() as usize;
        let even = if format == Format::Mp4 {
            exact.div_ceil(2) * 2
        } else {
            exact
        };
        even.max(1)
    };
    match (
        args.width.map(|w| w as usize),
        args.height.map(|h| h as usize),
    ) {
        (Some(w), Some(h)) => (w, h),
        (Some(w), None) => (w, follow(w, width, height)),
        (None, Some(h)) => (follow(h, height, width), h),
        (None, None) => (width, height),
    }
}
