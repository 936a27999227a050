//! The denoiser stage: flow matching (rectified flow, velocity target `noise - latents`, which
//! the model predicts directly or through the clean latents it predicts) on the frozen
//! autoencoder's latents, with the text encoder trained alongside on detailed captions
//! (recaptioning), some short prompts, and empty prompts for classifier-free guidance. Known
//! latent frames (first frame, first or last part, both ends) are given as extra channels, so
//! the model learns image to video, extension, loops and connections.
//!
//! Exports a complete model to `model/` (`config.json`, `model.safetensors` in f16, with the
//! denoiser's and the autoencoder's training steps in its metadata). A run can also start
//! from such a model: its vocabulary, latent statistics and weights, with a newer decoder for
//! the same encoder if one is given.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use himmel_models::mini::{Conditioning, HimmelMini, MiniConfig, WordTokenizer};
use himmel_models::wan::{CellReduction, LatentStatistics, WanVae, WanVaeConfig, latent_cells};
use himmel_sample::config::check_shift;
use himmel_sample::noised;
use himmel_sample::schedule::shift_sigma;
use rand::Rng;
use rand::seq::IndexedRandom;
use rand_distr::{Distribution, StandardNormal};

use crate::autoencoder::{
    STEP_METADATA as AUTOENCODER_STEP, TrainedAutoencoder, channel_statistics, in_f32,
    recorded_step, sorted_vars,
};
use crate::checkpoint::{read_safetensors, read_safetensors_metadata, write_safetensors};
use crate::config::{DenoiserRecipe, MaskRates};
use crate::data::{Captions, ClipBatch, ClipSource};
use crate::error::TrainError;
use crate::frozen::FrozenAndTrained;
use crate::init::initialize;
use crate::random::{Purpose, gaussian, step_rng};
use crate::token_map::{TokenLayout, TokenMap};
use crate::trainer::Stage;

/// Folder of the exported model inside the run's folder.
pub const MODEL_DIR: &str = "model";
/// The exported model's config file.
pub const MODEL_CONFIG: &str = "config.json";
/// The exported model's weights.
pub const MODEL_WEIGHTS: &str = "model.safetensors";
/// Prefix of the autoencoder's weights in a model file.
const AUTOENCODER: &str = "autoencoder";
/// Prefix of the denoiser's weights.
const DENOISER: &str = "denoiser";
/// The layers whose output a transformer block adds to its input; zero, the block passes its
/// input through.
const BLOCK_OUTPUTS: [&str; 3] = [
    "attn1.to_out.0.weight",
    "attn2.to_out.0.weight",
    "ffn.net.2.weight",
];
/// Metadata key of a model export's denoiser training step.
const STEP_METADATA: &str = "denoiser_step";
/// The noise level below which a predicted sample's flow is divided no further in the loss
/// (Li and He 2025): nearly clean inputs would otherwise weigh without bound.
const LOSS_SMALLEST_SIGMA: f64 = 0.05;
/// Clips encoded at once when filling the pool.
const ENCODE_BATCH: u64 = 8;

/// An encoded clip of the pool.
struct PoolEntry {
    /// Which of the run's clip shapes it has.
    shape: usize,
    /// Normalised latents `[z, F, h, w]`.
    latents: Tensor,
    /// Weight of each latent cell in the loss, `[1, F, h, w]` (`None`: all alike).
    weights: Option<Tensor>,
    captions: Captions,
}

/// The clips batches are drawn from: at step `s`, clips `s * refresh .. s * refresh + size`.
struct LatentPool {
    first: u64,
    entries: VecDeque<PoolEntry>,
}

/// A himmel-mini model read back from a folder: a denoiser run's `model/` or a shipped model.
#[derive(Clone)]
pub struct TrainedModel {
    /// Its config: vocabulary and latent statistics included.
    pub config: MiniConfig,
    /// All its weights in f32, named as [`HimmelMini`] names them.
    pub weights: HashMap<String, Tensor>,
    /// The denoiser's training step it was exported at, where the export records one.
    pub step: Option<u64>,
    /// The step of the autoencoder run its autoencoder came from, where recorded.
    pub autoencoder_step: Option<u64>,
}

impl TrainedModel {
    /// Its autoencoder, as an autoencoder run exports it (latent statistics zero and one).
    pub fn autoencoder(self) -> TrainedAutoencoder {
        let config = self.config.autoencoder.unnormalised();
        let prefix = format!("{AUTOENCODER}.");
        let weights = self
            .weights
            .into_iter()
            .filter_map(|(name, tensor)| Some((name.strip_prefix(&prefix)?.to_string(), tensor)))
            .collect();
        TrainedAutoencoder {
            config,
            weights,
            step: self.autoencoder_step,
        }
    }
}

/// A himmel-mini model's config and the steps its weights record, read without the weights.
pub struct ModelSummary {
    /// Its config: vocabulary and latent statistics included.
    pub config: MiniConfig,
    /// The denoiser's training step it was exported at, where the export records one.
    pub step: Option<u64>,
    /// The step of the autoencoder run its autoencoder came from, where recorded.
    pub autoencoder_step: Option<u64>,
}

/// Reads the himmel-mini model in `dir` (`config.json`, `model.safetensors`).
pub fn read_model(dir: &Path) -> Result<TrainedModel, TrainError> {
    let config = read_config(dir)?;
    let path = dir.join(MODEL_WEIGHTS);
    let (weights, metadata) = read_safetensors(&path)?;
    Ok(TrainedModel {
        config,
        weights: in_f32(weights)?,
        step: recorded_step(&metadata, STEP_METADATA, &path)?,
        autoencoder_step: recorded_step(&metadata, AUTOENCODER_STEP, &path)?,
    })
}

