//! Video and image files in and out of Himmel's [`Video`] type.
//!
//! Writes MP4 (H.264, via OpenH264 built from source), looping GIF, folders of PNG frames and
//! raw safetensors frames; reads those plus MOV and still images (PNG, JPEG, WebP). Writes are
//! atomic: a failure leaves no partial file. The format is chosen by the path ([`Format`]).
#![deny(missing_docs)]

mod error;
mod format;
mod frames;
mod gif;
mod h264;
mod mp4;
mod output;
mod raw;
mod stream;
mod transform;

use std::path::Path;

use himmel_core::{Progress, Video};

pub use error::MediaError;
pub use format::Format;
pub use h264::Quality;
pub use output::check_output_path;
pub use raw::{FPS_KEY, TENSOR_NAME};
pub use stream::VideoWriter;
pub use transform::{FrameRange, resample, resize, trim};

/// Frame rate given to inputs that carry none (PNG folders, still images): Wan 2.1's rate.
pub const DEFAULT_FPS: f64 = 16.0;

/// How to read an input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadOptions {
    /// Frame rate for inputs that carry none (PNG folders, still images, safetensors without
    /// an `fps` entry).
    pub fps: f64,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self { fps: DEFAULT_FPS }
    }
}

/// How to write an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteOptions {
    /// H.264 quality for MP4 outputs.
    pub quality: Quality,
}

/// Reads a video (or a still image, as one frame) from `path`, choosing the format by the
/// path: see [`Format::of_input`].
pub fn read_video(
    path: &Path,
    options: &ReadOptions,
    progress: &dyn Progress,
) -> Result<Video, MediaError> {
    let metadata = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => MediaError::NotFound(path.into()),
        _ => MediaError::io(path, e),
    })?;
    let format = Format::of_input(path)?;
    if metadata.is_file() && metadata.len() == 0 {
        return Err(MediaError::EmptyFile(path.into()));
    }
    match format {
        Format::Mp4 => mp4::read(path, progress),
        Format::Gif => gif::read(path, progress),
        Format::PngFolder => frames::read_folder(path, options.fps, progress),
        Format::Safetensors => raw::read(path, options.fps),
        Format::Still => frames::read_still(path, options.fps),
    }
}

/// Writes `video` to `path` in the format its extension names (see [`Format::of_output`]).
/// Nothing is left at `path` if writing fails.
pub fn write_video(
    video: &Video,
    path: &Path,
    options: &WriteOptions,
    progress: &dyn Progress,
) -> Result<(), MediaError> {
    match Format::of_output(path)? {
        Format::Mp4 => mp4::write(video, path, options.quality, progress),
        Format::Gif => gif::write(video, path, progress),
        Format::PngFolder => frames::write_folder_of_pngs(video, path, progress),
        Format::Safetensors => raw::write(video, path),
        Format::Still => unreachable!("stills are never an output format"),
    }
}
