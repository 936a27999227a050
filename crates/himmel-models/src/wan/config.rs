//! [`WanTransformerConfig`]: the transformer's `config.json`, with diffusers' field names.

use serde::{Deserialize, Serialize};

/// Configuration of the Wan diffusion transformer, as in a diffusers `transformer/config.json`.
/// Defaults are diffusers' class defaults (the 14B text-to-video model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WanTransformerConfig {
    /// Patch size over (frames, height, width); default `[1, 2, 2]`.
    #[serde(default = "default_patch_size")]
    pub patch_size: [usize; 3],
    /// Attention heads; default 40 (1.3B: 12).
    #[serde(default = "default_heads")]
    pub num_attention_heads: usize,
    /// Channels per head; default 128.
    #[serde(default = "default_head_dim")]
    pub attention_head_dim: usize,
    /// Latent channels in; default 16.
    #[serde(default = "default_channels")]
    pub in_channels: usize,
    /// Latent channels out; default 16.
    #[serde(default = "default_channels")]
    pub out_channels: usize,
    /// Width of the text encoder's embeddings; default 4096 (UMT5-XXL).
    #[serde(default = "default_text_dim")]
    pub text_dim: usize,
    /// Width of the sinusoidal timestep embedding; default 256.
    #[serde(default = "default_freq_dim")]
    pub freq_dim: usize,
    /// Hidden width of the feed-forward layers; default 13824 (1.3B: 8960).
    #[serde(default = "default_ffn_dim")]
    pub ffn_dim: usize,
    /// Transformer blocks; default 40 (1.3B: 30).
    #[serde(default = "default_layers")]
    pub num_layers: usize,
    /// Whether cross-attention has an affine LayerNorm before it; default true.
    #[serde(default = "default_true")]
    pub cross_attn_norm: bool,
    /// Normalisation of queries and keys; default `"rms_norm_across_heads"`, the only one Wan uses.
    #[serde(default = "default_qk_norm")]
    pub qk_norm: Option<String>,
    /// Epsilon of every norm; default 1e-6.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Width of CLIP image embeddings for image-to-video models; default none (text-to-video).
    #[serde(default)]
    pub image_dim: Option<usize>,
    /// Width of the image key/value projections of image-to-video models; default none.
    #[serde(default)]
    pub added_kv_proj_dim: Option<usize>,
    /// Positions the rotary tables cover per axis; default 1024.
    #[serde(default = "default_rope_len")]
    pub rope_max_seq_len: usize,
}

fn default_patch_size() -> [usize; 3] {
    [1, 2, 2]
}
fn default_heads() -> usize {
    40
}
fn default_head_dim() -> usize {
    128
}
fn default_channels() -> usize {
    16
}
fn default_text_dim() -> usize {
    4096
}
fn default_freq_dim() -> usize {
    256
}
fn default_ffn_dim() -> usize {
    13824
}
fn default_layers() -> usize {
    40
}
fn default_true() -> bool {
    true
}
fn default_qk_norm() -> Option<String> {
    Some("rms_norm_across_heads".into())
}
fn default_eps() -> f64 {
    1e-6
}
fn default_rope_len() -> usize {
    1024
}

impl WanTransformerConfig {
    /// Width of the token stream: heads times channels per head.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// The 1.3B text-to-video model (`Wan-AI/Wan2.1-T2V-1.3B-Diffusers`).
    pub fn t2v_1_3b() -> Self {
        Self {
            num_attention_heads: 12,
            ffn_dim: 8960,
            num_layers: 30,
            ..Self::default()
        }
    }
}

impl Default for WanTransformerConfig {
    fn default() -> Self {
        Self {
            patch_size: default_patch_size(),
            num_attention_heads: default_heads(),
            attention_head_dim: default_head_dim(),
            in_channels: default_channels(),
            out_channels: default_channels(),
            text_dim: default_text_dim(),
            freq_dim: default_freq_dim(),
            ffn_dim: default_ffn_dim(),
            num_layers: default_layers(),
            cross_attn_norm: true,
            qk_norm: default_qk_norm(),
            eps: default_eps(),
            image_dim: None,
            added_kv_proj_dim: None,
            rope_max_seq_len: default_rope_len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_diffusers_config_with_defaults() {
        let json = r#"{"_class_name": "WanTransformer3DModel", "num_attention_heads": 12, "ffn_dim": 8960,
                       "num_layers": 30, "patch_size": [1, 2, 2]}"#;
        let config: WanTransformerConfig = serde_json::from_str(json).unwrap();
        assert_eq!(config, WanTransformerConfig::t2v_1_3b());
        assert_eq!(config.inner_dim(), 1536);
    }
}
