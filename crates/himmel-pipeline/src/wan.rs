//! [`WanPipeline`]: Wan 2.1 text to video from a diffusers folder, as diffusers' `WanPipeline`
//! runs it: prompt and negative prompt through UMT5, noise, the solver loop with
//! classifier-free guidance, and the VAE decode one latent frame at a time.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use himmel_core::{Progress, ProgressEvent, Video};
use himmel_models::wan::checkpoint::{original_transformer_name, original_vae_name};
use himmel_models::wan::{
    StepCache, VaeTiling, WanTransformer, WanTransformerConfig, WanVae, WanVaeConfig,
};
use himmel_sample::{SchedulerConfig, guide};

use crate::PipelineError;
use crate::checkpoint::Checkpoint;
use crate::denoise::{Inputs, denoise};
use crate::layout::{pipeline_class, read_json, weight_files};
use crate::preview::{LatentPreview, PREVIEW_FIT_CLIPS};
use crate::prompt::{PromptEncoder, TextEncoderWeights};
use crate::request::{GenerationRequest, ModelLimits, ValidRequest, ValidationError};
use crate::tasks::Windows;

/// The precision the transformer and text encoder compute in (the VAE always runs in f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// 32-bit floats: exact comparison with the reference.
    F32,
    /// bfloat16: half the memory, the precision Wan was trained in.
    Bf16,
    /// float16.
    F16,
    /// The transformer blocks' attention and feed-forward products in int8 (weights per output
    /// channel, activations per token, with AVX-512 VNNI or AVX2), everything else in bf16: the
    /// blocks' weights take half bf16's memory. CPUs with neither run the blocks in bf16.
    Int8,
}

impl Precision {
    fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 | Self::Int8 => DType::BF16,
            Self::F16 => DType::F16,
        }
    }
}

/// Prompts are padded or truncated to this many tokens, as Wan was trained.
pub const MAX_SEQUENCE_LENGTH: usize = 512;

/// Standard normal noise of `shape` from `seed` (ChaCha8), the same on every machine.
pub(crate) fn seeded_noise(
    shape: &[usize],
    seed: u64,
    device: &Device,
) -> candle_core::Result<Tensor> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let count = shape.iter().product();
    let values: Vec<f32> = (0..count)
        .map(|_| rng.sample(rand_distr::StandardNormal))
        .collect();
    Tensor::from_vec(values, shape, device)
}

/// Decodes normalised latents `[1, z, F, h, w]` with `vae` (in tiles with `tiling`) into a
/// video at `fps`, its frames in the CPU's memory whatever device decoded them.
pub(crate) fn decode_to_video(
    vae: &himmel_models::wan::WanVae,
    latents: &Tensor,
    fps: f64,
    tiling: Option<&VaeTiling>,
) -> Result<Video, PipelineError> {
    let latents = vae.denormalize(latents)?;
    let video = match tiling {
        Some(tiling) => vae.decode_tiled(&latents, tiling)?,
        None => vae.decode(&latents)?,
    };
    let frames = ((video / 2.0)? + 0.5)?
        .clamp(0f32, 1f32)?
        .squeeze(0)?
        .permute((1, 2, 3, 0))?
        .contiguous()?
        .to_device(&Device::Cpu)?;
    Ok(Video::new(frames, fps)?)
}

/// Where a Wan model's parts are.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// A diffusers folder (`model_index.json`, one subfolder per part).
    Folder(PathBuf),
    /// Single files, as the original release and ComfyUI ship them.
    Files(SingleFiles),
}

/// The single files of a Wan model.
#[derive(Debug, Clone)]
pub struct SingleFiles {
    /// The transformer (original, ComfyUI or diffusers names).
    pub transformer: PathBuf,
    /// The VAE (safetensors or the original `.pth`).
    pub vae: PathBuf,
    /// The UMT5 text encoder (safetensors or the original `.pth`).
    pub text_encoder: PathBuf,
    /// The tokenizer's `tokenizer.json`.
    pub tokenizer: PathBuf,
}

/// Wan 2.1's scheduler when a single-file model brings none: UniPC, flow shift 3 (480p).
const DEFAULT_SCHEDULER: &str = r#"{"_class_name": "UniPCMultistepScheduler", "flow_shift": 3.0,
    "use_flow_sigmas": true, "prediction_type": "flow_prediction", "solver_order": 2}"#;

/// A loaded Wan 2.1 text-to-video model.
pub struct WanPipeline {
    tokenizer: PathBuf,
    text_encoder: TextEncoderWeights,
    transformer: WanTransformer,
    vae: WanVae,
    scheduler: SchedulerConfig,
    precision: Precision,
    device: Device,
    max_sequence_length: usize,
    preview: Option<LatentPreview>,
    vae_tiling: Option<VaeTiling>,
}

