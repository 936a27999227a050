//! `himmel info FILE`: what a video file holds.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use himmel_core::Progress;
use himmel_media::{Format, ReadOptions, read_video};

/// Arguments of `himmel info`.
#[derive(Args)]
pub struct InfoArgs {
    /// The video, image or PNG folder to describe.
    input: PathBuf,
}

/// Reads the input and prints one `key: value` line per property.
pub fn run(args: &InfoArgs, progress: &dyn Progress) -> Result<()> {
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

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}
