//! [`Engine`]: what a worker generates with, a model kept loaded between jobs, and
//! [`ModelSpec`], what the API checks requests against before queuing them.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Device, Tensor};
use himmel_core::{Progress, Video};
use himmel_media::WriteOptions;
use himmel_pipeline::tasks::{self, Task, Windows};
use himmel_pipeline::{
    Anchor, GenerationRequest, KnownClip, MiniPipeline, ModelSource, PipelineError, Precision,
    SkipGuidance, SourceClip, WanPipeline,
};
use himmel_safety::{MarkedWriter, Marks};
use himmel_world::render::RenderSettings;

use crate::job::{Direction, Edit, JobRequest};
use himmel_pipeline::request::frames_for_seconds;

/// Where a job's video goes, and the marks it gets (watermark, signed manifest).
pub struct Output<'a> {
    /// The video file.
    pub path: &'a Path,
    /// Its marks.
    pub marks: Marks,
}

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
    /// Frame counts are `1 + tk` for this `t`, the frames a latent frame stands for.
    pub temporal_factor: usize,
    /// Default duration in seconds.
    pub seconds: f64,
    /// Longest duration the service accepts.
    pub max_seconds: f64,
    /// Whether a high-noise expert takes the steps above a boundary (so a request may set
    /// `boundary` and `expert_guidance`).
    pub high_noise_expert: bool,
    /// Blocks a request's skip guidance may name (`skip_guidance`, `skip_layer`); `None` for a
    /// model that takes none.
    pub skip_guidance_layers: Option<usize>,
    /// The model's own skip guidance, which a request may override in part.
    pub skip_guidance: Option<SkipGuidance>,
}

impl ModelSpec {
    /// Frames for `seconds` at the model's rate, rounded up to `1 + tk`.
    pub fn frames(&self, seconds: f64) -> usize {
        frames_for_seconds(seconds, self.fps, self.temporal_factor)
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
        output: Output<'_>,
        progress: &dyn Progress,
        cancelled: &AtomicBool,
    ) -> Result<Video, String>;
}

/// A job as the pipeline runs it: the task, its base request and its windows.
struct Plan {
    task: Task,
    base: GenerationRequest,
    windows: Windows,
    /// Frames the result will have, for spreading the samples.
    length: usize,
}

impl Plan {
    /// The plan for `request` with `inputs`, for a model of `spec` with default `steps` and
    /// `guidance` that works in `windows`.
    fn new(
        spec: &ModelSpec,
        request: &JobRequest,
        inputs: &JobInputs,
        windows: Windows,
        (steps, guidance): (usize, f64),
    ) -> Result<Self, String> {
        let added = (request.seconds * spec.fps).ceil() as usize;
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
            Task::Create | Task::Loop => spec.frames(request.seconds),
            Task::Extend { .. } | Task::Connect { .. } => windows.frames,
        };
        let length = match &task {
            Task::Create => frames,
            Task::Loop => frames - 1,
            Task::Extend { clip, .. } => {
                (clip.num_frames() as f64 * spec.fps / clip.fps()).round() as usize + added
            }
            Task::Connect { .. } => windows.whole_groups(added) + 2,
        };
        let base = GenerationRequest {
            negative_prompt: request.negative_prompt.clone(),
            steps: request.steps.unwrap_or(steps),
            guidance: request.guidance.unwrap_or(guidance),
            shift: request.shift,
            boundary: request.boundary,
            expert_guidance: request.expert_guidance,
            skip_guidance: request.skip_guidance,
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
                spec.fps,
            )
        };
        Ok(Self {
            task,
            base,
            windows,
            length,
        })
    }

    /// Runs the plan with `generate` (one window), writing the video to `output`, and stops
    /// before the next window once `cancelled` is set; returns the samples for the thumbnail
    /// and the spritesheet.
    fn run(
        &self,
        generate: &mut tasks::Generate,
        cancelled: &AtomicBool,
        output: Output<'_>,
        fps: f64,
    ) -> Result<Video, String> {
        let mut generate = |request| {
            if cancelled.load(Ordering::Relaxed) {
                return Err(PipelineError::Cancelled);
            }
            generate(request)
        };
        let mut writer = MarkedWriter::create(output.path, &WriteOptions::default(), output.marks)
            .map_err(|e| e.to_string())?;
        let wanted = sample_indices(self.length);
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
        tasks::run(
            &self.task,
            &mut generate,
            &self.base,
            self.windows,
            &mut sink,
        )
        .map_err(|error| error.to_string())?;
        writer
            .finish(&himmel_core::Silent)
            .map_err(|e| e.to_string())?;
        let samples = Tensor::cat(&samples, 0).map_err(|e| e.to_string())?;
        Video::new(samples, fps).map_err(|e| e.to_string())
    }
}

