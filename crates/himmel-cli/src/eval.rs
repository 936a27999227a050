//! `himmel eval`: held-out prompts (hand-written phrasings no training run sees, each with its
//! own seed) through a himmel-mini model; every clip is scored by the world scorer against the
//! scene its prompt expanded to, beside the same scene rendered (ground truth).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::Device;
use clap::Args;
use himmel_core::Silent;
use himmel_pipeline::mini::{self, BUILTIN_NAME};
use himmel_pipeline::{GenerationRequest, MiniPipeline};
use himmel_world::render::{RenderSettings, render};
use himmel_world::score::{Aggregate, Report, aggregate, score};
use serde::Serialize;

/// Arguments of `himmel eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// A himmel-mini folder [default: the built-in himmel-mini].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Evaluate only the first N held-out prompts.
    #[arg(long)]
    limit: Option<usize>,
    /// Denoising steps [default: the model's].
    #[arg(long)]
    steps: Option<usize>,
    /// Guidance scale [default: the model's].
    #[arg(long)]
    guidance: Option<f64>,
    /// Where to write the JSON report.
    #[arg(long, default_value = "eval.json")]
    out: PathBuf,
}

/// One prompt's outcome.
#[derive(Serialize)]
struct PromptResult {
    prompt: String,
    seed: u64,
    caption: String,
    model: Report,
    ground_truth: Report,
}

/// The saved report.
#[derive(Serialize)]
struct EvalReport {
    model: Aggregate,
    ground_truth: Aggregate,
    prompts: Vec<PromptResult>,
}

/// Runs the evaluation and prints and saves the aggregate.
pub fn run(args: &EvalArgs, quiet: bool) -> Result<()> {
    let dir = match &args.model {
        Some(dir) => dir.clone(),
        None => mini::builtin_dir(),
    };
    if !mini::is_mini_dir(&dir) {
        bail!(
            "{} holds no himmel-mini model ({BUILTIN_NAME} or a trained model/ folder)",
            dir.display()
        );
    }
    let pipeline = MiniPipeline::load(&dir, &Device::Cpu)?;
    let config = pipeline.config().clone();
    let prompts = himmel_world::held_out_prompts();
    let prompts = &prompts[..args.limit.unwrap_or(prompts.len()).min(prompts.len())];
    let settings = RenderSettings {
        width: config.video.width,
        height: config.video.height,
        frames: config.video.frames,
        fps: config.video.fps,
    };
    let started = Instant::now();
    let mut results = Vec::with_capacity(prompts.len());
    for (index, prompt) in prompts.iter().enumerate() {
        let seed = index as u64;
        let recaption = pipeline.recaption(prompt, &settings, seed)?;
        let request = pipeline.validate(GenerationRequest {
            prompt: prompt.to_string(),
            negative_prompt: String::new(),
            width: settings.width,
            height: settings.height,
            frames: settings.frames,
            fps: settings.fps,
            steps: args.steps.unwrap_or(config.sampling.steps),
            guidance: args.guidance.unwrap_or(config.sampling.guidance),
            shift: None,
            seed,
            initial_latents: None,
        })?;
        let video = pipeline.generate(&request, &recaption.caption, &Silent)?;
        let model = score(&video, &recaption.spec)?;
        let truth = render(&recaption.spec, &settings)?;
        let ground_truth = score(&truth.video, &recaption.spec)?;
        if !quiet {
            let s = model.scores;
            eprintln!(
                "[{}/{}] colour {:.2} shape {:.2} motion {:.2} faults {}  {:.0}s  {prompt}",
                index + 1,
                prompts.len(),
                s.color,
                s.shape,
                s.motion,
                model.faults.len(),
                started.elapsed().as_secs_f64()
            );
        }
        results.push(PromptResult {
            prompt: prompt.to_string(),
            seed,
            caption: recaption.caption,
            model,
            ground_truth,
        });
    }
    let model_reports: Vec<Report> = results.iter().map(|r| r.model.clone()).collect();
    let truth_reports: Vec<Report> = results.iter().map(|r| r.ground_truth.clone()).collect();
    let report = EvalReport {
        model: aggregate(&model_reports),
        ground_truth: aggregate(&truth_reports),
        prompts: results,
    };
    print_summary(&report.model, &report.ground_truth);
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(&args.out, json)
        .with_context(|| format!("writing the report to {}", args.out.display()))?;
    eprintln!("report: {}", args.out.display());
    Ok(())
}

fn print_summary(model: &Aggregate, truth: &Aggregate) {
    println!(
        "{} held-out prompts         model   ground truth   target",
        model.clips
    );
    let rows = [
        (
            "colour agreement",
            model.scores.color,
            truth.scores.color,
            ">= 0.90",
        ),
        (
            "shape agreement",
            model.scores.shape,
            truth.scores.shape,
            ">= 0.80",
        ),
        (
            "motion direction",
            model.scores.motion,
            truth.scores.motion,
            ">= 0.80",
        ),
        ("count", model.scores.count, truth.scores.count, ""),
        ("physics", model.scores.physics, truth.scores.physics, ""),
        (
            "consistency",
            model.scores.consistency,
            truth.scores.consistency,
            "",
        ),
        (
            "clips without faults",
            model.fault_free,
            truth.fault_free,
            ">= 0.95",
        ),
    ];
    for (name, ours, reference, target) in rows {
        println!("{name:<26}{ours:>7.3}{reference:>15.3}   {target}");
    }
    let ratio = model.physics_residual / truth.physics_residual.max(1e-9);
    println!(
        "{:<26}{:>7.4}{:>15.4}   <= 2x ground truth (now {ratio:.2}x)",
        "physics residual", model.physics_residual, truth.physics_residual
    );
}
