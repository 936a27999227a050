//! UMT5 (Chung et al., 2023, "UniMax: Fairer and More Effective Language Sampling for
//! Large-Scale Multilingual Pretraining"): the encoder half, which Wan 2.1 uses as its text
//! encoder (UMT5-XXL, `text_encoder/` of a diffusers Wan folder). Parity with transformers is
//! tested on a tiny random model (`tools/reference/umt5.py`).

pub mod checkpoint;
mod config;
mod encoder;

pub use config::Umt5Config;
pub use encoder::{Umt5Encoder, Umt5Source};
