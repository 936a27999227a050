//! `himmel generate "PROMPT" -o OUT`: text to video with the built-in himmel-mini (the default)
//! or a Wan 2.1 model, and the editing tasks: image to video, video to video, extension,
//! connection, loops and long videos.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::Device;
use clap::{Args, ValueEnum};
use himmel_core::{Progress, ProgressEvent, Silent, Video};
use himmel_media::{ReadOptions, WriteOptions, read_video, write_video};
use himmel_models::mini::SkipGuidance;
use himmel_models::wan::VaeTiling;
use himmel_pipeline::mini::{self, BUILTIN_NAME};
use himmel_pipeline::request::frames_for_seconds;
use himmel_pipeline::tasks::{self, Direction, Sink, Task, Windows};
use himmel_pipeline::{
    Anchor, GenerationRequest, KnownClip, MiniPipeline, ModelSource, PipelineError, Precision,
    SingleFiles, SourceClip, WanPipeline,
};
use himmel_safety::MarkedWriter;
use himmel_safety::provenance::{Claim, Ingredient, Role};
use himmel_world::render::RenderSettings;

use crate::device::DeviceChoice;
use crate::marks::{MarkArgs, marks, new_generation_id};

/// Compute precision of a Wan model's transformer and text encoder.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum DtypeArg {
    F32,
    Bf16,
    F16,
    /// The transformer blocks' products in int8 (AVX-512 VNNI or AVX2), the rest in bf16.
    Int8,
}

impl DtypeArg {
    /// The pipeline's precision; int8 on a CPU without int8 products warns that it runs as bf16.
    pub(crate) fn precision(self) -> Precision {
        match self {
            Self::F32 => Precision::F32,
            Self::Bf16 => Precision::Bf16,
            Self::F16 => Precision::F16,
            Self::Int8 => {
                if !himmel_models::kernels::int8_available() {
                    eprintln!(
                        "warning: this CPU lacks AVX2 and AVX-512 VNNI; the transformer runs in bf16"
                    );
                }
                Precision::Int8
            }
        }
    }
}