/// Reads the config of the himmel-mini model in `dir` and the steps its weights' header
/// records, leaving the weights unread.
pub fn read_summary(dir: &Path) -> Result<ModelSummary, TrainError> {
    let config = read_config(dir)?;
    let path = dir.join(MODEL_WEIGHTS);
    let metadata = read_safetensors_metadata(&path)?;
    Ok(ModelSummary {
        config,
        step: recorded_step(&metadata, STEP_METADATA, &path)?,
        autoencoder_step: recorded_step(&metadata, AUTOENCODER_STEP, &path)?,
    })
}

/// Reads and checks the `config.json` of the himmel-mini model in `dir`.
fn read_config(dir: &Path) -> Result<MiniConfig, TrainError> {
    let config_path = dir.join(MODEL_CONFIG);
    let text = std::fs::read_to_string(&config_path).map_err(|source| TrainError::Io {
        path: config_path.clone(),
        source,
    })?;
    let invalid = |message: String| TrainError::Checkpoint {
        path: config_path.clone(),
        message,
    };
    let config: MiniConfig =
        serde_json::from_str(&text).map_err(|error| invalid(error.to_string()))?;
    config.check().map_err(invalid)?;
    Ok(config)
}

/// Training state of the denoiser stage.
pub struct DenoiserStage {
    recipe: DenoiserRecipe,
    config: MiniConfig,
    model: HimmelMini,
    frozen: HashMap<String, Tensor>,
    /// The step of the autoencoder run the frozen autoencoder came from, where known.
    autoencoder_step: Option<u64>,
    vars: Vec<(String, Var)>,
    clips: ClipSource,
    pool: RefCell<LatentPool>,
    device: Device,
    /// How well the map carrying the model onto this stage's latents fits, where one did.
    token_fit: Option<f64>,
}

/// The latent frames a mask pattern gives, for `frames` latent frames.
fn known_frames(rates: &MaskRates, frames: usize, rng: &mut impl Rng) -> Vec<usize> {
    let draw: f64 = rng.random();
    let split = if frames > 1 {
        rng.random_range(1..frames)
    } else {
        1
    };
    // A single latent frame (an image) is all to be made.
    if frames == 1 {
        return Vec::new();
    }
    let mut edge = rates.first_frame;
    if draw < edge {
        return vec![0];
    }
    edge += rates.first_half;
    if draw < edge {
        return (0..split).collect();
    }
    edge += rates.last_half;
    if draw < edge {
        return (split..frames).collect();
    }
    edge += rates.both_ends;
    if draw < edge {
        return vec![0, frames - 1];
    }
    Vec::new()
}

/// The model config of `recipe` over an autoencoder (latent statistics included) and a
/// vocabulary.
fn config_for(
    recipe: &DenoiserRecipe,
    autoencoder: WanVaeConfig,
    vocabulary: Vec<String>,
) -> MiniConfig {
    let z = autoencoder.z_dim;
    let mut denoiser = recipe.denoiser.clone();
    denoiser.in_channels = 2 * z + 1;
    denoiser.out_channels = z;
    denoiser.text_dim = recipe.text_encoder.d_model;
    let mut text_encoder = recipe.text_encoder.clone();
    text_encoder.vocab_size = WordTokenizer::new(vocabulary.clone()).size();
    MiniConfig {
        autoencoder,
        denoiser,
        text_encoder,
        vocabulary,
        max_prompt_tokens: recipe.max_prompt_tokens,
        video: recipe.video,
        sampling: recipe.sampling,
        prediction: recipe.prediction,
    }
}

/// Refuses a recipe's `more_shapes` that the model cannot take (sizes off its grid of
/// tokens, lengths the autoencoder cannot encode, another frame rate than `video`'s) and a pool
/// too small to hold a clip of each shape.
fn check_shapes(recipe: &DenoiserRecipe, config: &MiniConfig) -> Result<(), TrainError> {
    let patch = config.denoiser.patch_size;
    let multiple = config.autoencoder.spatial_factor() * patch[1].max(patch[2]);
    let temporal = config.autoencoder.temporal_factor();
    for shape in &recipe.more_shapes {
        let side = |pixels: usize| pixels > 0 && pixels.is_multiple_of(multiple);
        let length = shape.frames >= 1
            && (shape.frames - 1).is_multiple_of(temporal)
            && ((shape.frames - 1) / temporal + 1).is_multiple_of(patch[0]);
        if !(side(shape.width) && side(shape.height) && length && shape.fps == recipe.video.fps) {
            return Err(TrainError::Setting {
                name: "more_shapes",
                value: format!(
                    "{}x{}, {} frames at {} fps",
                    shape.width, shape.height, shape.frames, shape.fps
                ),
                reason: format!(
                    "each shape needs a width and height that are multiples of {multiple}, \
                     1 + {temporal}k frames, and the {} fps of `video`",
                    recipe.video.fps
                ),
            });
        }
    }
    let shapes = 1 + recipe.more_shapes.len() as u64;
    if recipe.pool_clips < shapes {
        return Err(TrainError::Setting {
            name: "pool_clips",
            value: recipe.pool_clips.to_string(),
            reason: format!("must hold a clip of each of the run's {shapes} shapes"),
        });
    }
    Ok(())
}

