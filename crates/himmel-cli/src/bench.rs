//! `himmel bench`: named workloads timed end to end. `media` measures encode and decode speed
//! of every video format; `world` the procedural world's clip rate; `wan` a Wan 2.1 1.3B
//! forward and VAE decode; `mini` the built-in model's default clip, stage by stage; `gemm` the
//! bf16 matrix product on Wan's shapes.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use himmel_core::{Silent, Video};
use himmel_media::{ReadOptions, WriteOptions, read_video, resize, write_video};
use himmel_world::sample_clip;

use crate::device::{DeviceChoice, synchronize};
use crate::world::ClipSize;

/// Arguments of `himmel bench`.
#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand)]
enum Workload {
    /// Encode and decode speed (frames per second) of MP4, GIF, PNG and safetensors.
    Media(MediaArgs),
    /// Procedural world clips (sample, simulate, render, caption) per second on one thread.
    World(WorldArgs),
    /// Wan 2.1 1.3B: one transformer forward and the VAE decode at a given size, with random
    /// weights (timing does not depend on their values).
    Wan(WanArgs),
    /// The built-in himmel-mini at its default size: each stage of a generation (recaption,
    /// prompt encoding, denoising steps, decode), the best of several runs.
    Mini(MiniArgs),
    /// Wan 2.1's text encoder (UMT5-XXL): one encoding of a prompt of the pipeline's length,
    /// with random weights.
    Text(TextArgs),
    /// The bf16 linear layers (weights packed once, bf16 inputs, f32 sums, bf16 outputs) and
    /// their int8 form on 2048^3 and on Wan 2.1 1.3B's shapes at 256x256x17, the best of
    /// several runs each.
    Gemm(GemmArgs),
}

/// Arguments of `himmel bench gemm`.
#[derive(Args)]
struct GemmArgs {
    /// Runs per shape; the fastest is reported.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
}

/// Arguments of `himmel bench text`.
#[derive(Args)]
struct TextArgs {
    /// Tokens encoded (the pipeline pads prompts to 512).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=4096))]
    tokens: u64,
    /// Precision: f32 or bf16.
    #[arg(long, default_value = "bf16")]
    dtype: String,
}

/// Arguments of `himmel bench mini`.
#[derive(Args)]
struct MiniArgs {
    /// Runs; the fastest of each stage is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
}

/// Arguments of `himmel bench wan`.
#[derive(Args)]
struct WanArgs {
    /// Frame width.
    #[arg(long, default_value_t = 256)]
    width: usize,
    /// Frame height.
    #[arg(long, default_value_t = 256)]
    height: usize,
    /// Frames (1 + 4k).
    #[arg(long, default_value_t = 17)]
    frames: usize,
    /// Transformer precision: f32 or bf16.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Skip the VAE decode.
    #[arg(long)]
    no_vae: bool,
    /// Skip the transformer forward (the VAE decode and its peak memory alone).
    #[arg(long, conflicts_with = "no_vae")]
    no_transformer: bool,
    /// Decode frames larger than a tile in overlapping tiles of 256 pixels every 192 (as
    /// diffusers' `enable_tiling`): memory bounded by the tile, the overlaps decoded twice.
    #[arg(long, conflicts_with = "no_vae")]
    vae_tiling: bool,
    /// The blocks' attention and feed-forward layers in int8 (needs AVX-512 VNNI or AVX2).
    #[arg(long, conflicts_with = "no_transformer")]
    int8: bool,
    /// Rows of the 512 text rows that hold a prompt (random); the rest are zeros, as the
    /// pipeline pads a prompt of this many tokens. 512: a prompt that fills them all.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=512))]
    prompt_tokens: u64,
    /// Runs of each stage; the fastest is reported (on a GPU the first also loads kernels).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
}

/// Arguments of `himmel bench world`.
#[derive(Args)]
struct WorldArgs {
    #[command(flatten)]
    clip: ClipSize,
    /// Number of clips to make.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    clips: u64,
}

