//! [`Engine`]: what a worker generates with, a model kept loaded between jobs, and
//! [`ModelSpec`], what the API checks requests against before queuing them.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Device, Tensor};
use himmel_core::{Progress, Video};
use himmel_media::{VideoWriter, WriteOptions};
use himmel_pipeline::tasks::{self, Task, Windows};
use himmel_pipeline::{
    Anchor, GenerationRequest, KnownClip, MiniPipeline, PipelineError, SourceClip,
};
use himmel_world::render::RenderSettings;

use crate::job::{Direction, Edit, JobRequest};

/// What a model accepts, known to the API without loading it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// The name clients use.
    pub name: String,
    /// Default width and height.
    pub size: (usize, usize),
    /// Width and height must be multiples of this.
    pub size_multiple: usize,
    /// Largest width or height.
    pub max_side: usize,
    /// Frames per second of its videos.
    pub fps: f64,
    /// Default duration in seconds.
    pub seconds: f64,
    /// Longest duration the service accepts.
    pub max_seconds: f64,
}

impl ModelSpec {
    /// Frames for `seconds` at the model's rate, rounded up to `1 + 4k`.
    pub fn frames(&self, seconds: f64) -> usize {
        let wanted = (seconds * self.fps).ceil().max(1.0) as usize;
        (wanted - 1).div_ceil(4) * 4 + 1
    }
}

/// The clips a job starts from, read by the worker.
#[derive(Debug, Clone, Default)]
pub struct JobInputs {
    /// The first frame (an uploaded reference image).
    pub first_frame: Option<Video>,
    /// The video to re-make (a remix), and how much to change it.
    pub source: Option<(Video, f64)>,
    /// The finished videos an editing task starts from, in the order the task names them.
    pub clips: Vec<Video>,
}

/// Generates videos for jobs.
pub trait Engine: Send {
    /// What the model accepts.
    fn spec(&self) -> &ModelSpec;
    /// Denoising steps `request` will take in all (for progress).
    fn planned_steps(&self, request: &JobRequest) -> u64;
    /// Generates `request` into the video file `output` and returns up to [`SAMPLES`] of its
    /// frames spread over it, the first first (for the thumbnail and the spritesheet); the
    /// error is a message for the client. Stops (with an error) at the next
    /// window once `cancelled` is set.
    fn generate(
        &mut self,
        request: &JobRequest,
        inputs: &JobInputs,
        output: &Path,
        progress: &dyn Progress,
        cancelled: &AtomicBool,
    ) -> Result<Video, String>;
}

/// The built-in himmel-mini model.
pub struct MiniEngine {
    pipeline: MiniPipeline,
    spec: ModelSpec,
}

impl MiniEngine {
    /// Loads himmel-mini from `dir`; the service accepts videos up to `max_seconds`.
    pub fn load(dir: &Path, max_seconds: f64) -> Result<Self, PipelineError> {
        let pipeline = MiniPipeline::load(dir, &Device::Cpu)?;
        let video = pipeline.config().video;
        let spec = ModelSpec {
            name: himmel_pipeline::mini::BUILTIN_NAME.into(),
            size: (video.width, video.height),
            size_multiple: pipeline.limits().size_multiple,
            max_side: pipeline.limits().max_side,
            fps: video.fps,
            seconds: (video.frames - 1) as f64 / video.fps,
            max_seconds,
        };
        Ok(Self { pipeline, spec })
    }

    fn windows(&self) -> Windows {
        Windows {
            frames: self.pipeline.limits().max_frames,
            overlap: MINI_OVERLAP,
        }
    }
}

/// Latent frames consecutive himmel-mini windows share.
const MINI_OVERLAP: usize = 2;

impl Engine for MiniEngine {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn planned_steps(&self, request: &JobRequest) -> u64 {
        let windows = self.windows();
        let frames = self.spec.frames(request.seconds);
        // The first window, then windows that add `frames - start overlap` each.
        let fresh = windows.frames - (1 + 4 * (windows.overlap - 1));
        let count = 1 + frames.saturating_sub(windows.frames).div_ceil(fresh);
        let steps = request
            .steps
            .unwrap_or(self.pipeline.config().sampling.steps);
        (count * steps) as u64
    }

