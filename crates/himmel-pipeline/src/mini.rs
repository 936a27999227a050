//! Generation with himmel-mini, the built-in model: the prompt is expanded into a world scene,
//! which is simulated and described in a detailed caption like those the model was trained on
//! (recaptioning); the caption is encoded, latents are denoised with classifier-free guidance
//! (and skip guidance where the model asks for it), and the autoencoder decodes them. A model
//! may carry a high-noise expert, as Wan 2.2 does: a second denoiser with its own text encoder
//! that takes the steps from a noise level up (the backdrop and layout), leaving the rest (the
//! objects' detail) to the model's own.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use himmel_core::{Progress, ProgressEvent, Video};
use himmel_models::mini::{Conditioning, HimmelMini, MiniConfig, SkipGuidance};
use himmel_models::wan::StepCache;
use himmel_sample::{UniPc, guide};
use himmel_world::SceneSpec;
use himmel_world::caption::detailed_caption;
use himmel_world::expand::expand;
use himmel_world::render::{RenderSettings, render};

use crate::conditioning::encode_start;
use crate::denoise::{Inputs, denoise};
use crate::error::PipelineError;
use crate::layout::read_json;
use crate::preview::{LatentPreview, PREVIEW_FILE, PREVIEW_FIT_CLIPS};
use crate::request::{GenerationRequest, ModelLimits, ValidRequest, ValidationError};
use crate::tasks::Windows;
use crate::wan::decode_to_video;

/// The built-in model's name.
pub const BUILTIN_NAME: &str = "himmel-mini";
/// The model's config file in its folder.
pub const CONFIG_FILE: &str = "config.json";
/// The model's weights in its folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The folder in a model's folder that holds its high-noise expert, a himmel-mini model of its
/// own that shares the model's autoencoder.
pub const HIGH_NOISE_DIR: &str = "high_noise";
/// Environment variable naming a folder that holds `himmel-mini/` (overrides the search).
pub const MODELS_ENV: &str = "HIMMEL_MODELS";

/// Where the built-in model is: `$HIMMEL_MODELS/himmel-mini`, else `models/himmel-mini` of the
/// checkout the binary was built from.
pub fn builtin_dir() -> PathBuf {
    match std::env::var_os(MODELS_ENV) {
        Some(models) => PathBuf::from(models).join(BUILTIN_NAME),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../models")
            .join(BUILTIN_NAME),
    }
}

/// Whether `dir` holds a himmel-mini model.
pub fn is_mini_dir(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join(CONFIG_FILE)) else {
        return false;
    };
    serde_json::from_str::<MiniConfig>(&text).is_ok()
}

/// How the prompt was understood.
#[derive(Debug, Clone, PartialEq)]
pub struct Recaption {
    /// The scene the prompt expanded to.
    pub spec: SceneSpec,
    /// The detailed caption the model is conditioned on.
    pub caption: String,
    /// Words of the prompt that were not understood.
    pub unknown_words: Vec<String>,
    /// Requests of the prompt that could not be honoured.
    pub conflicts: Vec<String>,
}

/// A loaded himmel-mini model, ready to generate.
pub struct MiniPipeline {
    model: HimmelMini,
    /// The expert that denoises from `sampling.boundary` up, when the model has one.
    high_noise: Option<HimmelMini>,
    device: Device,
    preview: Option<LatentPreview>,
}

