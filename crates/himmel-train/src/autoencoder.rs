//! The autoencoder stage: Wan's causal VAE with a small config learns to reconstruct crops of
//! world clips (L1 loss plus a weighted KL term). Its convolutions see crops exactly as they
//! would see whole clips, so training on crops is cheap and transfers to full frames.
//!
//! It can also start from a trained autoencoder and fine-tune it, or only its decoder: the
//! encoder, and so the latents a denoiser learnt, stay as they were. A patch discriminator
//! may judge the decoder as well ([`crate::adversary`]).
//!
//! Exports `autoencoder.json` (the config) and `autoencoder.safetensors` (averaged weights, with
//! the step they were taken at in the metadata).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use himmel_models::wan::{WanVae, WanVaeConfig};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::adversary::{self, Discriminator, hinge_losses};
use crate::checkpoint::{read_safetensors, write_safetensors};
use crate::config::clip_source;
use crate::config::{AutoencoderRecipe, Crop};
use crate::data::{ClipBatch, ClipSource};
use crate::denoiser::{MODEL_CONFIG, TrainedModel, read_model};
use crate::error::TrainError;
use crate::frozen::FrozenAndTrained;
use crate::init::initialize;
use crate::predicted::LatentPredictor;
use crate::random::{Purpose, gaussian, step_rng};
use crate::trainer::Stage;
use crate::widen::{Doubled, widen};

/// File name of the exported weights.
pub const WEIGHTS: &str = "autoencoder.safetensors";
/// File name of the exported config.
pub const CONFIG: &str = "autoencoder.json";
/// Metadata key of an export's training step (in autoencoder and model exports alike).
pub const STEP_METADATA: &str = "autoencoder_step";

/// Training state of the autoencoder stage.
pub struct AutoencoderStage {
    recipe: AutoencoderRecipe,
    config: WanVaeConfig,
    autoencoder: WanVae,
    /// Weights kept fixed (the encoder side when only the decoder trains).
    frozen: HashMap<String, Tensor>,
    /// The decoder's judge, with [`AutoencoderRecipe::adversarial_weight`].
    discriminator: Option<Discriminator>,
    vars: Vec<(String, Var)>,
    clips: ClipSource,
    /// The model whose predicted latents the decoder learns from, with
    /// [`AutoencoderRecipe::denoised_latents`].
    predictor: Option<LatentPredictor>,
    device: Device,
}

/// A step's crops and the whole clips they were cut from.
struct Crops {
    /// The whole clips.
    clips: ClipBatch,
    /// The crops, `[B, 3, frames, height, width]`.
    video: Tensor,
    /// Weight of each pixel in the loss, `[B, 1, frames, height, width]` (`None`: all alike).
    weights: Option<Tensor>,
    /// Each crop's clip, first frame, top row and left column.
    places: Vec<Place>,
    /// Single frames cut from the clips, `[S, 3, 1, height, width]`, and their pixels' weights
    /// ([`AutoencoderRecipe::stills`]; `None` without).
    stills: Option<(Tensor, Option<Tensor>)>,
}