/// Denoising steps of `request` for a model of `spec` working in `windows` with `steps` a
/// window.
fn planned_steps(spec: &ModelSpec, request: &JobRequest, windows: Windows, steps: usize) -> u64 {
    let frames = spec.frames(request.seconds);
    // The first window, then windows that add `frames - start overlap` each.
    let fresh = windows.frames - windows.start_overlap();
    let count = 1 + frames.saturating_sub(windows.frames).div_ceil(fresh);
    (count * request.steps.unwrap_or(steps)) as u64
}

/// The built-in himmel-mini model.
pub struct MiniEngine {
    pipeline: MiniPipeline,
    spec: ModelSpec,
}

impl MiniEngine {
    /// Loads himmel-mini from `dir` onto `device`; the service accepts videos up to
    /// `max_seconds`.
    pub fn load(dir: &Path, max_seconds: f64, device: &Device) -> Result<Self, PipelineError> {
        let pipeline = MiniPipeline::load(dir, device)?;
        let video = pipeline.config().video;
        let spec = ModelSpec {
            name: himmel_pipeline::mini::BUILTIN_NAME.into(),
            size: (video.width, video.height),
            size_multiple: pipeline.limits().size_multiple,
            max_side: pipeline.limits().max_side,
            fps: video.fps,
            temporal_factor: pipeline.limits().temporal_factor,
            seconds: (video.frames - 1) as f64 / video.fps,
            max_seconds,
            high_noise_expert: pipeline.limits().high_noise_expert,
            skip_guidance_layers: pipeline.limits().skip_guidance_layers,
            skip_guidance: pipeline.config().sampling.skip_guidance,
        };
        Ok(Self { pipeline, spec })
    }

    fn defaults(&self) -> (usize, f64) {
        let sampling = self.pipeline.config().sampling;
        (sampling.steps, sampling.guidance)
    }
}

impl Engine for MiniEngine {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn planned_steps(&self, request: &JobRequest) -> u64 {
        planned_steps(
            &self.spec,
            request,
            self.pipeline.windows(),
            self.defaults().0,
        )
    }

    fn generate(
        &mut self,
        request: &JobRequest,
        inputs: &JobInputs,
        output: Output<'_>,
        progress: &dyn Progress,
        cancelled: &AtomicBool,
    ) -> Result<Video, String> {
        let plan = Plan::new(
            &self.spec,
            request,
            inputs,
            self.pipeline.windows(),
            self.defaults(),
        )?;
        let settings = RenderSettings {
            width: request.width,
            height: request.height,
            frames: plan.base.frames.min(plan.windows.frames),
            fps: self.spec.fps,
        };
        let recaption = self
            .pipeline
            .recaption(&request.prompt, &settings, request.seed)
            .map_err(|error| error.to_string())?;
        let pipeline = &self.pipeline;
        let mut generate = |request| -> Result<Video, PipelineError> {
            let request = pipeline.validate(request)?;
            pipeline.generate(&request, &recaption.caption, progress)
        };
        plan.run(&mut generate, cancelled, output, self.spec.fps)
    }
}

/// A Wan 2.1 model (text to video, and the editing tasks through known frames).
pub struct WanEngine {
    pipeline: WanPipeline,
    spec: ModelSpec,
}

/// Wan 2.1's recommended steps and guidance.
const WAN_DEFAULTS: (usize, f64) = (50, 5.0);

impl WanEngine {
    /// Loads the Wan model at `source` as `name` onto `device`; the service accepts videos up
    /// to `max_seconds`.
    pub fn load(
        source: &ModelSource,
        name: &str,
        precision: Precision,
        max_seconds: f64,
        device: &Device,
    ) -> Result<Self, PipelineError> {
        let pipeline = WanPipeline::load(source, precision, device)?;
        let limits = pipeline.limits();
        let spec = ModelSpec {
            name: name.into(),
            size: (832, 480),
            size_multiple: limits.size_multiple,
            max_side: limits.max_side,
            fps: 16.0,
            temporal_factor: limits.temporal_factor,
            seconds: 5.0,
            max_seconds,
            high_noise_expert: limits.high_noise_expert,
            skip_guidance_layers: limits.skip_guidance_layers,
            skip_guidance: None,
        };
        Ok(Self { pipeline, spec })
    }
}

impl Engine for WanEngine {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn planned_steps(&self, request: &JobRequest) -> u64 {
        planned_steps(&self.spec, request, self.pipeline.windows(), WAN_DEFAULTS.0)
    }

    fn generate(
        &mut self,
        request: &JobRequest,
        inputs: &JobInputs,
        output: Output<'_>,
        progress: &dyn Progress,
        cancelled: &AtomicBool,
    ) -> Result<Video, String> {
        let plan = Plan::new(
            &self.spec,
            request,
            inputs,
            self.pipeline.windows(),
            WAN_DEFAULTS,
        )?;
        let pipeline = &self.pipeline;
        let mut generate = |request| -> Result<Video, PipelineError> {
            let request = pipeline.validate(request)?;
            pipeline.generate(&request, progress)
        };
        plan.run(&mut generate, cancelled, output, self.spec.fps)
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
