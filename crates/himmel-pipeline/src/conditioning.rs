//! Conditioning (ARCHITECTURE.md): clips known at the start or the end of the output, turned
//! into known latents and a mask on the latent timeline, and a clip to re-style. The sampler
//! re-imposes the known latents at every step, noised to the step's level; models trained with
//! masks (himmel-mini) also see them as input.
//!
//! Placement on the latent timeline of a causal autoencoder that halves time `log2 t` times
//! (`t`, its temporal factor, is 4 for Wan 2.1 and himmel-mini), where latent frame 0 holds
//! pixel frame 0 and latent frame `k` holds pixel frames `tk-t+1..=tk`:
//! - a [`Anchor::Start`] clip of `n` frames uses its first `1 + t⌊(n-1)/t⌋` frames, which fill
//!   the first `1 + ⌊(n-1)/t⌋` latent frames exactly;
//! - an [`Anchor::At`] clip uses its first `t⌊n/t⌋` frames and an [`Anchor::End`] clip its last
//!   (a clip shorter than `t` frames is padded with copies of its frames), encoded behind a copy
//!   of their first frame as the causal context; they fill `⌊n/t⌋` whole latent frames.
//!
//! Clips of another size are scaled to cover the output (keeping their aspect ratio, Lanczos)
//! and cropped to it around the centre.

use candle_core::{DType, Device, Tensor};
use himmel_core::Video;
use himmel_models::wan::WanVae;
use himmel_sample::noised_at;

use crate::PipelineError;

/// Where a known clip sits on the output timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    /// The clip's first frame is the output's first frame.
    Start,
    /// The clip's first frame is output frame `p`, which must start a latent frame
    /// (`p = 1 + tj` for temporal factor `t`): a keyframe or a clip in the middle.
    At(usize),
    /// The clip's last frame is the output's last frame.
    End,
}

/// Frames the output must show at one of its ends.
#[derive(Debug, Clone)]
pub struct KnownClip {
    /// The frames (any size; fitted to the output).
    pub video: Video,
    /// Which end they are placed at.
    pub anchor: Anchor,
}

impl KnownClip {
    /// Latent frames the clip fills under an autoencoder of `temporal_factor`.
    pub fn latent_frames(&self, temporal_factor: usize) -> usize {
        let frames = self.video.num_frames();
        match self.anchor {
            Anchor::Start => 1 + (frames - 1) / temporal_factor,
            Anchor::At(_) | Anchor::End => (frames / temporal_factor).max(1),
        }
    }

    /// The first latent frame the clip fills on a timeline of `total` latent frames of an
    /// autoencoder of `temporal_factor`; `None` when it does not fit there.
    pub fn first_latent_frame(&self, total: usize, temporal_factor: usize) -> Option<usize> {
        let count = self.latent_frames(temporal_factor);
        let first = match self.anchor {
            Anchor::Start => 0,
            Anchor::At(frame) if frame >= 1 && (frame - 1).is_multiple_of(temporal_factor) => {
                (frame - 1) / temporal_factor + 1
            }
            Anchor::At(_) => return None,
            Anchor::End => total.checked_sub(count)?,
        };
        (first + count <= total).then_some(first)
    }

    /// Pixel frames of the output the clip fills under an autoencoder of `temporal_factor`.
    pub fn output_frames(&self, temporal_factor: usize) -> usize {
        let latent_frames = self.latent_frames(temporal_factor);
        match self.anchor {
            Anchor::Start => 1 + temporal_factor * (latent_frames - 1),
            Anchor::At(_) | Anchor::End => temporal_factor * latent_frames,
        }
    }
}

/// A clip to re-style under a new prompt (video to video).
#[derive(Debug, Clone)]
pub struct SourceClip {
    /// The clip; its first frames are used, fitted to the output.
    pub video: Video,
    /// How much to change it: 0 returns it (through the autoencoder), 1 ignores it.
    pub strength: f64,
}