impl MiniPipeline {
    /// Loads the model in `dir` (`config.json`, `model.safetensors`) and, when
    /// `sampling.boundary` is set, its high-noise expert in `high_noise/`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, PipelineError> {
        let model = load_model(dir, device)?;
        let config_path = dir.join(CONFIG_FILE);
        let expert_dir = dir.join(HIGH_NOISE_DIR);
        let high_noise = match (model.config().sampling.boundary, expert_dir.is_dir()) {
            (Some(_), true) => Some(load_expert(&model, &expert_dir, device)?),
            (None, false) => None,
            (Some(boundary), false) => {
                return Err(PipelineError::load(
                    &config_path,
                    format!(
                        "sampling.boundary is {boundary} but there is no high-noise expert in \
                         {HIGH_NOISE_DIR}/"
                    ),
                ));
            }
            (None, true) => {
                return Err(PipelineError::load(
                    &config_path,
                    format!(
                        "{HIGH_NOISE_DIR}/ holds a high-noise expert but sampling.boundary, the \
                         noise level it takes over from, is not set"
                    ),
                ));
            }
        };
        Ok(Self {
            model,
            high_noise,
            device: device.clone(),
            preview: LatentPreview::load(dir)?,
        })
    }

    /// Makes sure previews can be shown: fits the latent-to-RGB projection on world clips when
    /// the model folder holds no `preview.json`. Returns whether it had to fit one.
    pub fn prepare_previews(&mut self) -> Result<bool, PipelineError> {
        if self.preview.is_some() {
            return Ok(false);
        }
        self.preview = Some(LatentPreview::fit(
            &self.model.autoencoder,
            PREVIEW_FIT_CLIPS,
            &self.device,
        )?);
        Ok(true)
    }

    /// The model.
    pub fn model(&self) -> &HimmelMini {
        &self.model
    }

    /// The model's configuration.
    pub fn config(&self) -> &MiniConfig {
        self.model.config()
    }

    /// What requests the model takes.
    pub fn limits(&self) -> ModelLimits {
        let autoencoder = &self.config().autoencoder;
        // Sizes both experts can cut into patches (their patches may differ).
        let patch_multiple = std::iter::once(&self.model)
            .chain(&self.high_noise)
            .map(|model| {
                let patch = model.config().denoiser.patch_size;
                patch[1].max(patch[2])
            })
            .fold(1, num_integer::lcm);
        ModelLimits {
            temporal_factor: autoencoder.temporal_factor(),
            size_multiple: autoencoder.spatial_factor() * patch_multiple,
            latent_channels: autoencoder.z_dim,
            spatial_factor: autoencoder.spatial_factor(),
            max_side: 512,
            // The autoencoder's chunk caches are trained on clips of this length; longer videos
            // are made by extension.
            max_frames: self.config().video.frames,
            high_noise_expert: self.high_noise.is_some(),
            skip_guidance_layers: Some(self.config().denoiser.num_layers),
        }
    }

    /// How tasks longer than one clip cut their work: windows of the trained length that
    /// share 2 latent frames (5 frames known at a window's start when a latent frame stands
    /// for 4).
    pub fn windows(&self) -> Windows {
        let limits = self.limits();
        Windows {
            frames: limits.max_frames,
            overlap: 2,
            temporal_factor: limits.temporal_factor,
        }
    }

    /// `video` through the model's autoencoder and back: the most any latents the denoiser
    /// makes can show. Its size must be one the model could generate.
    pub fn autoencode(&self, video: &Video) -> Result<Video, PipelineError> {
        let (width, height, frames) = (video.width(), video.height(), video.num_frames());
        self.validate(GenerationRequest::new(
            "",
            (width, height, frames),
            video.fps(),
        ))?;
        let latent_frames = (frames - 1) / self.limits().temporal_factor + 1;
        let autoencoder = &self.model.autoencoder;
        let latents = encode_start(
            autoencoder,
            video,
            latent_frames,
            (width, height),
            &self.device,
        )?;
        decode_to_video(autoencoder, &latents, video.fps(), None)
    }

    /// Checks a request against the model's limits.
    pub fn validate(&self, request: GenerationRequest) -> Result<ValidRequest, ValidationError> {
        self.limits().validate(request)
    }

    /// Expands `prompt` into a scene (choices it leaves open drawn from `seed`), simulates it
    /// and describes it in a detailed caption.
    pub fn recaption(
        &self,
        prompt: &str,
        settings: &RenderSettings,
        seed: u64,
    ) -> Result<Recaption, PipelineError> {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let expansion = expand(prompt, &mut rng).map_err(|error| PipelineError::Prompt {
            reason: error.to_string(),
        })?;
        let clip = render(&expansion.spec, settings)?;
        Ok(Recaption {
            caption: detailed_caption(&expansion.spec, &clip),
            spec: expansion.spec,
            unknown_words: expansion.unknown_words,
            conflicts: expansion.conflicts,
        })
    }

    /// Generates the video `request` asks for from the detailed `caption`.
    pub fn generate(
        &self,
        request: &ValidRequest,
        caption: &str,
        progress: &dyn Progress,
    ) -> Result<Video, PipelineError> {
        let request = request.get();
        progress.event(ProgressEvent::StageStarted {
            stage: "encode prompt",
            total: 0,
        });
        let expert = |model, guidance: f64, skip| -> Result<Expert, PipelineError> {
            let prompts = [caption, request.negative_prompt.as_str()];
            let prompts = if guidance > 1.0 {
                &prompts[..]
            } else {
                &prompts[..1]
            };
            Ok(Expert {
                model,
                text: model.encode_text(prompts, DType::F32)?.hidden,
                guidance,
                skip,
                cache: request.step_cache.map(StepCache::new),
            })
        };
        let sampling = self.config().sampling;
        let skip = request
            .skip_guidance
            .or(sampling.skip_guidance)
            .filter(|skip| skip.scale > 0.0);
        let mut low_noise = expert(&self.model, request.guidance, skip)?;
        let boundary = request.boundary.or(sampling.boundary);
        let expert_guidance = request.expert_guidance.or(sampling.expert_guidance);
        let mut high_noise = match (&self.high_noise, boundary) {
            (Some(model), Some(boundary)) => Some((
                expert(model, expert_guidance.unwrap_or(request.guidance), None)?,
                boundary,
            )),
            _ => None,
        };
        progress.event(ProgressEvent::StageFinished);

        let shape = self.limits().latent_shape(request);
        let autoencoder = &self.model.autoencoder;
        let inputs = Inputs::prepare(autoencoder, request, &shape, &self.device, progress)?;
        let shift = request.shift.unwrap_or(self.config().sampling.shift);
        let mut solver = UniPc::new(request.steps, shift, 1000);
        // Conditioning for the most prompts an expert takes (two when it guides), narrowed to
        // each expert's.
        let mut batch = low_noise.text.dim(0)?;
        if let Some((expert, _)) = &high_noise {
            batch = batch.max(expert.text.dim(0)?);
        }
        let batched = |tensor: &Tensor| Tensor::cat(&vec![tensor; batch], 0);
        let conditioning = match inputs.known() {
            Some(known) => Conditioning {
                known: batched(known.latents())?,
                mask: batched(known.mask())?,
            },
            None => {
                let [_, channels, frames, height, width] = shape[..] else {
                    unreachable!("latent shapes have five dimensions")
                };
                let dims = (batch, channels, frames, height, width);
                Conditioning::none(&Tensor::zeros(dims, DType::F32, &self.device)?)?
            }
        };
        let preview = self.preview.as_ref().map(|p| (p, request.fps));
        let latents = denoise(
            &mut solver,
            &inputs,
            preview,
            progress,
            |sample, timestep| {
                let expert = match &mut high_noise {
                    Some((expert, boundary)) if timestep / 1000.0 >= *boundary => expert,
                    _ => &mut low_noise,
                };
                let prompts = expert.text.dim(0)?;
                let time = Tensor::new(vec![timestep as f32; prompts], &self.device)?;
                let samples = Tensor::cat(&vec![sample; prompts], 0)?;
                let conditioning = conditioning.first(prompts)?;
                let cache = expert.cache.as_mut();
                let (flows, weakened) = match expert.skip {
                    Some(skip) => {
                        let (flows, weakened) = expert.model.denoise_and_skipping(
                            &samples,
                            &time,
                            &expert.text,
                            &conditioning,
                            skip.layer,
                            cache,
                        )?;
                        (flows, Some((weakened, skip.scale)))
                    }
                    None => {
                        let flows = expert.model.denoise(
                            &samples,
                            &time,
                            &expert.text,
                            &conditioning,
                            cache,
                        )?;
                        (flows, None)
                    }
                };
                let prompted = flows.narrow(0, 0, 1)?;
                let guided = if expert.guidance > 1.0 {
                    guide(&prompted, &flows.narrow(0, 1, 1)?, expert.guidance)?
                } else {
                    prompted.clone()
                };
                let Some((weakened, scale)) = weakened else {
                    return Ok(guided);
                };
                guided + ((prompted - weakened)? * scale)?
            },
        )?;

        progress.event(ProgressEvent::StageStarted {
            stage: "decode",
            total: 0,
        });
        let video = decode_to_video(&self.model.autoencoder, &latents, request.fps, None)?;
        progress.event(ProgressEvent::StageFinished);
        Ok(video)
    }
}