    fn generate(
        &mut self,
        request: &JobRequest,
        inputs: &JobInputs,
        output: &Path,
        progress: &dyn Progress,
        cancelled: &AtomicBool,
    ) -> Result<Video, String> {
        let sampling = self.pipeline.config().sampling;
        let windows = self.windows();
        let added = (request.seconds * self.spec.fps).ceil() as usize;
        let task = match (&request.edit, inputs.clips.as_slice()) {
            (None, _) => Task::Create,
            (Some(Edit::Loop), _) => Task::Loop,
            (
                Some(Edit::Extend { direction, .. } | Edit::ExtendReference { direction }),
                [clip],
            ) => Task::Extend {
                clip: clip.clone(),
                direction: match direction {
                    Direction::Forward => tasks::Direction::Forward,
                    Direction::Backward => tasks::Direction::Backward,
                },
                new_frames: added,
            },
            (Some(Edit::Connect { .. }), [from, to]) => Task::Connect {
                from: from.clone(),
                to: to.clone(),
                new_frames: added,
            },
            (Some(_), clips) => {
                return Err(format!(
                    "the task needs its videos; {} were read",
                    clips.len()
                ));
            }
        };
        let frames = match task {
            Task::Create | Task::Loop => self.spec.frames(request.seconds),
            Task::Extend { .. } | Task::Connect { .. } => windows.frames,
        };
        let base = GenerationRequest {
            negative_prompt: request.negative_prompt.clone(),
            steps: request.steps.unwrap_or(sampling.steps),
            guidance: request.guidance.unwrap_or(sampling.guidance),
            seed: request.seed,
            known: inputs
                .first_frame
                .iter()
                .map(|frame| KnownClip {
                    video: frame.clone(),
                    anchor: Anchor::Start,
                })
                .collect(),
            source: inputs.source.as_ref().map(|(video, strength)| SourceClip {
                video: video.clone(),
                strength: *strength,
            }),
            ..GenerationRequest::new(
                &request.prompt,
                (request.width, request.height, frames),
                self.spec.fps,
            )
        };
        let settings = RenderSettings {
            width: request.width,
            height: request.height,
            frames: frames.min(windows.frames),
            fps: self.spec.fps,
        };
        let recaption = self
            .pipeline
            .recaption(&request.prompt, &settings, request.seed)
            .map_err(|error| error.to_string())?;
        let pipeline = &self.pipeline;
        let mut generate = |request| -> Result<Video, PipelineError> {
            if cancelled.load(Ordering::Relaxed) {
                return Err(PipelineError::Cancelled);
            }
            let request = pipeline.validate(request)?;
            pipeline.generate(&request, &recaption.caption, progress)
        };
        let mut writer =
            VideoWriter::create(output, &WriteOptions::default()).map_err(|e| e.to_string())?;
        // How long the result will be, for spreading the samples.
        let length = match &task {
            Task::Create => frames,
            Task::Loop => frames - 1,
            Task::Extend { clip, .. } => {
                (clip.num_frames() as f64 * self.spec.fps / clip.fps()).round() as usize + added
            }
            Task::Connect { .. } => added.div_ceil(4) * 4 + 2,
        };
        let wanted = sample_indices(length);
        let mut samples = Vec::new();
        let mut seen = 0;
        let mut sink = |part: Video| -> Result<(), PipelineError> {
            let bytes = part.to_u8()?;
            for index in 0..part.num_frames() {
                if wanted.contains(&(seen + index)) {
                    samples.push(bytes.narrow(0, index, 1)?);
                }
            }
            seen += part.num_frames();
            writer.push(&part)?;
            Ok(())
        };
        tasks::run(&task, &mut generate, &base, windows, &mut sink)
            .map_err(|error| error.to_string())?;
        writer
            .finish(&himmel_core::Silent)
            .map_err(|e| e.to_string())?;
        let samples = Tensor::cat(&samples, 0).map_err(|e| e.to_string())?;
        Video::new(samples, self.spec.fps).map_err(|e| e.to_string())
    }
}

/// Frames kept for the thumbnail and the spritesheet.
pub const SAMPLES: usize = 16;

/// Up to [`SAMPLES`] frame indices spread evenly over `frames`, the first and last included.
fn sample_indices(frames: usize) -> Vec<usize> {
    let count = SAMPLES.min(frames);
    (0..count)
        .map(|i| {
            if count > 1 {
                i * (frames - 1) / (count - 1)
            } else {
                0
            }
        })
        .collect()
}
