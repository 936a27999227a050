//! himmel-mini, Himmel's built-in model: Sora's recipe in miniature, trained by `himmel train`
//! on the procedural world. Wan 2.1's causal autoencoder and diffusion transformer with small
//! configs (one code path for big and small models), a small UMT5 encoder over a word
//! vocabulary, and known latents plus a mask as extra input channels, so first frames, clips
//! and both ends can be given (image to video, extension, loops, connections).

mod config;
mod model;
pub mod tokenizer;

pub use config::{MiniConfig, Prediction, SamplingDefaults, SkipGuidance, VideoShape};
pub use model::{Conditioning, HimmelMini, TextEmbeddings};
pub use tokenizer::WordTokenizer;