/// Writes a new model folder `out`: the model in `model` with the model in `high_noise` as its
/// high-noise expert from noise level `boundary` up, and checks that the pair loads. `out` must
/// not exist yet; nothing is left there when the pair does not fit.
pub fn join_experts(
    model: &Path,
    high_noise: &Path,
    boundary: f64,
    out: &Path,
) -> Result<(), PipelineError> {
    if out.exists() {
        return Err(PipelineError::load(
            out,
            "already exists; name a new folder",
        ));
    }
    let config_path = model.join(CONFIG_FILE);
    let mut config: MiniConfig = read_json(&config_path)?;
    if config.sampling.boundary.is_some() {
        return Err(PipelineError::load(
            &config_path,
            "already has a high-noise expert",
        ));
    }
    let expert_path = high_noise.join(CONFIG_FILE);
    check_expert(&config, &read_json(&expert_path)?, &expert_path)?;
    config.sampling.boundary = Some(boundary);
    let copy = |from: &Path, to: &Path| {
        std::fs::copy(from, to)
            .map(|_| ())
            .map_err(|error| PipelineError::load(from, error))
    };
    let write = || {
        let expert = out.join(HIGH_NOISE_DIR);
        std::fs::create_dir_all(&expert).map_err(|error| PipelineError::load(&expert, error))?;
        let json = serde_json::to_string_pretty(&config)
            .map_err(|error| PipelineError::load(&config_path, error))?;
        std::fs::write(out.join(CONFIG_FILE), json)
            .map_err(|error| PipelineError::load(out.join(CONFIG_FILE), error))?;
        copy(&model.join(WEIGHTS_FILE), &out.join(WEIGHTS_FILE))?;
        if model.join(PREVIEW_FILE).exists() {
            copy(&model.join(PREVIEW_FILE), &out.join(PREVIEW_FILE))?;
        }
        for file in [CONFIG_FILE, WEIGHTS_FILE] {
            copy(&high_noise.join(file), &expert.join(file))?;
        }
        MiniPipeline::load(out, &Device::Cpu).map(|_| ())
    };
    write().inspect_err(|_| {
        // Only what this call created is removed: `out` did not exist before.
        let _ = std::fs::remove_dir_all(out);
    })
}

