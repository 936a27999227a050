//! `himmel eval`: held-out prompts (hand-written phrasings no training run sees, each with its
//! own seed) through a himmel-mini model; every clip is scored by the world scorer against the
//! scene its prompt expanded to, beside the same scene rendered (ground truth). With
//! `--autoencoder`, the reconstruction quality of a trained autoencoder on held-out clips (PSNR
//! and the scorer's measures). A model's report also scores its ground truth through its own
//! autoencoder: what the model's latents can show at best. With `--compare`, two saved
//! reports side by side (see [`crate::compare`]).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use clap::Args;
use himmel_core::Silent;
use himmel_core::Video;
use himmel_media::{WriteOptions, write_video};
use himmel_models::mini::{SkipGuidance, VideoShape};
use himmel_models::wan::WanVae;
use himmel_pipeline::mini::{self, BUILTIN_NAME};
use himmel_pipeline::{GenerationRequest, MiniPipeline};
use himmel_train::data::ClipSource;
use himmel_world::lexicon::shape_english;
use himmel_world::render::{RenderSettings, render};
use himmel_world::score::{Aggregate, Report, ShapesSeen, aggregate, score, shapes_seen};
use himmel_world::vocab::Shape;
use serde::Serialize;

use crate::device::DeviceChoice;

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
    /// Flow shift of the sampler's steps [default: the model's].
    #[arg(long)]
    shift: Option<f64>,
    /// Noise level (0 to 1) from which the model's high-noise expert denoises [default: the
    /// model's `sampling.boundary`].
    #[arg(long, value_name = "SIGMA")]
    boundary: Option<f64>,
    /// Guidance scale of the high-noise expert's steps [default: the model's
    /// `sampling.expert_guidance`, else `--guidance`].
    #[arg(long)]
    expert_guidance: Option<f64>,
    /// Skip guidance scale of a himmel-mini model's own denoiser: each of its steps is pushed
    /// away from its prediction with one block's self-attention skipped; 0 turns it off
    /// [default: the model's `sampling.skip_guidance`].
    #[arg(long, value_name = "SCALE")]
    skip_guidance: Option<f64>,
    /// The denoiser block (from 0) whose self-attention skip guidance skips [default: the
    /// model's].
    #[arg(long, value_name = "BLOCK")]
    skip_layer: Option<usize>,
    /// Width of the clips [default: the model's]; another size than the model's shows how it
    /// does at other sizes and aspect ratios.
    #[arg(long, conflicts_with = "autoencoder")]
    width: Option<usize>,
    /// Height of the clips [default: the model's].
    #[arg(long, conflicts_with = "autoencoder")]
    height: Option<usize>,
    /// Frames of the clips, 1 + 4k up to the model's [default: the model's]; 1 scores images.
    #[arg(long, conflicts_with = "autoencoder")]
    frames: Option<usize>,
    /// Clips per prompt, each from its own seed (and scene): more clips narrow the measures'
    /// spread. The first round's seeds are the prompts' indices, as with one.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    seeds: u64,
    /// Where to write the JSON report.
    #[arg(long, default_value = "eval.json")]
    out: PathBuf,
    /// Evaluate the autoencoder of this `himmel train autoencoder` run instead: PSNR and the
    /// world scorer's measures of held-out world clips through it.
    #[arg(long, conflicts_with = "model")]
    autoencoder: Option<PathBuf>,
    /// With --autoencoder: write the first clips beside their reconstructions as GIFs here.
    #[arg(long, requires = "autoencoder")]
    examples: Option<PathBuf>,
    /// Compare two saved reports of the same prompts and seeds instead of evaluating: each
    /// measure of both, and their difference with its 95% interval, clip against clip.
    #[arg(long, num_args = 2, value_names = ["BASE", "NEW"], conflicts_with_all = [
        "model", "autoencoder", "limit", "steps", "guidance", "shift", "boundary",
        "expert_guidance", "skip_guidance", "skip_layer", "width", "height", "frames", "seeds",
    ])]
    compare: Option<Vec<PathBuf>>,
    /// With --autoencoder: size of the held-out clips, WIDTHxHEIGHTxFRAMES.
    #[arg(long, default_value = "64x64x17", requires = "autoencoder", value_parser = parse_clip_size)]
    clip_size: (usize, usize, usize),
}

