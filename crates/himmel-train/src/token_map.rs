//! [`TokenMap`]: carries a denoiser's patch layers onto the latents of another autoencoder.
//!
//! Two autoencoders encode the same clips; where a token (a patch of latents) stands for the
//! same pixels and frames under both, each token has a vector in each latent space. The
//! orthogonal map that best turns the new vectors into the model's (orthogonal Procrustes: the
//! polar factor of their cross-covariance) carries the patch embedding forward and the output
//! projection back, so the model's blocks first see tokens like the ones they learnt, not the
//! output of fresh random layers. Orthogonal, because latents are normalised to unit variance:
//! unit noise stays unit noise under the map, so a noised latent and any prediction (clean
//! latents or flow) map alike at every noise level; only the fit's residual is new to the model.

use candle_core::{DType, Device, Tensor};

use crate::error::TrainError;

/// Newton–Schulz iterations at most for the polar factor; each grows a small singular value by
/// half, so this brings singular values down to 1e-14 of the largest to 1.
const POLAR_ITERATIONS: usize = 100;
/// The largest change of an entry at which the polar iteration has converged.
const POLAR_TOLERANCE: f64 = 1e-12;

/// How a denoiser cuts normalised latents into tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenLayout {
    /// Latent channels.
    pub channels: usize,
    /// Latent frames, rows and columns a token spans.
    pub patch: [usize; 3],
}

impl TokenLayout {
    /// Values in a token: the channels times the patch's cells.
    pub fn width(&self) -> usize {
        self.channels * self.patch.iter().product::<usize>()
    }

    /// The tokens `[tokens, width]` of latents `[B, channels, F, h, w]`, ordered and flattened
    /// as the denoiser's patch embedding reads them (frame, row, column; within a token
    /// channel, frame, row, column).
    pub fn tokens(&self, latents: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, channels, frames, height, width) = latents.dims5()?;
        let [pt, ph, pw] = self.patch;
        let uncut = [frames, height, width]
            .into_iter()
            .zip(self.patch)
            .any(|(size, cell)| cell == 0 || size % cell != 0);
        if channels != self.channels || uncut {
            candle_core::bail!(
                "latents {:?} do not cut into tokens of {} channels and patches {:?}",
                latents.dims(),
                self.channels,
                self.patch
            );
        }
        let grid = [frames / pt, height / ph, width / pw];
        latents
            .reshape(&[batch, channels, grid[0], pt, grid[1], ph, grid[2], pw][..])?
            .permute(vec![0, 2, 4, 6, 1, 3, 5, 7])?
            .reshape((batch * grid.iter().product::<usize>(), self.width()))
    }
}

/// The orthogonal map that best turns a new autoencoder's tokens into a model's.
pub struct TokenMap {
    model: TokenLayout,
    new: TokenLayout,
    /// `[model width, new width]` in f32, columns (or rows, on the narrower side) orthonormal:
    /// a model token is about `rotation · new token`.
    rotation: Tensor,
    explained: f64,
}

impl TokenMap {
    /// Fits the map on the same clips' normalised latents under the model's autoencoder
    /// (`model_latents`) and the new one (`new_latents`); both must cut into as many tokens.
    pub fn fit(
        model: TokenLayout,
        model_latents: &Tensor,
        new: TokenLayout,
        new_latents: &Tensor,
    ) -> Result<Self, TrainError> {
        let in_f64 = |tokens: Tensor| tokens.to_device(&Device::Cpu)?.to_dtype(DType::F64);
        let model_tokens = in_f64(model.tokens(model_latents)?)?;
        let new_tokens = in_f64(new.tokens(new_latents)?)?;
        let (model_count, new_count) = (model_tokens.dim(0)?, new_tokens.dim(0)?);
        if model_count != new_count {
            return Err(TrainError::Setting {
                name: "denoiser.patch_size",
                value: format!("{:?}", new.patch),
                reason: format!(
                    "cuts the clips into {new_count} tokens where the model's patches {:?} cut \
                     {model_count}: no token stands for the same pixels under both",
                    model.patch
                ),
            });
        }
        let cross = model_tokens.t()?.matmul(&new_tokens)?;
        let cross_norm = cross.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
        if cross_norm == 0.0 || !cross_norm.is_finite() {
            return Err(TrainError::Setting {
                name: "statistics_clips",
                value: model_count.to_string(),
                reason: "the two autoencoders' tokens share no variance to fit a map on".into(),
            });
        }
        let rotation = polar_factor(&(cross / cross_norm)?)?;
        let residual = (&model_tokens - new_tokens.matmul(&rotation.t()?)?)?;
        let sum_of_squares = |tokens: &Tensor| tokens.sqr()?.sum_all()?.to_scalar::<f64>();
        let explained = 1.0 - sum_of_squares(&residual)? / sum_of_squares(&model_tokens)?;
        Ok(Self {
            model,
            new,
            rotation: rotation.to_dtype(DType::F32)?,
            explained,
        })
    }

