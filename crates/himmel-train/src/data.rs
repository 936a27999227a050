//! Training clips: rendered on the fly by the procedural world (clip `i` of a run is a function
//! of the seed and `i` alone, so any step's batch can be made again when resuming), or read from
//! a folder of captioned clips.

use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use himmel_core::Video;
use himmel_models::mini::VideoShape;
use himmel_world::render::{RenderSettings, render};
use himmel_world::sample::{ClipRecord, sample_clip_mixed};
use himmel_world::spec::{SceneMix, SceneSpec};
use serde::Deserialize;

use crate::error::TrainError;

/// What a clip is trained with: its detailed caption and short user-style prompts.
#[derive(Debug, Clone, PartialEq)]
pub struct Captions {
    /// The detailed caption.
    pub detailed: String,
    /// Short prompts (may be empty).
    pub short: Vec<String>,
}

impl From<ClipRecord> for Captions {
    fn from(record: ClipRecord) -> Self {
        Self {
            detailed: record.caption,
            short: record
                .prompts
                .into_iter()
                .map(|prompt| prompt.text)
                .collect(),
        }
    }
}

/// Clips of one shape stacked for a model: video `[B, 3, F, H, W]` in -1..=1 and their
/// captions.
pub struct ClipBatch {
    /// The clips' indices in their source.
    pub indices: Vec<u64>,
    /// The frames.
    pub video: Tensor,
    /// Captions of each clip.
    pub captions: Vec<Captions>,
    /// The scene of each clip (`None` for clips read from a folder).
    pub scenes: Vec<Option<SceneSpec>>,
}

/// Where training clips come from.
pub enum ClipSource {
    /// The procedural world, rendering clip `i` of a seed.
    World {
        /// Sizes, lengths and rates of the clips: clip `i` has shape `i mod shapes.len()`.
        shapes: Vec<RenderSettings>,
        /// The world run's seed.
        seed: u64,
        /// How the scenes are drawn, where not as the world draws them.
        mix: Option<SceneMix>,
    },
    /// A folder of clips with captions, cycled through in name order.
    Folder(Vec<FolderClip>),
}

/// A clip of a folder and its captions.
pub struct FolderClip {
    /// The video file.
    pub path: PathBuf,
    /// Its captions.
    pub captions: Captions,
    shape: VideoShape,
}

/// The caption file `himmel world sample` writes beside each clip (`NAME.json`).
#[derive(Deserialize)]
struct CaptionFile {
    caption: String,
    #[serde(default)]
    prompts: Vec<PromptEntry>,
}

#[derive(Deserialize)]
struct PromptEntry {
    text: String,
}

/// How far (0..=1, any channel) a pixel must differ from the bare backdrop to be an object's.
const OBJECT_THRESHOLD: f64 = 0.02;

/// Video file extensions read from folders.
const VIDEO_EXTENSIONS: [&str; 5] = ["mp4", "mov", "m4v", "gif", "safetensors"];

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The captions of `video`: `NAME.json` (a `caption` and optional `prompts`) or `NAME.txt`.
fn read_captions(video: &Path) -> Result<Captions, TrainError> {
    let json = video.with_extension("json");
    if json.exists() {
        let text = std::fs::read_to_string(&json).map_err(io(&json))?;
        let file: CaptionFile = serde_json::from_str(&text).map_err(|error| TrainError::Data {
            path: json.clone(),
            message: format!("not a caption file ({error})"),
        })?;
        return Ok(Captions {
            detailed: file.caption,
            short: file.prompts.into_iter().map(|prompt| prompt.text).collect(),
        });
    }
    let txt = video.with_extension("txt");
    let text = std::fs::read_to_string(&txt).map_err(|_| TrainError::Data {
        path: video.to_path_buf(),
        message: "has no caption (NAME.json or NAME.txt beside it)".into(),
    })?;
    Ok(Captions {
        detailed: text.trim().to_string(),
        short: Vec::new(),
    })
}

impl ClipSource {
    /// Clips of `shape` from the world run `seed`.
    pub fn world(shape: VideoShape, seed: u64) -> Self {
        Self::world_shapes(&[shape], seed, None)
    }

    /// Clips from the world run `seed` in turn of each of `shapes` (sizes, aspect ratios,
    /// durations): clip `i` has shape `i mod shapes.len()`. Their scenes are drawn by `mix`
    /// where given ([`SceneSpec::sample_mixed`]).
    pub fn world_shapes(shapes: &[VideoShape], seed: u64, mix: Option<SceneMix>) -> Self {
        Self::World {
            shapes: shapes
                .iter()
                .map(|shape| RenderSettings {
                    width: shape.width,
                    height: shape.height,
                    frames: shape.frames,
                    fps: shape.fps,
                })
                .collect(),
            seed,
            mix,
        }
    }

    /// How many shapes the clips come in.
    pub fn shape_count(&self) -> usize {
        match self {
            Self::World { shapes, .. } => shapes.len(),
            Self::Folder(_) => 1,
        }
    }

    /// Which of the shapes clip `index` has.
    pub fn shape_of(&self, index: u64) -> usize {
        (index % self.shape_count() as u64) as usize
    }

