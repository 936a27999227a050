//! `himmel world`: the procedural physics world from the command line.

use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use himmel_core::{Progress, ProgressEvent, Silent};
use himmel_media::{WriteOptions, write_video};
use himmel_world::caption::detailed_caption;
use himmel_world::expand::expand;
use himmel_world::{RenderSettings, render, sample_clip};
use rand::SeedableRng;

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
    /// Expand a short prompt (English or German) into a scene spec and a detailed caption,
    /// printed as JSON; words it does not understand are reported.
    Expand(ExpandArgs),
}

/// Arguments of `himmel world expand`.
#[derive(Args)]
struct ExpandArgs {
    /// The prompt, e.g. "a red ball bounces on the grass".
    prompt: String,
    /// Seed for what the prompt leaves open.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    clip: ClipSize,
}

/// Size, length and rate of rendered clips.
#[derive(Args)]
struct ClipSize {
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
}

impl ClipSize {
    fn settings(&self) -> Result<RenderSettings> {
        if !(self.fps.is_finite() && self.fps > 0.0 && self.fps <= 240.0) {
            bail!("--fps must be between 0 and 240, got {}", self.fps);
        }
        Ok(RenderSettings {
            width: self.width as usize,
            height: self.height as usize,
            frames: self.frames as usize,
            fps: self.fps,
        })
    }
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
    #[command(flatten)]
    clip: ClipSize,
    /// File format of the clips.
    #[arg(long, value_enum, default_value_t = ClipFormat::Mp4)]
    format: ClipFormat,
}

/// Runs a `himmel world` command.
pub fn run(args: &WorldArgs, progress: &dyn Progress) -> Result<()> {
    match &args.command {
        WorldCommand::Sample(sample) => run_sample(sample, progress),
        WorldCommand::Expand(expand) => run_expand(expand),
    }
}

fn run_sample(args: &SampleArgs, progress: &dyn Progress) -> Result<()> {
    let settings = args.clip.settings()?;
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

fn run_expand(args: &ExpandArgs) -> Result<()> {
    let settings = args.clip.settings()?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    let expansion = expand(&args.prompt, &mut rng)?;
    let clip = render(&expansion.spec, &settings)?;
    let caption = detailed_caption(&expansion.spec, &clip);
    if !expansion.unknown_words.is_empty() {
        eprintln!(
            "warning: did not understand: {}",
            expansion.unknown_words.join(", ")
        );
    }
    for conflict in &expansion.conflicts {
        eprintln!("warning: {conflict}");
    }
    let output = serde_json::json!({
        "prompt": args.prompt,
        "seed": args.seed,
        "spec": expansion.spec,
        "caption": caption,
        "unknown_words": expansion.unknown_words,
        "conflicts": expansion.conflicts,
    });
    println!("{}", serde_json::to_string_pretty(&output)?);
    Ok(())
}
