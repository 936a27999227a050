//! Training recipes, read from TOML files under `configs/`: one per stage.

use std::path::{Path, PathBuf};

use himmel_models::mini::{Prediction, SamplingDefaults, VideoShape};
use himmel_models::umt5::Umt5Config;
use himmel_models::wan::{WanTransformerConfig, WanVaeConfig};
use himmel_world::spec::SceneMix;
use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// AdamW with linear warm-up, cosine decay, gradient clipping and an EMA of the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Steps of linear warm-up from 0 to the peak.
    pub warmup_steps: u64,
    /// The rate the cosine decay ends at, as a fraction of the peak.
    pub final_learning_rate_ratio: f64,
    /// Decoupled weight decay of matrices (not of biases, norms or gains).
    pub weight_decay: f64,
    /// Adam's moment decays.
    pub betas: (f64, f64),
    /// Adam's epsilon.
    pub epsilon: f64,
    /// Largest global gradient norm; larger gradients are scaled down to it.
    pub gradient_clip: f64,
    /// Decay of the exponential moving average of the weights that is exported.
    pub ema_decay: f64,
}

/// The parts of every stage's recipe that drive the loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopConfig {
    /// Seed of initial weights, data and noise: a run is a function of its config.
    pub seed: u64,
    /// Total optimizer steps.
    pub steps: u64,
    /// Steps between checkpoints (and exports and plots).
    pub checkpoint_every: u64,
    /// Clips per step.
    pub batch_size: usize,
}

/// A part of each clip that the autoencoder trains on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Crop {
    /// Width in pixels (a multiple of 8).
    pub width: usize,
    /// Height in pixels (a multiple of 8).
    pub height: usize,
    /// Frames (`1 + 4k`).
    pub frames: usize,
}

/// The autoencoder stage: reconstruct crops of world clips through the latent bottleneck.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoencoderRecipe {
    /// Loop settings.
    #[serde(rename = "loop")]
    pub run: LoopConfig,
    /// Weight of the KL term against the L1 reconstruction loss.
    pub kl_weight: f64,
    /// How much more a pixel on or next to an object counts in the reconstruction loss than
    /// one of the bare backdrop (world clips only); 0 weighs all pixels alike. Objects cover a
    /// few percent of a frame: unweighted, the loss is nearly all backdrop.
    #[serde(default)]
    pub object_weight: f64,
    /// Weight of a second L1 term on the differences between neighbouring pixels, across and
    /// down each frame and from frame to frame (the gradient difference loss of Mathieu et al.
    /// 2016): it falls only where the reconstruction's edges and changes over time match the
    /// clip's, which plain L1 lets blur. 0 leaves it out.
    #[serde(default)]
    pub gradient_weight: f64,
    /// Weight added to `gradient_weight`'s on the differences from frame to frame alone: a
    /// reconstruction whose objects jump, fade or change size between frames where the clip's
    /// move smoothly pays for it more than for an edge it blurs. 0 leaves it at
    /// `gradient_weight`.
    #[serde(default)]
    pub time_gradient_weight: f64,
    /// Weight of the adversarial term: the decoder is also judged by a patch discriminator
    /// trained beside it ([`crate::adversary`]), which keeps edges and corners that pixel
    /// losses blur. The discriminator's own loss is added to the step's loss (and its log).
    /// 0 leaves both out.
    #[serde(default)]
    pub adversarial_weight: f64,
    /// Steps the discriminator learns alone before its verdict trains the decoder (a judge that
    /// has not yet learnt would only add noise).
    #[serde(default)]
    pub adversarial_start: u64,
    /// Train only the decoder side (`post_quant_conv` and `decoder`) of a trained autoencoder,
    /// keeping its encoder and so its latents: a decoder fine-tuned this way serves denoisers
    /// trained on the original's latents. Needs the autoencoder to start from.
    #[serde(default)]
    pub decoder_only: bool,
    /// The decoder learns from latents with Gaussian noise added, at a level drawn for each
    /// clip from 0 to this, in units of each latent channel's spread over the step's clips. A
    /// denoiser's latents lie near the encoder's, not on them; a decoder trained this way draws
    /// them as clean clips instead of carrying their small errors into faint specks. 0 leaves it
    /// out.
    #[serde(default)]
    pub latent_noise: f64,
    /// The decoder learns from the latents the model it starts from (`--from` a himmel-mini
    /// model folder) predicts: each clip encoded, noised to a level (flow sigma) drawn from 0 to
    /// this, and predicted clean again by the model's denoiser, guided as its sampler guides.
    /// A decoder trained this way learns the denoiser's own errors. Needs `decoder_only` and
    /// crops of whole clips' length; 0 leaves it out.
    #[serde(default)]
    pub denoised_latents: f64,
    /// Single frames cut beside the crops from each step's clips (a random frame at a random
    /// place, the crop's size), each encoded as a one-frame clip, their loss added to the
    /// crops' (the adversary, where there is one, judges the crops alone). As Wan's
    /// autoencoder trained on images beside videos: a still is one frame where a crop is many,
    /// and trains the taps of every convolution that see the present frame. 0 leaves them out.
    #[serde(default)]
    pub stills: usize,
    /// Share of the crops and stills (0 to 1) placed to hold an object (world clips only): a
    /// pixel on or next to an object in the crop's frames is drawn, and the crop is placed
    /// anywhere that holds it. Objects cover a few percent of a frame, so crops placed at
    /// random show the bare backdrop much of the time; 0 places every crop at random.
    #[serde(default)]
    pub object_crops: f64,
    /// Loss weight of a crop's frame by its place among the frames one latent frame stands
    /// for (one entry per frame of the autoencoder's `temporal_factor`, the earliest first; a
    /// crop's first frame, a latent frame of its own, takes the last entry). An autoencoder
    /// that halves time draws the later frames of each group best (the latent frame is
    /// computed at the group's end); weighing the earlier ones more evens them out. Empty
    /// weighs all frames alike.
    #[serde(default)]
    pub frame_weights: Vec<f64>,
    /// Train on the captioned clips of this folder instead of the world.
    #[serde(default)]
    pub folder: Option<PathBuf>,
    /// The clips the world renders.
    pub video: VideoShape,
    /// The crops trained on.
    pub crop: Crop,
    /// The optimizer.
    pub optimizer: OptimizerConfig,
    /// The architecture (`latents_mean`/`latents_std` are measured later, by the denoiser stage).
    pub autoencoder: WanVaeConfig,
}

