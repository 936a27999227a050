//! [`MiniConfig`]: everything about a himmel-mini model except its weights (`config.json`).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::umt5::Umt5Config;
use crate::wan::{WanTransformerConfig, WanVaeConfig};

/// A himmel-mini model: Wan's causal autoencoder and diffusion transformer and a UMT5 encoder,
/// all small, with a word vocabulary learnt from the world's captions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MiniConfig {
    /// The video autoencoder; its `latents_mean`/`latents_std` normalise latents.
    pub autoencoder: WanVaeConfig,
    /// The denoiser; `in_channels` is `2 * z_dim + 1` (noisy latents, known latents, mask).
    pub denoiser: WanTransformerConfig,
    /// The text encoder; `vocab_size` is the vocabulary's length plus 2.
    pub text_encoder: Umt5Config,
    /// The words of the tokenizer, ids 2, 3, ... in order.
    pub vocabulary: Vec<String>,
    /// Longest prompt in words; longer prompts are cut.
    pub max_prompt_tokens: usize,
    /// The size the model was trained at: width, height, frames, frames per second.
    pub video: VideoShape,
    /// Default sampling: steps, guidance scale, flow shift.
    pub sampling: SamplingDefaults,
    /// What the denoiser's output is (models exported before this setting predict the flow).
    #[serde(default)]
    pub prediction: Prediction,
}

/// What a denoiser outputs; [`Prediction::flow`] turns it into the flow samplers step along.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// The flow itself, noise minus clean latents (Wan's).
    #[default]
    Flow,
    /// The clean latents ("x-prediction", Li and He 2025): a transformer whose patches hold
    /// more values than its width cannot carry the noise through to a flow, but clean latents
    /// lie on a much smaller manifold it can reach.
    Sample,
}

impl Prediction {
    /// The flow `noise - clean` that `output` stands for, at noisy `latents` `[B, z, F, h, w]`
    /// and noise levels `sigma` `[B]` (0..1). A sample's flow is `(latents - output) / sigma`,
    /// with sigma kept at `smallest_sigma` or above.
    pub fn flow(
        self,
        output: &Tensor,
        latents: &Tensor,
        sigma: &Tensor,
        smallest_sigma: f64,
    ) -> candle_core::Result<Tensor> {
        match self {
            Self::Flow => Ok(output.clone()),
            Self::Sample => {
                let sigma =
                    sigma
                        .maximum(smallest_sigma)?
                        .reshape((sigma.elem_count(), 1, 1, 1, 1))?;
                (latents - output)?.broadcast_div(&sigma)
            }
        }
    }
}

/// The shape of the clips a model makes by default.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VideoShape {
    /// Frame width in pixels.
    pub width: usize,
    /// Frame height in pixels.
    pub height: usize,
    /// Number of frames (`1 + 4k`).
    pub frames: usize,
    /// Frames per second.
    pub fps: f64,
}

/// Sampling settings a model works best with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SamplingDefaults {
    /// Denoising steps.
    pub steps: usize,
    /// Classifier-free guidance scale.
    pub guidance: f64,
    /// Flow shift of the noise schedule.
    pub shift: f64,
    /// The noise level (0 to 1) from which the high-noise expert in the model's `high_noise/`
    /// folder denoises, as in Wan 2.2; set exactly when the model has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boundary: Option<f64>,
    /// Guidance scale of the high-noise expert's steps, when it differs from `guidance`; only
    /// with a `boundary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expert_guidance: Option<f64>,
    /// Skip guidance of the model's own denoiser's steps (below `boundary` when the model has
    /// an expert); unset for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_guidance: Option<SkipGuidance>,
}

/// Spatiotemporal skip guidance (Hyung et al. 2024): besides classifier-free guidance, each
/// step is pushed away from the denoiser's prediction with one block's self-attention skipped
/// (every token attending to itself alone), a weaker model that loses objects and their
/// motion the way the model sometimes does.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SkipGuidance {
    /// How far each step is pushed away from the weakened prediction; 0 turns it off.
    pub scale: f64,
    /// The denoiser block (from 0) whose self-attention is skipped.
    pub layer: usize,
}

impl SkipGuidance {
    /// Skip guidance with `scale` and `layer` where given and the rest from `defaults` (a
    /// model's); `None` when none of them gives any. Fails when only one half is given and the
    /// model has no default for the other.
    pub fn overriding(
        defaults: Option<Self>,
        scale: Option<f64>,
        layer: Option<usize>,
    ) -> Result<Option<Self>, String> {
        match (defaults, scale, layer) {
            (defaults, None, None) => Ok(defaults),
            (Some(defaults), scale, layer) => Ok(Some(Self {
                scale: scale.unwrap_or(defaults.scale),
                layer: layer.unwrap_or(defaults.layer),
            })),
            (None, Some(scale), Some(layer)) => Ok(Some(Self { scale, layer })),
            (None, Some(_), None) => {
                Err("skip guidance needs a layer to skip; the model names none".into())
            }
            (None, None, Some(_)) => {
                Err("skip guidance needs a scale; the model names none".into())
            }
        }
    }

