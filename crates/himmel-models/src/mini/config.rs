//! [`MiniConfig`]: everything about a himmel-mini model except its weights (`config.json`).

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
