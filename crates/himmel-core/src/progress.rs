//! Progress events for long work (decoding, encoding, sampling), consumed by the command
//! line's progress bars and, later, by the server's job records.

use crate::Video;

/// One thing that happened during long work.
#[derive(Debug, Clone, Copy)]
pub enum ProgressEvent<'a> {
    /// A stage began; `total` is the number of steps it will take (0 when unknown).
    StageStarted {
        /// Short name of the stage, e.g. `"decode"` or `"encode mp4"`.
        stage: &'a str,
        /// Number of steps the stage will take; 0 when unknown.
        total: u64,
    },
    /// `done` steps of the current stage are complete.
    Step {
        /// Steps completed so far in the current stage.
        done: u64,
    },
    /// The current stage is complete.
    StageFinished,
    /// A cheap look at the whole result as it stands (during denoising, every step).
    Preview {
        /// The preview frames.
        frames: &'a Video,
    },
}

/// Receives progress events. Implementations must be cheap: events arrive once per frame
/// or step.
pub trait Progress {
    /// Handles one event.
    fn event(&self, event: ProgressEvent<'_>);

    /// Whether [`ProgressEvent::Preview`] events are wanted (making them costs a little).
    fn wants_previews(&self) -> bool {
        false
    }
}

/// A [`Progress`] that ignores every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {
    fn event(&self, _event: ProgressEvent<'_>) {}
}
