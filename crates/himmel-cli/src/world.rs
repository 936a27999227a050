//! `himmel world`: the procedural physics world from the command line.

use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use himmel_core::{Progress, ProgressEvent, Silent};
use himmel_media::{WriteOptions, write_video};
use himmel_world::{RenderSettings, sample_clip};

/// Arguments of `himmel world`.
#[derive(Args)]
pub struct WorldArgs {
    #[command(subcommand)]
    command: WorldCommand,
}

#[derive(Subcommand)]
enum WorldCommand {
    /// Render N random captioned clips: DIR/000000.mp4 (or another format) and DIR/000000.json
    /// (spec, detailed caption, short prompts).
    Sample(SampleArgs),
}

/// File format of sampled clips.
#[derive(Clone, Copy, ValueEnum)]
enum ClipFormat {
    Mp4,
    Gif,
    Png,
    Safetensors,
}

impl ClipFormat {
    fn extension(self) -> &'static str {
        match self {
            Self::Mp4 => "mp4",
            Self::Gif => "gif",
            Self::Png => "png",
            Self::Safetensors => "safetensors",
        }
    }
}

/// Arguments of `himmel world sample`.
#[derive(Args)]
struct SampleArgs {
    /// Number of clips.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    n: u64,
    /// Output folder (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Seed of the run; clip i of a seed is always the same clip.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Frame width.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(16..=4096))]
    width: u32,
    /// Frame height.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(16..=4096))]
    height: u32,
    /// Frames per clip.
    #[arg(long, default_value_t = 17, value_parser = clap::value_parser!(u32).range(1..=2000))]
    frames: u32,
    /// Frames per second.
    #[arg(long, default_value_t = 16.0)]
    fps: f64,
    /// File format of the clips.
    #[arg(long, value_enum, default_value_t = ClipFormat::Mp4)]
    format: ClipFormat,
}

/// Runs a `himmel world` command.
pub fn run(args: &WorldArgs, progress: &dyn Progress) -> Result<()> {
    match &args.command {
        WorldCommand::Sample(sample) => run_sample(sample, progress),
    }
}

fn run_sample(args: &SampleArgs, progress: &dyn Progress) -> Result<()> {
    if !(args.fps.is_finite() && args.fps > 0.0 && args.fps <= 240.0) {
        bail!("--fps must be between 0 and 240, got {}", args.fps);
    }
    let settings = RenderSettings {
        width: args.width as usize,
        height: args.height as usize,
        frames: args.frames as usize,
        fps: args.fps,
    };
    fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    progress.event(ProgressEvent::StageStarted {
        stage: "sample",
        total: args.n,
    });
    for index in 0..args.n {
        let (clip, record) = sample_clip(args.seed, index, &settings)?;
        let video_path = args
            .out
            .join(format!("{index:06}.{}", args.format.extension()));
        write_video(&clip.video, &video_path, &WriteOptions::default(), &Silent)?;
        let json_path = args.out.join(format!("{index:06}.json"));
        let json = serde_json::to_string_pretty(&record)?;
        fs::write(&json_path, json + "\n")
            .with_context(|| format!("cannot write {}", json_path.display()))?;
        progress.event(ProgressEvent::Step { done: index + 1 });
    }
    progress.event(ProgressEvent::StageFinished);
    Ok(())
}