/// Puts `decoder`'s decoder-side weights into `autoencoder` (configured by `config`), after
/// checking that its encoder side is `autoencoder`'s (equal in the f16 the models are stored
/// in); its decoder may be wider (`decoder_base_dim`), which `config` then takes.
fn replace_decoder(
    autoencoder: &mut HashMap<String, Tensor>,
    config: &mut WanVaeConfig,
    decoder: TrainedAutoencoder,
) -> Result<(), TrainError> {
    let mismatch = |name: &str, reason: &str| TrainError::Setting {
        name: "autoencoder",
        value: name.to_string(),
        reason: reason.into(),
    };
    let mut as_model = decoder.config.unnormalised();
    as_model.decoder_base_dim = config.decoder_base_dim;
    if as_model != config.unnormalised() {
        return Err(mismatch(
            "the decoder's",
            "architecture differs from the model's autoencoder beyond the decoder's width",
        ));
    }
    if decoder.weights.len() != autoencoder.len() {
        return Err(mismatch(
            "the decoder's",
            "has other weights than the model's autoencoder",
        ));
    }
    for (name, tensor) in decoder.weights {
        let Some(current) = autoencoder.get_mut(&name) else {
            return Err(mismatch(
                &name,
                "is not a weight of the model's autoencoder",
            ));
        };
        if !TrainedAutoencoder::is_encoder_weight(&name) {
            *current = tensor;
            continue;
        }
        if current.dims() != tensor.dims() {
            return Err(mismatch(
                &name,
                "has another shape in the model's autoencoder",
            ));
        }
        let difference = (current.to_dtype(DType::F16)?.to_dtype(DType::F32)?
            - tensor.to_dtype(DType::F16)?.to_dtype(DType::F32)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
        if difference != 0.0 {
            return Err(mismatch(
                &name,
                "differs from the model's: the decoder belongs to another encoder",
            ));
        }
    }
    config.decoder_base_dim = decoder.config.decoder_base_dim;
    Ok(())
}

/// Rejects a recipe whose denoiser, text encoder or prediction differs from the model's.
fn check_architecture(recipe: &DenoiserRecipe, model: &MiniConfig) -> Result<(), TrainError> {
    let config = config_for(recipe, model.autoencoder.clone(), model.vocabulary.clone());
    let differs = |part: &'static str| TrainError::Setting {
        name: part,
        value: "the recipe's".into(),
        reason: "differs from the architecture of the model to start from".into(),
    };
    if config.denoiser != model.denoiser {
        return Err(differs("denoiser"));
    }
    if config.text_encoder != model.text_encoder {
        return Err(differs("text_encoder"));
    }
    if config.prediction != model.prediction {
        return Err(differs("prediction"));
    }
    Ok(())
}

/// The clips latent statistics are measured on: the recipe's first `statistics_clips` of the
/// model's own shape (the first of the run's shapes).
fn statistics_clips(recipe: &DenoiserRecipe, clips: &ClipSource) -> Vec<u64> {
    let stride = clips.shape_count() as u64;
    (0..recipe.statistics_clips).map(|k| k * stride).collect()
}

/// Rejects a move to latents whose tokens (`recipe`'s patches over `autoencoder`'s grid) would
/// stand for other pixels or frames than `model`'s tokens do.
fn check_token_span(
    recipe: &DenoiserRecipe,
    autoencoder: &WanVaeConfig,
    model: &MiniConfig,
) -> Result<(), TrainError> {
    let span = |patch: [usize; 3], config: &WanVaeConfig| {
        let (time, space) = (config.temporal_factor(), config.spatial_factor());
        [time * patch[0], space * patch[1], space * patch[2]]
    };
    let (new, old) = (
        span(recipe.denoiser.patch_size, autoencoder),
        span(model.denoiser.patch_size, &model.autoencoder),
    );
    if new != old {
        return Err(TrainError::Setting {
            name: "denoiser.patch_size",
            value: format!("{:?}", recipe.denoiser.patch_size),
            reason: format!(
                "its tokens over the new autoencoder's latents span {new:?} frames and pixels; \
                 the model's span {old:?}"
            ),
        });
    }
    Ok(())
}

/// The error for a variable the model to start from has no weight for.
fn missing_weight(name: &str) -> TrainError {
    TrainError::Setting {
        name: "denoiser",
        value: name.to_string(),
        reason: "is missing from the model to start from".into(),
    }
}

/// The patch embedding `[dim, channels, pt, ph, pw]` for patches `fine` of the model's
/// divided by `factors`: each small cell weighs as all the model's cells it stands for
/// together, so a small patch of a smooth latent embeds as the model's patch over it did.
fn finer_patch_embedding(
    weight: &Tensor,
    fine: [usize; 3],
    [ft, fh, fw]: [usize; 3],
) -> candle_core::Result<Tensor> {
    let (dim, channels, ..) = weight.dims5()?;
    let [pt, ph, pw] = fine;
    weight
        .reshape(&[dim, channels, pt, ft, ph, fh, pw, fw][..])?
        .sum(7)?
        .sum(5)?
        .sum(3)
}

/// The output projection's weight `[(pt, ph, pw, out), dim]` (or bias) for patches `fine` of
/// the model's divided by `factors`: each small cell's output is the mean of the model's
/// cells it stands for.
fn finer_patch_output(
    weight: &Tensor,
    fine: [usize; 3],
    [ft, fh, fw]: [usize; 3],
) -> candle_core::Result<Tensor> {
    let [pt, ph, pw] = fine;
    let cells = fine.iter().product::<usize>();
    let coarse_cells = cells * ft * fh * fw;
    let out = weight.dim(0)? / coarse_cells;
    let rest: Vec<usize> = weight.dims()[1..].to_vec();
    let shape: Vec<usize> = [pt, ft, ph, fh, pw, fw, out]
        .into_iter()
        .chain(rest.iter().copied())
        .collect();
    let finer = weight.reshape(shape)?.mean(5)?.mean(3)?.mean(1)?;
    let shape: Vec<usize> = std::iter::once(cells * out).chain(rest).collect();
    finer.reshape(shape)
}

/// The training noise level of a standard normal draw `logit`: its logistic, bent by the flow
/// `shift` (as the sampler's shift bends its steps) and mapped linearly onto `range`.
fn noise_level(logit: f64, shift: f64, range: [f64; 2]) -> f64 {
    let [lowest, highest] = range;
    let sigma = shift_sigma(1.0 / (1.0 + (-logit).exp()), shift);
    lowest + (highest - lowest) * sigma
}

