//! Latents as a trained denoiser draws them: clips encoded, noised a little and predicted clean
//! again by a frozen himmel-mini model, guided as its sampler guides. A decoder fine-tuned on
//! them learns the denoiser's own small errors, not only the encoder's latents.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use himmel_models::mini::{Conditioning, HimmelMini};
use himmel_sample::{guide, noised};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::denoiser::TrainedModel;
use crate::error::TrainError;
use crate::random::gaussian;

/// A frozen himmel-mini model that predicts clean latents from noised ones.
pub struct LatentPredictor {
    model: HimmelMini,
    /// The highest noise level (flow sigma, 0 to 1) clips are noised to.
    most: f64,
    /// The guidance scale of its predictions: its sampler's.
    guidance: f64,
}

impl LatentPredictor {
    /// The predictor over `model`'s weights, noising clips to levels from 0 to `most`.
    pub fn new(model: TrainedModel, most: f64, device: &Device) -> Result<Self, TrainError> {
        let guidance = model.config.sampling.guidance;
        let vb = VarBuilder::from_tensors(model.weights, DType::F32, device);
        Ok(Self {
            model: HimmelMini::new(&model.config, vb)?,
            most,
            guidance,
        })
    }

    /// The latents `[B, z, F, h, w]` (not normalised, as the decoder takes them) the model
    /// predicts for `video` `[B, 3, F, H, W]` noised to a level from 0 to the most, each clip's
    /// drawn from `rng` and guided towards its prompt in `prompts`.
    pub fn predict(
        &self,
        video: &Tensor,
        prompts: &[&str],
        rng: &mut ChaCha8Rng,
    ) -> Result<Tensor, TrainError> {
        let autoencoder = &self.model.autoencoder;
        let clean = autoencoder.normalize(&autoencoder.encode(video)?)?;
        let clips = clean.dim(0)?;
        let device = clean.device();
        let levels: Vec<f32> = (0..clips)
            .map(|_| rng.random_range(0.0..=self.most) as f32)
            .collect();
        let sigma = Tensor::from_vec(levels, clips, device)?;
        let by_clip = sigma.reshape((clips, 1, 1, 1, 1))?;
        let noise = gaussian(clean.shape(), rng, device)?;
        let noisy = noised(&clean, &noise, &by_clip)?;
        let guided = self.guidance > 1.0;
        let mut texts = prompts.to_vec();
        if guided {
            texts.extend(std::iter::repeat_n("", clips));
        }
        let text = self.model.encode_text(&texts, DType::F32)?.hidden;
        let rows = texts.len() / clips;
        let inputs = Tensor::cat(&vec![noisy.clone(); rows], 0)?;
        let timestep = Tensor::cat(&vec![(&sigma * 1000.0)?; rows], 0)?;
        let conditioning = Conditioning::none(&inputs)?;
        let flows = self
            .model
            .denoise(&inputs, &timestep, &text, &conditioning, None)?;
        let flow = if guided {
            guide(
                &flows.narrow(0, 0, clips)?,
                &flows.narrow(0, clips, clips)?,
                self.guidance,
            )?
        } else {
            flows
        };
        let predicted = (noisy - flow.broadcast_mul(&by_clip)?)?;
        Ok(autoencoder.denormalize(&predicted)?.detach())
    }
}