/// Scales `video` to cover `width`x`height` (keeping its aspect ratio) and crops the centre.
pub fn fit(video: &Video, width: usize, height: usize) -> Result<Video, PipelineError> {
    let scale = f64::max(
        width as f64 / video.width() as f64,
        height as f64 / video.height() as f64,
    );
    let scaled_width = ((video.width() as f64 * scale).round() as usize).max(width);
    let scaled_height = ((video.height() as f64 * scale).round() as usize).max(height);
    let scaled = himmel_media::resize(video, scaled_width, scaled_height)?;
    let frames = scaled
        .frames()
        .narrow(1, (scaled_height - height) / 2, height)?
        .narrow(2, (scaled_width - width) / 2, width)?;
    Ok(Video::new(frames.contiguous()?, video.fps())?)
}

/// `frames` of `video` (fitted to the size) as the autoencoder's input `[1, 3, F, H, W]` in -1..=1.
fn autoencoder_input(
    video: &Video,
    frames: &[usize],
    (width, height): (usize, usize),
    device: &Device,
) -> Result<Tensor, PipelineError> {
    let fitted = fit(video, width, height)?.to_f32()?;
    let indices = Tensor::new(
        frames.iter().map(|&f| f as u32).collect::<Vec<_>>(),
        &Device::Cpu,
    )?;
    let selected = fitted.index_select(&indices, 0)?;
    Ok(
        ((selected.permute((3, 0, 1, 2))?.unsqueeze(0)? * 2.0)? - 1.0)?
            .contiguous()?
            .to_device(device)?,
    )
}

/// Encodes the first frames of `video` that fill `latent_frames` latent frames (`1 + t(k-1)`
/// frames for the autoencoder's temporal factor `t`) into normalised latents `[1, z, k, h, w]`,
/// fitted to `width`x`height`.
pub(crate) fn encode_start(
    vae: &WanVae,
    video: &Video,
    latent_frames: usize,
    size: (usize, usize),
    device: &Device,
) -> Result<Tensor, PipelineError> {
    let frames: Vec<usize> =
        (0..1 + vae.config().temporal_factor() * (latent_frames - 1)).collect();
    let input = autoencoder_input(video, &frames, size, device)?;
    Ok(vae.normalize(&vae.encode(&input)?)?)
}

/// Known latents `[1, z, F, h, w]` and their mask `[1, 1, F, h, w]`.
pub(crate) struct KnownLatents {
    latents: Tensor,
    mask: Tensor,
}

impl KnownLatents {
    /// Encodes `clips` with `vae` and places them on a latent timeline of `shape`
    /// `[1, z, F, h, w]`; `None` when there are no clips.
    pub(crate) fn encode(
        vae: &WanVae,
        clips: &[KnownClip],
        shape: &[usize],
        device: &Device,
    ) -> Result<Option<Self>, PipelineError> {
        if clips.is_empty() {
            return Ok(None);
        }
        let [_, channels, frames, height, width] = shape[..] else {
            unreachable!("latent shapes have five dimensions")
        };
        let factor = vae.config().spatial_factor();
        let size = (width * factor, height * factor);
        let temporal_factor = vae.config().temporal_factor();
        let mut latents = Tensor::zeros(shape, DType::F32, device)?;
        let mut mask = vec![0f32; frames];
        for clip in clips {
            let count = clip.latent_frames(temporal_factor);
            let first = clip
                .first_latent_frame(frames, temporal_factor)
                .expect("validation placed every clip on the timeline");
            let encoded = match clip.anchor {
                Anchor::Start => encode_start(vae, &clip.video, count, size, device)?,
                Anchor::At(_) => encode_groups(vae, &clip.video, Part::First, count, size, device)?,
                Anchor::End => encode_groups(vae, &clip.video, Part::Last, count, size, device)?,
            };
            latents = latents.slice_assign(
                &[0..1, 0..channels, first..first + count, 0..height, 0..width],
                &encoded,
            )?;
            mask[first..first + count].fill(1.0);
        }
        let mask = Tensor::from_vec(mask, (1, 1, frames, 1, 1), device)?
            .broadcast_as((1, 1, frames, height, width))?
            .contiguous()?;
        Ok(Some(Self { latents, mask }))
    }

