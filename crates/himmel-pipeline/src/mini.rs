//! Generation with himmel-mini, the built-in model: the prompt is expanded into a world scene,
//! which is simulated and described in a detailed caption like those the model was trained on
//! (recaptioning); the caption is encoded, latents are denoised with classifier-free guidance,
//! and the autoencoder decodes them.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use himmel_core::{Progress, ProgressEvent, Video};
use himmel_models::mini::{Conditioning, HimmelMini, MiniConfig};
use himmel_models::wan::StepCache;
use himmel_sample::{UniPc, guide};
use himmel_world::SceneSpec;
use himmel_world::caption::detailed_caption;
use himmel_world::expand::expand;
use himmel_world::render::{RenderSettings, render};

use crate::conditioning::encode_start;
use crate::denoise::{Inputs, denoise};
use crate::error::PipelineError;
use crate::preview::{LatentPreview, PREVIEW_FIT_CLIPS};
use crate::request::{GenerationRequest, ModelLimits, ValidRequest, ValidationError};
use crate::tasks::Windows;
use crate::wan::decode_to_video;

/// The built-in model's name.
pub const BUILTIN_NAME: &str = "himmel-mini";
/// The model's config file in its folder.
pub const CONFIG_FILE: &str = "config.json";
/// The model's weights in its folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
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
    device: Device,
    preview: Option<LatentPreview>,
}

impl MiniPipeline {
    /// Loads the model in `dir` (`config.json`, `model.safetensors`).
    pub fn load(dir: &Path, device: &Device) -> Result<Self, PipelineError> {
        let config_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path)
            .map_err(|error| PipelineError::load(&config_path, error))?;
        let config: MiniConfig = serde_json::from_str(&text)
            .map_err(|error| PipelineError::load(&config_path, error))?;
        config
            .check()
            .map_err(|reason| PipelineError::load(&config_path, reason))?;
        let weights_path = dir.join(WEIGHTS_FILE);
        let bytes = std::fs::read(&weights_path)
            .map_err(|error| PipelineError::load(&weights_path, error))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, device)
            .map_err(|error| PipelineError::load_tensor(&weights_path, error))?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let model = HimmelMini::new(&config, vb)
            .map_err(|error| PipelineError::load_tensor(&weights_path, error))?;
        Ok(Self {
            model,
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
        let patch = self.config().denoiser.patch_size;
        let autoencoder = &self.config().autoencoder;
        ModelLimits {
            temporal_factor: autoencoder.temporal_factor(),
            size_multiple: autoencoder.spatial_factor() * patch[1].max(patch[2]),
            latent_channels: autoencoder.z_dim,
            spatial_factor: autoencoder.spatial_factor(),
            max_side: 512,
            // The autoencoder's chunk caches are trained on clips of this length; longer videos
            // are made by extension.
            max_frames: self.config().video.frames,
        }
    }

    /// How tasks longer than one clip cut their work: windows of the trained length that
    /// share 2 latent frames (5 frames known at a window's start).
    pub fn windows(&self) -> Windows {
        Windows {
            frames: self.limits().max_frames,
            overlap: 2,
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
        decode_to_video(autoencoder, &latents, video.fps())
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
        let guided = request.guidance > 1.0;
        progress.event(ProgressEvent::StageStarted {
            stage: "encode prompt",
            total: 0,
        });
        let prompts = [caption, request.negative_prompt.as_str()];
        let text = self
            .model
            .encode_text(if guided { &prompts } else { &prompts[..1] }, DType::F32)?
            .hidden;
        progress.event(ProgressEvent::StageFinished);

        let shape = self.limits().latent_shape(request);
        let autoencoder = &self.model.autoencoder;
        let inputs = Inputs::prepare(autoencoder, request, &shape, &self.device, progress)?;
        let shift = request.shift.unwrap_or(self.config().sampling.shift);
        let mut solver = UniPc::new(request.steps, shift, 1000);
        let batch = text.dim(0)?;
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
        let mut cache = request.step_cache.map(StepCache::new);
        let latents = denoise(
            &mut solver,
            &inputs,
            preview,
            progress,
            |sample, timestep| {
                let time = Tensor::new(vec![timestep as f32; batch], &self.device)?;
                let flows = self.model.denoise(
                    &batched(sample)?,
                    &time,
                    &text,
                    &conditioning,
                    cache.as_mut(),
                )?;
                if guided {
                    guide(
                        &flows.narrow(0, 0, 1)?,
                        &flows.narrow(0, 1, 1)?,
                        request.guidance,
                    )
                } else {
                    Ok(flows)
                }
            },
        )?;

        progress.event(ProgressEvent::StageStarted {
            stage: "decode",
            total: 0,
        });
        let video = decode_to_video(&self.model.autoencoder, &latents, request.fps)?;
        progress.event(ProgressEvent::StageFinished);
        Ok(video)
    }
}