impl AutoencoderRecipe {
    /// Weights of the loss's gradient terms along time, height and width.
    pub fn gradient_weights(&self) -> [f64; 3] {
        let space = self.gradient_weight;
        [space + self.time_gradient_weight, space, space]
    }
}

/// How often each pattern of known latent frames is trained on; the rest is text only.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskRates {
    /// The first latent frame (image to video).
    pub first_frame: f64,
    /// The first half of the clip (extension forwards).
    pub first_half: f64,
    /// The last half of the clip (extension backwards).
    pub last_half: f64,
    /// The first and the last latent frame (loops and connections).
    pub both_ends: f64,
}

/// The denoiser stage: flow matching on the frozen autoencoder's latents, with the text encoder
/// trained alongside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenoiserRecipe {
    /// Loop settings.
    #[serde(rename = "loop")]
    pub run: LoopConfig,
    /// Train on the captioned clips of this folder (`NAME.mp4` with `NAME.json` as `himmel world
    /// sample` writes, or `NAME.txt`) instead of the world.
    #[serde(default)]
    pub folder: Option<PathBuf>,
    /// How much more the latent cells that show objects count in the loss than the bare
    /// backdrop's (world clips only); 0 weighs all alike.
    #[serde(default)]
    pub object_weight: f64,
    /// How much the last latent frame counts in the loss against the first, the frames
    /// between ramping linearly: above 1 it trains harder where a clip is least pinned down by
    /// its start (objects vanish most often in the last frames); 1 (the default) weighs all alike.
    #[serde(default = "even_frame_weight")]
    pub last_frame_weight: f64,
    /// Fraction of clips trained with an empty prompt (for classifier-free guidance).
    pub caption_dropout: f64,
    /// The flow shift applied to the training noise levels, each logit-normal draw `sigma`
    /// becoming `shift * sigma / (1 + (shift - 1) * sigma)` as the sampler's shift bends its
    /// steps (Esser et al. 2024). Above 1 it trains more at high noise, where a clip's backdrop
    /// and objects are decided; 1 (the default) leaves the draws as they are.
    #[serde(default = "no_sigma_shift")]
    pub sigma_shift: f64,
    /// The noise levels `[lowest, highest]` this denoiser trains at: each shifted draw is
    /// mapped linearly onto the range. An expert of a two-expert model trains on its side of
    /// the boundary only (as Wan 2.2's do); the default `[0, 1]` trains at all levels.
    #[serde(default = "all_noise_levels")]
    pub sigma_range: [f64; 2],
    /// Fraction of clips trained on a short prompt instead of the detailed caption.
    pub short_prompt_rate: f64,
    /// Clips whose captions and prompts make the vocabulary.
    pub vocabulary_clips: u64,
    /// Clips whose latents give the per-channel normalisation.
    pub statistics_clips: u64,
    /// Whether the first latent frame (one frame encoded, the others four each) gets its own
    /// normalisation; off by default, so runs made before it resume as they were.
    #[serde(default)]
    pub first_frame_statistics: bool,
    /// What the denoiser learns to output: the flow (default) or the clean latents, whose loss
    /// is still taken on the flow they stand for (Li and He 2025).
    #[serde(default)]
    pub prediction: Prediction,
    /// Encoded clips kept to draw batches from (encoding costs more than a denoiser step).
    pub pool_clips: u64,
    /// Clips of the pool replaced by new ones at every step.
    pub pool_refresh: u64,
    /// Longest prompt in words.
    pub max_prompt_tokens: usize,
    /// The clips the world renders (the model's size).
    pub video: VideoShape,
    /// More shapes of world clips to train on beside `video` (other sizes, aspect ratios and
    /// lengths; one frame is an image), as Sora trains on clips at their own sizes: clip `i`
    /// of a run has the shape `i mod (1 + more_shapes.len())` of `video` and these, and each
    /// step's batch is of one shape, the shapes taking turns.
    #[serde(default)]
    pub more_shapes: Vec<VideoShape>,
    /// How the world's scenes are drawn (`[scenes]`: `objects`, the weights of 1 to 4 objects,
    /// and `static_camera`, the chance of a still camera); by default as the world draws them.
    #[serde(default)]
    pub scenes: Option<SceneMix>,
    /// Known-frame patterns.
    pub masks: MaskRates,
    /// Defaults written into the model for sampling.
    pub sampling: SamplingDefaults,
    /// The optimizer.
    pub optimizer: OptimizerConfig,
    /// The transformer (`in_channels`, `out_channels` and `text_dim` are derived).
    pub denoiser: WanTransformerConfig,
    /// The text encoder (`vocab_size` is derived).
    pub text_encoder: Umt5Config,
}

