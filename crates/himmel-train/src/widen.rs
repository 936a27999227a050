//! Widening a trained autoencoder (Net2WiderNet, Chen et al. 2016): every channel inside its
//! encoder, its decoder or both is doubled, so a recipe can give it more capacity and start
//! from what it has learnt.
//!
//! Each of a layer's output channels appears twice, and each weight reading a doubled input
//! channel is split between its two copies (shares drawn from 1/4 to 3/4 that sum to one).
//! Doubled channels carry equal values, so the wider autoencoder encodes and decodes exactly as
//! the narrow one did; the unequal shares give the copies different gradients, so they grow
//! apart.

use std::collections::HashMap;

use candle_core::Tensor;
use himmel_models::wan::WanVaeConfig;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::TrainError;

/// Which halves of an autoencoder a wider config doubles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Doubled {
    /// The encoder's channels (`base_dim`).
    pub encoder: bool,
    /// The decoder's channels (`decoder_base_dim`, else `base_dim`).
    pub decoder: bool,
}

impl Doubled {
    /// Which halves `wider` doubles against `narrow`, if it is `narrow` with one or both twice
    /// as wide and nothing else changed (latent statistics aside).
    pub fn between(narrow: &WanVaeConfig, wider: &WanVaeConfig) -> Option<Self> {
        let doubled = Self {
            encoder: wider.base_dim == 2 * narrow.base_dim,
            decoder: wider.decoder_dim() == 2 * narrow.decoder_dim(),
        };
        let encoder_kept = doubled.encoder || wider.base_dim == narrow.base_dim;
        let decoder_kept = doubled.decoder || wider.decoder_dim() == narrow.decoder_dim();
        let mut rest = wider.unnormalised();
        rest.base_dim = narrow.base_dim;
        rest.decoder_base_dim = narrow.decoder_base_dim;
        let changed = doubled.encoder || doubled.decoder;
        let same_rest = rest == narrow.unnormalised();
        (changed && encoder_kept && decoder_kept && same_rest).then_some(doubled)
    }
}

/// How a weight's two leading axes relate to its channels.
struct Role {
    /// Output channels come in this many equal groups, each doubled on its own (the decoder's
    /// time convolution's two frames, attention's query, key and value); 0: outputs stay.
    output_groups: usize,
    /// Whether the inputs (axis 1) are channels to split between their copies.
    split_inputs: bool,
    /// Factor of the first output group (attention's query: its dot products run over twice
    /// the channels, so each is scaled by 1/sqrt(2) to keep the scores).
    first_group_scale: f64,
}

/// The role of weight `name` (without its half's prefix) of the decoder or the encoder.
fn role(name: &str, in_decoder: bool) -> Role {
    let output_groups = if name.starts_with("conv_out.") {
        0
    } else if in_decoder && name.contains("time_conv.") {
        2
    } else if name.contains("to_qkv.") {
        3
    } else {
        1
    };
    Role {
        output_groups,
        split_inputs: name.ends_with(".weight") && !name.starts_with("conv_in."),
        first_group_scale: if name.contains("to_qkv.") {
            std::f64::consts::FRAC_1_SQRT_2
        } else {
            1.0
        },
    }
}

