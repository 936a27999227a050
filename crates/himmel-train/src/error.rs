//! [`TrainError`]: what can stop a training run, each naming the file or setting at fault.

use std::path::PathBuf;

/// An error of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A recipe file is not valid TOML or misses a setting.
    #[error("recipe {path}: {message}")]
    Recipe {
        /// The recipe file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A setting has a value training cannot use.
    #[error("setting {name} = {value}: {reason}")]
    Setting {
        /// The setting.
        name: &'static str,
        /// Its value.
        value: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A checkpoint or weight file is corrupt, truncated or from another model.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A training clip or its caption cannot be used.
    #[error("{path}: {message}")]
    Data {
        /// The clip or caption file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The world could not render a clip.
    #[error("rendering clip {index}: {message}")]
    World {
        /// The clip's index.
        index: u64,
        /// What went wrong.
        message: String,
    },
    /// A tensor operation failed.
    #[error("{0}")]
    Tensor(#[from] candle_core::Error),
}