/// One expert's part in a generation: the model, the prompts' embeddings in its text encoder
/// (the prompt, and the negative prompt when it guides), its guidance scale, its skip guidance
/// and its own step cache.
struct Expert<'a> {
    model: &'a HimmelMini,
    text: Tensor,
    guidance: f64,
    skip: Option<SkipGuidance>,
    cache: Option<StepCache>,
}

/// Loads the himmel-mini model in `dir` alone.
fn load_model(dir: &Path, device: &Device) -> Result<HimmelMini, PipelineError> {
    let config_path = dir.join(CONFIG_FILE);
    let config: MiniConfig = read_json(&config_path)?;
    config
        .check()
        .map_err(|reason| PipelineError::load(&config_path, reason))?;
    let weights_path = dir.join(WEIGHTS_FILE);
    let bytes =
        std::fs::read(&weights_path).map_err(|error| PipelineError::load(&weights_path, error))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|error| PipelineError::load_tensor(&weights_path, error))?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    HimmelMini::new(&config, vb).map_err(|error| PipelineError::load_tensor(&weights_path, error))
}

/// Loads the high-noise expert in `dir` for `model`.
fn load_expert(
    model: &HimmelMini,
    dir: &Path,
    device: &Device,
) -> Result<HimmelMini, PipelineError> {
    let expert = load_model(dir, device)?;
    check_expert(model.config(), expert.config(), &dir.join(CONFIG_FILE))?;
    Ok(expert)
}

/// Checks that the expert configured in `expert` (read from `path`) can denoise the latents of
/// the model configured in `model`: the same autoencoder (and so latent statistics), and no
/// expert of its own. Their patches may differ.
fn check_expert(model: &MiniConfig, expert: &MiniConfig, path: &Path) -> Result<(), PipelineError> {
    let mismatch = |what: &str| {
        PipelineError::load(
            path,
            format!(
                "the high-noise expert's {what} differs from the model's; both experts must \
                 denoise the same latents"
            ),
        )
    };
    if expert.autoencoder != model.autoencoder {
        return Err(mismatch("autoencoder (or its latent statistics)"));
    }
    if expert.sampling.boundary.is_some() {
        return Err(PipelineError::load(
            path,
            "sets sampling.boundary, but a high-noise expert has no expert of its own",
        ));
    }
    Ok(())
}
