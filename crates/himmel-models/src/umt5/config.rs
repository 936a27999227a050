//! [`Umt5Config`]: the text encoder's `config.json`, with transformers' field names.

use serde::{Deserialize, Serialize};

/// Configuration of a UMT5 encoder (defaults: UMT5-XXL as Wan ships it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Umt5Config {
    /// Vocabulary size; default 256384.
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    /// Model width; default 4096.
    #[serde(default = "default_d_model")]
    pub d_model: usize,
    /// Channels per head; default 64.
    #[serde(default = "default_d_kv")]
    pub d_kv: usize,
    /// Feed-forward width; default 10240.
    #[serde(default = "default_d_ff")]
    pub d_ff: usize,
    /// Encoder layers; default 24.
    #[serde(default = "default_layers")]
    pub num_layers: usize,
    /// Attention heads; default 64.
    #[serde(default = "default_heads")]
    pub num_heads: usize,
    /// Buckets of the relative position bias; default 32.
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
    /// Distance beyond which relative positions share a bucket; default 128.
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    /// Epsilon of the RMS norms; default 1e-6.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// Feed-forward kind; default "gated-gelu" (the only one UMT5 uses).
    #[serde(default = "default_ff")]
    pub feed_forward_proj: String,
}

fn default_vocab() -> usize {
    256_384
}
fn default_d_model() -> usize {
    4096
}
fn default_d_kv() -> usize {
    64
}
fn default_d_ff() -> usize {
    10_240
}
fn default_layers() -> usize {
    24
}
fn default_heads() -> usize {
    64
}
fn default_buckets() -> usize {
    32
}
fn default_max_distance() -> usize {
    128
}
fn default_eps() -> f64 {
    1e-6
}
fn default_ff() -> String {
    "gated-gelu".into()
}

impl Default for Umt5Config {
    /// UMT5-XXL, as Wan ships it.
    fn default() -> Self {
        Self {
            vocab_size: default_vocab(),
            d_model: default_d_model(),
            d_kv: default_d_kv(),
            d_ff: default_d_ff(),
            num_layers: default_layers(),
            num_heads: default_heads(),
            relative_attention_num_buckets: default_buckets(),
            relative_attention_max_distance: default_max_distance(),
            layer_norm_epsilon: default_eps(),
            feed_forward_proj: default_ff(),
        }
    }
}