/// Rejects recipe settings the stage cannot train with, before any clip is rendered.
fn check_recipe(recipe: &DenoiserRecipe) -> Result<(), TrainError> {
    check_shift(recipe.sigma_shift).map_err(|error| TrainError::Setting {
        name: "sigma_shift",
        value: recipe.sigma_shift.to_string(),
        reason: error.to_string(),
    })?;
    let [lowest, highest] = recipe.sigma_range;
    if !(0.0..highest).contains(&lowest) || highest > 1.0 {
        return Err(TrainError::Setting {
            name: "sigma_range",
            value: format!("[{lowest}, {highest}]"),
            reason: "must be [lowest, highest] with 0 <= lowest < highest <= 1".into(),
        });
    }
    if !(recipe.last_frame_weight > 0.0 && recipe.last_frame_weight.is_finite()) {
        return Err(TrainError::Setting {
            name: "last_frame_weight",
            value: recipe.last_frame_weight.to_string(),
            reason: "must be a positive number".into(),
        });
    }
    // A run exports one denoiser; an expert beside it is joined afterwards.
    let experts = [
        ("sampling.boundary", recipe.sampling.boundary),
        ("sampling.expert_guidance", recipe.sampling.expert_guidance),
    ];
    match experts.iter().find(|(_, value)| value.is_some()) {
        Some((name, Some(value))) => Err(TrainError::Setting {
            name,
            value: value.to_string(),
            reason: "a run trains one denoiser; give its export a high-noise expert with \
                     `himmel train experts`"
                .into(),
        }),
        _ => Ok(()),
    }
}

impl DenoiserStage {
    /// Builds the stage on a trained autoencoder: the vocabulary from the first clips' captions
    /// and prompts, the latent normalisation from the first clips' latents, fresh weights for
    /// the denoiser and the text encoder.
    pub fn new(
        recipe: &DenoiserRecipe,
        autoencoder: TrainedAutoencoder,
        device: &Device,
    ) -> Result<Self, TrainError> {
        check_recipe(recipe)?;
        let clips = recipe.clip_source()?;
        let captions = clips.captions(0..recipe.vocabulary_clips)?;
        let texts = captions.iter().flat_map(|captions| {
            std::iter::once(captions.detailed.as_str())
                .chain(captions.short.iter().map(String::as_str))
        });
        let tokenizer = WordTokenizer::from_texts(texts);
        let vocabulary = tokenizer.vocabulary().to_vec();
        let (stage, _) = Self::measured(recipe, autoencoder, vocabulary, clips, device)?;
        initialize(&stage.vars, recipe.run.seed)?;
        Ok(stage)
    }

    /// Builds the stage on a trained autoencoder that is not `model`'s (a later export of its
    /// run, whose encoder has moved on, or another design): the latent normalisation is
    /// measured on it as [`Self::new`] measures it, while the vocabulary and the denoiser's and
    /// text encoder's weights are `model`'s to start from (the recipe must have its
    /// architecture but for the patch size). How a denoiser moves to a newer autoencoder
    /// without training from scratch. Each token must stand for the pixels and frames a token
    /// of `model` stands for (the latents may have other channels and the recipe other
    /// patches); the patch embedding and output projection are carried onto the new tokens
    /// through the orthogonal map that best turns them into the model's, fitted on the clips
    /// the statistics are measured on (see [`TokenMap`]; [`Self::token_fit`] says how well it
    /// fits). Even on the model's own grid the new encoder's channels need not mean the
    /// model's, and the map carries the layers onto whatever they came to mean.
    pub fn warm_start(
        recipe: &DenoiserRecipe,
        autoencoder: TrainedAutoencoder,
        model: TrainedModel,
        device: &Device,
    ) -> Result<Self, TrainError> {
        check_recipe(recipe)?;
        let mut as_model = recipe.clone();
        as_model.denoiser.patch_size = model.config.denoiser.patch_size;
        check_architecture(&as_model, &model.config)?;
        check_token_span(recipe, &autoencoder.config, &model.config)?;
        let clips = recipe.clip_source()?;
        let vocabulary = model.config.vocabulary.clone();
        let (mut stage, latents) = Self::measured(recipe, autoencoder, vocabulary, clips, device)?;
        let map = stage.token_map(&model, &latents)?;
        let mut weights = model.weights;
        type Carry = fn(&TokenMap, &Tensor) -> candle_core::Result<Tensor>;
        let carried: [(&str, Carry); 3] = [
            ("patch_embedding.weight", TokenMap::patch_embedding),
            ("proj_out.weight", TokenMap::patch_output),
            ("proj_out.bias", TokenMap::patch_output),
        ];
        for (layer, carry) in carried {
            let name = format!("{DENOISER}.{layer}");
            let weight = weights.get(&name).ok_or_else(|| missing_weight(&name))?;
            let weight = carry(&map, weight)?;
            weights.insert(name, weight);
        }
        stage.token_fit = Some(map.explained());
        stage.load(&weights)?;
        Ok(stage)
    }