/// Arguments of `himmel generate`.
#[derive(Args)]
pub struct GenerateArgs {
    /// What the video should show.
    prompt: String,
    /// Output file: .mp4, .gif, .png (a folder of frames) or .safetensors (raw f32 frames).
    #[arg(short, long)]
    output: PathBuf,
    /// Model: `himmel-mini` (the built-in default), a himmel-mini folder, a Wan 2.1 diffusers
    /// folder (with model_index.json), or a single Wan transformer file (original Wan or
    /// ComfyUI names) with --vae, --text-encoder and --tokenizer.
    #[arg(long)]
    model: Option<PathBuf>,
    /// With a single-file model: the VAE file (safetensors, or the original Wan2.1_VAE.pth).
    #[arg(long)]
    vae: Option<PathBuf>,
    /// With a single-file model: the UMT5 text encoder file (safetensors or the original .pth).
    #[arg(long)]
    text_encoder: Option<PathBuf>,
    /// With a single-file model: the UMT5 tokenizer's tokenizer.json.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// What the video should not show.
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Frame width in pixels, a multiple of 16 [default: the model's; Wan 832].
    #[arg(long)]
    width: Option<usize>,
    /// Frame height in pixels, a multiple of 16 [default: the model's; Wan 480].
    #[arg(long)]
    height: Option<usize>,
    /// Number of frames, 1 + 4k [default: the model's; Wan 81]; longer than the model's
    /// window (himmel-mini 17, Wan 81) is made by extension.
    #[arg(long, conflicts_with = "seconds")]
    frames: Option<usize>,
    /// Duration in seconds instead of --frames (rounded up to a valid frame count, at most
    /// 120); with --extend or --connect, the seconds to add.
    #[arg(long)]
    seconds: Option<f64>,
    /// Image to video: this image (or a clip's first frame) is the first frame, scaled to cover
    /// the output size and cropped around the centre.
    #[arg(long, conflicts_with_all = ["video", "connect"])]
    image: Option<PathBuf>,
    /// A clip to re-style under the prompt (with --strength) or to extend (with --extend).
    #[arg(long, conflicts_with = "connect")]
    video: Option<PathBuf>,
    /// Video to video: how much to change the clip, 0 (keep it) to 1 (ignore it).
    #[arg(long, requires = "video", conflicts_with = "extend")]
    strength: Option<f64>,
    /// Extend the --video clip forwards or backwards in time by --seconds (default 1).
    #[arg(long, value_enum, requires = "video")]
    extend: Option<ExtendArg>,
    /// A seamless loop: the last frame flows into the first.
    #[arg(long = "loop", conflicts_with_all = ["video", "connect"])]
    seamless_loop: bool,
    /// Connect two clips: a transition of --seconds (default 1) from A's last frame to B's first.
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    connect: Option<Vec<PathBuf>>,
    /// Frames per second of the output [default: the model's; Wan 16].
    #[arg(long)]
    fps: Option<f64>,
    /// Denoising steps [default: the model's; Wan 50].
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale, 1 turns guidance off [default: the model's; Wan 5].
    #[arg(long)]
    guidance: Option<f64>,
    /// Flow shift, overriding the model's scheduler configuration (Wan: 3 for 480p, 5 for 720p).
    #[arg(long)]
    shift: Option<f64>,
    /// Step caching: reuse the transformer's later blocks from an earlier step while the first
    /// block's change differs from it by less than this fraction (0 to 1; try 0.05). Faster,
    /// at a cost in quality measured in BENCHMARKS.md [default: off]
    #[arg(long, value_name = "THRESHOLD")]
    step_cache: Option<f64>,
    /// Noise level (0 to 1) from which a himmel-mini model's high-noise expert denoises; 0
    /// hands it every step [default: the model's `sampling.boundary`].
    #[arg(long, value_name = "SIGMA")]
    boundary: Option<f64>,
    /// Guidance scale of a himmel-mini model's high-noise expert's steps [default: the
    /// model's `sampling.expert_guidance`, else `--guidance`].
    #[arg(long)]
    expert_guidance: Option<f64>,
    /// Skip guidance scale of a himmel-mini model's own denoiser: each of its steps is pushed
    /// away from its prediction with one block's self-attention skipped; 0 turns it off
    /// [default: the model's `sampling.skip_guidance`].
    #[arg(long, value_name = "SCALE")]
    skip_guidance: Option<f64>,
    /// The denoiser block (from 0) whose self-attention skip guidance skips [default: the
    /// model's].
    #[arg(long, value_name = "BLOCK")]
    skip_layer: Option<usize>,
    /// Seed of the initial noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Initial noise from a safetensors file holding a tensor named `latents` (for exact
    /// comparison with other implementations).
    #[arg(long)]
    latents: Option<PathBuf>,
    /// Compute precision of the transformer and text encoder (the VAE runs in f32); int8
    /// quantises the transformer blocks' products and keeps the rest in bf16.
    #[arg(long, value_enum, default_value_t = DtypeArg::Bf16)]
    dtype: DtypeArg,
    /// Wan: decode frames larger than 256 pixels in overlapping tiles of 256 every 192, as
    /// diffusers' `enable_tiling` (the decoder's memory bounded by the tile, for large frames on
    /// small machines; the overlaps are decoded twice and blended) [default: whole frames].
    #[arg(long)]
    vae_tiling: bool,
    /// Prompt tokens (padded or truncated); Wan was trained with 512.
    #[arg(long, default_value_t = himmel_pipeline::wan::MAX_SEQUENCE_LENGTH)]
    max_sequence_length: usize,
    /// A prompt policy file that extends or relaxes the default policy (see the README).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Write a preview of the whole clip at every denoising step to DIR/preview.gif (made
    /// from the model's current estimate through a cheap latent-to-RGB projection).
    #[arg(long, value_name = "DIR")]
    preview: Option<PathBuf>,
    /// MP4 quality as a constant quantiser, 0 (best) to 51.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u8).range(0..=51))]
    crf: u8,
    #[command(flatten)]
    marks: MarkArgs,
}

/// Which way `--extend` grows the clip.
#[derive(Clone, Copy, ValueEnum)]
enum ExtendArg {
    Forward,
    Backward,
}

/// Strength of video to video when --strength is left out.
const DEFAULT_STRENGTH: f64 = 0.7;

/// The images and clips the arguments name, read before any model is loaded so that
/// unreadable inputs fail first.
struct Inputs {
    /// The first frame (image to video).
    image: Option<Video>,
    /// The clip to re-style or extend.
    clip: Option<Video>,
    /// The two clips to connect.
    connect: Option<(Video, Video)>,
}

fn read_clip(path: &Path, progress: &dyn Progress) -> Result<Video> {
    read_video(path, &ReadOptions::default(), progress)
        .with_context(|| format!("cannot read {}", path.display()))
}

fn read_inputs(args: &GenerateArgs, progress: &dyn Progress) -> Result<Inputs> {
    if let Some(strength) = args.strength
        && !(0.0..=1.0).contains(&strength)
    {
        bail!("--strength must be between 0 and 1, got {strength}");
    }
    let image = match &args.image {
        Some(path) => {
            let video = read_clip(path, progress)?;
            Some(Video::new(video.frames().narrow(0, 0, 1)?, video.fps())?)
        }
        None => None,
    };
    let clip = args
        .video
        .as_deref()
        .map(|path| read_clip(path, progress))
        .transpose()?;
    let connect = match args.connect.as_deref() {
        Some([from, to]) => Some((read_clip(from, progress)?, read_clip(to, progress)?)),
        _ => None,
    };
    Ok(Inputs {
        image,
        clip,
        connect,
    })
}

/// Seconds of new frames for --extend and --connect, as frames at `fps`.
fn added_frames(args: &GenerateArgs, fps: f64) -> Result<usize> {
    match args.seconds {
        Some(seconds) if seconds.is_finite() && seconds > 0.0 => {
            Ok((seconds * fps).ceil() as usize)
        }
        Some(seconds) => bail!("--seconds must be a positive number, got {seconds}"),
        None => Ok(fps.ceil() as usize),
    }
}

/// The task the arguments ask for, and the clip to re-style if any, at `fps`.
fn make_task(args: &GenerateArgs, inputs: &Inputs, fps: f64) -> Result<(Task, Option<SourceClip>)> {
    Ok(match (&inputs.clip, args.extend, &inputs.connect) {
        (Some(clip), Some(direction), _) => {
            let direction = match direction {
                ExtendArg::Forward => Direction::Forward,
                ExtendArg::Backward => Direction::Backward,
            };
            let task = Task::Extend {
                clip: clip.clone(),
                direction,
                new_frames: added_frames(args, fps)?,
            };
            (task, None)
        }
        (Some(clip), None, _) => {
            let video = himmel_media::resample(clip, fps)?;
            let strength = args.strength.unwrap_or(DEFAULT_STRENGTH);
            (Task::Create, Some(SourceClip { video, strength }))
        }
        (None, _, Some((from, to))) => {
            let task = Task::Connect {
                from: from.clone(),
                to: to.clone(),
                new_frames: added_frames(args, fps)?,
            };
            (task, None)
        }
        (None, _, None) if args.seamless_loop => (Task::Loop, None),
        (None, _, None) => (Task::Create, None),
    })
}

/// What a model uses for the options left out.
struct Defaults {
    width: usize,
    height: usize,
    frames: usize,
    fps: f64,
    steps: usize,
    guidance: f64,
    skip_guidance: Option<SkipGuidance>,
    /// Frame counts are `1 + tk` for this `t`.
    temporal_factor: usize,
}

/// Wan 2.1's recommended settings (480p, 5 seconds) and its autoencoder's temporal factor.
const WAN_DEFAULTS: Defaults = Defaults {
    width: 832,
    height: 480,
    frames: 81,
    fps: 16.0,
    steps: 50,
    guidance: 5.0,
    skip_guidance: None,
    temporal_factor: 4,
};

/// The model a command line names.
enum ModelChoice {
    Mini(PathBuf),
    Wan(ModelSource),
}

fn choose_model(args: &GenerateArgs) -> Result<ModelChoice> {
    let model = match &args.model {
        Some(model) if model.as_os_str() != BUILTIN_NAME || model.exists() => model,
        _ => {
            let dir = mini::builtin_dir();
            if !mini::is_mini_dir(&dir) {
                bail!(
                    "the built-in model {BUILTIN_NAME} is not in {} (a checkout's models/{BUILTIN_NAME}); \
                     set {} to the folder that holds it, or pass --model PATH",
                    dir.display(),
                    mini::MODELS_ENV
                );
            }
            return Ok(ModelChoice::Mini(dir));
        }
    };
    if model.is_dir() && mini::is_mini_dir(model) {
        return Ok(ModelChoice::Mini(model.clone()));
    }
    if model.is_file() {
        let needed = |value: &Option<PathBuf>, flag: &str| {
            value
                .clone()
                .with_context(|| format!("{} is a single file: also pass {flag}", model.display()))
        };
        return Ok(ModelChoice::Wan(ModelSource::Files(SingleFiles {
            transformer: model.clone(),
            vae: needed(&args.vae, "--vae FILE")?,
            text_encoder: needed(&args.text_encoder, "--text-encoder FILE")?,
            tokenizer: needed(&args.tokenizer, "--tokenizer tokenizer.json")?,
        })));
    }
    Ok(ModelChoice::Wan(ModelSource::Folder(model.clone())))
}

/// The request the arguments make, with `defaults` for what they leave out.
fn build_request(
    args: &GenerateArgs,
    defaults: &Defaults,
    initial_latents: Option<candle_core::Tensor>,
    inputs: &Inputs,
) -> Result<(Task, GenerationRequest)> {
    let fps = args.fps.unwrap_or(defaults.fps);
    let (task, source) = make_task(args, inputs, fps)?;
    let frames = match (args.seconds, &task, &source) {
        (_, Task::Extend { .. } | Task::Connect { .. }, _) => defaults.frames,
        (Some(seconds), ..) if seconds.is_finite() && seconds > 0.0 => {
            frames_for_seconds(seconds, fps, defaults.temporal_factor)
        }
        (Some(seconds), ..) => bail!("--seconds must be a positive number, got {seconds}"),
        // Video to video re-styles as much of the clip as one window holds.
        (None, _, Some(source)) => args.frames.unwrap_or_else(|| {
            let factor = defaults.temporal_factor;
            let whole = (source.video.num_frames() - 1) / factor * factor + 1;
            whole.min(defaults.frames)
        }),
        (None, ..) => args.frames.unwrap_or(defaults.frames),
    };
    let request = GenerationRequest {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        width: args.width.unwrap_or(defaults.width),
        height: args.height.unwrap_or(defaults.height),
        frames,
        fps,
        steps: args.steps.unwrap_or(defaults.steps),
        guidance: args.guidance.unwrap_or(defaults.guidance),
        shift: args.shift,
        step_cache: args.step_cache,
        boundary: args.boundary,
        expert_guidance: args.expert_guidance,
        skip_guidance: SkipGuidance::overriding(
            defaults.skip_guidance,
            args.skip_guidance,
            args.skip_layer,
        )
        .map_err(anyhow::Error::msg)?,
        seed: args.seed,
        initial_latents,
        known: inputs
            .image
            .iter()
            .map(|image| KnownClip {
                video: image.clone(),
                anchor: Anchor::Start,
            })
            .collect(),
        source,
    };
    Ok((task, request))
}

fn read_latents(args: &GenerateArgs) -> Result<Option<candle_core::Tensor>> {
    let Some(path) = &args.latents else {
        return Ok(None);
    };
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("cannot read latents from {}", path.display()))?;
    let latents = tensors
        .get("latents")
        .with_context(|| format!("{} has no tensor named `latents`", path.display()))?;
    Ok(Some(latents.clone()))
}

/// The first window of `request`: what the model itself must accept.
fn first_window(request: &GenerationRequest, windows: Windows) -> GenerationRequest {
    GenerationRequest {
        frames: request.frames.min(windows.frames),
        ..request.clone()
    }
}

fn generate_mini(
    args: &GenerateArgs,
    inputs: &Inputs,
    dir: &Path,
    device: &Device,
    quiet: bool,
    progress: &dyn Progress,
    sink: &mut Sink,
) -> Result<()> {
    let mut pipeline = MiniPipeline::load(dir, device)?;
    if args.preview.is_some() && pipeline.prepare_previews()? {
        eprintln!(
            "note: {} has no preview.json; fitted a preview projection",
            dir.display()
        );
    }
    let video = pipeline.config().video;
    let sampling = pipeline.config().sampling;
    let defaults = Defaults {
        width: video.width,
        height: video.height,
        frames: video.frames,
        fps: video.fps,
        steps: sampling.steps,
        guidance: sampling.guidance,
        skip_guidance: sampling.skip_guidance,
        temporal_factor: pipeline.limits().temporal_factor,
    };
    let windows = pipeline.windows();
    let (task, request) = build_request(args, &defaults, read_latents(args)?, inputs)?;
    let first = pipeline.validate(first_window(&request, windows))?;
    let settings = RenderSettings {
        width: first.get().width,
        height: first.get().height,
        frames: first.get().frames,
        fps: first.get().fps,
    };
    let recaption = pipeline.recaption(&args.prompt, &settings, args.seed)?;
    if !recaption.unknown_words.is_empty() {
        eprintln!(
            "warning: not understood, left out: {}",
            recaption.unknown_words.join(", ")
        );
    }
    for conflict in &recaption.conflicts {
        eprintln!("warning: cannot honour: {conflict}");
    }
    if !quiet {
        eprintln!("caption: {}", recaption.caption);
    }
    let mut generate = |request| -> Result<Video, PipelineError> {
        let request = pipeline.validate(request)?;
        pipeline.generate(&request, &recaption.caption, progress)
    };
    Ok(tasks::run(&task, &mut generate, &request, windows, sink)?)
}

fn generate_wan(
    args: &GenerateArgs,
    inputs: &Inputs,
    source: &ModelSource,
    device: &Device,
    progress: &dyn Progress,
    sink: &mut Sink,
) -> Result<()> {
    if !(1..=4096).contains(&args.max_sequence_length) {
        bail!(
            "--max-sequence-length must be between 1 and 4096, got {}",
            args.max_sequence_length
        );
    }
    let mut pipeline = WanPipeline::load(source, args.dtype.precision(), device)?
        .with_max_sequence_length(args.max_sequence_length)
        .with_vae_tiling(args.vae_tiling.then(VaeTiling::default));
    if args.preview.is_some() && pipeline.prepare_previews()? {
        eprintln!("note: the model has no preview.json; fitted a preview projection");
    }
    let (task, request) = build_request(args, &WAN_DEFAULTS, read_latents(args)?, inputs)?;
    let windows = pipeline.windows();
    pipeline.validate(first_window(&request, windows))?;
    let mut generate = |request| -> Result<Video, PipelineError> {
        let request = pipeline.validate(request)?;
        pipeline.generate(&request, progress)
    };
    Ok(tasks::run(&task, &mut generate, &request, windows, sink)?)
}

/// Loads the model, generates and writes the video.
pub fn run(
    args: &GenerateArgs,
    device: DeviceChoice,
    quiet: bool,
    progress: &dyn Progress,
) -> Result<()> {
    let device = device.open()?;
    let options = WriteOptions {
        quality: himmel_media::Quality::Constant(args.crf),
    };
    let policy = crate::policy::load(args.policy.as_deref())?;
    policy.check(&args.prompt)?;
    let model = choose_model(args)?;
    let (credentials, signing_note) = args
        .marks
        .credentials(&himmel_safety::provenance::local_folder())?;
    let claim = claim(args, &model, new_generation_id());
    let generation = claim.generation;
    let mut writer = MarkedWriter::create(&args.output, &options, marks(credentials, claim))?;
    let started = Instant::now();
    let previews = match &args.preview {
        Some(dir) => Some(PreviewFiles::new(dir, progress)?),
        None => None,
    };
    let progress: &dyn Progress = match &previews {
        Some(previews) => previews,
        None => progress,
    };
    let inputs = read_inputs(args, progress)?;
    let mut size = (0, 0);
    let mut sink = |part: Video| -> Result<(), PipelineError> {
        size = (part.width(), part.height());
        writer.push(&part)?;
        Ok(())
    };
    match model {
        ModelChoice::Mini(dir) => {
            generate_mini(args, &inputs, &dir, &device, quiet, progress, &mut sink)?
        }
        ModelChoice::Wan(source) => {
            generate_wan(args, &inputs, &source, &device, progress, &mut sink)?
        }
    }
    let frames = writer.frames();
    let marked = match (writer.watermarks(), writer.signs()) {
        (true, true) => format!("watermark id {generation:08x}, signed C2PA manifest"),
        (true, false) => format!("watermark id {generation:08x}"),
        (false, _) => "raw frames: no watermark".into(),
    };
    writer.finish(progress)?;
    eprintln!(
        "wrote {} ({frames} frames of {}x{}; {marked}) in {:.1}s; peak memory {}",
        args.output.display(),
        size.0,
        size.1,
        started.elapsed().as_secs_f64(),
        peak_memory().unwrap_or_else(|| "unknown".into())
    );
    if let Some(note) = signing_note {
        eprintln!("{note}");
    }
    Ok(())
}

/// What the output's manifest states: the model, the task, and the files that went in.
fn claim(args: &GenerateArgs, model: &ModelChoice, generation: u32) -> Claim {
    let model = match model {
        ModelChoice::Mini(dir) if *dir == mini::builtin_dir() => BUILTIN_NAME.to_string(),
        ModelChoice::Mini(dir) | ModelChoice::Wan(ModelSource::Folder(dir)) => dir
            .file_name()
            .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into()),
        ModelChoice::Wan(ModelSource::Files(files)) => files
            .transformer
            .file_name()
            .map_or_else(|| "Wan 2.1".into(), |n| n.to_string_lossy().into()),
    };
    let seconds = args.seconds.unwrap_or(1.0);
    let (task, ingredients) = match (&args.video, args.extend, &args.connect, &args.image) {
        (Some(video), Some(direction), ..) => {
            let way = match direction {
                ExtendArg::Forward => "forward",
                ExtendArg::Backward => "backward",
            };
            let task = format!("extended {way} by {seconds} s");
            (task, vec![(video.clone(), Role::Parent)])
        }
        (Some(video), None, ..) => {
            let strength = args.strength.unwrap_or(DEFAULT_STRENGTH);
            let task = format!("video to video at strength {strength}");
            (task, vec![(video.clone(), Role::Parent)])
        }
        (None, _, Some(clips), _) => {
            let task = format!("a {seconds} s transition connecting two clips");
            let clips = clips.iter().map(|c| (c.clone(), Role::Component));
            (task, clips.collect())
        }
        (None, _, None, Some(image)) => {
            let task = "image to video".to_string();
            (task, vec![(image.clone(), Role::Component)])
        }
        (None, _, None, None) if args.seamless_loop => ("seamless loop".into(), Vec::new()),
        (None, _, None, None) => ("text to video".into(), Vec::new()),
    };
    Claim {
        model,
        task,
        generation,
        ingredients: ingredients
            .into_iter()
            .map(|(path, role)| Ingredient { path, role })
            .collect(),
    }
}

/// Passes progress on and writes every preview to `DIR/preview.gif` (replacing the last).
struct PreviewFiles<'a> {
    inner: &'a dyn Progress,
    path: PathBuf,
    /// Whether writing a preview failed already (reported once).
    failed: Cell<bool>,
}

impl<'a> PreviewFiles<'a> {
    fn new(dir: &Path, inner: &'a dyn Progress) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the preview folder {}", dir.display()))?;
        Ok(Self {
            inner,
            path: dir.join("preview.gif"),
            failed: Cell::new(false),
        })
    }
}

impl Progress for PreviewFiles<'_> {
    fn event(&self, event: ProgressEvent<'_>) {
        match event {
            ProgressEvent::Preview { frames } => {
                let written = write_video(frames, &self.path, &WriteOptions::default(), &Silent);
                if let Err(error) = written
                    && !self.failed.replace(true)
                {
                    eprintln!("warning: cannot write the preview: {error}");
                }
            }
            other => self.inner.event(other),
        }
    }

    fn wants_previews(&self) -> bool {
        true
    }
}

/// The process's peak resident memory, from /proc (Linux).
pub fn peak_memory() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(format!("{:.1} MiB", kib / 1024.0))
}