/// Arguments of `himmel bench media`.
#[derive(Args)]
struct MediaArgs {
    /// Frame width.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(16..))]
    width: u32,
    /// Frame height.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(16..))]
    height: u32,
    /// Number of frames.
    #[arg(long, default_value_t = 81, value_parser = clap::value_parser!(u32).range(1..))]
    frames: u32,
    /// Use this clip (resized to --width x --height, first --frames frames) instead of a
    /// synthetic moving pattern.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Runs per measurement; the fastest is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
}

/// Runs the chosen workload and prints its table; the models' workloads run on `device`.
pub fn run(args: &BenchArgs, device: DeviceChoice) -> Result<()> {
    let device = device.open()?;
    match &args.workload {
        Workload::Media(media) => run_media(media),
        Workload::World(world) => run_world(world),
        Workload::Wan(wan) => run_wan(wan, &device),
        Workload::Mini(mini) => run_mini(mini, &device),
        Workload::Text(text) => run_text(text, &device),
        Workload::Gemm(_) if !device.is_cpu() => {
            anyhow::bail!("bench gemm times Himmel's CPU kernels; give it no --device")
        }
        Workload::Gemm(gemm) => run_gemm(gemm),
    }
}

/// Prints how long `stage` took and the rate it reached on its `flops` operations, then `note`.
fn print_rate(stage: &str, seconds: f64, flops: f64, note: &str) {
    println!(
        "  {stage} {seconds:.2}s ({:.0} GFLOP/s of {:.2} TFLOP){note}",
        flops / seconds / 1e9,
        flops / 1e12
    );
}

/// Prints the process's peak memory so far.
fn print_peak_memory() {
    println!(
        "  peak memory {}",
        crate::generate::peak_memory().unwrap_or_else(|| "unknown".into())
    );
}

/// The transformer precision a `--dtype` names.
fn parse_dtype(name: &str) -> Result<candle_core::DType> {
    match name {
        "f32" => Ok(candle_core::DType::F32),
        "bf16" => Ok(candle_core::DType::BF16),
        other => anyhow::bail!("--dtype must be f32 or bf16, got {other}"),
    }
}

fn run_media(args: &MediaArgs) -> Result<()> {
    let (width, height, frames) = (
        args.width as usize,
        args.height as usize,
        args.frames as usize,
    );
    let video = match &args.input {
        Some(path) => {
            let clip = read_video(path, &ReadOptions::default(), &Silent)?;
            let kept = frames.min(clip.num_frames());
            let clip = Video::new(clip.frames().narrow(0, 0, kept)?, clip.fps())?;
            resize(&clip, width, height)?
        }
        None => moving_pattern(width, height, frames)?,
    };
    let source = args
        .input
        .as_ref()
        .map_or("synthetic pattern".into(), |p| p.display().to_string());
    println!(
        "media: {} frames of {width}x{height} from {source}, best of {}",
        video.num_frames(),
        args.repeat
    );
    println!(
        "{:<12} {:>12} {:>12} {:>12}",
        "format", "encode fps", "decode fps", "size KiB"
    );
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    for name in ["clip.mp4", "clip.gif", "clip.png", "clip.safetensors"] {
        let path = dir.path().join(name);
        let encode = best_seconds(args.repeat, || {
            write_video(&video, &path, &WriteOptions::default(), &Silent).map_err(Into::into)
        })?;
        let decode = best_seconds(args.repeat, || {
            read_video(&path, &ReadOptions::default(), &Silent)
                .map(drop)
                .map_err(Into::into)
        })?;
        let count = video.num_frames() as f64;
        println!(
            "{:<12} {:>12.1} {:>12.1} {:>12}",
            name.trim_start_matches("clip."),
            count / encode,
            count / decode,
            size_on_disk(&path) / 1024
        );
    }
    Ok(())
}