    /// The map from this stage's tokens to `model`'s, fitted on the clips the latent
    /// statistics are measured on: their `latents` under this stage's autoencoder and the
    /// same clips encoded by `model`'s, each normalised by its own.
    fn token_map(&self, model: &TrainedModel, latents: &Tensor) -> Result<TokenMap, TrainError> {
        let model_vae = WanVae::new(
            &model.config.autoencoder,
            VarBuilder::from_tensors(
                model.clone().autoencoder().weights,
                DType::F32,
                &self.device,
            ),
        )?;
        let mut model_latents = Vec::new();
        for chunk in statistics_clips(&self.recipe, &self.clips).chunks(ENCODE_BATCH as usize) {
            let video = self.clips.batch(chunk.iter().copied(), &self.device)?.video;
            model_latents.push(model_vae.normalize(&model_vae.encode(&video)?)?);
        }
        let layout = |config: &MiniConfig| TokenLayout {
            channels: config.autoencoder.z_dim,
            patch: config.denoiser.patch_size,
        };
        TokenMap::fit(
            layout(&model.config),
            &Tensor::cat(&model_latents, 0)?,
            layout(&self.config),
            &self.model.autoencoder.normalize(latents)?,
        )
    }

    /// Where the stage was carried onto another autoencoder's latents ([`Self::warm_start`]): the
    /// share of the model's tokens its map reproduces from the new ones (see
    /// [`TokenMap::explained`]).
    pub fn token_fit(&self) -> Option<f64> {
        self.token_fit
    }

    /// The stage over `autoencoder` with its latent normalisation measured on the first
    /// clips, its own variables created (not yet initialised), and those clips' latents (not
    /// normalised).
    fn measured(
        recipe: &DenoiserRecipe,
        autoencoder: TrainedAutoencoder,
        vocabulary: Vec<String>,
        clips: ClipSource,
        device: &Device,
    ) -> Result<(Self, Tensor), TrainError> {
        let mut autoencoder_config = autoencoder.config;
        let weights = autoencoder.weights;
        let vae = WanVae::new(
            &autoencoder_config,
            VarBuilder::from_tensors(weights.clone(), DType::F32, device),
        )?;
        let mut latents = Vec::new();
        for chunk in statistics_clips(recipe, &clips).chunks(ENCODE_BATCH as usize) {
            latents.push(vae.encode(&clips.batch(chunk.iter().copied(), device)?.video)?);
        }
        let latents = Tensor::cat(&latents, 0)?;
        let frames = latents.dim(2)?;
        let rest = if recipe.first_frame_statistics && frames > 1 {
            let (mean, std) = channel_statistics(&latents.narrow(2, 0, 1)?)?;
            autoencoder_config.first_frame_latents = Some(LatentStatistics { mean, std });
            latents.narrow(2, 1, frames - 1)?
        } else {
            latents.clone()
        };
        let (mean, std) = channel_statistics(&rest)?;
        autoencoder_config.latents_mean = mean;
        autoencoder_config.latents_std = std;

        let config = config_for(recipe, autoencoder_config, vocabulary);
        let stage = Self::assemble(recipe, config, weights, autoencoder.step, clips, device)?;
        Ok((stage, latents))
    }

    /// Builds the stage on a trained model: its vocabulary, latent statistics, autoencoder and
    /// weights (the recipe must have the model's architecture). A `decoder` (an autoencoder
    /// run's export) replaces the model's decoder; its encoder must be the model's, so the
    /// latents the denoiser learnt stay as they were.
    pub fn from_model(
        recipe: &DenoiserRecipe,
        model: TrainedModel,
        decoder: Option<TrainedAutoencoder>,
        device: &Device,
    ) -> Result<Self, TrainError> {
        check_recipe(recipe)?;
        check_architecture(recipe, &model.config)?;
        let (stage, weights) = Self::over_model(recipe, model, decoder, device)?;
        stage.load(&weights)?;
        Ok(stage)
    }

    /// Builds the stage on a trained model whose denoiser has fewer blocks than the recipe's
    /// (otherwise the recipe must have its architecture): the model's blocks keep their
    /// weights and the new ones follow them, starting as the identity (their attention and
    /// feed-forward outputs zero), so the deeper denoiser starts where the model is.
    pub fn deepened(
        recipe: &DenoiserRecipe,
        model: TrainedModel,
        device: &Device,
    ) -> Result<Self, TrainError> {
        check_recipe(recipe)?;
        let kept = model.config.denoiser.num_layers;
        if recipe.denoiser.num_layers <= kept {
            return Err(TrainError::Setting {
                name: "denoiser.num_layers",
                value: recipe.denoiser.num_layers.to_string(),
                reason: format!("must exceed the {kept} blocks of the model to deepen"),
            });
        }
        let mut as_deep = recipe.clone();
        as_deep.denoiser.num_layers = kept;
        check_architecture(&as_deep, &model.config)?;
        let (stage, weights) = Self::over_model(recipe, model, None, device)?;
        initialize(&stage.vars, recipe.run.seed)?;
        let new_blocks = (kept..recipe.denoiser.num_layers)
            .map(|block| format!("{DENOISER}.blocks.{block}."))
            .collect::<Vec<_>>();
        for (name, var) in &stage.vars {
            if let Some(weight) = weights.get(name) {
                var.set(&weight.to_device(var.device())?)?;
            } else if !new_blocks.iter().any(|block| name.starts_with(block)) {
                return Err(missing_weight(name));
            } else if BLOCK_OUTPUTS.iter().any(|output| name.ends_with(output)) {
                var.set(&var.zeros_like()?)?;
            }
        }
        Ok(stage)
    }

