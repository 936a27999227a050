//! An adversary for the autoencoder's decoder: a small patch discriminator (as in pix2pix and
//! the autoencoders of taming transformers and Stable Diffusion) that judges each pair of
//! neighbouring frames, patch by patch, as a clip or a reconstruction. Pixel losses draw the
//! average of what a latent may mean, so corners and points blur; a decoder that must also
//! fool this judge draws edges a clip would have. Seeing two frames at once, it also judges
//! how things change from one frame to the next.
//!
//! Both sides learn in one backward pass: the judge's loss sees the reconstruction detached (it
//! trains the judge alone), and the decoder's sees the judge's weights detached (it trains the
//! decoder alone).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// Name prefix of the discriminator's variables in checkpoints (never exported).
pub const PREFIX: &str = "discriminator";

/// Channels of the discriminator's layers, from its input's two frames.
const CHANNELS: [usize; 4] = [6, 32, 64, 1];
/// Each layer's kernel size and stride: two halvings, then a patch-wise verdict.
const LAYERS: [(usize, usize); 3] = [(4, 2), (4, 2), (3, 1)];
/// Slope of the leaky ReLU between layers.
const LEAK: f64 = 0.2;

/// The patch discriminator: `[B, 3, F, H, W]` clips in, a logit for each patch of each pair of
/// neighbouring frames out (`[B, F - 1, H / 4, W / 4]`).
pub struct Discriminator {
    /// Each layer's kernel `[out, in, k, k]`, bias `[out]` and stride.
    layers: Vec<(Tensor, Tensor, usize)>,
}

impl Discriminator {
    /// Builds the discriminator's variables under `vb`.
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let layers = LAYERS
            .iter()
            .enumerate()
            .map(|(i, &(kernel, stride))| {
                let (input, output) = (CHANNELS[i], CHANNELS[i + 1]);
                let vb = vb.pp(format!("layers.{i}"));
                let weight = vb.get((output, input, kernel, kernel), "weight")?;
                Ok((weight, vb.get(output, "bias")?, stride))
            })
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// The logits of `video`'s patches. With `fixed`, the weights are taken as constants: the
    /// verdict trains what made `video`, not the discriminator.
    pub fn judge(&self, video: &Tensor, fixed: bool) -> Result<Tensor> {
        let (clips, channels, frames, height, width) = video.dims5()?;
        if frames < 2 {
            candle_core::bail!("the discriminator judges pairs of frames; a crop has {frames}");
        }
        let pairs = Tensor::cat(
            &[
                video.narrow(2, 0, frames - 1)?,
                video.narrow(2, 1, frames - 1)?,
            ],
            1,
        )?;
        let mut x = pairs.permute((0, 2, 1, 3, 4))?.contiguous()?.reshape((
            clips * (frames - 1),
            2 * channels,
            height,
            width,
        ))?;
        let last = self.layers.len() - 1;
        for (i, (weight, bias, stride)) in self.layers.iter().enumerate() {
            let (weight, bias) = if fixed {
                (weight.detach(), bias.detach())
            } else {
                (weight.clone(), bias.clone())
            };
            let padding = (weight.dim(3)? - 1) / 2;
            x = x
                .conv2d(&weight, padding, *stride, 1, 1)?
                .broadcast_add(&bias.reshape((1, (), 1, 1))?)?;
            if i < last {
                x = x.maximum(&(&x * LEAK)?)?;
            }
        }
        let (_, _, rows, columns) = x.dims4()?;
        x.reshape((clips, frames - 1, rows, columns))
    }
}

/// `weights` (`[B, 1, F, H, W]`, each pixel's weight in the reconstruction loss) as weights of
/// the discriminator's patches (`[B, F - 1, h, w]`): the mean over each patch's pixels in the
/// pair's first frame.
pub fn patch_weights(weights: &Tensor, rows: usize, columns: usize) -> Result<Tensor> {
    let (clips, _, frames, height, width) = weights.dims5()?;
    let first = weights.narrow(2, 0, frames - 1)?.squeeze(1)?;
    let flat = first.reshape((clips * (frames - 1), 1, height, width))?;
    let pooled = flat
        .avg_pool2d((height / rows, width / columns))?
        .narrow(2, 0, rows)?
        .narrow(3, 0, columns)?;
    pooled.reshape((clips, frames - 1, rows, columns))
}