    /// Checks the scale and that the layer is one of `layers` blocks; the message names the
    /// setting that is out of range.
    pub fn check(&self, layers: usize) -> Result<(), String> {
        if !(self.scale.is_finite() && self.scale >= 0.0) {
            return Err(format!(
                "skip guidance scale {} is not a number of at least 0",
                self.scale
            ));
        }
        if self.layer >= layers {
            return Err(format!(
                "skip guidance layer {} is not one of the denoiser's blocks, counted from 0 (the \
                 denoiser has {layers} blocks)",
                self.layer
            ));
        }
        Ok(())
    }
}

impl MiniConfig {
    /// Checks that the parts fit together; the message names the mismatch.
    pub fn check(&self) -> Result<(), String> {
        let z = self.autoencoder.z_dim;
        if self.denoiser.in_channels != 2 * z + 1 || self.denoiser.out_channels != z {
            return Err(format!(
                "denoiser channels {} in / {} out do not fit the autoencoder's {z} latent channels \
                 (expected {} in, {z} out)",
                self.denoiser.in_channels,
                self.denoiser.out_channels,
                2 * z + 1
            ));
        }
        if self.denoiser.text_dim != self.text_encoder.d_model {
            return Err(format!(
                "denoiser text_dim {} differs from the text encoder's d_model {}",
                self.denoiser.text_dim, self.text_encoder.d_model
            ));
        }
        if let Some(boundary) = self.sampling.boundary
            && !(0.0..=1.0).contains(&boundary)
        {
            return Err(format!(
                "sampling.boundary {boundary} is not a noise level from 0 to 1"
            ));
        }
        if let Some(skip) = self.sampling.skip_guidance {
            skip.check(self.denoiser.num_layers)
                .map_err(|reason| format!("sampling.{reason}"))?;
        }
        if let Some(guidance) = self.sampling.expert_guidance {
            if self.sampling.boundary.is_none() {
                return Err(format!(
                    "sampling.expert_guidance {guidance} is set, but there is no high-noise \
                     expert (sampling.boundary)"
                ));
            }
            if !(guidance.is_finite() && guidance >= 0.0) {
                return Err(format!(
                    "sampling.expert_guidance {guidance} is not a guidance scale of at least 0"
                ));
            }
        }
        if self.text_encoder.vocab_size != self.vocabulary.len() + 2 {
            return Err(format!(
                "text encoder vocab_size {} does not match {} words plus padding and unknown",
                self.text_encoder.vocab_size,
                self.vocabulary.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::{Prediction, SkipGuidance};

    #[test]
    fn skip_guidance_takes_what_is_given_and_the_rest_from_the_model() {
        let model = SkipGuidance {
            scale: 2.0,
            layer: 2,
        };
        let over = SkipGuidance::overriding;
        assert_eq!(over(Some(model), None, None), Ok(Some(model)));
        assert_eq!(over(None, None, None), Ok(None));
        let scaled = over(Some(model), Some(0.5), None).unwrap().unwrap();
        assert_eq!((scaled.scale, scaled.layer), (0.5, 2));
        let moved = over(Some(model), None, Some(4)).unwrap().unwrap();
        assert_eq!((moved.scale, moved.layer), (2.0, 4));
        let given = over(None, Some(1.0), Some(3)).unwrap().unwrap();
        assert_eq!((given.scale, given.layer), (1.0, 3));
        assert!(over(None, Some(1.0), None).unwrap_err().contains("layer"));
        assert!(over(None, None, Some(1)).unwrap_err().contains("scale"));
        assert!(model.check(6).is_ok());
        assert!(model.check(2).unwrap_err().contains("2 blocks"));
        let negative = SkipGuidance {
            scale: -1.0,
            ..model
        };
        assert!(negative.check(6).unwrap_err().contains("at least 0"));
    }

    #[test]
    fn a_predicted_sample_stands_for_the_flow_that_made_the_latents() -> candle_core::Result<()> {
        let device = Device::Cpu;
        let clean = Tensor::randn(0f32, 1.0, (2, 3, 2, 4, 4), &device)?;
        let noise = Tensor::randn(0f32, 1.0, (2, 3, 2, 4, 4), &device)?;
        let sigma = Tensor::new(&[0.3f32, 0.9], &device)?;
        let sigma_5d = sigma.reshape((2, 1, 1, 1, 1))?;
        let noisy =
            (clean.broadcast_mul(&(1.0 - &sigma_5d)?)? + noise.broadcast_mul(&sigma_5d)?)?;
        let flow = Prediction::Sample.flow(&clean, &noisy, &sigma, 1e-6)?;
        let error = (flow - (&noise - &clean)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(error < 1e-5, "{error}");
        // A flow prediction is the flow already.
        let same = Prediction::Flow.flow(&noise, &noisy, &sigma, 1e-6)?;
        assert_eq!(
            same.flatten_all()?.to_vec1::<f32>()?,
            noise.flatten_all()?.to_vec1::<f32>()?
        );
        Ok(())
    }
}