    /// Builds the stage on a trained model whose denoiser cuts latents into larger patches than
    /// the recipe's (each side of the recipe's patch divides the model's; otherwise the recipe
    /// must have its architecture): more and smaller tokens, for finer detail. The blocks and
    /// the time and text layers keep their weights, and each small patch starts as the model's
    /// patch stretched over it (see [`finer_patch_embedding`] and [`finer_patch_output`]), so
    /// on a smooth latent each token starts as the coarse token it lies in.
    pub fn refined(
        recipe: &DenoiserRecipe,
        model: TrainedModel,
        device: &Device,
    ) -> Result<Self, TrainError> {
        check_recipe(recipe)?;
        let coarse = model.config.denoiser.patch_size;
        let fine = recipe.denoiser.patch_size;
        let divides = (0..3).all(|axis| fine[axis] > 0 && coarse[axis].is_multiple_of(fine[axis]));
        if !divides || fine == coarse {
            return Err(TrainError::Setting {
                name: "denoiser.patch_size",
                value: format!("{fine:?}"),
                reason: format!(
                    "must divide the model's patches {coarse:?} and differ to refine them"
                ),
            });
        }
        let mut as_coarse = recipe.clone();
        as_coarse.denoiser.patch_size = coarse;
        check_architecture(&as_coarse, &model.config)?;
        let (stage, mut weights) = Self::over_model(recipe, model, None, device)?;
        let factors = [0, 1, 2].map(|axis| coarse[axis] / fine[axis]);
        let mut refine = |name: &str,
                          convert: fn(
            &Tensor,
            [usize; 3],
            [usize; 3],
        ) -> candle_core::Result<Tensor>| {
            let name = format!("{DENOISER}.{name}");
            let weight = weights.get(&name).ok_or_else(|| missing_weight(&name))?;
            let finer = convert(weight, fine, factors)?;
            weights.insert(name, finer);
            Ok::<_, TrainError>(())
        };
        refine("patch_embedding.weight", finer_patch_embedding)?;
        refine("proj_out.weight", finer_patch_output)?;
        refine("proj_out.bias", finer_patch_output)?;
        stage.load(&weights)?;
        Ok(stage)
    }

    /// The stage over `model`'s autoencoder (its decoder replaced by `decoder`'s), and the
    /// model's other weights, not yet set.
    fn over_model(
        recipe: &DenoiserRecipe,
        model: TrainedModel,
        decoder: Option<TrainedAutoencoder>,
        device: &Device,
    ) -> Result<(Self, HashMap<String, Tensor>), TrainError> {
        let mut config = config_for(
            recipe,
            model.config.autoencoder.clone(),
            model.config.vocabulary.clone(),
        );
        let mut weights = model.weights;
        let prefix = format!("{AUTOENCODER}.");
        let mut autoencoder: HashMap<String, Tensor> = weights
            .iter()
            .filter_map(|(name, tensor)| {
                Some((name.strip_prefix(&prefix)?.to_string(), tensor.clone()))
            })
            .collect();
        weights.retain(|name, _| !name.starts_with(&prefix));
        let mut autoencoder_step = model.autoencoder_step;
        if let Some(decoder) = decoder {
            autoencoder_step = decoder.step;
            replace_decoder(&mut autoencoder, &mut config.autoencoder, decoder)?;
        }
        let clips = recipe.clip_source()?;
        let stage = Self::assemble(recipe, config, autoencoder, autoencoder_step, clips, device)?;
        Ok((stage, weights))
    }

    /// Sets the stage's variables to the model's `weights` of the same names.
    fn load(&self, weights: &HashMap<String, Tensor>) -> Result<(), TrainError> {
        for (name, var) in &self.vars {
            let weight = weights.get(name).ok_or_else(|| missing_weight(name))?;
            var.set(&weight.to_device(var.device())?)?;
        }
        Ok(())
    }

    /// The stage for `config` over the frozen `autoencoder` weights, its own variables created
    /// (not yet initialised).
    fn assemble(
        recipe: &DenoiserRecipe,
        config: MiniConfig,
        autoencoder: HashMap<String, Tensor>,
        autoencoder_step: Option<u64>,
        clips: ClipSource,
        device: &Device,
    ) -> Result<Self, TrainError> {
        check_shapes(recipe, &config)?;
        let frozen: HashMap<String, Tensor> = autoencoder
            .into_iter()
            .map(|(name, tensor)| (format!("{AUTOENCODER}.{name}"), tensor))
            .collect();
        let trained = VarMap::new();
        let backend = FrozenAndTrained {
            frozen: frozen.clone(),
            trained: trained.clone(),
        };
        let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
        let model = HimmelMini::new(&config, vb)?;
        let vars = sorted_vars(&trained);
        Ok(Self {
            recipe: recipe.clone(),
            config,
            model,
            frozen,
            autoencoder_step,
            vars,
            clips,
            pool: RefCell::new(LatentPool {
                first: 0,
                entries: VecDeque::new(),
            }),
            device: device.clone(),
            token_fit: None,
        })
    }

    /// The model's config (vocabulary and latent statistics included).
    pub fn config(&self) -> &MiniConfig {
        &self.config
    }

    /// Moves the pool to the clips of `step`, encoding the ones it lacks.
    fn advance_pool(&self, pool: &mut LatentPool, step: u64) -> Result<(), TrainError> {
        let first = step * self.recipe.pool_refresh;
        let end = first + self.recipe.pool_clips;
        while pool.first < first && !pool.entries.is_empty() {
            pool.entries.pop_front();
            pool.first += 1;
        }
        if pool.entries.is_empty() {
            pool.first = first;
        }
        let mut next = pool.first + pool.entries.len() as u64;
        while next < end {
            let stop = (next + ENCODE_BATCH).min(end);
            // Encoded a shape at a time, kept in the order of the clips' indices.
            let mut encoded = Vec::new();
            for shape in 0..self.clips.shape_count() {
                let indices: Vec<u64> = (next..stop)
                    .filter(|&index| self.clips.shape_of(index) == shape)
                    .collect();
                if !indices.is_empty() {
                    let batch = self.clips.batch(indices, &self.device)?;
                    encoded.extend(self.encode(batch, shape)?);
                }
            }
            encoded.sort_by_key(|(index, _)| *index);
            pool.entries
                .extend(encoded.into_iter().map(|(_, entry)| entry));
            next = stop;
        }
        Ok(())
    }

