//! Training clips from the procedural world, rendered on the fly: clip `i` of a run is a
//! function of the seed and `i` alone, so any step's batch can be made again (resuming).

use std::ops::Range;

use candle_core::{Device, Tensor};
use himmel_models::mini::VideoShape;
use himmel_world::render::RenderSettings;
use himmel_world::sample::{ClipRecord, sample_clip};

use crate::error::TrainError;

/// An endless, reproducible stream of captioned world clips.
#[derive(Debug, Clone, Copy)]
pub struct WorldClips {
    settings: RenderSettings,
    seed: u64,
}

/// Clips stacked for a model: video `[B, 3, F, H, W]` in -1..=1 and their records.
pub struct ClipBatch {
    /// The frames.
    pub video: Tensor,
    /// Scene, caption and prompts of each clip.
    pub records: Vec<ClipRecord>,
}

impl WorldClips {
    /// Clips of `shape` from the world run `seed`.
    pub fn new(shape: VideoShape, seed: u64) -> Self {
        Self {
            settings: RenderSettings {
                width: shape.width,
                height: shape.height,
                frames: shape.frames,
                fps: shape.fps,
            },
            seed,
        }
    }

    /// Renders the clips with the given indices.
    pub fn batch(&self, indices: Range<u64>, device: &Device) -> Result<ClipBatch, TrainError> {
        let mut videos = Vec::new();
        let mut records = Vec::new();
        for index in indices {
            let (clip, record) = self.record_and_clip(index)?;
            let frames = clip.video.to_f32().map_err(|error| TrainError::World {
                index,
                message: error.to_string(),
            })?;
            videos.push(frames.permute((3, 0, 1, 2))?.affine(2.0, -1.0)?);
            records.push(record);
        }
        Ok(ClipBatch {
            video: Tensor::stack(&videos, 0)?.to_device(device)?,
            records,
        })
    }

    /// The records (scene, caption, prompts) of the clips with the given indices.
    pub fn records(&self, indices: Range<u64>) -> Result<Vec<ClipRecord>, TrainError> {
        indices
            .map(|index| Ok(self.record_and_clip(index)?.1))
            .collect()
    }

    fn record_and_clip(
        &self,
        index: u64,
    ) -> Result<(himmel_world::render::Clip, ClipRecord), TrainError> {
        sample_clip(self.seed, index, &self.settings).map_err(|error| TrainError::World {
            index,
            message: error.to_string(),
        })
    }
}
