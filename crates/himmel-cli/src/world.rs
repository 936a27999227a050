//! `himmel world`: the procedural physics world from the command line.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use himmel_core::{Progress, ProgressEvent, Silent};
use himmel_media::{Format, ReadOptions, WriteOptions, read_video, write_video};
use himmel_world::caption::detailed_caption;
use himmel_world::expand::expand;
use himmel_world::score::{aggregate, score};
use himmel_world::{RenderSettings, SceneSpec, render, sample_clip};
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
    /// Score a video against a spec (--spec or --prompt) and print the JSON report; or score
    /// every clip in a folder against its own JSON, write NAME.report.json beside each and print
    /// the aggregate.
    Score(ScoreArgs),
}

/// Arguments of `himmel world score`.
#[derive(Args)]
struct ScoreArgs {
    /// A video file, or a folder of clips each with a NAME.json beside it.
    input: PathBuf,
    /// The spec to score against: a spec JSON, a `world sample` clip JSON or `world expand` output.
    #[arg(long, conflicts_with = "prompt")]
    spec: Option<PathBuf>,
    /// A prompt to score against (expanded as `himmel world expand` does).
    #[arg(long)]
    prompt: Option<String>,
    /// Seed for what the prompt leaves open.
    #[arg(long, default_value_t = 0)]
    seed: u64,
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
pub struct ClipSize {
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
    /// The render settings these options ask for.
    pub fn settings(&self) -> Result<RenderSettings> {
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
        WorldCommand::Score(score) => run_score(score, progress),
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

/// Reads a spec from a spec JSON, a sampled clip's JSON or `world expand` output.
fn read_spec(path: &Path) -> Result<SceneSpec> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let value = value.get("spec").cloned().unwrap_or(value);
    let spec: SceneSpec = serde_json::from_value(value)
        .with_context(|| format!("{} does not hold a valid scene spec", path.display()))?;
    spec.validate()
        .with_context(|| format!("{} holds an invalid scene spec", path.display()))?;
    Ok(spec)
}

fn run_score(args: &ScoreArgs, progress: &dyn Progress) -> Result<()> {
    if args.input.is_dir() && args.spec.is_none() && args.prompt.is_none() {
        return score_folder(&args.input, progress);
    }
    let spec = match (&args.spec, &args.prompt) {
        (Some(path), _) => read_spec(path)?,
        (None, Some(prompt)) => {
            let expansion = expand(
                prompt,
                &mut rand_chacha::ChaCha8Rng::seed_from_u64(args.seed),
            )?;
            if !expansion.unknown_words.is_empty() {
                eprintln!(
                    "warning: did not understand: {}",
                    expansion.unknown_words.join(", ")
                );
            }
            expansion.spec
        }
        (None, None) => {
            bail!("give --spec SPEC.json or --prompt \"...\" to score a single video against")
        }
    };
    let video = read_video(&args.input, &ReadOptions::default(), progress)?;
    let report = score(&video, &spec)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Scores every video in `folder` that has a NAME.json beside it.
fn score_folder(folder: &Path, progress: &dyn Progress) -> Result<()> {
    let mut clips: Vec<(PathBuf, PathBuf)> = Vec::new();
    for entry in
        fs::read_dir(folder).with_context(|| format!("cannot read {}", folder.display()))?
    {
        let path = entry?.path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let is_json = path.extension().is_some_and(|e| e == "json");
        if is_json || stem.ends_with(".report") || Format::of_input(&path).is_err() {
            continue;
        }
        let json = folder.join(format!("{stem}.json"));
        if json.is_file() {
            clips.push((path, json));
        } else {
            eprintln!(
                "warning: {} has no {stem}.json beside it; skipped",
                path.display()
            );
        }
    }
    clips.sort();
    if clips.is_empty() {
        bail!(
            "{} holds no clips with a NAME.json beside them",
            folder.display()
        );
    }
    let mut reports = Vec::with_capacity(clips.len());
    progress.event(ProgressEvent::StageStarted {
        stage: "score",
        total: clips.len() as u64,
    });
    for (done, (video_path, json_path)) in clips.iter().enumerate() {
        let spec = read_spec(json_path)?;
        let video = read_video(video_path, &ReadOptions::default(), &Silent)?;
        let report = score(&video, &spec)?;
        let stem = json_path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("clip");
        let report_path = folder.join(format!("{stem}.report.json"));
        fs::write(&report_path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("cannot write {}", report_path.display()))?;
        reports.push(report);
        progress.event(ProgressEvent::Step {
            done: done as u64 + 1,
        });
    }
    progress.event(ProgressEvent::StageFinished);
    println!("{}", serde_json::to_string_pretty(&aggregate(&reports))?);
    Ok(())
}