    /// The pool entries of `batch`, clips of `shape`, with their indices.
    fn encode(&self, batch: ClipBatch, shape: usize) -> Result<Vec<(u64, PoolEntry)>, TrainError> {
        let latents = self.model.autoencoder.encode(&batch.video)?;
        let latents = self.model.autoencoder.normalize(&latents)?;
        let weights = if self.recipe.object_weight > 0.0 {
            // A cell shows an object where any of its pixels in any of its frames does.
            let config = self.model.autoencoder.config();
            self.clips
                .object_masks(&batch)?
                .map(|masks| {
                    latent_cells(&masks, config, CellReduction::Max)?
                        .affine(self.recipe.object_weight, 1.0)
                })
                .transpose()?
        } else {
            None
        };
        batch
            .indices
            .into_iter()
            .zip(batch.captions)
            .enumerate()
            .map(|(i, (index, captions))| {
                let entry = PoolEntry {
                    shape,
                    latents: latents.get(i)?,
                    weights: weights.as_ref().map(|w| w.get(i)).transpose()?,
                    captions,
                };
                Ok((index, entry))
            })
            .collect()
    }

    /// The prompt a clip is trained with: its caption, a short prompt, or nothing.
    fn prompt<'a>(&self, captions: &'a Captions, rng: &mut impl Rng) -> &'a str {
        let draw: f64 = rng.random();
        if draw < self.recipe.caption_dropout {
            ""
        } else if draw < self.recipe.caption_dropout + self.recipe.short_prompt_rate {
            captions
                .short
                .choose(rng)
                .map_or(captions.detailed.as_str(), String::as_str)
        } else {
            captions.detailed.as_str()
        }
    }
}

impl Stage for DenoiserStage {
    fn name(&self) -> &'static str {
        "denoiser"
    }

    fn variables(&self) -> &[(String, Var)] {
        &self.vars
    }

    fn loss(&self, step: u64) -> Result<Tensor, TrainError> {
        let mut pool = self.pool.borrow_mut();
        self.advance_pool(&mut pool, step)?;
        let mut rng = step_rng(self.recipe.run.seed, Purpose::Choices, step);
        let batch = self.recipe.run.batch_size;
        let mut latents = Vec::with_capacity(batch);
        let mut prompts = Vec::with_capacity(batch);
        let mut sigmas = Vec::with_capacity(batch);
        let mut masks = Vec::with_capacity(batch);
        let mut cell_weights = Vec::with_capacity(batch);
        // A step's clips share a shape; the shapes take turns.
        let shape = self.clips.shape_of(step);
        let candidates: Vec<&PoolEntry> = pool
            .entries
            .iter()
            .filter(|entry| entry.shape == shape)
            .collect();
        for _ in 0..batch {
            let entry = candidates[rng.random_range(0..candidates.len())];
            let frames = entry.latents.dim(1)?;
            latents.push(entry.latents.clone());
            cell_weights.push(entry.weights.clone());
            prompts.push(self.prompt(&entry.captions, &mut rng));
            let logit: f64 = StandardNormal.sample(&mut rng);
            sigmas
                .push(noise_level(logit, self.recipe.sigma_shift, self.recipe.sigma_range) as f32);
            let known = known_frames(&self.recipe.masks, frames, &mut rng);
            let mask: Vec<f32> = (0..frames)
                .map(|f| if known.contains(&f) { 1.0 } else { 0.0 })
                .collect();
            masks.push(mask);
        }
        let clean = Tensor::stack(&latents, 0)?;
        let (_, channels, frames, height, width) = clean.dims5()?;
        let mask = Tensor::new(masks, &self.device)?
            .reshape((batch, 1, frames, 1, 1))?
            .broadcast_as((batch, 1, frames, height, width))?
            .contiguous()?;
        let sigma = Tensor::new(sigmas.as_slice(), &self.device)?;
        let noise = gaussian(
            clean.shape(),
            &mut step_rng(self.recipe.run.seed, Purpose::Noise, step),
            &self.device,
        )?;
        let sigma_5d = sigma.reshape((batch, 1, 1, 1, 1))?;
        let noisy = noised(&clean, &noise, &sigma_5d)?;
        let target = (&noise - &clean)?;
        let conditioning = Conditioning {
            known: clean.broadcast_mul(&mask)?,
            mask: mask.clone(),
        };
        let text = self.model.encode_text(&prompts, DType::F32)?;
        let output = self.model.predict(
            &noisy,
            &(&sigma * 1000.0)?,
            &text.hidden,
            &conditioning,
            None,
        )?;
        let prediction =
            self.config
                .prediction
                .flow(&output, &noisy, &sigma, LOSS_SMALLEST_SIGMA)?;
        // Known frames are not scored; objects' cells weigh more where the pool knows them.
        let mut weight = (1.0 - mask)?;
        if let Some(cells) = cell_weights.into_iter().collect::<Option<Vec<_>>>() {
            weight = weight.broadcast_mul(&Tensor::stack(&cells, 0)?)?;
        }
        if self.recipe.last_frame_weight != 1.0 {
            let ramp = frame_ramp(frames, self.recipe.last_frame_weight);
            let ramp = Tensor::new(ramp, &self.device)?.reshape((1, 1, frames, 1, 1))?;
            weight = weight.broadcast_mul(&ramp)?;
        }
        let squared = (prediction - target)?
            .sqr()?
            .broadcast_mul(&weight)?
            .sum_all()?;
        let count = (weight.sum_all()? * channels as f64)?.maximum(1f32)?;
        Ok(squared.div(&count)?)
    }

    fn export(
        &self,
        averages: &[(String, Tensor)],
        step: u64,
        dir: &Path,
    ) -> Result<(), TrainError> {
        let model_dir = dir.join(MODEL_DIR);
        std::fs::create_dir_all(&model_dir).map_err(|source| TrainError::Io {
            path: model_dir.clone(),
            source,
        })?;
        // Half precision halves the shipped file; the model computes in f32.
        let tensors = self
            .frozen
            .iter()
            .chain(averages.iter().map(|(name, tensor)| (name, tensor)))
            .map(|(name, tensor)| Ok((name.clone(), tensor.to_dtype(DType::F16)?)))
            .collect::<candle_core::Result<HashMap<_, _>>>()?;
        let mut metadata = HashMap::from([(STEP_METADATA.to_string(), step.to_string())]);
        if let Some(autoencoder_step) = self.autoencoder_step {
            metadata.insert(AUTOENCODER_STEP.to_string(), autoencoder_step.to_string());
        }
        write_safetensors(&model_dir.join(MODEL_WEIGHTS), &tensors, metadata)?;
        let json = serde_json::to_string_pretty(&self.config).expect("configs serialise");
        std::fs::write(model_dir.join(MODEL_CONFIG), json).map_err(|source| TrainError::Io {
            path: model_dir.join(MODEL_CONFIG),
            source,
        })
    }
}