    /// The known latents, zero elsewhere.
    pub(crate) fn latents(&self) -> &Tensor {
        &self.latents
    }

    /// 1 where a latent frame is known, else 0, `[1, 1, F, h, w]`.
    pub(crate) fn mask(&self) -> &Tensor {
        &self.mask
    }

    /// `sample` with the known latents put back, noised to `sigma` with `noise` as training
    /// noised them.
    pub(crate) fn impose(
        &self,
        sample: &Tensor,
        noise: &Tensor,
        sigma: f64,
    ) -> candle_core::Result<Tensor> {
        let noised = noised_at(&self.latents, noise, sigma)?;
        let kept = sample.broadcast_mul(&(1.0 - &self.mask)?)?;
        kept + noised.broadcast_mul(&self.mask)?
    }
}

/// Which frames of a clip fill whole latent frames.
#[derive(Clone, Copy)]
enum Part {
    First,
    Last,
}

/// Encodes the first or last `tk` frames of `video` (`t` the autoencoder's temporal factor; a
/// shorter clip repeats its frames at the far end) behind a copy of their first frame into
/// normalised latents `[1, z, k, h, w]`.
fn encode_groups(
    vae: &WanVae,
    video: &Video,
    part: Part,
    latent_frames: usize,
    size: (usize, usize),
    device: &Device,
) -> Result<Tensor, PipelineError> {
    let count = video.num_frames() as isize;
    let used = (vae.config().temporal_factor() * latent_frames) as isize;
    let first = match part {
        Part::First => 0,
        Part::Last => count - used,
    };
    let frame = |offset: isize| (first + offset).clamp(0, count - 1) as usize;
    let frames: Vec<usize> = std::iter::once(frame(0))
        .chain((0..used).map(frame))
        .collect();
    let input = autoencoder_input(video, &frames, size, device)?;
    let encoded = vae.normalize(&vae.encode(&input)?)?;
    Ok(encoded.narrow(2, 1, latent_frames)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip(frames: usize, anchor: Anchor) -> KnownClip {
        let rgb = vec![128u8; frames * 4 * 4 * 3];
        KnownClip {
            video: Video::from_rgb8(rgb, frames, (4, 4), 16.0).unwrap(),
            anchor,
        }
    }

    #[test]
    fn clips_fill_whole_latent_frames() {
        let counts = |anchor, factor| {
            [1, 4, 5, 8, 9]
                .map(|n| {
                    let clip = clip(n, anchor);
                    (clip.latent_frames(factor), clip.output_frames(factor))
                })
                .to_vec()
        };
        assert_eq!(
            counts(Anchor::Start, 4),
            [(1, 1), (1, 1), (2, 5), (2, 5), (3, 9)]
        );
        assert_eq!(
            counts(Anchor::End, 4),
            [(1, 4), (1, 4), (1, 4), (2, 8), (2, 8)]
        );
        // An autoencoder that halves time once: latent frames of two frames.
        assert_eq!(
            counts(Anchor::Start, 2),
            [(1, 1), (2, 3), (3, 5), (4, 7), (5, 9)]
        );
        assert_eq!(
            counts(Anchor::End, 2),
            [(1, 2), (2, 4), (2, 4), (4, 8), (4, 8)]
        );
    }

    #[test]
    fn clips_in_the_middle_start_where_a_latent_frame_starts() {
        let keyframe = clip(1, Anchor::At(5));
        assert_eq!(keyframe.first_latent_frame(5, 4), Some(2));
        assert_eq!(keyframe.first_latent_frame(5, 2), Some(3));
        let between = clip(1, Anchor::At(3));
        assert_eq!(between.first_latent_frame(5, 4), None);
        assert_eq!(between.first_latent_frame(5, 2), Some(2));
    }

    #[test]
    fn fitting_covers_and_crops_the_centre() {
        // A 4x2 clip whose left half is black and right half white, fitted to 2x2: the centre
        // columns straddle the edge.
        let rgb: Vec<u8> = (0..2)
            .flat_map(|_| [0u8, 0, 255, 255])
            .flat_map(|v| [v; 3])
            .collect();
        let video = Video::from_rgb8(rgb, 1, (4, 2), 16.0).unwrap();
        let fitted = fit(&video, 2, 2).unwrap();
        assert_eq!((fitted.width(), fitted.height()), (2, 2));
        let values = fitted.to_rgb8().unwrap();
        assert!(values[0] < 40 && values[3] > 215, "{values:?}");
        // A 2x2 clip fitted to 4x2 is scaled up to 4x4 and keeps its middle rows.
        let wide = fit(&fitted, 4, 2).unwrap();
        assert_eq!((wide.width(), wide.height()), (4, 2));
    }

    /// A tiny autoencoder with untrained weights, 4x in space, halving time at `halves_time`.
    fn autoencoder(halves_time: [bool; 2], device: &Device) -> WanVae {
        let config = himmel_models::wan::WanVaeConfig {
            base_dim: 4,
            decoder_base_dim: None,
            z_dim: 2,
            dim_mult: vec![1, 1, 1],
            num_res_blocks: 1,
            temperal_downsample: halves_time.to_vec(),
            latents_mean: vec![0.0; 2],
            latents_std: vec![1.0; 2],
            ..himmel_models::wan::WanVaeConfig::default_wan21()
        };
        let weights = candle_nn::VarMap::new();
        WanVae::new(
            &config,
            candle_nn::VarBuilder::from_varmap(&weights, DType::F32, device),
        )
        .unwrap()
    }

    /// The latent frames `known` marks as known.
    fn known_frames(known: &KnownLatents) -> Vec<bool> {
        let by_frame = known
            .mask()
            .mean_keepdim(4)
            .unwrap()
            .mean_keepdim(3)
            .unwrap();
        let values = by_frame.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        values.iter().map(|&v| v == 1.0).collect()
    }

    #[test]
    fn clips_are_encoded_at_the_size_the_autoencoder_maps_to_the_timeline() {
        // Two downsamplings: a 16x8 output is a 4x2 latent grid.
        let device = Device::Cpu;
        let vae = autoencoder([true, true], &device);
        let clips = [clip(5, Anchor::Start)];
        let known = KnownLatents::encode(&vae, &clips, &[1, 2, 3, 2, 4], &device)
            .unwrap()
            .unwrap();
        assert_eq!(known.latents().dims(), [1, 2, 3, 2, 4]);
        assert_eq!(known.mask().dims(), [1, 1, 3, 2, 4]);
        assert_eq!(known_frames(&known), [true, true, false]);
    }

    #[test]
    fn clips_fill_the_latent_frames_of_an_autoencoder_that_halves_time_once() {
        // 9 output frames are 5 latent frames of two frames each after the first: 5 known at
        // the start fill three, 2 known at the end the last one.
        let device = Device::Cpu;
        let vae = autoencoder([true, false], &device);
        let clips = [clip(5, Anchor::Start), clip(2, Anchor::End)];
        let known = KnownLatents::encode(&vae, &clips, &[1, 2, 5, 2, 4], &device)
            .unwrap()
            .unwrap();
        assert_eq!(known_frames(&known), [true, true, true, false, true]);
    }

    #[test]
    fn imposing_keeps_the_unknown_frames_and_noises_the_known() {
        let device = Device::Cpu;
        let latents = Tensor::from_vec(vec![1f32, 1.0, 1.0], (1, 1, 3, 1, 1), &device).unwrap();
        let mask = Tensor::from_vec(vec![1f32, 0.0, 1.0], (1, 1, 3, 1, 1), &device).unwrap();
        let known = KnownLatents { latents, mask };
        let sample = Tensor::full(5f32, (1, 1, 3, 1, 1), &device).unwrap();
        let noise = Tensor::full(-1f32, (1, 1, 3, 1, 1), &device).unwrap();
        let imposed = known.impose(&sample, &noise, 0.25).unwrap();
        let values = imposed.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values, [0.5, 5.0, 0.5]);
    }
}
