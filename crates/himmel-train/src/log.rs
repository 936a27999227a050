//! The loss log of a run: `loss.csv` (one row per step) and `loss.png`, the curve on a
//! logarithmic axis (raw in grey, smoothed in blue, a grid line at every power of ten).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::TrainError;

const HEADER: &str = "step,loss,learning_rate,gradient_norm,seconds";

/// One logged step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogRow {
    /// Steps completed.
    pub step: u64,
    /// The training loss of the step.
    pub loss: f64,
    /// The learning rate used.
    pub learning_rate: f64,
    /// The gradient norm before clipping.
    pub gradient_norm: f64,
    /// Wall-clock seconds the step took.
    pub seconds: f64,
}

/// An append-only CSV of [`LogRow`]s.
pub struct LossLog {
    path: PathBuf,
    rows: Vec<LogRow>,
}

fn parse_row(line: &str) -> Option<LogRow> {
    let fields: Vec<&str> = line.split(',').collect();
    match fields.as_slice() {
        [step, loss, rate, norm, seconds] => Some(LogRow {
            step: step.parse().ok()?,
            loss: loss.parse().ok()?,
            learning_rate: rate.parse().ok()?,
            gradient_norm: norm.parse().ok()?,
            seconds: seconds.parse().ok()?,
        }),
        _ => None,
    }
}

fn format_row(row: &LogRow) -> String {
    format!(
        "{},{},{},{},{:.4}",
        row.step, row.loss, row.learning_rate, row.gradient_norm, row.seconds
    )
}

impl LossLog {
    /// Opens `dir/loss.csv` for a run continuing after `step` steps: rows beyond it (from an
    /// interrupted run) are dropped, so the log always matches the checkpoint.
    pub fn open(dir: &Path, step: u64) -> Result<Self, TrainError> {
        let path = dir.join("loss.csv");
        let io = |source| TrainError::Io {
            path: path.clone(),
            source,
        };
        let rows: Vec<LogRow> = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .lines()
                .filter_map(parse_row)
                .filter(|row| row.step <= step)
                .collect(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(io(error)),
        };
        let mut text = format!("{HEADER}\n");
        for row in &rows {
            text.push_str(&format_row(row));
            text.push('\n');
        }
        std::fs::write(&path, text).map_err(io)?;
        Ok(Self { path, rows })
    }

    /// The rows so far.
    pub fn rows(&self) -> &[LogRow] {
        &self.rows
    }

    /// Appends a row to the file.
    pub fn push(&mut self, row: LogRow) -> Result<(), TrainError> {
        let io = |source| TrainError::Io {
            path: self.path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        writeln!(file, "{}", format_row(&row)).map_err(io)?;
        self.rows.push(row);
        Ok(())
    }

    /// Draws the curve to `loss.png` beside the CSV.
    pub fn plot(&self) -> Result<PathBuf, TrainError> {
        let path = self.path.with_file_name("loss.png");
        plot(&self.rows, 800, 400)
            .save(&path)
            .map_err(|error| TrainError::Io {
                path: path.clone(),
                source: std::io::Error::other(error),
            })?;
        Ok(path)
    }
}

/// Draws `rows` into an image: x is the step, y the base-10 logarithm of the loss.
fn plot(rows: &[LogRow], width: u32, height: u32) -> image::RgbImage {
    let mut canvas = image::RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
    let points: Vec<(f64, f64)> = rows
        .iter()
        .filter(|row| row.loss.is_finite() && row.loss > 0.0)
        .map(|row| (row.step as f64, row.loss.log10()))
        .collect();
    let Some(&(first_step, _)) = points.first() else {
        return canvas;
    };
    let last_step = points
        .last()
        .map_or(first_step, |point| point.0)
        .max(first_step + 1.0);
    let low = points
        .iter()
        .map(|p| p.1)
        .fold(f64::INFINITY, f64::min)
        .floor();
    let high = points
        .iter()
        .map(|p| p.1)
        .fold(f64::NEG_INFINITY, f64::max)
        .ceil()
        .max(low + 1.0);
    let margin = 20.0;
    let to_pixel = |(step, value): (f64, f64)| {
        let x =
            margin + (step - first_step) / (last_step - first_step) * (width as f64 - 2.0 * margin);
        let y =
            height as f64 - margin - (value - low) / (high - low) * (height as f64 - 2.0 * margin);
        (x, y)
    };
    let mut decade = low;
    while decade <= high {
        let (_, y) = to_pixel((first_step, decade));
        draw_line(
            &mut canvas,
            (margin, y),
            (width as f64 - margin, y),
            [220, 220, 220],
        );
        decade += 1.0;
    }
    let mut smoothed = points[0].1;
    let mut previous = (to_pixel(points[0]), to_pixel(points[0]));
    for &(step, value) in &points {
        smoothed = 0.95 * smoothed + 0.05 * value;
        let raw = to_pixel((step, value));
        let smooth = to_pixel((step, smoothed));
        draw_line(&mut canvas, previous.0, raw, [170, 170, 170]);
        draw_line(&mut canvas, previous.1, smooth, [30, 90, 200]);
        previous = (raw, smooth);
    }
    canvas
}

fn draw_line(canvas: &mut image::RgbImage, from: (f64, f64), to: (f64, f64), color: [u8; 3]) {
    let steps = (to.0 - from.0)
        .abs()
        .max((to.1 - from.1).abs())
        .ceil()
        .max(1.0) as usize;
    for i in 0..=steps {
        let t = i as f64 / steps as f64;
        let x = (from.0 + t * (to.0 - from.0)).round();
        let y = (from.1 + t * (to.1 - from.1)).round();
        if x >= 0.0 && y >= 0.0 && (x as u32) < canvas.width() && (y as u32) < canvas.height() {
            canvas.put_pixel(x as u32, y as u32, image::Rgb(color));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(step: u64, loss: f64) -> LogRow {
        LogRow {
            step,
            loss,
            learning_rate: 1e-3,
            gradient_norm: 0.5,
            seconds: 0.1,
        }
    }

    #[test]
    fn reopening_drops_rows_past_the_checkpoint() -> Result<(), TrainError> {
        let dir = tempfile::tempdir().expect("temporary folder");
        let mut log = LossLog::open(dir.path(), 0)?;
        for step in 1..=5 {
            log.push(row(step, 1.0 / step as f64))?;
        }
        let png = log.plot()?;
        assert!(image::open(&png).is_ok());
        let log = LossLog::open(dir.path(), 3)?;
        assert_eq!(log.rows().len(), 3);
        let text = std::fs::read_to_string(dir.path().join("loss.csv")).expect("csv");
        assert_eq!(text.lines().count(), 4);
        assert!(text.starts_with(HEADER));
        Ok(())
    }
}