    /// The share of the model tokens' sum of squares the map reproduces from the new tokens
    /// of the clips it was fitted on: 1 where the latents differ by a rotation of each token,
    /// 0 or below where they share nothing.
    pub fn explained(&self) -> f64 {
        self.explained
    }

    /// The patch embedding `[dim, 2 * channels + 1, pt, ph, pw]` (the model's input is the
    /// latents, the known latents and their mask) for the new tokens: latents and known latents
    /// are mapped into the model's tokens, and the mask, alike over a token's cells, weighs on
    /// each token as it did.
    pub fn patch_embedding(&self, weight: &Tensor) -> candle_core::Result<Tensor> {
        let (dim, inputs, pt, ph, pw) = weight.dims5()?;
        let (model, new) = (self.model, self.new);
        if inputs != 2 * model.channels + 1 || [pt, ph, pw] != model.patch {
            candle_core::bail!(
                "patch embedding {:?} does not read latents of {} channels in patches {:?}",
                weight.dims(),
                model.channels,
                model.patch
            );
        }
        let [nt, nh, nw] = new.patch;
        let rotation = self
            .rotation
            .to_device(weight.device())?
            .to_dtype(weight.dtype())?;
        let rotated = |first: usize| {
            weight
                .narrow(1, first, model.channels)?
                .reshape((dim, model.width()))?
                .matmul(&rotation)?
                .reshape(&[dim, new.channels, nt, nh, nw][..])
        };
        let latents = rotated(0)?;
        let known = rotated(model.channels)?;
        let new_cells = (nt * nh * nw) as f64;
        let mask = (weight
            .narrow(1, 2 * model.channels, 1)?
            .sum_keepdim(vec![2, 3, 4])?
            / new_cells)?
            .broadcast_as(&[dim, 1, nt, nh, nw][..])?;
        Tensor::cat(&[&latents, &known, &mask], 1)
    }

    /// The output projection's weight `[(pt, ph, pw, channels), dim]` (or bias) for the new
    /// tokens: the model's prediction mapped back, by the transposed map.
    pub fn patch_output(&self, weight: &Tensor) -> candle_core::Result<Tensor> {
        let (model, new) = (self.model, self.new);
        if weight.dim(0)? != model.width() {
            candle_core::bail!(
                "output projection {:?} does not predict tokens of {} values",
                weight.dims(),
                model.width()
            );
        }
        // The map with each side in the output's order (frame, row, column, channel).
        let [mt, mh, mw] = model.patch;
        let [nt, nh, nw] = new.patch;
        let rotation = self
            .rotation
            .reshape(&[model.channels, mt, mh, mw, new.channels, nt, nh, nw][..])?
            .permute(vec![1, 2, 3, 0, 5, 6, 7, 4])?
            .reshape((model.width(), new.width()))?
            .to_device(weight.device())?
            .to_dtype(weight.dtype())?;
        let rest: Vec<usize> = weight.dims()[1..].to_vec();
        let columns = rest.iter().product::<usize>();
        let mapped = rotation
            .t()?
            .matmul(&weight.reshape((model.width(), columns))?)?;
        let shape: Vec<usize> = std::iter::once(new.width()).chain(rest).collect();
        mapped.reshape(shape)
    }
}