    /// The captioned clips in `dir`, each resized to `shape` and cut to its first frames.
    pub fn folder(dir: &Path, shape: VideoShape) -> Result<Self, TrainError> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| {
                path.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.to_lowercase().as_str()))
            })
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(TrainError::Data {
                path: dir.to_path_buf(),
                message: format!("holds no clips ({})", VIDEO_EXTENSIONS.join(", ")),
            });
        }
        let clips = paths
            .into_iter()
            .map(|path| {
                Ok(FolderClip {
                    captions: read_captions(&path)?,
                    path,
                    shape,
                })
            })
            .collect::<Result<_, TrainError>>()?;
        Ok(Self::Folder(clips))
    }

    /// Reads or renders the clips with the given indices, which must be of one shape.
    pub fn batch(
        &self,
        indices: impl IntoIterator<Item = u64>,
        device: &Device,
    ) -> Result<ClipBatch, TrainError> {
        let indices: Vec<u64> = indices.into_iter().collect();
        let mut videos = Vec::new();
        let mut captions = Vec::new();
        let mut scenes = Vec::new();
        for &index in &indices {
            let (video, caption, scene) = self.clip(index)?;
            let frames = video.to_f32().map_err(|error| TrainError::World {
                index,
                message: error.to_string(),
            })?;
            videos.push(frames.permute((3, 0, 1, 2))?.affine(2.0, -1.0)?);
            captions.push(caption);
            scenes.push(scene);
        }
        Ok(ClipBatch {
            indices,
            video: Tensor::stack(&videos, 0)?.to_device(device)?,
            captions,
            scenes,
        })
    }

    /// Where objects (and their shadows) are in `batch`: `[B, 1, F, H, W]`, 1 on and next to
    /// them, 0 on the bare backdrop. `None` for folders, which carry no scene. Found by
    /// rendering each scene again without its objects.
    pub fn object_masks(&self, batch: &ClipBatch) -> Result<Option<Tensor>, TrainError> {
        let Self::World { shapes, .. } = self else {
            return Ok(None);
        };
        let mut masks = Vec::new();
        for (i, scene) in batch.scenes.iter().enumerate() {
            let Some(scene) = scene else {
                return Ok(None);
            };
            let index = batch.indices[i];
            let settings = &shapes[self.shape_of(index)];
            let world = |error: himmel_core::VideoError| TrainError::World {
                index,
                message: error.to_string(),
            };
            let bare = SceneSpec {
                objects: Vec::new(),
                ..scene.clone()
            };
            let backdrop = render(&bare, settings).map_err(world)?.video;
            let backdrop = backdrop.to_f32().map_err(world)?.permute((3, 0, 1, 2))?;
            let backdrop = backdrop
                .affine(2.0, -1.0)?
                .to_device(batch.video.device())?;
            // [3, F, H, W] -> [F, H, W]: pixels that differ from the bare backdrop (clips span
            // -1..=1, so twice the threshold).
            let differs = (batch.video.get(i)? - backdrop)?
                .abs()?
                .max(0)?
                .ge(2.0 * OBJECT_THRESHOLD)?
                .to_dtype(candle_core::DType::F32)?;
            // One pixel around them too (a 3x3 maximum): the edges are where reconstructions
            // blur. [F, 1, H, W] -> [1, F, H, W].
            let grown = differs
                .unsqueeze(1)?
                .max_pool2d_with_stride(3, 1)?
                .pad_with_same(2, 1, 1)?
                .pad_with_same(3, 1, 1)?;
            masks.push(grown.squeeze(1)?.unsqueeze(0)?);
        }
        Ok(Some(Tensor::stack(&masks, 0)?))
    }

    /// The captions of the clips with the given indices.
    pub fn captions(&self, indices: Range<u64>) -> Result<Vec<Captions>, TrainError> {
        match self {
            Self::World { .. } => indices.map(|index| Ok(self.clip(index)?.1)).collect(),
            Self::Folder(clips) => Ok(indices
                .map(|index| {
                    clips[(index % clips.len() as u64) as usize]
                        .captions
                        .clone()
                })
                .collect()),
        }
    }

    /// Clip `index`: its frames, captions and scene (`None` from a folder).
    fn clip(&self, index: u64) -> Result<(Video, Captions, Option<SceneSpec>), TrainError> {
        match self {
            Self::World { shapes, seed, mix } => {
                let settings = &shapes[self.shape_of(index)];
                let (clip, record) = sample_clip_mixed(*seed, index, settings, mix.as_ref())
                    .map_err(|error| TrainError::World {
                        index,
                        message: error.to_string(),
                    })?;
                let scene = record.spec.clone();
                Ok((clip.video, record.into(), Some(scene)))
            }
            Self::Folder(clips) => {
                let clip = &clips[(index % clips.len() as u64) as usize];
                Ok((clip.read()?, clip.captions.clone(), None))
            }
        }
    }
}

impl FolderClip {
    /// The clip's first frames at the training size.
    fn read(&self) -> Result<Video, TrainError> {
        let data = |message: String| TrainError::Data {
            path: self.path.clone(),
            message,
        };
        let options = himmel_media::ReadOptions {
            fps: self.shape.fps,
        };
        let video = himmel_media::read_video(&self.path, &options, &himmel_core::Silent)
            .map_err(|error| data(error.to_string()))?;
        if video.num_frames() < self.shape.frames {
            return Err(data(format!(
                "has {} frames; training needs {}",
                video.num_frames(),
                self.shape.frames
            )));
        }
        let range = himmel_media::FrameRange {
            start: 0,
            end: Some(self.shape.frames),
        };
        let video = himmel_media::trim(&video, range).map_err(|error| data(error.to_string()))?;
        if video.width() == self.shape.width && video.height() == self.shape.height {
            return Ok(video);
        }
        himmel_media::resize(&video, self.shape.width, self.shape.height)
            .map_err(|error| data(error.to_string()))
    }
}