/// `tensor` with each of its `groups` groups of outputs (axis 0) doubled, the first scaled.
fn double_outputs(tensor: &Tensor, groups: usize, first_scale: f64) -> Result<Tensor, TrainError> {
    let size = tensor.dim(0)? / groups;
    let mut parts = Vec::with_capacity(2 * groups);
    for group in 0..groups {
        let mut part = tensor.narrow(0, group * size, size)?;
        if group == 0 && first_scale != 1.0 {
            part = (part * first_scale)?;
        }
        parts.push(part.clone());
        parts.push(part);
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// `tensor` with its inputs (axis 1) doubled, each weight split between its two copies.
fn split_inputs(tensor: &Tensor, rng: &mut ChaCha8Rng) -> Result<Tensor, TrainError> {
    let shares: Vec<f32> = (0..tensor.elem_count())
        .map(|_| rng.random_range(0.25f32..0.75))
        .collect();
    let shares = Tensor::from_vec(shares, tensor.dims(), tensor.device())?;
    let first = (tensor * &shares)?;
    let second = (tensor - &first)?;
    Ok(Tensor::cat(&[first, second], 1)?)
}

/// The autoencoder `weights` with every channel inside the halves `doubled` names doubled,
/// encoding and decoding exactly as before; `seed` draws the shares of split weights.
pub fn widen(
    weights: &HashMap<String, Tensor>,
    doubled: Doubled,
    seed: u64,
) -> Result<HashMap<String, Tensor>, TrainError> {
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut wider = HashMap::with_capacity(weights.len());
    for name in names {
        let tensor = &weights[name];
        let half = match (name.strip_prefix("decoder."), name.strip_prefix("encoder.")) {
            (Some(inside), _) if doubled.decoder => Some((inside, true)),
            (_, Some(inside)) if doubled.encoder => Some((inside, false)),
            _ => None,
        };
        let Some((inside, in_decoder)) = half else {
            wider.insert(name.clone(), tensor.clone());
            continue;
        };
        let role = role(inside, in_decoder);
        let mut widened = if role.output_groups > 0 {
            double_outputs(tensor, role.output_groups, role.first_group_scale)?
        } else {
            tensor.clone()
        };
        if role.split_inputs {
            widened = split_inputs(&widened, &mut rng)?;
        }
        wider.insert(name.clone(), widened);
    }
    Ok(wider)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::{VarBuilder, VarMap};
    use himmel_core::compare::max_abs_difference;
    use himmel_models::wan::WanVae;

    use crate::autoencoder::sorted_vars;
    use crate::init::initialize;

    fn config(base_dim: usize, decoder_base_dim: Option<usize>) -> WanVaeConfig {
        WanVaeConfig {
            base_dim,
            decoder_base_dim,
            z_dim: 4,
            dim_mult: vec![1, 2],
            num_res_blocks: 1,
            temperal_downsample: vec![true],
            latents_mean: vec![0.0; 4],
            latents_std: vec![1.0; 4],
            ..WanVaeConfig::default_wan21()
        }
    }

    /// Random weights for `config`, biases and gains perturbed so that no branch is trivial.
    fn random_weights(config: &WanVaeConfig) -> HashMap<String, Tensor> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        WanVae::new(config, vb).unwrap();
        let vars = sorted_vars(&varmap);
        initialize(&vars, 3).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        vars.into_iter()
            .map(|(name, var)| {
                let noise: Vec<f32> = (0..var.elem_count())
                    .map(|_| rng.random_range(-0.2f32..0.2))
                    .collect();
                let noise = Tensor::from_vec(noise, var.dims(), &Device::Cpu).unwrap();
                (name, (var.as_tensor() + noise).unwrap())
            })
            .collect()
    }

    fn round_trip(
        config: &WanVaeConfig,
        weights: HashMap<String, Tensor>,
        video: &Tensor,
    ) -> Tensor {
        let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
        let vae = WanVae::new(config, vb).unwrap();
        let latents = vae.encode(video).unwrap();
        vae.decode_unclamped(&latents).unwrap()
    }

    #[test]
    fn a_widened_autoencoder_encodes_and_decodes_as_before() {
        let narrow = config(4, None);
        let weights = random_weights(&narrow);
        let video = Tensor::randn(0f32, 1.0, (1, 3, 5, 8, 8), &Device::Cpu).unwrap();
        let before = round_trip(&narrow, weights.clone(), &video);
        let spread = max_abs_difference(&before, &before.zeros_like().unwrap()).unwrap();
        assert!(spread > 0.1, "the output is too small to compare: {spread}");
        for (wider, encoder, decoder) in [
            (config(4, Some(8)), false, true),
            (config(8, Some(4)), true, false),
            (config(8, None), true, true),
        ] {
            let doubled = Doubled::between(&narrow, &wider).expect("doubled");
            assert_eq!((doubled.encoder, doubled.decoder), (encoder, decoder));
            let widened = widen(&weights, doubled, 1).unwrap();
            let inputs = widened["encoder.conv_in.weight"].dim(0).unwrap();
            let outputs = widened["decoder.conv_in.weight"].dim(0).unwrap();
            assert_eq!((inputs, outputs), (wider.base_dim, 2 * wider.decoder_dim()));
            let after = round_trip(&wider, widened, &video);
            let error = max_abs_difference(&before, &after).unwrap();
            assert!(error < 1e-4 * spread, "{doubled:?} differs by {error}");
        }
    }

    #[test]
    fn only_doubled_halves_count() {
        let narrow = config(4, None);
        assert_eq!(Doubled::between(&narrow, &narrow), None);
        assert_eq!(Doubled::between(&narrow, &config(4, Some(12))), None);
        assert_eq!(Doubled::between(&narrow, &config(8, Some(12))), None);
        let mut more_latents = config(4, Some(8));
        more_latents.z_dim = 8;
        assert_eq!(Doubled::between(&narrow, &more_latents), None);
    }
}