/// The polar factor of `matrix` (its singular vectors' product `U Vᵀ`: the orthogonal matrix
/// nearest it), by Newton–Schulz iteration; `matrix` must have no singular value above 1.
fn polar_factor(matrix: &Tensor) -> candle_core::Result<Tensor> {
    let mut factor = matrix.clone();
    for _ in 0..POLAR_ITERATIONS {
        let cubed = factor.matmul(&factor.t()?)?.matmul(&factor)?;
        let next = ((&factor * 1.5)? - (cubed * 0.5)?)?;
        let change = (&next - &factor)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f64>()?;
        factor = next;
        if change < POLAR_TOLERANCE {
            break;
        }
    }
    Ok(factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::{VarBuilder, VarMap};
    use himmel_core::compare::max_abs_difference;
    use himmel_models::wan::{WanTransformer, WanTransformerConfig};

    /// The model's layout: 4 channels in 1x2x2 patches, 16 values a token.
    const MODEL: TokenLayout = TokenLayout {
        channels: 4,
        patch: [1, 2, 2],
    };
    /// A finer grid's: 1 channel in 1x4x4 patches, as many values over the same pixels.
    const NEW: TokenLayout = TokenLayout {
        channels: 1,
        patch: [1, 4, 4],
    };

    /// The latents `[batch, channels, ...]` whose tokens (on a token grid `grid`) are `tokens`.
    fn latents_of(tokens: &Tensor, layout: TokenLayout, batch: usize, grid: [usize; 3]) -> Tensor {
        let [pt, ph, pw] = layout.patch;
        tokens
            .reshape(
                &[
                    batch,
                    grid[0],
                    grid[1],
                    grid[2],
                    layout.channels,
                    pt,
                    ph,
                    pw,
                ][..],
            )
            .unwrap()
            .permute(vec![0, 4, 1, 5, 2, 6, 3, 7])
            .unwrap()
            .reshape((
                batch,
                layout.channels,
                grid[0] * pt,
                grid[1] * ph,
                grid[2] * pw,
            ))
            .unwrap()
    }

    /// A random orthogonal `[width, width]` matrix.
    fn random_rotation(width: usize, device: &Device) -> Tensor {
        let random = Tensor::randn(0f64, 1.0, (width, width), device).unwrap();
        let norm = random.sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
        polar_factor(&random.broadcast_div(&norm).unwrap()).unwrap()
    }

    /// New latents `[batch, 1, 2, size, size]` and the model's latents of the same clips,
    /// their tokens the new ones turned by `rotation`.
    fn rotated_pair(rotation: &Tensor, batch: usize, size: usize) -> (Tensor, Tensor) {
        let device = rotation.device();
        let new = Tensor::randn(0f32, 1.0, (batch, 1, 2, size, size), device).unwrap();
        let tokens = NEW.tokens(&new).unwrap();
        let turned = tokens.matmul(&rotation.t().unwrap()).unwrap();
        let grid = [2, size / 4, size / 4];
        (latents_of(&turned, MODEL, batch, grid), new)
    }

    #[test]
    fn tokens_are_cut_as_the_patch_embedding_reads_them() {
        let device = Device::Cpu;
        let latents = Tensor::arange(0f32, 64.0, &device)
            .unwrap()
            .reshape((1, 4, 1, 4, 4))
            .unwrap();
        let tokens = MODEL.tokens(&latents).unwrap();
        assert_eq!(tokens.dims(), &[4, 16]);
        // The second token is the top right 2x2 cell of each channel, channel by channel.
        let second: Vec<f32> = tokens.get(1).unwrap().to_vec1().unwrap();
        assert_eq!(&second[..8], &[2.0, 3.0, 6.0, 7.0, 18.0, 19.0, 22.0, 23.0]);
        let round_trip = latents_of(&tokens, MODEL, 1, [1, 2, 2]);
        assert_eq!(max_abs_difference(&round_trip, &latents).unwrap(), 0.0);
        let odd = Tensor::zeros((1, 4, 1, 5, 4), DType::F32, &device).unwrap();
        assert!(MODEL.tokens(&odd).is_err());
    }

    #[test]
    fn a_rotation_between_token_spaces_is_recovered() {
        let device = Device::Cpu;
        let rotation = random_rotation(16, &device);
        // 128 tokens: enough to pin down all 16 directions.
        let (model_latents, new_latents) =
            rotated_pair(&rotation.to_dtype(DType::F32).unwrap(), 4, 16);
        let map = TokenMap::fit(MODEL, &model_latents, NEW, &new_latents).unwrap();
        assert!(map.explained() > 1.0 - 1e-6, "{}", map.explained());
        let gap =
            max_abs_difference(&map.rotation.to_dtype(DType::F64).unwrap(), &rotation).unwrap();
        assert!(gap < 1e-4, "{gap}");
        // Unrelated latents: the map explains little.
        let unrelated = Tensor::randn(0f32, 1.0, (4, 4, 2, 8, 8), &device).unwrap();
        let poor = TokenMap::fit(MODEL, &unrelated, NEW, &new_latents).unwrap();
        assert!(poor.explained() < 0.9, "{}", poor.explained());
        // Tokens that stand for other pixels are refused.
        let coarser = TokenLayout {
            channels: 1,
            patch: [1, 8, 8],
        };
        assert!(TokenMap::fit(MODEL, &model_latents, coarser, &new_latents).is_err());
    }

    /// A two-block transformer over `layout`'s latents (with known latents and their mask).
    fn transformer(layout: TokenLayout, weights: &VarMap, device: &Device) -> WanTransformer {
        let config: WanTransformerConfig = serde_json::from_value(serde_json::json!({
            "patch_size": layout.patch, "num_attention_heads": 2, "attention_head_dim": 8,
            "in_channels": 2 * layout.channels + 1, "out_channels": layout.channels,
            "text_dim": 8, "freq_dim": 8, "ffn_dim": 32, "num_layers": 2,
            "cross_attn_norm": true, "qk_norm": "rms_norm_across_heads", "eps": 1e-6,
            "rope_max_seq_len": 64
        }))
        .unwrap();
        WanTransformer::new(
            &config,
            VarBuilder::from_varmap(weights, DType::F32, device),
        )
        .unwrap()
    }

    #[test]
    fn a_carried_denoiser_predicts_the_model_prediction_mapped_back() {
        let device = Device::Cpu;
        let rotation = random_rotation(16, &device).to_dtype(DType::F32).unwrap();
        let (model_latents, new_latents) = rotated_pair(&rotation, 1, 8);
        let (model_known, new_known) = rotated_pair(&rotation, 1, 8);
        let map = TokenMap {
            model: MODEL,
            new: NEW,
            rotation: rotation.clone(),
            explained: 1.0,
        };

        let model_weights = VarMap::new();
        let model = transformer(MODEL, &model_weights, &device);
        for var in model_weights.all_vars() {
            var.set(&Tensor::randn(0f32, 0.3, var.shape(), &device).unwrap())
                .unwrap();
        }
        let carried_weights = VarMap::new();
        let carried = transformer(NEW, &carried_weights, &device);
        let originals = model_weights.data().lock().unwrap();
        for (name, var) in carried_weights.data().lock().unwrap().iter() {
            let original = originals[name].as_tensor();
            let weight = match name.as_str() {
                "patch_embedding.weight" => map.patch_embedding(original).unwrap(),
                "proj_out.weight" | "proj_out.bias" => map.patch_output(original).unwrap(),
                _ => original.clone(),
            };
            var.set(&weight).unwrap();
        }

        // The first latent frame known, the second not: the mask alike over each token.
        let mask = |size: usize| {
            let known = Tensor::ones((1, 1, 1, size, size), DType::F32, &device).unwrap();
            Tensor::cat(&[&known, &known.zeros_like().unwrap()], 2).unwrap()
        };
        let time = Tensor::new(&[500f32], &device).unwrap();
        let text = Tensor::randn(0f32, 1.0, (1, 3, 8), &device).unwrap();
        let input = |latents: &Tensor, known: &Tensor, size| {
            Tensor::cat(&[latents, known, &mask(size)], 1).unwrap()
        };
        let predicted = model
            .forward(&input(&model_latents, &model_known, 4), &time, &text)
            .unwrap();
        let carried_prediction = carried
            .forward(&input(&new_latents, &new_known, 8), &time, &text)
            .unwrap();
        let expected = MODEL.tokens(&predicted).unwrap().matmul(&rotation).unwrap();
        let gap = max_abs_difference(&NEW.tokens(&carried_prediction).unwrap(), &expected).unwrap();
        assert!(gap < 1e-4, "{gap}");
        // Not a degenerate check: the prediction depends on the latents.
        let other = carried
            .forward(&input(&new_known, &new_known, 8), &time, &text)
            .unwrap();
        assert!(max_abs_difference(&other, &carried_prediction).unwrap() > 1e-3);
    }
}
