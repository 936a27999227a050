//! `himmel eval --compare BASE NEW`: two saved reports of the same clips (two models' or two
//! autoencoders'), measure by measure, with the 95% interval of their difference taken clip
//! against clip, so the spread that comes from the scenes and seeds themselves cancels.

use std::path::Path;

use anyhow::{Context, Result, bail};
use himmel_world::score::Scores;
use serde::Deserialize;

/// What a comparison reads of a saved `himmel eval` report: a model's or an autoencoder's.
#[derive(Deserialize)]
#[serde(untagged)]
enum SavedReport {
    Model { prompts: Vec<SavedClip> },
    Autoencoder { clips: Vec<SavedReconstruction> },
}

/// One clip of a saved report.
#[derive(Deserialize)]
struct SavedClip {
    prompt: String,
    seed: u64,
    model: SavedScore,
    ground_truth: SavedScore,
    /// An autoencoder's PSNR over the clip and on and next to its objects (dB); `None` for a
    /// model's clips, a clip without objects and an exact reconstruction.
    #[serde(skip)]
    fidelity: [Option<f64>; 2],
}

/// One held-out clip of an autoencoder's report.
#[derive(Deserialize)]
struct SavedReconstruction {
    caption: String,
    index: u64,
    reconstructed: SavedScore,
    ground_truth: SavedScore,
    /// Saved as `null` where infinite (an exact reconstruction).
    psnr: Option<f64>,
    object_psnr: Option<f64>,
}

impl From<SavedReconstruction> for SavedClip {
    /// The clip as a model's clip: its caption the prompt, its index the seed, its
    /// reconstruction the generation.
    fn from(clip: SavedReconstruction) -> Self {
        Self {
            prompt: clip.caption,
            seed: clip.index,
            model: clip.reconstructed,
            ground_truth: clip.ground_truth,
            fidelity: [clip.psnr, clip.object_psnr],
        }
    }
}

/// The PSNRs of autoencoders' reports, by their place in [`SavedClip::fidelity`].
const FIDELITY: [&str; 2] = ["PSNR (dB)", "object PSNR (dB)"];

/// The world scorer's report on one clip, as far as the measures need it.
#[derive(Deserialize)]
struct SavedScore {
    scores: Scores,
    physics_residual: f64,
    faults: Vec<String>,
}

/// One measure of a clip; the physics residual as a multiple of `truth`, ground truth's mean.
type Measure = fn(&SavedScore, truth: f64) -> f64;

/// The measures `himmel eval` prints, in its order.
const MEASURES: [(&str, Measure); 10] = [
    ("colour agreement", |s, _| s.scores.color),
    ("shape agreement", |s, _| s.scores.shape),
    ("motion direction", |s, _| s.scores.motion),
    ("count", |s, _| s.scores.count),
    ("physics", |s, _| s.scores.physics),
    ("consistency", |s, _| s.scores.consistency),
    ("backdrop agreement", |s, _| s.scores.backdrop),
    ("clips without faults", |s, _| {
        f64::from(s.faults.is_empty())
    }),
    ("clips as asked", |s, _| {
        f64::from(s.scores.as_asked(s.faults.len()))
    }),
    ("physics residual (x truth)", |s, truth| {
        s.physics_residual / truth.max(1e-9)
    }),
];

/// Reads the clips of the report at `path`.
fn read(path: &Path) -> Result<Vec<SavedClip>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the eval report {}", path.display()))?;
    let report: SavedReport = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a report written by `himmel eval`",
            path.display()
        )
    })?;
    let clips = match report {
        SavedReport::Model { prompts } => prompts,
        SavedReport::Autoencoder { clips } => clips.into_iter().map(SavedClip::from).collect(),
    };
    if clips.is_empty() {
        bail!("{} holds no clips", path.display());
    }
    Ok(clips)
}

/// The mean of `values` and the half-width of its 95% interval (normal approximation).
fn mean_and_interval(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, f64::INFINITY);
    }
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, 1.96 * (variance / n).sqrt())
}

/// Ground truth's mean physics residual over `clips`.
fn truth_residual(clips: &[SavedClip]) -> f64 {
    clips
        .iter()
        .map(|c| c.ground_truth.physics_residual)
        .sum::<f64>()
        / clips.len() as f64
}

/// Prints both reports' measures and their paired differences; fails unless both score the
/// same prompts and seeds in the same order.
pub fn run(base_path: &Path, new_path: &Path) -> Result<()> {
    let (base, new) = (read(base_path)?, read(new_path)?);
    if base.len() != new.len() {
        bail!(
            "{} scores {} clips and {} {}; compare reports of the same prompts and seeds",
            base_path.display(),
            base.len(),
            new_path.display(),
            new.len()
        );
    }
    if let Some((index, (a, b))) = base
        .iter()
        .zip(&new)
        .enumerate()
        .find(|(_, (a, b))| (&a.prompt, a.seed) != (&b.prompt, b.seed))
    {
        bail!(
            "clip {index} differs: {:?} (seed {}) in {}, {:?} (seed {}) in {}",
            a.prompt,
            a.seed,
            base_path.display(),
            b.prompt,
            b.seed,
            new_path.display()
        );
    }
    let (base_truth, new_truth) = (truth_residual(&base), truth_residual(&new));
    println!(
        "{:<28}{:>8}{:>9}{:>12}{:>15}",
        format!("{} clips in both", base.len()),
        "base",
        "new",
        "new - base",
        "95% interval"
    );
    for (name, measure) in MEASURES {
        let of = |clips: &[SavedClip], truth| -> Vec<f64> {
            clips.iter().map(|c| measure(&c.model, truth)).collect()
        };
        print_row(name, &of(&base, base_truth), &of(&new, new_truth));
    }
    // Autoencoders' PSNRs, over the clips where both reports have a finite one.
    for (place, name) in FIDELITY.iter().enumerate() {
        let (base_values, new_values): (Vec<f64>, Vec<f64>) = (base.iter().zip(&new))
            .filter_map(|(b, n)| Some((b.fidelity[place]?, n.fidelity[place]?)))
            .unzip();
        if !base_values.is_empty() {
            print_row(name, &base_values, &new_values);
        }
    }
    Ok(())
}

/// Prints one measure's means under both reports and their paired difference.
fn print_row(name: &str, base_values: &[f64], new_values: &[f64]) {
    let differences: Vec<f64> = new_values
        .iter()
        .zip(base_values)
        .map(|(n, b)| n - b)
        .collect();
    let (difference, interval) = mean_and_interval(&differences);
    println!(
        "{name:<28}{:>8.4}{:>9.4}{difference:>+12.4}{:>15}",
        mean_and_interval(base_values).0,
        mean_and_interval(new_values).0,
        format!("±{interval:.4}"),
    );
}

#[cfg(test)]
mod tests {
    use super::mean_and_interval;

    #[test]
    fn the_interval_narrows_with_more_clips_and_vanishes_without_spread() {
        let (mean, interval) = mean_and_interval(&[1.0, 0.0, 1.0, 0.0]);
        assert_eq!(mean, 0.5);
        // Sample variance 1/3, over 4 clips.
        assert!((interval - 1.96 * (1.0f64 / 12.0).sqrt()).abs() < 1e-12);
        let more: Vec<f64> = (0..16).map(|i| (i % 2) as f64).collect();
        assert!(mean_and_interval(&more).1 < interval);
        assert_eq!(mean_and_interval(&[0.25; 5]), (0.25, 0.0));
        assert_eq!(mean_and_interval(&[0.25]).1, f64::INFINITY);
    }
}