/// Loads a transformer from `files` in whatever layout they use, to compute in `precision`;
/// `config` is read from the tensor shapes when not given.
pub fn load_transformer(
    files: &[PathBuf],
    config: Option<WanTransformerConfig>,
    precision: Precision,
    device: &Device,
) -> Result<WanTransformer, PipelineError> {
    let checkpoint = Checkpoint::open(files)?;
    let layout = checkpoint.transformer_layout()?;
    let config = match config {
        Some(config) => config,
        None => checkpoint.transformer_config(&layout)?,
    };
    let vb = checkpoint.var_builder(
        &layout,
        original_transformer_name,
        precision.dtype(),
        device,
    )?;
    match precision {
        Precision::Int8 => WanTransformer::new_int8(&config, vb),
        _ => WanTransformer::new(&config, vb),
    }
    .map_err(|e| PipelineError::load_tensor(&files[0], e))
}

/// Loads a VAE's decoder from `files` in whatever layout they use; its encoder is read from them
/// again when something is first encoded.
pub fn load_vae(
    files: &[PathBuf],
    config: WanVaeConfig,
    device: &Device,
) -> Result<WanVae, PipelineError> {
    let open = {
        let (files, device) = (files.to_vec(), device.clone());
        let blocks = config.num_res_blocks;
        move || -> Result<_, PipelineError> {
            let checkpoint = Checkpoint::open(&files)?;
            let layout = checkpoint.vae_layout()?;
            checkpoint.var_builder(
                &layout,
                move |name| original_vae_name(name, blocks),
                DType::F32,
                &device,
            )
        }
    };
    let vb = open()?;
    let source = Box::new(move || open().map_err(candle_core::Error::wrap));
    WanVae::with_lazy_encoder(&config, vb, source)
        .map_err(|e| PipelineError::load_tensor(&files[0], e))
}

impl WanPipeline {
    /// Loads the transformer, VAE and scheduler (the text encoder is loaded per generation and
    /// dropped after encoding).
    pub fn load(
        source: &ModelSource,
        precision: Precision,
        device: &Device,
    ) -> Result<Self, PipelineError> {
        let (tokenizer, text_encoder, transformer, vae, scheduler) = match source {
            ModelSource::Folder(root) => {
                let class = pipeline_class(root)?;
                if class != "WanPipeline" {
                    let reason = format!(
                        "pipeline class {class:?} is not supported; Himmel runs WanPipeline (Wan 2.1 text to video)"
                    );
                    return Err(PipelineError::load(root, reason));
                }
                let transformer_config: WanTransformerConfig =
                    read_json(&root.join("transformer/config.json"))?;
                let vae_config: WanVaeConfig = read_json(&root.join("vae/config.json"))?;
                let text_encoder = TextEncoderWeights {
                    files: weight_files(&root.join("text_encoder"))?,
                    config: Some(read_json(&root.join("text_encoder/config.json"))?),
                };
                (
                    root.join("tokenizer/tokenizer.json"),
                    text_encoder,
                    load_transformer(
                        &weight_files(&root.join("transformer"))?,
                        Some(transformer_config),
                        precision,
                        device,
                    )?,
                    load_vae(&weight_files(&root.join("vae"))?, vae_config, device)?,
                    read_json(&root.join("scheduler/scheduler_config.json"))?,
                )
            }
            ModelSource::Files(files) => {
                let scheduler = serde_json::from_str(DEFAULT_SCHEDULER)
                    .map_err(|e| PipelineError::load("scheduler", e))?;
                (
                    files.tokenizer.clone(),
                    TextEncoderWeights {
                        files: vec![files.text_encoder.clone()],
                        config: None,
                    },
                    load_transformer(
                        std::slice::from_ref(&files.transformer),
                        None,
                        precision,
                        device,
                    )?,
                    load_vae(
                        std::slice::from_ref(&files.vae),
                        WanVaeConfig::default_wan21(),
                        device,
                    )?,
                    scheduler,
                )
            }
        };
        Ok(Self {
            tokenizer,
            text_encoder,
            transformer,
            vae,
            scheduler,
            precision,
            device: device.clone(),
            max_sequence_length: MAX_SEQUENCE_LENGTH,
            preview: match source {
                ModelSource::Folder(root) => LatentPreview::load(root)?,
                ModelSource::Files(_) => None,
            },
            vae_tiling: None,
        })
    }

