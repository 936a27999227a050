//! Live previews: a linear map from a model's latent channels to RGB, fitted once per model
//! on world clips through its own autoencoder and stored with the model as `preview.json`.
//! Applied to the denoiser's current estimate of the clean latents at every step, it shows
//! the whole clip (one frame per latent frame, one pixel per latent cell, scaled up) for the
//! cost of a tiny matrix product.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use himmel_core::Video;
use himmel_models::wan::{CellReduction, WanVae, latent_cells};
use himmel_world::render::RenderSettings;
use himmel_world::sample::sample_clip;
use serde::{Deserialize, Serialize};

use crate::PipelineError;

/// The file a model's preview projection is stored in, beside its weights.
pub const PREVIEW_FILE: &str = "preview.json";

/// World clips a projection is fitted on when a model brings none.
pub const PREVIEW_FIT_CLIPS: u64 = 8;

/// Longest side of a preview, in pixels (latent cells are repeated up to it).
const PREVIEW_SIDE: usize = 256;

/// `rgb = latents · weights + bias` per latent cell, RGB in 0..=1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatentPreview {
    /// One RGB row per latent channel.
    pub weights: Vec<[f32; 3]>,
    /// The RGB offset.
    pub bias: [f32; 3],
}

impl LatentPreview {
    /// Reads `dir/preview.json`; `None` when the model has none.
    pub fn load(dir: &Path) -> Result<Option<Self>, PipelineError> {
        let path = dir.join(PREVIEW_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| PipelineError::load(&path, e))?;
        let preview: Self =
            serde_json::from_str(&text).map_err(|e| PipelineError::load(&path, e))?;
        Ok(Some(preview))
    }

    /// Writes `dir/preview.json`.
    pub fn save(&self, dir: &Path) -> Result<(), PipelineError> {
        let path = dir.join(PREVIEW_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|e| PipelineError::load(&path, e))?;
        std::fs::write(&path, text + "\n").map_err(|e| PipelineError::load(&path, e))
    }

    /// Fits the map for `vae` (its weights on `device`) by least squares on `clips` rendered
    /// world clips (64x64x17): normalised latents against the clips' pixels averaged over each
    /// latent cell.
    pub fn fit(vae: &WanVae, clips: u64, device: &Device) -> Result<Self, PipelineError> {
        let settings = RenderSettings {
            width: 64,
            height: 64,
            frames: 17,
            fps: 16.0,
        };
        let mut features = Vec::new();
        let mut targets = Vec::new();
        for index in 0..clips {
            let (clip, _) = sample_clip(PREVIEW_SEED, index, &settings)?;
            let pixels = clip.video.to_f32()?.permute((3, 0, 1, 2))?.contiguous()?;
            let input = ((pixels.unsqueeze(0)? * 2.0)? - 1.0)?.to_device(device)?;
            let latents = vae
                .normalize(&vae.encode(&input)?)?
                .squeeze(0)?
                .to_device(&Device::Cpu)?;
            features.push(cells(&latents)?);
            let means = latent_cells(&pixels, vae.config(), CellReduction::Mean)?;
            targets.push(cells(&means)?);
        }
        let features = Tensor::cat(&features, 0)?.to_dtype(DType::F64)?;
        let targets = Tensor::cat(&targets, 0)?.to_dtype(DType::F64)?;
        let ones = Tensor::ones((features.dim(0)?, 1), DType::F64, &Device::Cpu)?;
        let design = Tensor::cat(&[&features, &ones], 1)?;
        let solution = ridge(&design, &targets)?;
        let rows: Vec<[f64; 3]> = solution
            .to_vec2::<f64>()?
            .into_iter()
            .map(|row| [row[0], row[1], row[2]])
            .collect();
        let (bias, weights) = rows.split_last().expect("the design has a bias column");
        let to_f32 = |row: &[f64; 3]| row.map(|v| v as f32);
        Ok(Self {
            weights: weights.iter().map(to_f32).collect(),
            bias: to_f32(bias),
        })
    }

    /// The preview of normalised latents `[1, z, F, h, w]`: one frame per latent frame at
    /// `fps / 4`, each latent cell a square of pixels.
    pub fn render(&self, latents: &Tensor, fps: f64) -> Result<Video, PipelineError> {
        let latents = latents.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        let (_, channels, frames, height, width) = latents.dims5()?;
        if channels != self.weights.len() {
            return Err(PipelineError::Preview {
                channels,
                expected: self.weights.len(),
            });
        }
        let weights: Vec<f32> = self.weights.iter().flatten().copied().collect();
        let weights = Tensor::from_vec(weights, (channels, 3), &Device::Cpu)?;
        let bias = Tensor::new(&self.bias, &Device::Cpu)?;
        let cells = latents.squeeze(0)?.permute((1, 2, 3, 0))?.contiguous()?;
        let rgb = cells
            .reshape((frames * height * width, channels))?
            .matmul(&weights)?
            .broadcast_add(&bias)?
            .clamp(0f32, 1f32)?
            .reshape((frames, height, 1, width, 1, 3))?;
        let scale = (PREVIEW_SIDE / height.max(width)).max(1);
        let frames_rgb = rgb
            .broadcast_as((frames, height, scale, width, scale, 3))?
            .reshape((frames, height * scale, width * scale, 3))?;
        Ok(Video::new(frames_rgb.contiguous()?, (fps / 4.0).max(1.0))?)
    }
}

