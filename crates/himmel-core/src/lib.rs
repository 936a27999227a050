//! Himmel's shared ground: the [`Video`] type that everything which makes or eats video
//! speaks, and the [`Progress`] events that long work reports.
#![deny(missing_docs)]

pub mod compare;
pub mod progress;
pub mod video;

pub use progress::{Progress, ProgressEvent, Silent};
pub use video::{Video, VideoError};
