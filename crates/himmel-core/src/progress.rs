//! Progress events for long work (decoding, encoding, sampling), consumed by the command
//! line's progress bars and, later, by the server's job records.

/// One thing that happened during long work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

/// Receives progress events. Implementations must be cheap: events arrive once per frame
/// or step.
pub trait Progress {
    /// Handles one event.
    fn event(&self, event: ProgressEvent<'_>);
}

/// A [`Progress`] that ignores every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {
    fn event(&self, _event: ProgressEvent<'_>) {}
}