/// World seed of the clips previews are fitted on.
const PREVIEW_SEED: u64 = 0x5052_4556;

/// `[C, F, h, w]` as rows of cells `[F * h * w, C]`.
fn cells(values: &Tensor) -> candle_core::Result<Tensor> {
    let channels = values.dim(0)?;
    values
        .permute((1, 2, 3, 0))?
        .contiguous()?
        .reshape(((), channels))
}

/// Least squares with a small ridge: `(AᵀA + λI)⁻¹ Aᵀ Y`, solved by Gaussian elimination.
fn ridge(design: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let columns = design.dim(1)?;
    let gram = design.t()?.matmul(design)?.to_vec2::<f64>()?;
    let right = design.t()?.matmul(targets)?.to_vec2::<f64>()?;
    let outputs = right[0].len();
    // The augmented system [AᵀA + λI | AᵀY].
    let mut rows: Vec<Vec<f64>> = (0..columns)
        .map(|i| {
            let mut row = gram[i].clone();
            row[i] += 1e-3;
            row.extend(&right[i]);
            row
        })
        .collect();
    for pivot in 0..columns {
        let best = (pivot..columns)
            .max_by(|&a, &b| rows[a][pivot].abs().total_cmp(&rows[b][pivot].abs()))
            .expect("a non-empty range");
        rows.swap(pivot, best);
        let pivot_row = rows[pivot].clone();
        for (index, row) in rows.iter_mut().enumerate() {
            if index != pivot {
                let factor = row[pivot] / pivot_row[pivot];
                for (value, &subtract) in row.iter_mut().zip(&pivot_row).skip(pivot) {
                    *value -= factor * subtract;
                }
            }
        }
    }
    let solution: Vec<f64> = rows
        .iter()
        .enumerate()
        .flat_map(|(i, row)| row[columns..].iter().map(move |v| v / row[i]))
        .collect();
    Tensor::from_vec(solution, (columns, outputs), &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use himmel_models::wan::WanVaeConfig;

    #[test]
    fn ridge_recovers_a_linear_map() {
        // y = 2 x0 - x1 + 0.5, and y2 = x1.
        let xs = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0], [0.5, 3.0]];
        let design: Vec<f64> = xs.iter().flat_map(|x| [x[0], x[1], 1.0]).collect();
        let targets: Vec<f64> = xs
            .iter()
            .flat_map(|x| [2.0 * x[0] - x[1] + 0.5, x[1]])
            .collect();
        let design = Tensor::from_vec(design, (5, 3), &Device::Cpu).unwrap();
        let targets = Tensor::from_vec(targets, (5, 2), &Device::Cpu).unwrap();
        let solution = ridge(&design, &targets).unwrap().to_vec2::<f64>().unwrap();
        let expected = [[2.0, 0.0], [-1.0, 1.0], [0.5, 0.0]];
        for (row, want) in solution.iter().zip(expected) {
            for (value, want) in row.iter().zip(want) {
                assert!((value - want).abs() < 1e-2, "{solution:?}");
            }
        }
    }

    #[test]
    fn cells_average_the_frames_and_pixels_of_a_latent_frame() {
        // Frame f has the value f everywhere: latent frame 0 is frame 0, latent frame 1 the
        // mean of frames 1..=4.
        let values: Vec<f32> = (0..5).flat_map(|f| vec![f as f32; 16 * 16]).collect();
        let pixels = Tensor::from_vec(values, (1, 5, 16, 16), &Device::Cpu).unwrap();
        let means =
            latent_cells(&pixels, &WanVaeConfig::default_wan21(), CellReduction::Mean).unwrap();
        assert_eq!(means.dims(), [1, 2, 2, 2]);
        let means = means.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(means, [0.0, 0.0, 0.0, 0.0, 2.5, 2.5, 2.5, 2.5]);
    }

    #[test]
    fn renders_one_square_per_latent_cell() {
        let preview = LatentPreview {
            weights: vec![[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
            bias: [0.0, 0.0, 0.5],
        };
        let latents =
            Tensor::from_vec(vec![0.2f32, 0.4, 0.6, 0.8], (1, 2, 1, 1, 2), &Device::Cpu).unwrap();
        let video = preview.render(&latents, 16.0).unwrap();
        assert_eq!(
            (video.num_frames(), video.height(), video.width()),
            (1, 128, 256)
        );
        let pixel = |y: usize, x: usize| {
            let frame = video.to_f32().unwrap().get(0).unwrap();
            frame
                .get(y)
                .unwrap()
                .get(x)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(pixel(0, 0), [0.2, 0.6, 0.5]);
        assert_eq!(pixel(127, 255), [0.4, 0.8, 0.5]);
        let wrong = LatentPreview {
            weights: vec![[1.0, 0.0, 0.0]],
            bias: [0.0; 3],
        };
        assert!(wrong.render(&latents, 16.0).is_err());
    }
}
