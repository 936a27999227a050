//! Prompts to text embeddings: the reference's cleaning (HTML entities unescaped twice,
//! whitespace collapsed), the model's tokenizer (`tokenizer.json`) with truncation and padding
//! to a fixed length, the UMT5 encoder, and the tail past each prompt's tokens zeroed.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use himmel_models::umt5::{Umt5Config, Umt5Encoder, Umt5Source};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::PipelineError;
use crate::checkpoint::{Checkpoint, KeyLayout};
use himmel_models::umt5::checkpoint::original_umt5_name;

/// The reference's prompt cleaning (without ftfy's mojibake repair).
pub fn clean_prompt(text: &str) -> String {
    let once = htmlize::unescape(text.trim());
    let twice = htmlize::unescape(once.as_ref());
    twice.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Where a text encoder's weights are, and its configuration if a `config.json` gave one (it is
/// read from tensor shapes otherwise).
#[derive(Debug, Clone)]
pub struct TextEncoderWeights {
    /// Safetensors shards or one `.pth` file.
    pub files: Vec<std::path::PathBuf>,
    /// The configuration, when known.
    pub config: Option<Umt5Config>,
}

/// A text encoder's checkpoint read a part at a time: the embedding rows a prompt needs, then
/// one layer after another (UMT5-XXL never whole in memory).
struct CheckpointSource {
    checkpoint: Checkpoint,
    layout: KeyLayout,
    dtype: DType,
    device: Device,
}

impl Umt5Source for CheckpointSource {
    fn embedding_rows(&self, ids: &[u32]) -> candle_core::Result<Tensor> {
        let name = match &self.layout {
            KeyLayout::Original { prefix } => {
                format!("{prefix}{}", original_umt5_name("shared.weight"))
            }
            KeyLayout::Diffusers if self.checkpoint.shape("shared.weight").is_some() => {
                "shared.weight".into()
            }
            KeyLayout::Diffusers => "encoder.embed_tokens.weight".into(),
        };
        self.checkpoint
            .rows(&name, ids, self.dtype, &self.device)
            .map_err(candle_core::Error::wrap)
    }

    fn open(&self) -> candle_core::Result<VarBuilder<'static>> {
        self.checkpoint
            .var_builder(&self.layout, original_umt5_name, self.dtype, &self.device)
            .map_err(candle_core::Error::wrap)
    }
}

/// A tokenizer and UMT5 encoder that turn prompts into `[B, max_length, d_model]` embeddings.
pub struct PromptEncoder {
    tokenizer: Tokenizer,
    encoder: Umt5Encoder,
    max_length: usize,
}

impl PromptEncoder {
    /// Loads the tokenizer from `tokenizer.json` and the encoder from its weights.
    pub fn load(
        tokenizer_path: &Path,
        weights: &TextEncoderWeights,
        max_length: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, PipelineError> {
        let mut tokenizer = Tokenizer::from_file(tokenizer_path)
            .map_err(|e| PipelineError::load(tokenizer_path, e))?;
        let pad_id = tokenizer.token_to_id("<pad>").unwrap_or(0);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                ..Default::default()
            }))
            .map_err(|e| PipelineError::load(tokenizer_path, e))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_length),
            pad_id,
            pad_token: "<pad>".into(),
            ..Default::default()
        }));
        let checkpoint = Checkpoint::open(&weights.files)?;
        let layout = checkpoint.umt5_layout()?;
        let config = match &weights.config {
            Some(config) => config.clone(),
            None => checkpoint.umt5_config(&layout)?,
        };
        let source = CheckpointSource {
            checkpoint,
            layout,
            dtype,
            device: device.clone(),
        };
        let encoder = Umt5Encoder::streamed(&config, Box::new(source))
            .map_err(|e| PipelineError::load_tensor(&weights.files[0], e))?;
        Ok(Self {
            tokenizer,
            encoder,
            max_length,
        })
    }

    /// Embeddings of `prompts` (cleaned first), zero past each prompt's last token.
    pub fn encode(&self, prompts: &[&str], device: &Device) -> Result<Tensor, PipelineError> {
        let cleaned: Vec<String> = prompts.iter().map(|p| clean_prompt(p)).collect();
        let encodings = self
            .tokenizer
            .encode_batch(cleaned, true)
            .map_err(|e| PipelineError::load("tokenizer", e))?;
        let batch = encodings.len();
        let ids: Vec<u32> = encodings
            .iter()
            .flat_map(|e| e.get_ids().to_vec())
            .collect();
        let mask: Vec<u32> = encodings
            .iter()
            .flat_map(|e| e.get_attention_mask().to_vec())
            .collect();
        // Padding comes after the tokens and no token attends to it, so the encoder runs over
        // the longest prompt's tokens only: the same values for them as over all `max_length`
        // positions (the rest are zeros either way), at a fraction of the work.
        let used = encodings
            .iter()
            .map(|e| e.get_attention_mask().iter().filter(|&&m| m != 0).count())
            .max()
            .unwrap_or(0)
            .max(1);
        let ids = Tensor::from_vec(ids, (batch, self.max_length), device)?.narrow(1, 0, used)?;
        let mask = Tensor::from_vec(mask, (batch, self.max_length), device)?.narrow(1, 0, used)?;
        let hidden = self.encoder.forward(&ids, &mask)?;
        let keep = mask.to_dtype(hidden.dtype())?.unsqueeze(2)?;
        Ok(hidden
            .broadcast_mul(&keep)?
            .pad_with_zeros(1, 0, self.max_length - used)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_like_the_reference() {
        assert_eq!(
            clean_prompt("a \t red\n ball &amp;amp; &lt;sky&gt;  "),
            "a red ball & <sky>"
        );
    }
}