/// The variables of `varmap`, sorted by name.
pub fn sorted_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap
        .data()
        .lock()
        .expect("no thread panicked holding the var map");
    let mut vars: Vec<(String, Var)> = data
        .iter()
        .map(|(name, var)| (name.clone(), var.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

fn setting(name: &'static str, value: impl ToString, reason: &str) -> TrainError {
    TrainError::Setting {
        name,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Whether `fewer` is `start` with some of its stages no longer halving time and nothing
/// else changed: an autoencoder that compresses time less, learning from `start`'s weights.
fn halves_time_less(start: &WanVaeConfig, fewer: &WanVaeConfig) -> bool {
    let flags = (&start.temperal_downsample, &fewer.temperal_downsample);
    let switched_off = flags.0.len() == flags.1.len()
        && flags.0.iter().zip(flags.1).all(|(&was, &is)| was || !is)
        && flags.0 != flags.1;
    let rest = WanVaeConfig {
        temperal_downsample: start.temperal_downsample.clone(),
        ..fewer.unnormalised()
    };
    switched_off && rest == start.unnormalised()
}

/// The weight of each of a crop's `frames`: frame `1 + i` takes `weights[i % weights.len()]`,
/// the first frame the last weight ([`AutoencoderRecipe::frame_weights`]).
fn by_place_in_group(weights: &[f64], frames: usize) -> Vec<f32> {
    let last = weights[weights.len() - 1];
    std::iter::once(last)
        .chain((1..frames).map(|frame| weights[(frame - 1) % weights.len()]))
        .map(|w| w as f32)
        .collect()
}

/// Checks that the crop fits the clips and the autoencoder's factors.
fn check(recipe: &AutoencoderRecipe) -> Result<(), TrainError> {
    let crop = recipe.crop;
    let video = recipe.video;
    let space = recipe.autoencoder.spatial_factor();
    let time = recipe.autoencoder.temporal_factor();
    let within = format!("must be a multiple of {space} within the clip");
    if !crop.width.is_multiple_of(space) || crop.width == 0 || crop.width > video.width {
        return Err(setting("crop.width", crop.width, &within));
    }
    if !crop.height.is_multiple_of(space) || crop.height == 0 || crop.height > video.height {
        return Err(setting("crop.height", crop.height, &within));
    }
    if crop.frames % time != 1 || crop.frames > video.frames {
        return Err(setting(
            "crop.frames",
            crop.frames,
            &format!("must be 1 + {time}k and within the clip"),
        ));
    }
    let loss_weights = [
        ("object_weight", recipe.object_weight),
        ("gradient_weight", recipe.gradient_weight),
        ("time_gradient_weight", recipe.time_gradient_weight),
        ("latent_noise", recipe.latent_noise),
        ("adversarial_weight", recipe.adversarial_weight),
    ];
    for (name, weight) in loss_weights {
        if weight.is_nan() || weight < 0.0 {
            return Err(setting(name, weight, "must be 0 or more"));
        }
    }
    if recipe.adversarial_weight > 0.0 && crop.frames < 2 {
        return Err(setting(
            "crop.frames",
            crop.frames,
            "must be at least 2 with adversarial_weight: the discriminator judges pairs of frames",
        ));
    }
    if recipe.run.batch_size == 0 {
        return Err(setting("loop.batch_size", 0, "must be at least 1"));
    }
    let frame_weights = &recipe.frame_weights;
    let positive = frame_weights.iter().all(|w| w.is_finite() && *w > 0.0);
    if !frame_weights.is_empty() && (frame_weights.len() != time || !positive) {
        return Err(setting(
            "frame_weights",
            format!("{frame_weights:?}"),
            &format!("must be {time} positive numbers, one per frame a latent frame stands for"),
        ));
    }
    let object_crops = recipe.object_crops;
    if !(0.0..=1.0).contains(&object_crops) {
        return Err(setting("object_crops", object_crops, "must be from 0 to 1"));
    }
    if object_crops > 0.0 && recipe.folder.is_some() {
        return Err(setting(
            "object_crops",
            object_crops,
            "must be 0 with a folder: only world clips know where their objects are",
        ));
    }
    let denoised = recipe.denoised_latents;
    if !(0.0..=1.0).contains(&denoised) {
        return Err(setting("denoised_latents", denoised, "must be from 0 to 1"));
    }
    if denoised > 0.0 && !recipe.decoder_only {
        return Err(setting(
            "denoised_latents",
            denoised,
            "needs decoder_only: the latents are the model's encoder's",
        ));
    }
    if denoised > 0.0 && recipe.stills > 0 {
        return Err(setting(
            "stills",
            recipe.stills,
            "must be 0 with denoised_latents: the model predicts whole clips",
        ));
    }
    if denoised > 0.0 && crop.frames != video.frames {
        return Err(setting(
            "crop.frames",
            crop.frames,
            "must be the clips' frames with denoised_latents: the model predicts whole clips",
        ));
    }
    Ok(())
}

/// The error of a recipe with `denoised_latents` given no model to predict them.
fn needs_model(recipe: &AutoencoderRecipe) -> TrainError {
    setting(
        "denoised_latents",
        recipe.denoised_latents,
        "needs a himmel-mini model to start from (`--from` its folder)",
    )
}

/// Log-variance the posterior starts with: its noise (std 0.02) leaves the latents readable from
/// the first step; left at 0 the decoder would first wait thousands of steps for the encoder
/// to shrink it.
const INITIAL_LOG_VAR: f64 = -8.0;

/// Sets the bias of the log-variance half of `quant_conv` to [`INITIAL_LOG_VAR`].
fn start_nearly_deterministic(vars: &[(String, Var)], z_dim: usize) -> Result<(), TrainError> {
    let Some((_, bias)) = vars.iter().find(|(name, _)| name == "quant_conv.bias") else {
        return Ok(());
    };
    let values: Vec<f32> = (0..2 * z_dim)
        .map(|i| {
            if i < z_dim {
                0.0
            } else {
                INITIAL_LOG_VAR as f32
            }
        })
        .collect();
    bias.set(&Tensor::from_vec(values, 2 * z_dim, bias.device())?)?;
    Ok(())
}

impl AutoencoderStage {
    /// Builds the stage with freshly initialised weights on `device`.
    pub fn new(recipe: &AutoencoderRecipe, device: &Device) -> Result<Self, TrainError> {
        if recipe.denoised_latents > 0.0 {
            return Err(needs_model(recipe));
        }
        if recipe.decoder_only {
            return Err(setting(
                "decoder_only",
                true,
                "needs a trained autoencoder to start from (`--from`)",
            ));
        }
        Self::build(recipe, None, device)
    }

    /// Builds the stage on `start`'s weights: all of them train, or with
    /// [`AutoencoderRecipe::decoder_only`] only the decoder side. `start` must have the
    /// recipe's architecture, or an encoder or decoder half as wide as the recipe's, which is
    /// widened first and works as before (see [`widen`]).
    pub fn fine_tune(
        recipe: &AutoencoderRecipe,
        start: TrainedAutoencoder,
        device: &Device,
    ) -> Result<Self, TrainError> {
        if recipe.denoised_latents > 0.0 {
            return Err(needs_model(recipe));
        }
        Self::build(recipe, Some(start), device)
    }

    /// Builds the stage on `model`'s autoencoder, its decoder learning from the latents
    /// `model` predicts ([`AutoencoderRecipe::denoised_latents`]; without it, as
    /// [`AutoencoderStage::fine_tune`]).
    pub fn fine_tune_on_predictions(
        recipe: &AutoencoderRecipe,
        model: TrainedModel,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let mut stage = Self::build(recipe, Some(model.clone().autoencoder()), device)?;
        if recipe.denoised_latents > 0.0 {
            stage.predictor = Some(LatentPredictor::new(
                model,
                recipe.denoised_latents,
                device,
            )?);
        }
        Ok(stage)
    }

    fn build(
        recipe: &AutoencoderRecipe,
        start: Option<TrainedAutoencoder>,
        device: &Device,
    ) -> Result<Self, TrainError> {
        check(recipe)?;
        let mut config = recipe.autoencoder.clone();
        config.latents_mean = vec![0.0; config.z_dim];
        config.latents_std = vec![1.0; config.z_dim];
        let mut weights = HashMap::new();
        if let Some(start) = start {
            weights = if start.config == config || halves_time_less(&start.config, &config) {
                // Stages that no longer halve time leave their time convolutions unread.
                start.weights
            } else if let Some(doubled) = Doubled::between(&start.config, &config) {
                widen(&start.weights, doubled, recipe.run.seed)?
            } else {
                return Err(setting(
                    "autoencoder",
                    "the recipe's",
                    "differs from the architecture of the autoencoder to start from \
                     (only base_dim or decoder_base_dim may differ, each twice the start's, \
                     or temperal_downsample switch stages off)",
                ));
            };
        }
        let fixed = |name: &str| recipe.decoder_only && TrainedAutoencoder::is_encoder_weight(name);
        let frozen: HashMap<String, Tensor> = weights
            .iter()
            .filter(|(name, _)| fixed(name))
            .map(|(name, tensor)| (name.clone(), tensor.clone()))
            .collect();
        let trained = VarMap::new();
        let backend = FrozenAndTrained {
            frozen: frozen.clone(),
            trained: trained.clone(),
        };
        let builder = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
        let autoencoder = WanVae::new(&config, builder.clone())?;
        let discriminator = (recipe.adversarial_weight > 0.0)
            .then(|| Discriminator::new(builder.pp(adversary::PREFIX)))
            .transpose()?;
        let vars = sorted_vars(&trained);
        let (judge, vars_to_load): (Vec<_>, Vec<_>) = vars
            .iter()
            .cloned()
            .partition(|(name, _)| name.starts_with(adversary::PREFIX));
        // The judge always starts afresh; a resumed run restores it from its checkpoint.
        initialize(&judge, recipe.run.seed)?;
        if weights.is_empty() {
            initialize(&vars_to_load, recipe.run.seed)?;
            start_nearly_deterministic(&vars_to_load, config.z_dim)?;
        } else {
            for (name, var) in &vars_to_load {
                let Some(weight) = weights.get(name) else {
                    return Err(setting(
                        "autoencoder",
                        name,
                        "is missing from the autoencoder to start from",
                    ));
                };
                var.set(&weight.to_dtype(DType::F32)?.to_device(device)?)?;
            }
        }
        Ok(Self {
            recipe: recipe.clone(),
            config,
            autoencoder,
            frozen,
            discriminator,
            vars,
            clips: clip_source(recipe.folder.as_deref(), recipe.video, recipe.run.seed)?,
            predictor: None,
            device: device.clone(),
        })
    }

    /// The step's clips and their crops. With a predictor, crops lie on the latent grid.
    fn crops(&self, step: u64) -> Result<Crops, TrainError> {
        let batch = self.recipe.run.batch_size as u64;
        let first = step * batch;
        let clips = self.clips.batch(first..first + batch, &self.device)?;
        let (weight, object_crops) = (self.recipe.object_weight, self.recipe.object_crops);
        let masks = if weight > 0.0 || object_crops > 0.0 {
            self.clips.object_masks(&clips)?
        } else {
            None
        };
        let weights = (masks.as_ref())
            .filter(|_| weight > 0.0)
            .map(|masks| masks.affine(weight, 1.0))
            .transpose()?;
        let mut rng = step_rng(self.recipe.run.seed, Purpose::Choices, step);
        let (crop, video) = (self.recipe.crop, self.recipe.video);
        // Positions in steps of `grid` pixels.
        let grid = if self.predictor.is_some() {
            self.config.spatial_factor()
        } else {
            1
        };
        let position = |rng: &mut ChaCha8Rng, room: usize| rng.random_range(0..=room / grid) * grid;
        let (rows, columns) = (video.height - crop.height, video.width - crop.width);
        // The top row and left column of a crop of clip `clip` over frames `start..start +
        // frames`: holding an object for a share `object_crops` of crops, else at random.
        let corner = |rng: &mut ChaCha8Rng, clip: usize, start: usize, frames: usize| {
            if let Some(masks) = &masks
                && object_crops > 0.0
                && rng.random_bool(object_crops)
                && let Some((y, x)) = object_pixel(masks, clip, start, frames, rng)?
            {
                let top = corner_holding(rng, y, crop.height, rows, grid);
                let left = corner_holding(rng, x, crop.width, columns, grid);
                return candle_core::Result::Ok((top, left));
            }
            Ok((position(rng, rows), position(rng, columns)))
        };
        let places: Vec<Place> = (0..batch as usize)
            .map(|clip| {
                let start = position(&mut rng, video.frames - crop.frames);
                let (top, left) = corner(&mut rng, clip, start, crop.frames)?;
                Ok((clip, start, top, left))
            })
            .collect::<candle_core::Result<_>>()?;
        let still_places: Vec<Place> = (0..self.recipe.stills)
            .map(|i| {
                let frame = rng.random_range(0..video.frames);
                let clip = i % places.len();
                let (top, left) = corner(&mut rng, clip, frame, 1)?;
                Ok((clip, frame, top, left))
            })
            .collect::<candle_core::Result<_>>()?;
        // The crops and the stills, each with its pixels' weights where the recipe weighs them.
        let cut = |places: &[Place], frames: usize| {
            let video = cut_all(&clips.video, places, frames, crop)?;
            let weights = (weights.as_ref())
                .map(|weights| cut_all(weights, places, frames, crop))
                .transpose()?;
            candle_core::Result::Ok((video, weights))
        };
        let (crops, mut crop_weights) = cut(&places, crop.frames)?;
        if !self.recipe.frame_weights.is_empty() {
            let by_frame = by_place_in_group(&self.recipe.frame_weights, crop.frames);
            let by_frame = Tensor::from_vec(by_frame, (1, 1, crop.frames, 1, 1), &self.device)?;
            crop_weights = Some(match crop_weights {
                Some(weights) => weights.broadcast_mul(&by_frame)?,
                None => by_frame
                    .broadcast_as((batch as usize, 1, crop.frames, crop.height, crop.width))?
                    .contiguous()?,
            });
        }
        let stills = (!still_places.is_empty())
            .then(|| cut(&still_places, 1))
            .transpose()?;
        Ok(Crops {
            video: crops,
            clips,
            weights: crop_weights,
            places,
            stills,
        })
    }

    /// `fit` plus, with a discriminator, its hinge loss and (from
    /// [`AutoencoderRecipe::adversarial_start`] on) the decoder's, weighted.
    fn with_adversary(
        &self,
        fit: Tensor,
        reconstruction: &Tensor,
        crops: &Crops,
        step: u64,
    ) -> Result<Tensor, TrainError> {
        let Some(discriminator) = &self.discriminator else {
            return Ok(fit);
        };
        let (judge, decoder) = hinge_losses(
            discriminator,
            reconstruction,
            &crops.video,
            crops.weights.as_ref(),
        )?;
        let weight = if step >= self.recipe.adversarial_start {
            self.recipe.adversarial_weight
        } else {
            0.0
        };
        Ok(((fit + judge)? + (decoder * weight)?)?)
    }

    /// The recipe's reconstruction loss of `reconstruction` against `video`.
    fn fit(
        &self,
        reconstruction: &Tensor,
        video: &Tensor,
        weights: Option<&Tensor>,
    ) -> Result<Tensor, TrainError> {
        let gradient_weights = self.recipe.gradient_weights();
        Ok(reconstruction_loss(
            reconstruction,
            video,
            weights,
            gradient_weights,
        )?)
    }

    /// `video` through the autoencoder, its latents drawn from the posterior (and noised, with
    /// [`AutoencoderRecipe::latent_noise`]): the reconstruction loss, the reconstruction and the
    /// latents' KL term.
    fn autoencode(
        &self,
        video: &Tensor,
        weights: Option<&Tensor>,
        rng: &mut ChaCha8Rng,
    ) -> Result<(Tensor, Tensor, Tensor), TrainError> {
        let (mean, log_var) = self.autoencoder.encode_moments(video)?;
        let log_var = log_var.clamp(-30f32, 20f32)?;
        let noise = gaussian(mean.shape(), rng, &self.device)?;
        let mut latents = (&mean + ((&log_var * 0.5)?.exp()? * noise)?)?;
        if self.recipe.latent_noise > 0.0 {
            latents = (&latents + latent_noise(&mean, self.recipe.latent_noise, rng)?)?;
        }
        let reconstruction = self.autoencoder.decode_unclamped(&latents)?;
        let fit = self.fit(&reconstruction, video, weights)?;
        let kl = (((mean.sqr()? + log_var.exp()?)? - 1.0)? - &log_var)?
            .sum(1)?
            .mean_all()?
            .affine(0.5, 0.0)?;
        Ok((fit, reconstruction, kl))
    }

    /// The latents the predictor draws for the step's clips, cut to their crops.
    fn predicted_latents(
        &self,
        predictor: &LatentPredictor,
        crops: &Crops,
        step: u64,
    ) -> Result<Tensor, TrainError> {
        let prompts: Vec<&str> = crops
            .clips
            .captions
            .iter()
            .map(|captions| captions.detailed.as_str())
            .collect();
        let mut rng = step_rng(self.recipe.run.seed, Purpose::Noise, step);
        let latents = predictor.predict(&crops.clips.video, &prompts, &mut rng)?;
        let (crop, space) = (self.recipe.crop, self.config.spatial_factor());
        let cuts = crops
            .places
            .iter()
            .map(|&(clip, _, top, left)| {
                latents
                    .get(clip)?
                    .narrow(2, top / space, crop.height / space)?
                    .narrow(3, left / space, crop.width / space)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::stack(&cuts, 0)?)
    }
}

/// Where a cut lies: its clip in the batch, first frame, top row and left column.
type Place = (usize, usize, usize, usize);

/// A random pixel `(row, column)` on or next to an object in frames `start..start + frames` of
/// clip `clip` of `masks` `[B, 1, F, H, W]`; `None` where those frames show no object.
fn object_pixel(
    masks: &Tensor,
    clip: usize,
    start: usize,
    frames: usize,
    rng: &mut ChaCha8Rng,
) -> candle_core::Result<Option<(usize, usize)>> {
    // [1, F, H, W] -> [H, W]: on an object in any of the frames.
    let seen = masks
        .get(clip)?
        .narrow(1, start, frames)?
        .max(1)?
        .squeeze(0)?;
    let width = seen.dim(1)?;
    let on: Vec<usize> = (seen.flatten_all()?.to_vec1::<f32>()?.iter().enumerate())
        .filter(|(_, value)| **value > 0.0)
        .map(|(index, _)| index)
        .collect();
    if on.is_empty() {
        return Ok(None);
    }
    let index = on[rng.random_range(0..on.len())];
    Ok(Some((index / width, index % width)))
}

/// A random start, in steps of `grid` from 0 to `room`, of a span of `size` pixels that holds
/// pixel `at` (`at` lies within `room + size`, and `size` is at least `grid`).
fn corner_holding(rng: &mut ChaCha8Rng, at: usize, size: usize, room: usize, grid: usize) -> usize {
    let lowest = (at + 1).saturating_sub(size).div_ceil(grid);
    let highest = at.min(room) / grid;
    rng.random_range(lowest..=highest.max(lowest)) * grid
}

/// The cuts of `tensor` (`[B, C, F, H, W]`) at `places`, each `frames` long and the crop's
/// size, stacked.
fn cut_all(
    tensor: &Tensor,
    places: &[Place],
    frames: usize,
    crop: Crop,
) -> candle_core::Result<Tensor> {
    let cuts = places
        .iter()
        .map(|&(clip, start, top, left)| {
            tensor
                .get(clip)?
                .narrow(1, start, frames)?
                .narrow(2, top, crop.height)?
                .narrow(3, left, crop.width)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::stack(&cuts, 0)
}

impl Stage for AutoencoderStage {
    fn name(&self) -> &'static str {
        "autoencoder"
    }

    fn variables(&self) -> &[(String, Var)] {
        &self.vars
    }

    fn loss(&self, step: u64) -> Result<Tensor, TrainError> {
        let crops = self.crops(step)?;
        let (video, weights) = (&crops.video, crops.weights.as_ref());
        if let Some(predictor) = &self.predictor {
            let latents = self.predicted_latents(predictor, &crops, step)?;
            let reconstruction = self.autoencoder.decode_unclamped(&latents)?;
            let fit = self.fit(&reconstruction, video, weights)?;
            return self.with_adversary(fit, &reconstruction, &crops, step);
        }
        let mut rng = step_rng(self.recipe.run.seed, Purpose::Noise, step);
        let (fit, reconstruction, mut kl) = self.autoencode(video, weights, &mut rng)?;
        let mut fit = self.with_adversary(fit, &reconstruction, &crops, step)?;
        if let Some((stills, weights)) = &crops.stills {
            let (still_fit, _, still_kl) = self.autoencode(stills, weights.as_ref(), &mut rng)?;
            fit = (fit + still_fit)?;
            kl = (kl + still_kl)?;
        }
        if self.recipe.decoder_only {
            // The encoder is fixed: its KL term is a constant.
            return Ok(fit);
        }
        Ok((fit + (kl * self.recipe.kl_weight)?)?)
    }

    fn export(
        &self,
        averages: &[(String, Tensor)],
        step: u64,
        dir: &Path,
    ) -> Result<(), TrainError> {
        let tensors: HashMap<String, Tensor> = self
            .frozen
            .iter()
            .map(|(name, tensor)| (name.clone(), tensor.clone()))
            .chain(
                averages
                    .iter()
                    .filter(|(name, _)| !name.starts_with(adversary::PREFIX))
                    .cloned(),
            )
            .collect();
        let metadata = HashMap::from([(STEP_METADATA.to_string(), step.to_string())]);
        write_safetensors(&dir.join(WEIGHTS), &tensors, metadata)?;
        let json = serde_json::to_string_pretty(&self.config).expect("configs serialise");
        std::fs::write(dir.join(CONFIG), json).map_err(|source| TrainError::Io {
            path: dir.join(CONFIG),
            source,
        })
    }
}

/// Gaussian noise for latents like `mean` (`[B, C, T, H, W]`): each clip's at a level drawn
/// from 0 to `most`, times each channel's standard deviation over all of `mean` (taken as a
/// constant).
fn latent_noise(mean: &Tensor, most: f64, rng: &mut ChaCha8Rng) -> candle_core::Result<Tensor> {
    let (clips, channels, ..) = mean.dims5()?;
    let by_channel = mean.detach().transpose(0, 1)?.flatten_from(1)?;
    let centred = by_channel.broadcast_sub(&by_channel.mean_keepdim(1)?)?;
    let spread = centred.sqr()?.mean_keepdim(1)?.sqrt()?;
    let levels: Vec<f32> = (0..clips)
        .map(|_| rng.random_range(0.0..=most) as f32)
        .collect();
    let levels = Tensor::from_vec(levels, (clips, 1, 1, 1, 1), mean.device())?;
    let scale = levels.broadcast_mul(&spread.reshape((1, channels, 1, 1, 1))?)?;
    gaussian(mean.shape(), rng, mean.device())?.broadcast_mul(&scale)
}

/// The reconstruction loss of `reconstruction` against `video` (both `[B, 3, F, H, W]`): the
/// mean absolute error, weighted by `weights` (`[B, 1, F, H, W]`) where given, plus
/// `gradient_weights` (along time, height and width) times the same mean of the error's
/// differences between neighbouring pixels along each (the reconstruction's edges and changes
/// against the clip's; the weight of a pair is its first pixel's).
pub fn reconstruction_loss(
    reconstruction: &Tensor,
    video: &Tensor,
    weights: Option<&Tensor>,
    gradient_weights: [f64; 3],
) -> candle_core::Result<Tensor> {
    // The weighted mean: the loss keeps its scale whatever the objects cover.
    let mean_abs = |error: &Tensor, weights: Option<&Tensor>| match weights {
        Some(weights) => error
            .abs()?
            .broadcast_mul(weights)?
            .sum_all()?
            .broadcast_div(&(weights.sum_all()? * error.dim(1)? as f64)?),
        None => error.abs()?.mean_all(),
    };
    let error = (reconstruction - video)?;
    let mut loss = mean_abs(&error, weights)?;
    for (dim, gradient_weight) in (2..5).zip(gradient_weights) {
        let pairs = error.dim(dim)? - 1;
        if pairs == 0 || gradient_weight == 0.0 {
            continue;
        }
        let change = (error.narrow(dim, 1, pairs)? - error.narrow(dim, 0, pairs)?)?;
        let weights = weights.map(|w| w.narrow(dim, 0, pairs)).transpose()?;
        loss = (loss + (mean_abs(&change, weights.as_ref())? * gradient_weight)?)?;
    }
    Ok(loss)
}

/// A trained autoencoder read back from a stage's folder: its config and weights.
pub struct TrainedAutoencoder {
    /// The config (latent statistics still zero and one).
    pub config: WanVaeConfig,
    /// The weights in f32, named as [`WanVae`] names them.
    pub weights: HashMap<String, Tensor>,
    /// The step of its run it was exported at, where the export records one.
    pub step: Option<u64>,
}

impl TrainedAutoencoder {
    /// Whether `name` is a weight of the encoder side (what the latents depend on).
    pub fn is_encoder_weight(name: &str) -> bool {
        name.starts_with("encoder.") || name.starts_with("quant_conv.")
    }
}

/// Reads a trained autoencoder from `dir`: an autoencoder run's export, or the autoencoder of a
/// himmel-mini model folder (a denoiser run's `model/`, a shipped model).
pub fn read_trained(dir: &Path) -> Result<TrainedAutoencoder, TrainError> {
    let config_path = dir.join(CONFIG);
    if !config_path.exists() && dir.join(MODEL_CONFIG).exists() {
        return Ok(read_model(dir)?.autoencoder());
    }
    let text = std::fs::read_to_string(&config_path).map_err(|source| TrainError::Io {
        path: config_path.clone(),
        source,
    })?;
    let config = serde_json::from_str(&text).map_err(|error| TrainError::Checkpoint {
        path: config_path,
        message: error.to_string(),
    })?;
    let path = dir.join(WEIGHTS);
    let (weights, metadata) = read_safetensors(&path)?;
    Ok(TrainedAutoencoder {
        config,
        weights: in_f32(weights)?,
        step: recorded_step(&metadata, STEP_METADATA, &path)?,
    })
}

/// `weights` converted to f32 (exports of models are f16).
pub fn in_f32(weights: HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>, TrainError> {
    weights
        .into_iter()
        .map(|(name, tensor)| Ok((name, tensor.to_dtype(DType::F32)?)))
        .collect()
}

/// The step an export's `metadata` records under `key`, if any; a malformed one is an error
/// naming `path`.
pub fn recorded_step(
    metadata: &HashMap<String, String>,
    key: &str,
    path: &Path,
) -> Result<Option<u64>, TrainError> {
    metadata
        .get(key)
        .map(|value| {
            value.parse().map_err(|_| TrainError::Checkpoint {
                path: path.to_path_buf(),
                message: format!("its metadata {key} is not a step: {value:?}"),
            })
        })
        .transpose()
}

/// Per-channel mean and standard deviation of latents `[B, z, F, h, w]`.
pub fn channel_statistics(latents: &Tensor) -> candle_core::Result<(Vec<f64>, Vec<f64>)> {
    let channels = latents.dim(1)?;
    let flat = latents.transpose(0, 1)?.reshape((channels, ()))?;
    let mean = flat.mean_keepdim(D::Minus1)?;
    let std = flat.broadcast_sub(&mean)?.sqr()?.mean(D::Minus1)?.sqrt()?;
    let to_vec = |t: Tensor| -> candle_core::Result<Vec<f64>> {
        Ok(t.flatten_all()?
            .to_vec1::<f32>()?
            .into_iter()
            .map(f64::from)
            .collect())
    };
    Ok((to_vec(mean)?, to_vec(std)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn scalar(loss: candle_core::Result<Tensor>) -> f64 {
        f64::from(loss.unwrap().to_scalar::<f32>().unwrap())
    }

    #[test]
    fn a_corner_holding_a_pixel_keeps_it_in_the_span() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for (size, room, grid) in [(32, 32, 1), (32, 32, 4), (8, 56, 4), (64, 0, 1)] {
            let mut starts = std::collections::BTreeSet::new();
            for at in 0..room + size {
                for _ in 0..8 {
                    let start = corner_holding(&mut rng, at, size, room, grid);
                    assert!(start <= at && at < start + size, "{at} in {start}+{size}");
                    assert!(start <= room && start.is_multiple_of(grid));
                    starts.insert(start);
                }
            }
            // Every start on the grid is used.
            assert_eq!(starts.len(), room / grid + 1);
        }
    }

    #[test]
    fn an_object_pixel_is_drawn_from_the_frames_asked() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        // Two clips of 3 frames of 4x5; clip 1 shows an object at row 2, column 3, frame 2.
        let mut values = vec![0f32; 2 * 3 * 4 * 5];
        values[60 + 2 * 20 + 2 * 5 + 3] = 1.0;
        let masks = Tensor::from_vec(values, (2, 1, 3, 4, 5), &Device::Cpu).unwrap();
        let pixel = |clip, start, frames, rng: &mut ChaCha8Rng| {
            object_pixel(&masks, clip, start, frames, rng).unwrap()
        };
        assert_eq!(pixel(1, 0, 3, &mut rng), Some((2, 3)));
        assert_eq!(pixel(1, 2, 1, &mut rng), Some((2, 3)));
        assert_eq!(pixel(1, 0, 2, &mut rng), None);
        assert_eq!(pixel(0, 0, 3, &mut rng), None);
    }

    /// A tiny recipe over world clips of 32x32x9, crops of 8x8x5.
    fn tiny_recipe(object_crops: f64) -> AutoencoderRecipe {
        let text = format!(
            "kl_weight = 1e-6\nobject_weight = 4.0\nobject_crops = {object_crops}\n\
             [loop]\nseed = 5\nsteps = 10\ncheckpoint_every = 10\nbatch_size = 2\n\
             [video]\nwidth = 32\nheight = 32\nframes = 9\nfps = 16.0\n\
             [crop]\nwidth = 8\nheight = 8\nframes = 5\n\
             [optimizer]\nlearning_rate = 1e-3\nwarmup_steps = 1\n\
             final_learning_rate_ratio = 0.1\nweight_decay = 0.0\nbetas = [0.9, 0.99]\n\
             epsilon = 1e-8\ngradient_clip = 1.0\nema_decay = 0.9\n\
             [autoencoder]\nbase_dim = 4\nz_dim = 2\ndim_mult = [1, 1, 1]\n\
             num_res_blocks = 1\ntemperal_downsample = [true, true]\n"
        );
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn object_crops_hold_objects_where_the_frames_show_any() {
        // Share of crops over 20 steps that hold a pixel on or next to an object.
        let holding = |object_crops| {
            let stage = AutoencoderStage::new(&tiny_recipe(object_crops), &Device::Cpu).unwrap();
            let (mut held, mut could) = (0, 0);
            for step in 0..20 {
                let crops = stage.crops(step).unwrap();
                let masks = stage.clips.object_masks(&crops.clips).unwrap().unwrap();
                let crop_masks = cut_all(&masks, &crops.places, 5, stage.recipe.crop).unwrap();
                for (i, &(clip, start, _, _)) in crops.places.iter().enumerate() {
                    let any = |mask: Tensor| mask.max_all().unwrap().to_scalar::<f32>().unwrap();
                    let shows = any(masks.get(clip).unwrap().narrow(1, start, 5).unwrap()) > 0.0;
                    let holds = any(crop_masks.get(i).unwrap()) > 0.0;
                    could += usize::from(shows);
                    held += usize::from(holds);
                }
            }
            (held, could)
        };
        let (placed, could) = holding(1.0);
        assert_eq!(placed, could);
        let (random, _) = holding(0.0);
        assert!(random < placed, "{random} of {could} crops at random");
    }

    #[test]
    fn frames_are_weighed_by_their_place_in_a_latent_frames_group() {
        let weights = by_place_in_group(&[3.0, 2.0, 1.5, 1.0], 9);
        assert_eq!(weights, [1.0, 3.0, 2.0, 1.5, 1.0, 3.0, 2.0, 1.5, 1.0]);
        assert_eq!(by_place_in_group(&[2.0], 1), [2.0]);
    }

    #[test]
    fn the_gradient_term_sees_edges_not_offsets() {
        let device = Device::Cpu;
        let shape = (1, 3, 3, 4, 4);
        let video = Tensor::zeros(shape, DType::F32, &device).unwrap();
        let offset = (&video + 0.5).unwrap();
        assert!((scalar(reconstruction_loss(&offset, &video, None, [1.0; 3])) - 0.5).abs() < 1e-6);

        // One pixel off by 1 (channel 0, frame 1, row 1, column 1): it is 1 of 144 values, and
        // 2 of each axis's pairs differ by 1 (96 pairs along time, 108 along rows and columns).
        let mut values = vec![0f32; 144];
        values[16 + 4 + 1] = 1.0;
        let spike = Tensor::from_vec(values, shape, &device).unwrap();
        let plain = scalar(reconstruction_loss(&spike, &video, None, [0.0; 3]));
        assert!((plain - 1.0 / 144.0).abs() < 1e-6);
        let expected = 1.0 / 144.0 + 0.5 * (2.0 / 96.0 + 2.0 * 2.0 / 108.0);
        let with_edges = scalar(reconstruction_loss(&spike, &video, None, [0.5; 3]));
        assert!(
            (with_edges - expected).abs() < 1e-6,
            "{with_edges} != {expected}"
        );
        // Each axis has its own weight: along time alone, the 2 time pairs of 96 count.
        let in_time = scalar(reconstruction_loss(&spike, &video, None, [2.0, 0.0, 0.0]));
        let expected_in_time = 1.0 / 144.0 + 2.0 * 2.0 / 96.0;
        assert!((in_time - expected_in_time).abs() < 1e-6, "{in_time}");

        // Uniform weights change nothing; a zero weight on the pixel removes its own term.
        let uniform = Tensor::full(2f32, (1, 1, 3, 4, 4), &device).unwrap();
        let weighted = scalar(reconstruction_loss(
            &spike,
            &video,
            Some(&uniform),
            [0.5; 3],
        ));
        assert!((weighted - expected).abs() < 1e-6);
        let mut blind = vec![1f32; 48];
        blind[16 + 4 + 1] = 0.0;
        let blind = Tensor::from_vec(blind, (1, 1, 3, 4, 4), &device).unwrap();
        assert!(scalar(reconstruction_loss(&spike, &video, Some(&blind), [0.0; 3])).abs() < 1e-9);
    }

    #[test]
    fn latent_noise_follows_each_channel_and_its_level() {
        let device = Device::Cpu;
        // Two clips, two channels: channel 1 spreads 10 times as much as channel 0.
        let values: Vec<f32> = (0..2 * 2 * 8 * 8)
            .map(|i| {
                let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
                if (i / 64) % 2 == 1 { 10.0 * sign } else { sign }
            })
            .collect();
        let mean = Tensor::from_vec(values, (2, 2, 1, 8, 8), &device).unwrap();
        let spread = |noise: &Tensor, channel: usize| {
            let values = noise.narrow(1, channel, 1).unwrap().flatten_all().unwrap();
            f64::from(
                values
                    .sqr()
                    .unwrap()
                    .mean_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap(),
            )
            .sqrt()
        };
        let mut rng = step_rng(1, Purpose::Noise, 0);
        let noise = latent_noise(&mean, 0.5, &mut rng).unwrap();
        let ratio = spread(&noise, 1) / spread(&noise, 0);
        assert!((ratio - 10.0).abs() < 3.0, "channel spreads' ratio {ratio}");
        assert!(spread(&noise, 1) > 0.0 && spread(&noise, 1) < 0.5 * 10.0 * 1.5);
        let none = latent_noise(&mean, 0.0, &mut rng).unwrap();
        assert_eq!(spread(&none, 0) + spread(&none, 1), 0.0);
    }
}
