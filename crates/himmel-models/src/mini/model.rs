//! [`HimmelMini`]: the built-in model's parts under one roof, loaded from one weight file with
//! the prefixes `autoencoder.`, `denoiser.` and `text_encoder.`.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::MiniConfig;
use super::tokenizer::WordTokenizer;
use crate::umt5::Umt5Encoder;
use crate::wan::{StepCache, WanTransformer, WanVae};

/// The noise level below which a predicted sample's flow is not divided further: samplers
/// never ask at zero noise, this only keeps a stray request finite.
const SMALLEST_SIGMA: f64 = 1e-6;

/// Known latents placed on the output timeline, and where they are.
pub struct Conditioning {
    /// Normalised latents `[B, z, F, h, w]`, zero where nothing is known.
    pub known: Tensor,
    /// `[B, 1, F, h, w]`: 1 where `known` holds a given latent, else 0.
    pub mask: Tensor,
}

impl Conditioning {
    /// Nothing known, for latents shaped like `latents` (text to video).
    pub fn none(latents: &Tensor) -> Result<Self> {
        let (batch, _, frames, height, width) = latents.dims5()?;
        Ok(Self {
            known: latents.zeros_like()?,
            mask: Tensor::zeros(
                (batch, 1, frames, height, width),
                latents.dtype(),
                latents.device(),
            )?,
        })
    }

    /// The first `batch` rows (one per prompt).
    pub fn first(&self, batch: usize) -> Result<Self> {
        Ok(Self {
            known: self.known.narrow(0, 0, batch)?,
            mask: self.mask.narrow(0, 0, batch)?,
        })
    }
}

/// Prompt embeddings and the words the vocabulary did not know.
pub struct TextEmbeddings {
    /// `[B, max_prompt_tokens, d_model]`, zero after each prompt's last word.
    pub hidden: Tensor,
    /// Unknown words per prompt.
    pub unknown: Vec<Vec<String>>,
}

/// The himmel-mini model: autoencoder, denoiser and text encoder.
pub struct HimmelMini {
    config: MiniConfig,
    tokenizer: WordTokenizer,
    device: Device,
    /// The causal video autoencoder.
    pub autoencoder: WanVae,
    /// The diffusion transformer.
    pub denoiser: WanTransformer,
    /// The text encoder.
    pub text_encoder: Umt5Encoder,
}

impl HimmelMini {
    /// Builds the model from `config` and weights under the three prefixes.
    pub fn new(config: &MiniConfig, vb: VarBuilder) -> Result<Self> {
        config.check().map_err(candle_core::Error::msg)?;
        Ok(Self {
            autoencoder: WanVae::new(&config.autoencoder, vb.pp("autoencoder"))?,
            denoiser: WanTransformer::new(&config.denoiser, vb.pp("denoiser"))?,
            text_encoder: Umt5Encoder::new(&config.text_encoder, vb.pp("text_encoder"))?,
            tokenizer: WordTokenizer::new(config.vocabulary.clone()),
            device: vb.device().clone(),
            config: config.clone(),
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &MiniConfig {
        &self.config
    }

    /// Embeds `prompts`; an empty prompt is the unconditional input of guidance.
    pub fn encode_text(&self, prompts: &[&str], dtype: DType) -> Result<TextEmbeddings> {
        let device = &self.device;
        let length = self.config.max_prompt_tokens;
        let mut ids = Vec::with_capacity(prompts.len() * length);
        let mut keep = Vec::with_capacity(prompts.len() * length);
        let mut unknown = Vec::with_capacity(prompts.len());
        for prompt in prompts {
            let tokens = self.tokenizer.encode(prompt, length);
            let used = tokens.ids.len();
            ids.extend(tokens.ids);
            ids.extend(std::iter::repeat_n(super::tokenizer::PAD, length - used));
            keep.extend((0..length).map(|i| if i < used { 1f32 } else { 0.0 }));
            unknown.push(tokens.unknown);
        }
        let ids = Tensor::from_vec(ids, (prompts.len(), length), device)?;
        let keep = Tensor::from_vec(keep, (prompts.len(), length), device)?;
        let hidden = self.text_encoder.forward(&ids, &keep)?;
        let hidden = hidden.broadcast_mul(&keep.unsqueeze(2)?)?.to_dtype(dtype)?;
        Ok(TextEmbeddings { hidden, unknown })
    }

    /// Predicts the flow for normalised `latents` at `timestep` `[B]` (0..1000), reusing later
    /// blocks from `cache` where it allows.
    pub fn denoise(
        &self,
        latents: &Tensor,
        timestep: &Tensor,
        text: &Tensor,
        conditioning: &Conditioning,
        cache: Option<&mut StepCache>,
    ) -> Result<Tensor> {
        let output = self.predict(latents, timestep, text, conditioning, cache)?;
        self.flow(&output, latents, timestep)
    }

    /// [`Self::denoise`], and besides it the first row's flow with the self-attention of the
    /// denoiser's block `skipped` skipped: the weakened prediction that skip guidance guides
    /// away from (the blocks before it shared with the plain pass where the cache allows).
    pub fn denoise_and_skipping(
        &self,
        latents: &Tensor,
        timestep: &Tensor,
        text: &Tensor,
        conditioning: &Conditioning,
        skipped: usize,
        cache: Option<&mut StepCache>,
    ) -> Result<(Tensor, Tensor)> {
        let input = Self::input(latents, conditioning)?;
        let (output, weakened) = self
            .denoiser
            .forward_and_skipping(&input, timestep, text, skipped, cache)?;
        let first = |tensor: &Tensor| tensor.narrow(0, 0, 1);
        Ok((
            self.flow(&output, latents, timestep)?,
            self.flow(&weakened, &first(latents)?, &first(timestep)?)?,
        ))
    }

    /// The denoiser's own output for `latents` at `timestep`: what `config.prediction` names.
    pub fn predict(
        &self,
        latents: &Tensor,
        timestep: &Tensor,
        text: &Tensor,
        conditioning: &Conditioning,
        cache: Option<&mut StepCache>,
    ) -> Result<Tensor> {
        let input = Self::input(latents, conditioning)?;
        self.denoiser.forward_cached(&input, timestep, text, cache)
    }

    /// The denoiser's input: the latents, the known latents and their mask.
    fn input(latents: &Tensor, conditioning: &Conditioning) -> Result<Tensor> {
        Tensor::cat(&[latents, &conditioning.known, &conditioning.mask], 1)
    }

    /// The flow the denoiser's `output` for `latents` at `timestep` means.
    fn flow(&self, output: &Tensor, latents: &Tensor, timestep: &Tensor) -> Result<Tensor> {
        let sigma = (timestep / 1000.0)?;
        self.config
            .prediction
            .flow(output, latents, &sigma, SMALLEST_SIGMA)
    }
}
