//! The procedural physics world: scenes sampled from a seed or built from a JSON spec,
//! simulated with real physics, rendered deterministically, and described in captions.
//! It makes endless captioned training clips for the built-in model.
#![deny(missing_docs)]

pub mod camera;
pub mod caption;
pub mod detect;
pub mod expand;
pub mod fault;
pub mod lexicon;
pub mod physics;
pub mod render;
pub mod sample;
pub mod score;
pub mod spec;
pub mod vocab;

pub use render::{Clip, RenderSettings, render};
pub use sample::{ClipRecord, sample_clip, sample_clip_mixed};
pub use spec::{ObjectSpec, SceneMix, SceneSpec, SpecError};

/// Hand-written prompts with the attributes each asks for (`PROMPT => EXPECTATIONS` lines, `#`
/// comments): the expansion test set, and held-out prompts for evaluating models trained on
/// the world (no training run sees these phrasings).
pub const HELD_OUT_PROMPTS: &str = include_str!("../prompts.txt");

/// The prompts of [`HELD_OUT_PROMPTS`], without their expectations.
pub fn held_out_prompts() -> Vec<&'static str> {
    HELD_OUT_PROMPTS
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split("=>").next())
        .map(str::trim)
        .collect()
}