/// Loss weights of `frames` latent frames: 1 for the first, `last` for the last, linear between.
fn frame_ramp(frames: usize, last: f64) -> Vec<f32> {
    let span = frames.saturating_sub(1).max(1) as f64;
    (0..frames)
        .map(|f| (1.0 + (last - 1.0) * f as f64 / span) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_weights_ramp_from_one_to_the_last() {
        assert_eq!(frame_ramp(5, 3.0), vec![1.0, 1.5, 2.0, 2.5, 3.0]);
        assert_eq!(frame_ramp(1, 3.0), vec![1.0]);
    }

    #[test]
    fn noise_levels_are_mapped_onto_their_range() {
        let all = [0.0, 1.0];
        assert!((noise_level(0.0, 1.0, all) - 0.5).abs() < 1e-12);
        // The shift bends a draw as the sampler's shift bends its steps: 3 * 0.5 / 2.
        assert!((noise_level(0.0, 3.0, all) - 0.75).abs() < 1e-12);
        let expert = [0.95, 1.0];
        assert!((noise_level(0.0, 3.0, expert) - (0.95 + 0.05 * 0.75)).abs() < 1e-12);
        let mut previous = 0.95;
        for logit in [-40.0, -3.0, -1.0, 0.0, 1.0, 3.0, 40.0] {
            let sigma = noise_level(logit, 3.0, expert);
            assert!((0.95..=1.0).contains(&sigma), "{sigma} at {logit}");
            assert!(sigma >= previous, "{sigma} after {previous}");
            previous = sigma;
        }
    }

    /// A random tensor of `shape`, seeded.
    fn random(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = step_rng(seed, Purpose::Noise, 0);
        gaussian(shape, &mut rng, &Device::Cpu).unwrap()
    }

    /// `x` `[.., t, h, w]` with each cell repeated `factors` times along its axis.
    fn stretched(x: &Tensor, [ft, fh, fw]: [usize; 3]) -> Tensor {
        let repeat = |x: Tensor, axis: usize, factor: usize| {
            let copies = vec![x.unsqueeze(axis + 1).unwrap(); factor];
            let mut dims = x.dims().to_vec();
            dims[axis] *= factor;
            Tensor::cat(&copies, axis + 1)
                .unwrap()
                .reshape(dims)
                .unwrap()
        };
        let rank = x.rank();
        let x = repeat(x.clone(), rank - 3, ft);
        let x = repeat(x, rank - 2, fh);
        repeat(x, rank - 1, fw)
    }

    #[test]
    fn a_small_patch_embeds_as_the_model_patch_stretched_over_it() {
        let (fine, factors) = ([1, 2, 1], [2, 2, 3]);
        let coarse = random(&[5, 3, 2, 4, 3], 1);
        let finer = finer_patch_embedding(&coarse, fine, factors).unwrap();
        assert_eq!(finer.dims(), &[5, 3, 1, 2, 1]);
        let patch = random(&[3, 1, 2, 1], 2);
        let embed = |weight: &Tensor, patch: &Tensor| {
            let weight = weight.flatten_from(1).unwrap();
            weight
                .matmul(&patch.flatten_all().unwrap().unsqueeze(1).unwrap())
                .unwrap()
        };
        let expected = embed(&coarse, &stretched(&patch, factors));
        let difference = (embed(&finer, &patch) - expected).unwrap().abs().unwrap();
        assert!(difference.max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-4);
    }

    #[test]
    fn a_small_patch_outputs_the_mean_of_the_model_cells_it_stands_for() {
        let (fine, factors, out) = ([1, 2, 1], [2, 2, 3], 3);
        let coarse = random(&[2 * 4 * 3 * out, 5], 3);
        let finer = finer_patch_output(&coarse, fine, factors).unwrap();
        assert_eq!(finer.dims(), &[2 * out, 5]);
        let bias = finer_patch_output(&random(&[2 * 4 * 3 * out], 4), fine, factors).unwrap();
        assert_eq!(bias.dims(), &[2 * out]);
        // The model's output cells (t, h, w, channel) for a token, averaged over the cells
        // each small cell stands for.
        let token = random(&[5, 1], 5);
        let mean = coarse
            .matmul(&token)
            .unwrap()
            .reshape(&[1, 2, 2, 2, 1, 3, out][..])
            .unwrap()
            .mean(5)
            .unwrap()
            .mean(3)
            .unwrap()
            .mean(1)
            .unwrap()
            .flatten_all()
            .unwrap();
        let own = finer.matmul(&token).unwrap().flatten_all().unwrap();
        let difference = (own - mean).unwrap().abs().unwrap();
        assert!(difference.max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-5);
    }
}