fn parse_clip_size(text: &str) -> Result<(usize, usize, usize), String> {
    let numbers: Vec<usize> = text
        .split('x')
        .map(|part| {
            part.parse()
                .map_err(|_| format!("{text:?} is not WIDTHxHEIGHTxFRAMES"))
        })
        .collect::<Result<_, _>>()?;
    match numbers.as_slice() {
        &[width, height, frames] if width % 8 == 0 && height % 8 == 0 && frames % 4 == 1 => {
            Ok((width, height, frames))
        }
        _ => Err(format!(
            "{text:?}: width and height must be multiples of 8 and frames 1 + 4k"
        )),
    }
}

/// The world seed of held-out clips (training recipes use small seeds).
const HELD_OUT_SEED: u64 = 0x4845_4c44;

/// Clips written by `--examples`.
const EXAMPLE_CLIPS: usize = 4;

/// Reconstruction quality of one held-out clip.
#[derive(Serialize)]
struct Reconstruction {
    index: u64,
    /// The clip's detailed caption.
    caption: String,
    /// PSNR over the whole clip.
    psnr: f64,
    /// PSNR over the pixels on and next to objects (`None`: the clip shows none).
    object_psnr: Option<f64>,
    /// The same, frame by frame (`None` where a frame shows no object).
    object_psnr_by_frame: Vec<Option<f64>>,
    /// The scorer's report on the reconstruction.
    reconstructed: Report,
    /// The scorer's report on the clip itself.
    ground_truth: Report,
}

/// The saved report of an autoencoder: `himmel eval --compare` reads two of them as it reads
/// two models' reports, clip against clip.
#[derive(Serialize)]
struct ReconstructionReport {
    /// Width, height and frames of every clip.
    size: (usize, usize, usize),
    clips: Vec<Reconstruction>,
}

/// PSNR of `reconstruction` against `original` (both in -1..=1), weighted by `weights`
/// `[B, 1, F, H, W]` when given; `None` when the weights are all zero.
fn psnr(
    reconstruction: &Tensor,
    original: &Tensor,
    weights: Option<&Tensor>,
) -> Result<Option<f64>> {
    let squared = (reconstruction - original)?.sqr()?;
    let (total, count) = match weights {
        Some(weights) => (
            squared
                .broadcast_mul(weights)?
                .sum_all()?
                .to_scalar::<f32>()?,
            3.0 * weights.sum_all()?.to_scalar::<f32>()?,
        ),
        None => (
            squared.sum_all()?.to_scalar::<f32>()?,
            squared.elem_count() as f32,
        ),
    };
    if count == 0.0 {
        return Ok(None);
    }
    // Values span 2, so the peak's square is 4.
    let mse = f64::from(total / count) / 4.0;
    Ok(Some(-10.0 * mse.log10()))
}

/// [`psnr`] over the pixels on and next to objects, frame by frame.
fn psnr_by_frame(
    reconstruction: &Tensor,
    original: &Tensor,
    objects: &Tensor,
) -> Result<Vec<Option<f64>>> {
    (0..original.dim(2)?)
        .map(|frame| {
            let at = |clip: &Tensor| clip.narrow(2, frame, 1);
            psnr(&at(reconstruction)?, &at(original)?, Some(&at(objects)?))
        })
        .collect()
}

/// Prints, frame by frame over `frames`, the mean PSNR on and next to objects of the clips that
/// show objects there (`-`: none do) and the reconstructions' faults by the frame they show
/// from.
fn print_by_frame(results: &[Reconstruction], frames: usize) {
    let psnr: Vec<String> = (0..frames)
        .map(|frame| {
            let seen: Vec<f64> = results
                .iter()
                .filter_map(|r| r.object_psnr_by_frame.get(frame).copied().flatten())
                .collect();
            if seen.is_empty() {
                "-".into()
            } else {
                format!("{:.1}", seen.iter().sum::<f64>() / seen.len() as f64)
            }
        })
        .collect();
    println!(
        "PSNR on and next to objects by frame (dB): {}",
        psnr.join(" ")
    );
    let mut faults = vec![0usize; frames];
    for fault in results.iter().flat_map(|r| &r.reconstructed.faults) {
        if let Some(count) = fault.frame.and_then(|frame| faults.get_mut(frame)) {
            *count += 1;
        }
    }
    let faults: Vec<String> = faults.iter().map(usize::to_string).collect();
    println!(
        "reconstructions' faults by the frame they show from: {}",
        faults.join(" ")
    );
}