/// The mean of `values` weighted by `weights` (all alike where `None`).
fn weighted_mean(values: &Tensor, weights: Option<&Tensor>) -> Result<Tensor> {
    match weights {
        Some(weights) => (values * weights)?
            .sum_all()?
            .broadcast_div(&weights.sum_all()?),
        None => values.mean_all(),
    }
}

/// The hinge losses of a step (Lim and Ye 2017, as taming transformers use): the
/// discriminator's (`relu(1 - real) + relu(1 + fake)`, the reconstruction detached) and the
/// decoder's (`-fake`, the discriminator fixed), weighted by `weights` (`[B, 1, F, H, W]`, the
/// reconstruction loss's) where given.
pub fn hinge_losses(
    discriminator: &Discriminator,
    reconstruction: &Tensor,
    video: &Tensor,
    weights: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let real = discriminator.judge(video, false)?;
    let fake = discriminator.judge(&reconstruction.detach(), false)?;
    let fooled = discriminator.judge(reconstruction, true)?;
    let (_, _, rows, columns) = real.dims4()?;
    let weights = weights
        .map(|w| patch_weights(w, rows, columns))
        .transpose()?;
    let weights = weights.as_ref();
    let judge = (weighted_mean(&(1.0 - real)?.relu()?, weights)?
        + weighted_mean(&(fake + 1.0)?.relu()?, weights)?)?;
    let decoder = weighted_mean(&fooled, weights)?.neg()?;
    Ok((judge, decoder))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    fn discriminator(varmap: &VarMap) -> Discriminator {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, &Device::Cpu);
        let discriminator = Discriminator::new(vb.pp(PREFIX)).unwrap();
        crate::init::initialize(&crate::autoencoder::sorted_vars(varmap), 3).unwrap();
        discriminator
    }

    #[test]
    fn it_judges_patches_of_frame_pairs() {
        let varmap = VarMap::new();
        let judge = discriminator(&varmap);
        let video = Tensor::randn(0f32, 1.0, (2, 3, 5, 32, 16), &Device::Cpu).unwrap();
        let logits = judge.judge(&video, false).unwrap();
        assert_eq!(logits.dims(), &[2, 4, 8, 4]);
        let still = Tensor::zeros((1, 3, 1, 8, 8), DType::F32, &Device::Cpu).unwrap();
        assert!(judge.judge(&still, false).is_err());
    }

    #[test]
    fn each_loss_trains_its_own_side() {
        let varmap = VarMap::new();
        let judge = discriminator(&varmap);
        let device = Device::Cpu;
        let video = Tensor::randn(0f32, 1.0, (1, 3, 3, 8, 8), &device).unwrap();
        let made = Var::from_tensor(&Tensor::zeros((1, 3, 3, 8, 8), DType::F32, &device).unwrap())
            .unwrap();
        let weights = Tensor::ones((1, 1, 3, 8, 8), DType::F32, &device).unwrap();
        let (judge_loss, decoder_loss) =
            hinge_losses(&judge, made.as_tensor(), &video, Some(&weights)).unwrap();
        let kernel = varmap.data().lock().unwrap()["discriminator.layers.0.weight"].clone();

        let grads = judge_loss.backward().unwrap();
        assert!(grads.get(made.as_tensor()).is_none());
        assert!(grads.get(kernel.as_tensor()).is_some());

        let grads = decoder_loss.backward().unwrap();
        assert!(grads.get(kernel.as_tensor()).is_none());
        let towards = grads.get(made.as_tensor()).unwrap();
        assert!(
            towards
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
    }

    #[test]
    fn patch_weights_average_each_patch_of_the_first_frame() {
        let device = Device::Cpu;
        // Frame 0 weighs 1 but for 5 on its top-left 4x4 patch; frame 1 weighs 9 everywhere.
        let mut values = vec![1f32; 2 * 8 * 8];
        for row in 0..4 {
            for column in 0..4 {
                values[row * 8 + column] = 5.0;
            }
        }
        for value in &mut values[64..] {
            *value = 9.0;
        }
        let weights = Tensor::from_vec(values, (1, 1, 2, 8, 8), &device).unwrap();
        let patches = patch_weights(&weights, 2, 2).unwrap();
        assert_eq!(
            patches.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [5.0, 1.0, 1.0, 1.0]
        );
    }
}
