//! The training loop every stage shares: loss, backward pass, clipped AdamW step, EMA update,
//! log row, and at intervals a checkpoint, an export of the averaged weights and the plot.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Tensor, Var};

use crate::checkpoint;
use crate::config::OptimizerConfig;
use crate::ema::Ema;
use crate::error::TrainError;
use crate::log::{LogRow, LossLog};
use crate::optim::AdamW;

/// One stage of training: what it trains and how each step's loss is made.
pub trait Stage {
    /// The stage's name in checkpoints (`"autoencoder"`, `"denoiser"`).
    fn name(&self) -> &'static str;
    /// The trained variables, in a fixed order.
    fn variables(&self) -> &[(String, Var)];
    /// The loss of step `step` (0-based); its data and noise depend on the step alone, so a
    /// resumed run repeats an uninterrupted one.
    fn loss(&self, step: u64) -> Result<Tensor, TrainError>;
    /// Writes `averages` (the variables' EMA, in [`Stage::variables`] order, after `step` steps)
    /// as a usable model into `dir`; the export records `step` so a warm start can go on.
    fn export(
        &self,
        averages: &[(String, Tensor)],
        step: u64,
        dir: &Path,
    ) -> Result<(), TrainError>;
}

/// Where and how long a stage runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run's folder: checkpoints, `loss.csv`, `loss.png`, exports.
    pub dir: PathBuf,
    /// Steps of the whole run (the learning-rate schedule spans them).
    pub total_steps: u64,
    /// Stop once this many steps are done (at most `total_steps`); a later `resume` goes on.
    pub stop_after: Option<u64>,
    /// Steps between checkpoints.
    pub checkpoint_every: u64,
    /// Continue from the newest checkpoint in `dir` instead of starting afresh.
    pub resume: bool,
    /// Steps of this schedule the starting weights have already trained (a warm start from an
    /// export: the run begins there with fresh optimizer moments, warmed up again); 0 for a
    /// fresh start. A resumed checkpoint overrides it.
    pub start_step: u64,
    /// The optimizer.
    pub optimizer: OptimizerConfig,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// The step it started from (0, the warm start's, or the resumed checkpoint's).
    pub first_step: u64,
    /// Steps done when it stopped.
    pub last_step: u64,
    /// The log rows of this run.
    pub rows: Vec<LogRow>,
    /// The last checkpoint written.
    pub checkpoint: Option<PathBuf>,
}

/// Runs `stage` from scratch or from its newest checkpoint; `on_step` sees every log row.
pub fn run(
    stage: &dyn Stage,
    options: &RunOptions,
    on_step: &mut dyn FnMut(&LogRow),
) -> Result<RunSummary, TrainError> {
    std::fs::create_dir_all(&options.dir).map_err(|source| TrainError::Io {
        path: options.dir.clone(),
        source,
    })?;
    if options.checkpoint_every == 0 {
        return Err(TrainError::Setting {
            name: "checkpoint_every",
            value: "0".into(),
            reason: "must be at least 1".into(),
        });
    }
    let vars = stage.variables();
    let mut optimizer = AdamW::new(&options.optimizer, vars)?;
    let mut ema = Ema::new(options.optimizer.ema_decay, vars)?;
    let mut first_step = options.start_step;
    optimizer.origin = options.start_step;
    if options.resume
        && let Some(path) = checkpoint::latest(&options.dir)?
    {
        first_step = checkpoint::restore(&path, stage.name(), &mut optimizer, &mut ema)?;
    }
    let mut log = LossLog::open(&options.dir, first_step)?;
    let end = options
        .stop_after
        .unwrap_or(options.total_steps)
        .min(options.total_steps);
    let mut rows = Vec::new();
    let mut saved = None;
    for step in first_step..end {
        let started = Instant::now();
        let loss = stage.loss(step)?;
        let value = f64::from(loss.to_scalar::<f32>()?);
        if !value.is_finite() {
            return Err(TrainError::Setting {
                name: "learning_rate",
                value: options.optimizer.learning_rate.to_string(),
                reason: format!("the loss diverged to {value} at step {}", step + 1),
            });
        }
        let report = optimizer.step(&loss.backward()?, step, options.total_steps)?;
        ema.update(vars, step)?;
        let row = LogRow {
            step: step + 1,
            loss: value,
            learning_rate: report.learning_rate,
            gradient_norm: report.gradient_norm,
            seconds: started.elapsed().as_secs_f64(),
        };
        log.push(row)?;
        on_step(&row);
        rows.push(row);
        let done = step + 1;
        if done % options.checkpoint_every == 0 || done == end {
            saved = Some(checkpoint::save(
                &options.dir,
                stage.name(),
                done,
                &optimizer,
                &ema,
            )?);
            stage.export(&ema.averages, done, &options.dir)?;
            log.plot()?;
        }
    }
    if first_step >= end {
        // Nothing left to train: the weights are exported as they are, with whatever the
        // stage was given (how a finished denoiser takes a newer autoencoder).
        stage.export(&ema.averages, first_step, &options.dir)?;
    }
    Ok(RunSummary {
        first_step,
        last_step: end.max(first_step),
        rows,
        checkpoint: saved,
    })
}
