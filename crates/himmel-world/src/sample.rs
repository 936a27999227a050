//! Sampling captioned clips: a seed and an index give a scene, its rendering, its detailed
//! caption and short prompts, all reproducible.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::caption::{Prompt, detailed_caption, short_prompts};
use crate::render::{Clip, RenderSettings, render};
use crate::spec::{SceneMix, SceneSpec};

/// Short prompts made per clip, in English and in German.
const ENGLISH_PROMPTS: usize = 3;
const GERMAN_PROMPTS: usize = 2;

/// What is stored beside each sampled clip (`000000.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipRecord {
    /// The seed of the whole sample run.
    pub seed: u64,
    /// The clip's index within the run.
    pub index: u64,
    /// Frame width.
    pub width: usize,
    /// Frame height.
    pub height: usize,
    /// Number of frames.
    pub frames: usize,
    /// Frames per second.
    pub fps: f64,
    /// The scene.
    pub spec: SceneSpec,
    /// The detailed caption.
    pub caption: String,
    /// Short user-style prompts.
    pub prompts: Vec<Prompt>,
}

/// The random stream of clip `index` in a run with `seed`: independent of other clips.
pub fn clip_rng(seed: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    rng
}

/// Samples, renders and captions clip `index` of the run with `seed`.
pub fn sample_clip(
    seed: u64,
    index: u64,
    settings: &RenderSettings,
) -> Result<(Clip, ClipRecord), himmel_core::VideoError> {
    sample_clip_mixed(seed, index, settings, None)
}

/// [`sample_clip`] with its scene drawn by `mix` where given ([`SceneSpec::sample_mixed`]).
pub fn sample_clip_mixed(
    seed: u64,
    index: u64,
    settings: &RenderSettings,
    mix: Option<&SceneMix>,
) -> Result<(Clip, ClipRecord), himmel_core::VideoError> {
    let mut rng = clip_rng(seed, index);
    let spec = match mix {
        Some(mix) => SceneSpec::sample_mixed(&mut rng, mix),
        None => SceneSpec::sample(&mut rng),
    };
    let clip = render(&spec, settings)?;
    let record = ClipRecord {
        seed,
        index,
        width: settings.width,
        height: settings.height,
        frames: settings.frames,
        fps: settings.fps,
        caption: detailed_caption(&spec, &clip),
        prompts: short_prompts(&spec, &mut rng, ENGLISH_PROMPTS, GERMAN_PROMPTS),
        spec,
    };
    Ok((clip, record))
}