/// The RMS of each latent frame of `latents` `[B, z, F, h, w]` normalised per channel over all
/// frames: whether some frames (the first encodes one frame, the others four) need their own
/// normalisation.
fn latent_spread_by_frame(latents: &Tensor) -> Result<Vec<f64>> {
    let (mean, std) = himmel_train::autoencoder::channel_statistics(latents)?;
    let column = |values: Vec<f64>| {
        let values: Vec<f32> = values.into_iter().map(|v| v as f32).collect();
        Tensor::from_vec(values, (1, mean.len(), 1, 1, 1), latents.device())
    };
    let normalised = latents
        .broadcast_sub(&column(mean.clone())?)?
        .broadcast_div(&column(std)?)?;
    (0..latents.dim(2)?)
        .map(|frame| {
            let mean_square = normalised.narrow(2, frame, 1)?.sqr()?.mean_all()?;
            Ok(f64::from(mean_square.to_scalar::<f32>()?).sqrt())
        })
        .collect()
}

/// A clip `[1, 3, F, H, W]` in -1..=1 as a video.
fn as_video(clip: &Tensor, fps: f64) -> Result<Video> {
    let frames = ((clip.squeeze(0)?.permute((1, 2, 3, 0))? + 1.0)? / 2.0)?.clamp(0f32, 1f32)?;
    Ok(Video::new(frames.contiguous()?, fps)?)
}

fn run_autoencoder(args: &EvalArgs, dir: &std::path::Path, device: &Device) -> Result<()> {
    let trained = himmel_train::autoencoder::read_trained(dir)?;
    let vae = WanVae::new(
        &trained.config,
        VarBuilder::from_tensors(trained.weights, DType::F32, device),
    )?;
    let (width, height, frames) = args.clip_size;
    let shape = VideoShape {
        width,
        height,
        frames,
        fps: 16.0,
    };
    let clips = ClipSource::world(shape, HELD_OUT_SEED);
    let count = args.limit.unwrap_or(32) as u64;
    if let Some(examples) = &args.examples {
        std::fs::create_dir_all(examples)
            .with_context(|| format!("creating {}", examples.display()))?;
    }
    let mut results: Vec<Reconstruction> = Vec::new();
    let mut latents = Vec::new();
    for index in 0..count {
        let batch = clips.batch(index..index + 1, device)?;
        let encoded = vae.encode(&batch.video)?;
        // Scored on the CPU, beside the object masks.
        let reconstruction = vae.decode(&encoded)?.to_device(&Device::Cpu)?;
        let original = &batch.video.to_device(&Device::Cpu)?;
        latents.push(encoded.to_device(&Device::Cpu)?);
        let objects = clips
            .object_masks(&batch)?
            .map(|masks| masks.to_device(&Device::Cpu))
            .transpose()?;
        let spec = batch.scenes[0]
            .as_ref()
            .context("a world clip without its scene")?;
        results.push(Reconstruction {
            index,
            caption: batch.captions[0].detailed.clone(),
            psnr: psnr(&reconstruction, original, None)?.unwrap_or(f64::INFINITY),
            object_psnr: psnr(&reconstruction, original, objects.as_ref())?,
            object_psnr_by_frame: match &objects {
                Some(objects) => psnr_by_frame(&reconstruction, original, objects)?,
                None => Vec::new(),
            },
            reconstructed: score(&as_video(&reconstruction, shape.fps)?, spec)?,
            ground_truth: score(&as_video(original, shape.fps)?, spec)?,
        });
        if let Some(examples) = &args.examples
            && (index as usize) < EXAMPLE_CLIPS
        {
            let pair = Tensor::cat(&[original, &reconstruction], 4)?;
            let path = examples.join(format!("{index:03}.gif"));
            let options = WriteOptions {
                quality: himmel_media::Quality::Constant(20),
            };
            write_video(&as_video(&pair, shape.fps)?, &path, &options, &Silent)?;
        }
    }
    let mean = results.iter().map(|r| r.psnr).sum::<f64>() / results.len().max(1) as f64;
    let objects: Vec<f64> = results.iter().filter_map(|r| r.object_psnr).collect();
    let object_mean = objects.iter().sum::<f64>() / objects.len().max(1) as f64;
    println!(
        "autoencoder {}: mean PSNR {mean:.2} dB over {count} held-out {width}x{height}x{frames} clips; \
         {object_mean:.2} dB on and next to objects ({} clips show objects)",
        dir.display(),
        objects.len()
    );
    print_by_frame(&results, frames);
    if !latents.is_empty() {
        let spread = latent_spread_by_frame(&Tensor::cat(&latents, 0)?)?;
        let spread: Vec<String> = spread.iter().map(|s| format!("{s:.2}")).collect();
        println!(
            "latent spread by latent frame (RMS under one normalisation for all): {}",
            spread.join(" ")
        );
    }
    if !results.is_empty() {
        let reconstructed: Vec<Report> = results.iter().map(|r| r.reconstructed.clone()).collect();
        let original: Vec<Report> = results.iter().map(|r| r.ground_truth.clone()).collect();
        print_summary(&aggregate(&reconstructed), &aggregate(&original), None);
        print_shapes_seen(&[
            ("reconstructed", &reconstructed),
            ("ground truth", &original),
        ]);
    }
    let report = ReconstructionReport {
        size: args.clip_size,
        clips: results,
    };
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing the report to {}", args.out.display()))?;
    Ok(())
}

