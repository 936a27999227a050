//! From a generation request to a video: validation (one error per rule, naming the field, the
//! limit and the value), loading a model from the files users have, prompt encoding, the
//! denoising loop with guidance, and decoding.
#![deny(missing_docs)]

pub mod checkpoint;
pub mod conditioning;
mod denoise;
pub mod error;
pub mod layout;
pub mod mini;
pub mod preview;
pub mod prompt;
pub mod request;
mod safetensors_files;
pub mod tasks;
pub mod wan;

pub use conditioning::{Anchor, KnownClip, SourceClip};
pub use error::PipelineError;
pub use himmel_models::mini::SkipGuidance;
pub use mini::{MiniPipeline, Recaption};
pub use request::{GenerationRequest, ValidRequest, ValidationError};
pub use wan::{ModelSource, Precision, SingleFiles, WanPipeline};