    /// Uses `length` prompt tokens instead of 512 (for tiny test models).
    pub fn with_max_sequence_length(mut self, length: usize) -> Self {
        self.max_sequence_length = length;
        self
    }

    /// Decodes frames larger than a tile in overlapping tiles (`None`: whole frames, the
    /// default, as diffusers decodes them): the decoder's memory bounded by the tile.
    pub fn with_vae_tiling(mut self, tiling: Option<VaeTiling>) -> Self {
        self.vae_tiling = tiling;
        self
    }

    /// Makes sure previews can be shown: fits the latent-to-RGB projection on world clips when
    /// the model folder holds no `preview.json`. Returns whether it had to fit one.
    pub fn prepare_previews(&mut self) -> Result<bool, PipelineError> {
        if self.preview.is_some() {
            return Ok(false);
        }
        self.preview = Some(LatentPreview::fit(
            &self.vae,
            PREVIEW_FIT_CLIPS,
            &self.device,
        )?);
        Ok(true)
    }

    /// What this model accepts.
    pub fn limits(&self) -> ModelLimits {
        ModelLimits {
            temporal_factor: 4,
            size_multiple: 16,
            latent_channels: self.transformer.config().in_channels,
            spatial_factor: 8,
            max_side: 4096,
            max_frames: 1601,
            high_noise_expert: false,
            skip_guidance_layers: None,
        }
    }

    /// How tasks longer than one clip cut their work: windows of 81 frames (the length Wan 2.1
    /// was trained on) that share 4 latent frames (13 frames known at a window's start).
    pub fn windows(&self) -> Windows {
        Windows {
            frames: 81,
            overlap: 4,
            temporal_factor: self.limits().temporal_factor,
        }
    }

    /// Checks a request against this model's limits.
    pub fn validate(&self, request: GenerationRequest) -> Result<ValidRequest, ValidationError> {
        self.limits().validate(request)
    }

    /// Generates the video a valid request asks for.
    pub fn generate(
        &self,
        request: &ValidRequest,
        progress: &dyn Progress,
    ) -> Result<Video, PipelineError> {
        let request = request.get();
        let dtype = self.precision.dtype();
        let guided = request.guidance > 1.0;

        progress.event(ProgressEvent::StageStarted {
            stage: "encode prompt",
            total: 0,
        });
        let (text, negative) = {
            let encoder = PromptEncoder::load(
                &self.tokenizer,
                &self.text_encoder,
                self.max_sequence_length,
                dtype,
                &self.device,
            )?;
            let prompts: Vec<&str> = if guided {
                vec![&request.prompt, &request.negative_prompt]
            } else {
                vec![&request.prompt]
            };
            let embeddings = encoder.encode(&prompts, &self.device)?;
            let negative = if guided {
                Some(embeddings.narrow(0, 1, 1)?)
            } else {
                None
            };
            (embeddings.narrow(0, 0, 1)?, negative)
            // The encoder (UMT5-XXL is 11 GB in bf16) is dropped here.
        };
        progress.event(ProgressEvent::StageFinished);

        let mut solver = self.scheduler.solver(request.steps, request.shift)?;
        let shape = self.limits().latent_shape(request);
        let inputs = Inputs::prepare(&self.vae, request, &shape, &self.device, progress)?;
        let preview = self.preview.as_ref().map(|p| (p, request.fps));
        let mut caches = request
            .step_cache
            .map(|threshold| [StepCache::new(threshold), StepCache::new(threshold)]);
        let latents = denoise(
            solver.as_mut(),
            &inputs,
            preview,
            progress,
            |sample, timestep| {
                let input = sample.to_dtype(dtype)?;
                let time = Tensor::new(&[timestep as f32], &self.device)?;
                let [conditional_cache, unconditional_cache] = match &mut caches {
                    Some([first, second]) => [Some(first), Some(second)],
                    None => [None, None],
                };
                let conditional =
                    self.transformer
                        .forward_cached(&input, &time, &text, conditional_cache)?;
                match &negative {
                    Some(negative) => {
                        let unconditional = self.transformer.forward_cached(
                            &input,
                            &time,
                            negative,
                            unconditional_cache,
                        )?;
                        guide(&conditional, &unconditional, request.guidance)
                    }
                    None => Ok(conditional),
                }
            },
        )?;

        progress.event(ProgressEvent::StageStarted {
            stage: "decode",
            total: 0,
        });
        let latents = latents.to_dtype(DType::F32)?;
        let tiling = self.vae_tiling.as_ref();
        let video = decode_to_video(&self.vae, &latents, request.fps, tiling)?;
        progress.event(ProgressEvent::StageFinished);
        Ok(video)
    }
}