/// One prompt's outcome.
#[derive(Serialize)]
struct PromptResult {
    prompt: String,
    seed: u64,
    caption: String,
    model: Report,
    ground_truth: Report,
    /// The ground truth through the model's autoencoder and back: what its latents can show.
    autoencoded: Report,
}

/// The saved report.
#[derive(Serialize)]
struct EvalReport {
    /// Width, height and frames of every clip.
    size: (usize, usize, usize),
    model: Aggregate,
    ground_truth: Aggregate,
    autoencoded: Aggregate,
    prompts: Vec<PromptResult>,
}

/// Runs the evaluation and prints and saves the aggregate.
pub fn run(args: &EvalArgs, device: DeviceChoice, quiet: bool) -> Result<()> {
    if let Some([base, new]) = args.compare.as_deref() {
        return crate::compare::run(base, new);
    }
    let device = device.open()?;
    if let Some(dir) = &args.autoencoder {
        return run_autoencoder(args, dir, &device);
    }
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
    let pipeline = MiniPipeline::load(&dir, &device)?;
    let config = pipeline.config().clone();
    let prompts = himmel_world::held_out_prompts();
    // Later rounds' seeds follow all the held-out prompts', whatever `--limit` keeps.
    let round_stride = prompts.len() as u64;
    let prompts = &prompts[..args.limit.unwrap_or(prompts.len()).min(prompts.len())];
    let settings = RenderSettings {
        width: args.width.unwrap_or(config.video.width),
        height: args.height.unwrap_or(config.video.height),
        frames: args.frames.unwrap_or(config.video.frames),
        fps: config.video.fps,
    };
    let skip_guidance = SkipGuidance::overriding(
        config.sampling.skip_guidance,
        args.skip_guidance,
        args.skip_layer,
    )
    .map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    let rounds =
        (0..args.seeds).flat_map(|round| prompts.iter().enumerate().map(move |p| (round, p)));
    let clips = prompts.len() * args.seeds as usize;
    let mut results = Vec::with_capacity(clips);
    for (count, (round, (index, prompt))) in rounds.enumerate() {
        let seed = index as u64 + round * round_stride;
        let recaption = pipeline.recaption(prompt, &settings, seed)?;
        let size = (settings.width, settings.height, settings.frames);
        let request = pipeline.validate(GenerationRequest {
            steps: args.steps.unwrap_or(config.sampling.steps),
            guidance: args.guidance.unwrap_or(config.sampling.guidance),
            shift: args.shift,
            boundary: args.boundary,
            expert_guidance: args.expert_guidance,
            skip_guidance,
            seed,
            ..GenerationRequest::new(prompt, size, settings.fps)
        })?;
        let video = pipeline.generate(&request, &recaption.caption, &Silent)?;
        let model = score(&video, &recaption.spec)?;
        let truth = render(&recaption.spec, &settings)?;
        let ground_truth = score(&truth.video, &recaption.spec)?;
        let autoencoded = score(&pipeline.autoencode(&truth.video)?, &recaption.spec)?;
        if !quiet {
            let s = model.scores;
            eprintln!(
                "[{}/{clips}] colour {:.2} shape {:.2} motion {:.2} faults {}  {:.0}s  {prompt}",
                count + 1,
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
            autoencoded,
        });
    }
    let model_reports: Vec<Report> = results.iter().map(|r| r.model.clone()).collect();
    let truth_reports: Vec<Report> = results.iter().map(|r| r.ground_truth.clone()).collect();
    let autoencoded_reports: Vec<Report> = results.iter().map(|r| r.autoencoded.clone()).collect();
    let report = EvalReport {
        size: (settings.width, settings.height, settings.frames),
        model: aggregate(&model_reports),
        ground_truth: aggregate(&truth_reports),
        autoencoded: aggregate(&autoencoded_reports),
        prompts: results,
    };
    print_summary(
        &report.model,
        &report.ground_truth,
        Some(&report.autoencoded),
    );
    print_shapes_seen(&[
        ("scored", &model_reports),
        ("ground truth", &truth_reports),
        ("autoencoded", &autoencoded_reports),
    ]);
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(&args.out, json)
        .with_context(|| format!("writing the report to {}", args.out.display()))?;
    eprintln!("report: {}", args.out.display());
    Ok(())
}

