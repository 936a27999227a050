//! `himmel train`: the stages of himmel-mini's recipe, one command each.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::{Args, Subcommand};
use himmel_pipeline::MiniPipeline;
use himmel_pipeline::layout::{read_json, weight_files};
use himmel_pipeline::mini::{is_mini_dir, join_experts};
use himmel_pipeline::preview::{LatentPreview, PREVIEW_FILE};
use himmel_pipeline::wan::load_vae;
use himmel_train::autoencoder::{AutoencoderStage, TrainedAutoencoder, read_trained};
use himmel_train::config::{
    AutoencoderRecipe, DenoiserRecipe, LoopConfig, OptimizerConfig, read_recipe,
};
use himmel_train::denoiser::{DenoiserStage, read_model};
use himmel_train::log::LogRow;
use himmel_train::trainer::{RunOptions, Stage, run};

use crate::device::DeviceChoice;

/// Arguments of `himmel train`.
#[derive(Args)]
pub struct TrainArgs {
    #[command(subcommand)]
    stage: TrainStage,
}

#[derive(Subcommand)]
enum TrainStage {
    /// Train the video autoencoder on crops of world clips.
    Autoencoder {
        /// Start from this autoencoder run's export (or a himmel-mini model's autoencoder)
        /// instead of fresh weights (needed by recipes with `decoder_only`, which fine-tune
        /// its decoder and keep its encoder; recipes with `denoised_latents` need a model,
        /// whose predictions the decoder learns from).
        #[arg(long)]
        from: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// Fit a model's preview projection (latent channels to RGB, for live previews) on world
    /// clips and store it as MODEL/preview.json.
    Preview {
        /// A himmel-mini folder or a Wan diffusers folder.
        #[arg(long)]
        model: PathBuf,
        /// World clips to fit on.
        #[arg(long, default_value_t = 32)]
        clips: u64,
    },
    /// Give a model a high-noise expert, as Wan 2.2 does: a new model folder in which the
    /// expert (in `high_noise/`) takes the steps from noise level `--boundary` up.
    Experts {
        /// The model that takes the steps below the boundary (a himmel-mini folder).
        #[arg(long)]
        model: PathBuf,
        /// The expert: a himmel-mini folder over the same autoencoder and latent statistics.
        #[arg(long)]
        high_noise: PathBuf,
        /// The noise level (0 to 1) from which the expert denoises.
        #[arg(long)]
        boundary: f64,
        /// The new model's folder; must not exist yet.
        #[arg(long)]
        out: PathBuf,
    },
    /// Train the denoiser and text encoder on a trained autoencoder's latents.
    Denoiser {
        /// Folder of an autoencoder run (its `autoencoder.json` and `autoencoder.safetensors`).
        /// With `--from`: a newer decoder for the model's encoder, carried into the export (with
        /// `--new-encoder`: a newer autoencoder whole).
        #[arg(long, required_unless_present = "from")]
        autoencoder: Option<PathBuf>,
        /// Start from this himmel-mini model (a denoiser run's `model/` folder, a shipped
        /// model): its autoencoder, vocabulary, latent statistics and weights.
        #[arg(long)]
        from: Option<PathBuf>,
        /// With `--from` and `--autoencoder`: that autoencoder's encoder is not the model's (a
        /// later export of its run, say). It replaces the model's whole autoencoder, its latent
        /// statistics are measured again, and the model's denoiser and text encoder learn its
        /// latents from where they are, on the recipe's schedule from its start. The patch
        /// layers are carried onto the new latents through the orthogonal map between the two
        /// autoencoders' tokens that fits best on the statistics clips (how much it keeps is
        /// printed); latents of another grid or channel count (a finer autoencoder) need
        /// patches that span the pixels the model's span.
        #[arg(long, requires_all = ["from", "autoencoder"], conflicts_with = "continue_schedule")]
        new_encoder: bool,
        /// With `--from`: the recipe's denoiser has more blocks than the model's (otherwise its
        /// architecture). The model's blocks keep their weights and the new ones follow them,
        /// starting as the identity, on the recipe's schedule from its start.
        #[arg(long, requires = "from", conflicts_with_all = ["autoencoder", "continue_schedule"])]
        deepen: bool,
        /// With `--from`: the recipe's denoiser cuts latents into smaller patches than the
        /// model's (each side dividing the model's; otherwise its architecture), so more tokens
        /// carry finer detail. The model's weights carry over, each small patch starting as the
        /// model's patch stretched over it, on the recipe's schedule from its start.
        #[arg(long, requires = "from", conflicts_with_all = ["autoencoder", "continue_schedule", "deepen"])]
        finer_patches: bool,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args)]
struct Common {
    /// The recipe (TOML), e.g. `configs/mini-autoencoder.toml`.
    #[arg(long)]
    config: PathBuf,
    /// The run's folder: checkpoints, `loss.csv`, `loss.png` and the exported weights.
    #[arg(long)]
    out: PathBuf,
    /// Continue from the newest checkpoint in the run's folder.
    #[arg(long)]
    resume: bool,
    /// With `--from`: the weights are this recipe's own run, exported at the step their file
    /// records; go on from that step (fresh optimizer moments, warmed up again) instead of
    /// starting the schedule anew. How a run is carried where its checkpoints are not kept.
    #[arg(long = "continue", requires = "from")]
    continue_schedule: bool,
    /// Stop after this many steps in all (the schedule still spans the recipe's steps).
    #[arg(long)]
    until: Option<u64>,
    /// Print a line every this many steps.
    #[arg(long, default_value_t = 10)]
    print_every: u64,
}

/// Runs the chosen stage.
pub fn run_command(args: &TrainArgs, device: DeviceChoice, quiet: bool) -> Result<()> {
    let device = device.open()?;
    match &args.stage {
        TrainStage::Preview { model, clips } => fit_preview(model, *clips, &device),
        TrainStage::Experts {
            model,
            high_noise,
            boundary,
            out,
        } => {
            join_experts(model, high_noise, *boundary, out)?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
        TrainStage::Autoencoder { from, common } => {
            let recipe: AutoencoderRecipe = read_recipe(&common.config)?;
            let mut start_step = 0;
            let stage = match from {
                Some(dir) if recipe.denoised_latents > 0.0 => {
                    let model = read_model(dir).with_context(|| {
                        format!(
                            "reading the himmel-mini model in {} (denoised_latents needs one)",
                            dir.display()
                        )
                    })?;
                    start_step = continued_step(common, dir, model.autoencoder_step)?;
                    AutoencoderStage::fine_tune_on_predictions(&recipe, model, &device)?
                }
                Some(dir) => {
                    let start = read_autoencoder(dir)?;
                    start_step = continued_step(common, dir, start.step)?;
                    AutoencoderStage::fine_tune(&recipe, start, &device)?
                }
                None => AutoencoderStage::new(&recipe, &device)?,
            };
            let options = options(common, &recipe.run, &recipe.optimizer, start_step);
            train(&stage, common, options, quiet)
        }
        TrainStage::Denoiser {
            autoencoder,
            from,
            new_encoder,
            deepen,
            finer_patches,
            common,
        } => {
            let recipe: DenoiserRecipe = read_recipe(&common.config)?;
            let autoencoder = autoencoder.as_deref().map(read_autoencoder).transpose()?;
            let mut start_step = 0;
            let read_start = |dir: &Path| {
                read_model(dir).with_context(|| {
                    format!("reading the model to start from in {}", dir.display())
                })
            };
            let stage = match (from, autoencoder) {
                (Some(dir), Some(trained)) if *new_encoder => {
                    if !quiet {
                        eprintln!(
                            "measuring latents of {} clips on the new encoder ...",
                            recipe.statistics_clips
                        );
                    }
                    let stage =
                        DenoiserStage::warm_start(&recipe, trained, read_start(dir)?, &device)?;
                    if !quiet && let Some(fit) = stage.token_fit() {
                        eprintln!(
                            "patch layers carried onto the new latents: the map keeps {:.1}% of \
                             the model's tokens",
                            100.0 * fit
                        );
                    }
                    stage
                }
                (Some(dir), None) if *finer_patches => {
                    DenoiserStage::refined(&recipe, read_start(dir)?, &device)?
                }
                (Some(dir), None) if *deepen => {
                    DenoiserStage::deepened(&recipe, read_start(dir)?, &device)?
                }
                (Some(dir), decoder) => {
                    let model = read_start(dir)?;
                    start_step = continued_step(common, dir, model.step)?;
                    DenoiserStage::from_model(&recipe, model, decoder, &device)?
                }
                (None, Some(trained)) => {
                    if !quiet {
                        eprintln!(
                            "measuring latents of {} clips and the vocabulary of {} ...",
                            recipe.statistics_clips, recipe.vocabulary_clips
                        );
                    }
                    DenoiserStage::new(&recipe, trained, &device)?
                }
                (None, None) => anyhow::bail!("give --autoencoder or --from"),
            };
            let options = options(common, &recipe.run, &recipe.optimizer, start_step);
            train(&stage, common, options, quiet)
        }
    }
}

/// Fits and stores the preview projection of the model in `dir`.
fn fit_preview(dir: &Path, clips: u64, device: &Device) -> Result<()> {
    let preview = if is_mini_dir(dir) {
        let pipeline = MiniPipeline::load(dir, device)?;
        LatentPreview::fit(&pipeline.model().autoencoder, clips, device)?
    } else {
        let vae_dir = dir.join("vae");
        let config = read_json(&vae_dir.join("config.json"))?;
        let vae = load_vae(&weight_files(&vae_dir)?, config, device)?;
        LatentPreview::fit(&vae, clips, device)?
    };
    preview.save(dir)?;
    eprintln!("wrote {}", dir.join(PREVIEW_FILE).display());
    Ok(())
}

/// Reads the trained autoencoder in `dir`, naming the folder if that fails.
fn read_autoencoder(dir: &Path) -> Result<TrainedAutoencoder> {
    read_trained(dir)
        .with_context(|| format!("reading the trained autoencoder in {}", dir.display()))
}

/// The step a run begins at: with `--continue`, the one the export in `dir` records.
fn continued_step(common: &Common, dir: &Path, recorded: Option<u64>) -> Result<u64> {
    if !common.continue_schedule {
        return Ok(0);
    }
    recorded.with_context(|| {
        format!(
            "{} records no training step to continue from; start its schedule anew without --continue",
            dir.display()
        )
    })
}

fn options(
    common: &Common,
    run: &LoopConfig,
    optimizer: &OptimizerConfig,
    start_step: u64,
) -> RunOptions {
    RunOptions {
        dir: common.out.clone(),
        total_steps: run.steps,
        stop_after: common.until,
        checkpoint_every: run.checkpoint_every,
        resume: common.resume,
        start_step,
        optimizer: optimizer.clone(),
    }
}

fn train(stage: &dyn Stage, common: &Common, options: RunOptions, quiet: bool) -> Result<()> {
    std::fs::create_dir_all(&common.out)
        .with_context(|| format!("creating {}", common.out.display()))?;
    let recipe_copy = common.out.join("recipe.toml");
    std::fs::copy(&common.config, &recipe_copy)
        .with_context(|| format!("copying the recipe to {}", recipe_copy.display()))?;
    let total_steps = options.total_steps;
    let started = Instant::now();
    let mut smoothed: Option<f64> = None;
    let print_every = common.print_every.max(1);
    let summary = run(stage, &options, &mut |row: &LogRow| {
        let average = smoothed.map_or(row.loss, |s| 0.9 * s + 0.1 * row.loss);
        smoothed = Some(average);
        if !quiet && row.step.is_multiple_of(print_every) {
            let elapsed = started.elapsed().as_secs_f64();
            eprintln!(
                "{} step {}/{}  loss {:.5} (avg {:.5})  lr {:.2e}  |grad| {:.3}  {:.2} s/step  {:.0} s",
                stage.name(),
                row.step,
                total_steps,
                row.loss,
                average,
                row.learning_rate,
                row.gradient_norm,
                row.seconds,
                elapsed
            );
        }
    })?;
    if !quiet {
        eprintln!(
            "{}: steps {}..{} done; last checkpoint {}",
            stage.name(),
            summary.first_step,
            summary.last_step,
            summary
                .checkpoint
                .as_ref()
                .map_or("none".into(), |path| path.display().to_string())
        );
    }
    Ok(())
}