/// The default `last_frame_weight`: every latent frame weighs alike.
fn even_frame_weight() -> f64 {
    1.0
}

/// The default `sigma_shift`: noise levels as drawn.
fn no_sigma_shift() -> f64 {
    1.0
}

/// The default `sigma_range`: every noise level.
fn all_noise_levels() -> [f64; 2] {
    [0.0, 1.0]
}

/// The clips a recipe trains on: its folder's, or the world's from its seed.
pub fn clip_source(
    folder: Option<&Path>,
    video: VideoShape,
    seed: u64,
) -> Result<crate::data::ClipSource, TrainError> {
    match folder {
        Some(dir) => crate::data::ClipSource::folder(dir, video),
        None => Ok(crate::data::ClipSource::world(video, seed)),
    }
}

impl DenoiserRecipe {
    /// The clips it trains on: its folder's, or the world's from its seed in each of its
    /// shapes, its scenes drawn by its mix (checked here).
    pub fn clip_source(&self) -> Result<crate::data::ClipSource, TrainError> {
        if let Some(mix) = &self.scenes {
            mix.check().map_err(|reason| TrainError::Setting {
                name: "scenes",
                value: format!("{mix:?}"),
                reason,
            })?;
        }
        match (&self.folder, self.more_shapes.is_empty()) {
            (Some(_), false) => Err(TrainError::Setting {
                name: "more_shapes",
                value: format!("{} shapes", self.more_shapes.len()),
                reason: "clips read from a folder are trained at `video`'s shape only".into(),
            }),
            (Some(_), true) if self.scenes.is_some() => Err(TrainError::Setting {
                name: "scenes",
                value: format!("{:?}", self.scenes),
                reason: "clips read from a folder come with their own scenes".into(),
            }),
            (Some(dir), true) => crate::data::ClipSource::folder(dir, self.video),
            (None, _) => {
                let shapes: Vec<VideoShape> = std::iter::once(self.video)
                    .chain(self.more_shapes.iter().copied())
                    .collect();
                Ok(crate::data::ClipSource::world_shapes(
                    &shapes,
                    self.run.seed,
                    self.scenes,
                ))
            }
        }
    }
}

/// Reads a recipe from a TOML file; the error names the file and the problem.
pub fn read_recipe<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|error| TrainError::Recipe {
        path: path.to_path_buf(),
        message: error.to_string(),
    })
}
