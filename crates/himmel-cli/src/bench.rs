//! `himmel bench`: named workloads timed end to end. `media` measures encode and decode speed
//! of every video format; `world` the procedural world's clip rate.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use himmel_core::{Silent, Video};
use himmel_media::{ReadOptions, WriteOptions, read_video, resize, write_video};
use himmel_world::sample_clip;

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

/// Runs the chosen workload and prints its table.
pub fn run(args: &BenchArgs) -> Result<()> {
    match &args.workload {
        Workload::Media(media) => run_media(media),
        Workload::World(world) => run_world(world),
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
