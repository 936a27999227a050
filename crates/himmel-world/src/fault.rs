//! Temporal consistency faults the scorer finds: an object that vanishes, appears, or changes
//! colour, shape or size without cause, with the frame it happened at.

use std::fmt;

use serde::{Serialize, Serializer};

use crate::vocab::{Color, Shape};

/// What went wrong with an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// It is gone, away from the frame's border and from other objects.
    Vanishes,
    /// It is gone and an object of this other colour starts where it was.
    TurnsColor(Color),
    /// It starts after the first frames, away from the border and from other objects.
    AppearsFromNowhere,
    /// Its shape early in its track is another than late in it.
    ChangesShape {
        /// The shape of the first third of its track.
        from: Shape,
        /// The shape of the last third.
        to: Shape,
    },
    /// Its area more than doubles or halves from one frame to the next.
    ChangesSize,
}

/// A temporal consistency fault of one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// What went wrong.
    pub kind: FaultKind,
    /// The object's colour (before, for a colour change).
    pub color: Color,
    /// The first frame that shows the fault; `None` for a shape change, which is seen over the
    /// whole track.
    pub frame: Option<usize>,
}

/// A colour or shape as the faults' words name it.
fn word(value: impl fmt::Debug) -> String {
    format!("{value:?}").to_lowercase()
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let color = word(self.color);
        let at = self
            .frame
            .map(|frame| format!(" at frame {frame}"))
            .unwrap_or_default();
        match self.kind {
            FaultKind::Vanishes => write!(f, "the {color} object vanishes{at}"),
            FaultKind::TurnsColor(to) => write!(f, "the {color} object turns {}{at}", word(to)),
            FaultKind::AppearsFromNowhere => {
                write!(f, "a {color} object appears from nowhere{at}")
            }
            FaultKind::ChangesShape { from, to } => write!(
                f,
                "the {color} object changes shape from {} to {}{at}",
                word(from),
                word(to)
            ),
            FaultKind::ChangesSize => write!(f, "the {color} object changes size{at}"),
        }
    }
}

/// Saved in words, as reports have always given them.
impl Serialize for Fault {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_read_as_words() {
        let fault = |kind, frame| Fault {
            kind,
            color: Color::Red,
            frame,
        };
        for (fault, words) in [
            (
                fault(FaultKind::Vanishes, Some(4)),
                "the red object vanishes at frame 4",
            ),
            (
                fault(FaultKind::TurnsColor(Color::Blue), Some(2)),
                "the red object turns blue at frame 2",
            ),
            (
                fault(FaultKind::AppearsFromNowhere, Some(7)),
                "a red object appears from nowhere at frame 7",
            ),
            (
                fault(
                    FaultKind::ChangesShape {
                        from: Shape::Ball,
                        to: Shape::Cube,
                    },
                    None,
                ),
                "the red object changes shape from ball to cube",
            ),
        ] {
            assert_eq!(fault.to_string(), words);
            assert_eq!(
                serde_json::to_string(&fault).unwrap(),
                format!("\"{words}\"")
            );
        }
    }
}