/// Reads one measure of an aggregate.
type Measure = fn(&Aggregate) -> f64;

/// Prints the measures of `clips` (a model's, or an autoencoder's reconstructions) beside
/// rendered ground truth and, for a model, ground truth through its autoencoder (the most the
/// model's latents can show).
fn print_summary(clips: &Aggregate, truth: &Aggregate, autoencoded: Option<&Aggregate>) {
    let third = if autoencoded.is_some() {
        "   autoencoded"
    } else {
        ""
    };
    println!(
        "{} clips                    scored   ground truth{third}   target",
        clips.clips
    );
    let measures: [(&str, Measure, &str); 10] = [
        ("colour agreement", |a| a.scores.color, ">= 0.90"),
        ("shape agreement", |a| a.scores.shape, ">= 0.80"),
        ("motion direction", |a| a.scores.motion, ">= 0.80"),
        ("count", |a| a.scores.count, ""),
        ("physics", |a| a.scores.physics, ""),
        ("consistency", |a| a.scores.consistency, ""),
        ("backdrop agreement", |a| a.scores.backdrop, ""),
        ("clips without faults", |a| a.fault_free, ">= 0.95"),
        ("clips as asked", |a| a.as_asked, ">= 0.90"),
        (
            "physics residual",
            |a| a.physics_residual,
            "<= 2x ground truth",
        ),
    ];
    for (name, measure, target) in measures {
        let third = autoencoded
            .map(|a| format!("{:>14.4}", measure(a)))
            .unwrap_or_default();
        println!(
            "{name:<26}{:>7.4}{:>15.4}{third}   {target}",
            measure(clips),
            measure(truth),
        );
    }
    let ratio = clips.physics_residual / truth.physics_residual.max(1e-9);
    println!("physics residual: {ratio:.2}x ground truth's");
}

/// Prints, for each shape asked for, the two shapes each column's clips showed its objects as
/// most often, in shares of the objects asked for: where shape agreement is lost.
fn print_shapes_seen(columns: &[(&str, &[Report])]) {
    let tallies: Vec<Vec<ShapesSeen>> = columns
        .iter()
        .map(|(_, reports)| shapes_seen(reports))
        .collect();
    let mut heading = "shape asked   objects".to_string();
    for (name, _) in columns {
        heading += &format!("   {:<28}", format!("{name} as"));
    }
    println!("{}", heading.trim_end());
    for asked in &tallies[0] {
        let mut line = format!("{:<12}{:>9}", shape_english(asked.asked)[0], asked.objects);
        for column in &tallies {
            let seen = column.iter().find(|tally| tally.asked == asked.asked);
            line += &format!("   {:<28}", seen.map(most_seen).unwrap_or_default());
        }
        println!("{}", line.trim_end());
    }
}

/// The two shapes `tally`'s objects were seen as most often, with their shares.
fn most_seen(tally: &ShapesSeen) -> String {
    let mut seen: Vec<(Shape, usize)> = Shape::ALL
        .iter()
        .copied()
        .zip(tally.seen)
        .filter(|(_, count)| *count > 0)
        .collect();
    seen.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    let share = |count: usize| count as f64 / tally.objects.max(1) as f64;
    seen.iter()
        .take(2)
        .map(|(shape, count)| format!("{} {:.2}", shape_english(*shape)[0], share(*count)))
        .collect::<Vec<_>>()
        .join(", ")
}
