//! Progress on the terminal: a bar with an ETA when stderr is a terminal, plain lines when it
//! is not (logs, CI), nothing with `--quiet`.

use std::cell::RefCell;
use std::io::IsTerminal;
use std::time::Instant;

use himmel_core::{Progress, ProgressEvent};
use indicatif::{ProgressBar, ProgressStyle};

/// Shows progress events on stderr.
pub struct TerminalProgress {
    mode: Mode,
    stage: RefCell<Option<Stage>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Bar,
    Lines,
    Quiet,
}

struct Stage {
    name: String,
    total: u64,
    started: Instant,
    bar: Option<ProgressBar>,
    /// Last tenth of the stage reported in line mode.
    reported_tenth: u64,
}

impl TerminalProgress {
    /// A bar on a terminal, lines elsewhere, or silence when `quiet`.
    pub fn new(quiet: bool) -> Self {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bar
        } else {
            Mode::Lines
        };
        Self {
            mode,
            stage: RefCell::new(None),
        }
    }

    fn start(&self, name: &str, total: u64) {
        let bar = (self.mode == Mode::Bar).then(|| {
            let bar = if total > 0 {
                ProgressBar::new(total)
            } else {
                ProgressBar::new_spinner()
            };
            let template = if total > 0 {
                "{msg:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta}"
            } else {
                "{msg:>12} {spinner} {pos} {per_sec}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(name.to_string());
            bar
        });
        if self.mode == Mode::Lines {
            eprintln!(
                "{name}: started{}",
                if total > 0 {
                    format!(", {total} steps")
                } else {
                    String::new()
                }
            );
        }
        *self.stage.borrow_mut() = Some(Stage {
            name: name.to_string(),
            total,
            started: Instant::now(),
            bar,
            reported_tenth: 0,
        });
    }

    fn step(&self, done: u64) {
        let mut stage = self.stage.borrow_mut();
        let Some(stage) = stage.as_mut() else { return };
        if let Some(bar) = &stage.bar {
            bar.set_position(done);
        } else if self.mode == Mode::Lines && stage.total > 0 {
            let tenth = done * 10 / stage.total;
            if tenth > stage.reported_tenth && done < stage.total {
                stage.reported_tenth = tenth;
                eprintln!("{}: {done}/{}", stage.name, stage.total);
            }
        }
    }

    fn finish(&self) {
        let Some(stage) = self.stage.borrow_mut().take() else {
            return;
        };
        if let Some(bar) = stage.bar {
            bar.finish_and_clear();
        }
        if self.mode == Mode::Lines {
            eprintln!(
                "{}: done in {:.2}s",
                stage.name,
                stage.started.elapsed().as_secs_f64()
            );
        }
    }
}

impl Progress for TerminalProgress {
    fn event(&self, event: ProgressEvent<'_>) {
        if self.mode == Mode::Quiet {
            return;
        }
        match event {
            ProgressEvent::StageStarted { stage, total } => self.start(stage, total),
            ProgressEvent::Step { done } => self.step(done),
            ProgressEvent::StageFinished => self.finish(),
            ProgressEvent::Preview { .. } => {}
        }
    }
}
