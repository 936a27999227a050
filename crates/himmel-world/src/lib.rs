//! The procedural physics world: scenes sampled from a seed or built from a JSON spec,
//! simulated with real physics, rendered deterministically, and described in captions.
//! It makes endless captioned training clips for the built-in model.
#![deny(missing_docs)]

pub mod camera;
pub mod caption;
pub mod detect;
pub mod expand;
pub mod lexicon;
pub mod physics;
pub mod render;
pub mod sample;
pub mod score;
pub mod spec;
pub mod vocab;

pub use render::{Clip, RenderSettings, render};
pub use sample::{ClipRecord, sample_clip};
pub use spec::{ObjectSpec, SceneSpec, SpecError};
