//! [`PipelineError`]: why a generation could not run.

use std::path::PathBuf;

use crate::request::ValidationError;

/// Why a model could not be loaded or a generation could not run.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The request breaks a rule.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// A model file or folder is missing or malformed.
    #[error("{path}: {reason}")]
    Load {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The prompt cannot be understood at all.
    #[error("prompt: {reason}")]
    Prompt {
        /// Why.
        reason: String,
    },
    /// The scheduler configuration cannot be used.
    #[error(transparent)]
    Scheduler(#[from] himmel_sample::SchedulerError),
    /// A conditioning image or clip could not be prepared.
    #[error(transparent)]
    Media(#[from] himmel_media::MediaError),
    /// A task (extension, connection, loop) cannot run as asked.
    #[error(transparent)]
    Task(#[from] crate::tasks::TaskError),
    /// A preview projection does not fit the model's latents.
    #[error("the preview projection has {expected} latent channels; the model has {channels}")]
    Preview {
        /// The model's latent channels.
        channels: usize,
        /// The projection's.
        expected: usize,
    },
    /// The decoded frames do not form a video.
    #[error(transparent)]
    Video(#[from] himmel_core::VideoError),
    /// The caller stopped the work.
    #[error("cancelled")]
    Cancelled,
    /// A tensor operation failed (shapes, dtypes, memory).
    #[error("{}", candle_message(.0))]
    Tensor(#[from] candle_core::Error),
}

impl PipelineError {
    /// A load error on `path`.
    pub(crate) fn load(path: impl Into<PathBuf>, reason: impl ToString) -> Self {
        Self::Load {
            path: path.into(),
            reason: reason.to_string(),
        }
    }

    /// A load error on `path` caused by a tensor library error.
    pub(crate) fn load_tensor(path: impl Into<PathBuf>, error: candle_core::Error) -> Self {
        Self::Load {
            path: path.into(),
            reason: candle_message(&error),
        }
    }
}

/// A candle error's message without the backtrace candle may attach.
pub fn candle_message(error: &candle_core::Error) -> String {
    use candle_core::Error;
    match error {
        Error::WithBacktrace { inner, .. } => candle_message(inner),
        Error::WithPath { inner, path } => format!("{}: {}", path.display(), candle_message(inner)),
        Error::Context { inner, context } => format!("{context}: {}", candle_message(inner)),
        other => other.to_string(),
    }
}
