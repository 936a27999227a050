//! [`MediaError`]: every way reading or writing a video file can fail, each naming the file.

use std::path::PathBuf;

use himmel_core::VideoError;

/// Why a video or image could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The input path does not exist.
    #[error("{0}: no such file or folder")]
    NotFound(PathBuf),
    /// The input file has no bytes.
    #[error("{0}: the file is empty")]
    EmptyFile(PathBuf),
    /// The output would go into a folder that does not exist.
    #[error("{path}: the folder {folder} does not exist")]
    MissingOutputFolder {
        /// The requested output path.
        path: PathBuf,
        /// Its parent folder, which is missing.
        folder: PathBuf,
    },
    /// The file name does not say which format to use.
    #[error("{path}: unknown {direction} format; supported: {supported}")]
    UnknownFormat {
        /// The path whose extension is not understood.
        path: PathBuf,
        /// `"input"` or `"output"`.
        direction: &'static str,
        /// The extensions that are understood.
        supported: &'static str,
    },
    /// The file is not a valid file of its format.
    #[error("{path}: not a valid {format} file: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The format it claimed to be.
        format: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The file holds video in a codec Himmel cannot decode.
    #[error("{path}: video codec {codec} is not supported; Himmel decodes H.264 (AVC) video")]
    UnsupportedCodec {
        /// The file.
        path: PathBuf,
        /// The codec found, e.g. `"HEVC (hvc1)"`.
        codec: String,
    },
    /// The video cannot be written in this format at this size.
    #[error("cannot write {format} at {width}x{height}: {reason}")]
    UnsupportedSize {
        /// The output format.
        format: &'static str,
        /// Frame width.
        width: usize,
        /// Frame height.
        height: usize,
        /// Which limit the size breaks.
        reason: &'static str,
    },
    /// A frame range does not fit the clip.
    #[error(
        "frame range {range} is out of range: the clip has {frames} frames (ranges are 0-based, end excluded)"
    )]
    FrameRange {
        /// The range asked for.
        range: String,
        /// Frames in the clip.
        frames: usize,
    },
    /// A requested frame size has a zero side.
    #[error("frame size {width}x{height} is invalid: width and height must be at least 1")]
    ZeroSize {
        /// Width asked for.
        width: usize,
        /// Height asked for.
        height: usize,
    },
    /// An encoder failed.
    #[error("{format} encoder failed: {reason}")]
    Encode {
        /// The output format.
        format: &'static str,
        /// What the encoder said.
        reason: String,
    },
    /// A file system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The frames do not form a valid video.
    #[error(transparent)]
    Video(#[from] VideoError),
}

impl MediaError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A malformed-file error on `path`.
    pub(crate) fn malformed(
        path: impl Into<PathBuf>,
        format: &'static str,
        reason: impl ToString,
    ) -> Self {
        Self::Malformed {
            path: path.into(),
            format,
            reason: reason.to_string(),
        }
    }
}

impl From<candle_core::Error> for MediaError {
    fn from(error: candle_core::Error) -> Self {
        Self::Video(VideoError::Tensor(error))
    }
}