fn run_world(args: &WorldArgs) -> Result<()> {
    let settings = args.clip.settings()?;
    let start = Instant::now();
    let mut pixels = 0u64;
    for index in 0..args.clips {
        let (clip, _record) = sample_clip(0, index, &settings)?;
        pixels += clip.video.frames().elem_count() as u64;
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "world: {} clips of {}x{}x{} in {seconds:.2}s on one thread: {:.0} clips/s ({:.1} Mpixel/s)",
        args.clips,
        settings.width,
        settings.height,
        settings.frames,
        args.clips as f64 / seconds,
        pixels as f64 / 3.0 / seconds / 1e6
    );
    Ok(())
}

/// Weights drawn from N(0, 0.02) on request: every byte is real, so memory figures are too.
struct RandomWeights;

impl candle_nn::var_builder::SimpleBackend for RandomWeights {
    fn get(
        &self,
        shape: candle_core::Shape,
        _name: &str,
        _hints: candle_nn::Init,
        dtype: candle_core::DType,
        device: &candle_core::Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        candle_core::Tensor::randn(0f32, 0.02, shape, device)?.to_dtype(dtype)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _: candle_core::DType,
        _: &candle_core::Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        candle_core::bail!("random weights need a shape for {name}")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

fn random_weights(
    dtype: candle_core::DType,
    device: &candle_core::Device,
) -> candle_nn::VarBuilder<'static> {
    candle_nn::VarBuilder::from_backend(Box::new(RandomWeights), dtype, device.clone())
}

/// The fastest of `repeat` runs of `work` on `device` in seconds, and the first run's.
fn fastest_and_first(
    repeat: u32,
    device: &candle_core::Device,
    mut work: impl FnMut() -> Result<()>,
) -> Result<(f64, f64)> {
    let mut times = Vec::new();
    for _ in 0..repeat.max(1) {
        let start = Instant::now();
        work()?;
        synchronize(device)?;
        times.push(start.elapsed().as_secs_f64());
    }
    let fastest = times.iter().copied().fold(f64::INFINITY, f64::min);
    Ok((fastest, times[0]))
}

/// `; first of N runs {first}s` where more than one run was timed.
fn first_run_note(repeat: u32, first: f64) -> String {
    if repeat > 1 {
        format!("; first of {repeat} runs {first:.3}s")
    } else {
        String::new()
    }
}

fn run_wan(args: &WanArgs, device: &candle_core::Device) -> Result<()> {
    use candle_core::{DType, Tensor};
    use himmel_models::wan::{
        VaeTiling, WanTransformer, WanTransformerConfig, WanVae, WanVaeConfig,
    };

    let dtype = parse_dtype(&args.dtype)?;
    if !args.width.is_multiple_of(16) || !args.height.is_multiple_of(16) || args.frames % 4 != 1 {
        anyhow::bail!("width and height must be multiples of 16 and frames 1 + 4k");
    }
    let config = WanTransformerConfig::t2v_1_3b();
    let latent_frames = (args.frames - 1) / 4 + 1;
    let (h, w) = (args.height / 8, args.width / 8);
    let tokens = latent_frames * (h / 2) * (w / 2);
    // Multiply-adds per forward: projections and feed-forward per token, attention over tokens.
    let d = config.inner_dim() as f64;
    let (l, text) = (tokens as f64, 512.0);
    let per_block = l * (4.0 * d * d)
        + l * d * d * 2.0
        + text * d * d * 2.0
        + 2.0 * l * l * d
        + 2.0 * l * text * d
        + l * 2.0 * d * config.ffn_dim as f64;
    let flops = 2.0 * per_block * config.num_layers as f64;
    println!(
        "wan 1.3B: {}x{}x{} ({tokens} tokens, a prompt of {} of 512 text rows), transformer in \
         {}",
        args.width, args.height, args.frames, args.prompt_tokens, args.dtype
    );

    let latents = Tensor::randn(0f32, 1.0, (1, 16, latent_frames, h, w), device)?;
    if !args.no_transformer {
        let start = Instant::now();
        let transformer = if args.int8 {
            if !himmel_models::kernels::int8_available() {
                anyhow::bail!("--int8 needs a CPU with AVX-512 VNNI or AVX2");
            }
            println!("  blocks' layers in int8");
            WanTransformer::new_int8(&config, random_weights(dtype, device))?
        } else {
            WanTransformer::new(&config, random_weights(dtype, device))?
        };
        let timestep = Tensor::new(&[999f32], device)?;
        let prompt_rows = args.prompt_tokens as usize;
        let prompt = Tensor::randn(0f32, 1.0, (1, prompt_rows, config.text_dim), device)?
            .pad_with_zeros(1, 0, 512 - prompt_rows)?
            .to_dtype(dtype)?;
        println!("  build {:.1}s", start.elapsed().as_secs_f64());
        let (seconds, first) = fastest_and_first(args.repeat, device, || {
            transformer.forward(&latents, &timestep, &prompt)?;
            Ok(())
        })?;
        println!(
            "  transformer forward {seconds:.3}s ({:.0} GFLOP/s of the 512-row work); a guided \
             step is two forwards: {:.3}s{}",
            flops / seconds / 1e9,
            2.0 * seconds,
            first_run_note(args.repeat, first)
        );
    }
    if !args.no_vae {
        let config = WanVaeConfig::default_wan21();
        // As generation loads it: the decoder now, the encoder when something is encoded.
        let lazy_device = device.clone();
        let source = Box::new(move || Ok(random_weights(DType::F32, &lazy_device)));
        let vae = WanVae::with_lazy_encoder(&config, random_weights(DType::F32, device), source)?;
        let tiling = args.vae_tiling.then(VaeTiling::default);
        let (seconds, first) = fastest_and_first(args.repeat, device, || {
            match &tiling {
                Some(tiling) => vae.decode_tiled(&latents, tiling)?,
                None => vae.decode(&latents)?,
            };
            Ok(())
        })?;
        // The untiled work, so that rates compare: tiles decode their overlaps twice.
        let flops = config.decode_flops(latent_frames, h, w);
        print_rate(
            if tiling.is_some() {
                "VAE decode (f32, tiled)"
            } else {
                "VAE decode (f32)"
            },
            seconds,
            flops,
            &first_run_note(args.repeat, first),
        );
    }
    print_peak_memory();
    Ok(())
}

/// `(name, rows, outputs, inputs)` of the products `himmel bench gemm` times: 2048^3, then Wan
/// 2.1 1.3B's at 256x256x17 (1280 tokens, 512 text tokens).
const GEMM_SHAPES: [(&str, usize, usize, usize); 6] = [
    ("square 2048^3", 2048, 2048, 2048),
    ("attention q/k/v/o", 1280, 1536, 1536),
    ("cross-attention k/v", 512, 1536, 1536),
    ("text embedding", 512, 1536, 4096),
    ("feed-forward up", 1280, 8960, 1536),
    ("feed-forward down", 1280, 1536, 8960),
];

fn run_gemm(args: &GemmArgs) -> Result<()> {
    use himmel_models::kernels::bf16_linear::Dense;

    #[cfg(target_arch = "x86_64")]
    let fast = himmel_models::kernels::bf16_gemm::is_available();
    #[cfg(not(target_arch = "x86_64"))]
    let fast = false;
    let kernel = if fast {
        "AVX-512 BF16"
    } else {
        "bf16 weights widened to f32"
    };
    let threads = rayon::current_num_threads();
    println!("bf16 product x w^T ({kernel}, {threads} threads)");
    time_products(args.repeat, |linear| Ok(Dense::new(linear)?))?;
    #[cfg(target_arch = "x86_64")]
    let int8 = himmel_models::kernels::int8_gemm::Kernel::detect().map(|kernel| kernel.name());
    #[cfg(not(target_arch = "x86_64"))]
    let int8: Option<&str> = None;
    let Some(kernel) = int8 else {
        println!("int8 product: not run, this CPU lacks AVX2 and AVX-512 VNNI");
        return Ok(());
    };
    println!(
        "int8 product x w^T ({kernel}, per-channel weights, per-row activations, {threads} threads)"
    );
    time_products(args.repeat, |linear| {
        Dense::quantised(&linear)?.context("int8 product: the layer was not quantised")
    })
}

/// Times the layers `make` builds (bf16 inputs, bf16 weights) on [`GEMM_SHAPES`], printing a
/// line per shape.
fn time_products(
    repeat: u32,
    make: impl Fn(candle_nn::Linear) -> Result<himmel_models::kernels::bf16_linear::Dense>,
) -> Result<()> {
    use candle_core::{DType, Device, Tensor};

    for (name, rows, outputs, inputs) in GEMM_SHAPES {
        let x = Tensor::randn(0f32, 1.0, (rows, inputs), &Device::Cpu)?.to_dtype(DType::BF16)?;
        let w = Tensor::randn(0f32, 1.0, (outputs, inputs), &Device::Cpu)?.to_dtype(DType::BF16)?;
        let layer = make(candle_nn::Linear::new(w, None))?;
        let seconds = best_seconds(repeat, || {
            layer.forward(&x)?;
            Ok(())
        })?;
        let gflops = 2.0 * (rows * outputs * inputs) as f64 / seconds / 1e9;
        let shape = format!("{rows}x{outputs}x{inputs}");
        println!(
            "  {name:<20} {shape:>15} {:8.2} ms {gflops:6.0} GFLOP/s",
            seconds * 1e3
        );
    }
    Ok(())
}

/// Records how long each stage of a generation takes.
#[derive(Default)]
struct StageTimes {
    current: std::cell::RefCell<Option<(String, Instant, u64)>>,
    /// `(stage, seconds, steps)` in order.
    finished: std::cell::RefCell<Vec<(String, f64, u64)>>,
}

impl himmel_core::Progress for StageTimes {
    fn event(&self, event: himmel_core::ProgressEvent<'_>) {
        use himmel_core::ProgressEvent;
        match event {
            ProgressEvent::StageStarted { stage, total } => {
                *self.current.borrow_mut() = Some((stage.to_string(), Instant::now(), total));
            }
            ProgressEvent::StageFinished => {
                if let Some((stage, started, steps)) = self.current.borrow_mut().take() {
                    let seconds = started.elapsed().as_secs_f64();
                    self.finished.borrow_mut().push((stage, seconds, steps));
                }
            }
            _ => {}
        }
    }
}

fn run_text(args: &TextArgs, device: &candle_core::Device) -> Result<()> {
    use candle_core::{DType, Tensor};
    use himmel_models::umt5::{Umt5Config, Umt5Encoder};

    let dtype = parse_dtype(&args.dtype)?;
    let config = Umt5Config::default();
    let tokens = args.tokens as usize;
    // Multiply-adds: projections and gated feed-forward per token, attention over tokens.
    let (d, inner) = (
        config.d_model as f64,
        (config.num_heads * config.d_kv) as f64,
    );
    let l = tokens as f64;
    let per_layer = l * (4.0 * d * inner + 3.0 * d * config.d_ff as f64) + 2.0 * l * l * inner;
    let flops = 2.0 * per_layer * config.num_layers as f64;
    println!("umt5-xxl: {tokens} tokens in {}", args.dtype);
    let start = Instant::now();
    let encoder = Umt5Encoder::new(&config, random_weights(dtype, device))?;
    let ids = Tensor::arange(0u32, tokens as u32, device)?.unsqueeze(0)?;
    let mask = Tensor::ones((1, tokens), DType::U32, device)?;
    println!("  build {:.1}s", start.elapsed().as_secs_f64());
    let start = Instant::now();
    encoder.forward(&ids, &mask)?;
    synchronize(device)?;
    let seconds = start.elapsed().as_secs_f64();
    print_rate("encode", seconds, flops, "");
    print_peak_memory();
    Ok(())
}

fn run_mini(args: &MiniArgs, device: &candle_core::Device) -> Result<()> {
    use himmel_pipeline::{GenerationRequest, MiniPipeline};

    let dir = himmel_pipeline::mini::builtin_dir();
    let start = Instant::now();
    let pipeline = MiniPipeline::load(&dir, device)?;
    let load = start.elapsed().as_secs_f64();
    let video = pipeline.config().video;
    let sampling = pipeline.config().sampling;
    let settings = himmel_world::render::RenderSettings {
        width: video.width,
        height: video.height,
        frames: video.frames,
        fps: video.fps,
    };
    println!(
        "himmel-mini: {}x{}x{}, {} steps, guidance {}; load {load:.3}s",
        video.width, video.height, video.frames, sampling.steps, sampling.guidance
    );
    let mut best: Vec<(String, f64, u64)> = Vec::new();
    for run in 0..args.repeat {
        let times = StageTimes::default();
        let prompt = "a red ball bounces across the grass";
        let start = Instant::now();
        let recaption = pipeline.recaption(prompt, &settings, u64::from(run))?;
        let recaption_seconds = start.elapsed().as_secs_f64();
        let request = pipeline.validate(GenerationRequest {
            steps: sampling.steps,
            guidance: sampling.guidance,
            seed: u64::from(run),
            ..GenerationRequest::new(prompt, (video.width, video.height, video.frames), video.fps)
        })?;
        pipeline.generate(&request, &recaption.caption, &times)?;
        let mut stages = vec![("recaption".to_string(), recaption_seconds, 0)];
        stages.extend(times.finished.into_inner());
        if best.is_empty() {
            best = stages;
        } else {
            for (kept, new) in best.iter_mut().zip(stages) {
                kept.1 = kept.1.min(new.1);
            }
        }
    }
    let total: f64 = best.iter().map(|stage| stage.1).sum();
    for (stage, seconds, steps) in &best {
        let per_step = if *steps > 0 {
            format!(" ({:.1} ms a step)", seconds / *steps as f64 * 1000.0)
        } else {
            String::new()
        };
        println!("  {stage:14} {seconds:.3}s{per_step}");
    }
    println!(
        "  {:14} {total:.3}s; peak memory {}",
        "all stages",
        crate::generate::peak_memory().unwrap_or_else(|| "unknown".into())
    );
    Ok(())
}

fn best_seconds(repeat: u32, mut work: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..repeat {
        let start = Instant::now();
        work()?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn size_on_disk(path: &std::path::Path) -> u64 {
    if path.is_dir() {
        std::fs::read_dir(path)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    } else {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }
}

/// A deterministic clip with smooth gradients, texture and a moving square, so codecs see
/// both flat and detailed regions and real motion.
fn moving_pattern(width: usize, height: usize, frames: usize) -> Result<Video> {
    let mut rgb = Vec::with_capacity(frames * height * width * 3);
    for t in 0..frames {
        let (square_x, square_y) = ((t * 3) % width, height / 3);
        for y in 0..height {
            for x in 0..width {
                let inside = x.abs_diff(square_x) < width / 8 && y.abs_diff(square_y) < height / 8;
                let wave = ((x + y) as f32 / 9.0 + t as f32 / 5.0).sin();
                let pixel = if inside {
                    [230, 40, 40]
                } else {
                    [
                        ((x + 2 * t) * 255 / width % 256) as u8,
                        (y * 255 / height) as u8,
                        (128.0 + 90.0 * wave) as u8,
                    ]
                };
                rgb.extend_from_slice(&pixel);
            }
        }
    }
    Ok(Video::from_rgb8(rgb, frames, (width, height), 16.0)?)
}
