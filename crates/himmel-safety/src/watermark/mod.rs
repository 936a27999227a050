//! The invisible watermark: a 48-bit payload (a 16-bit Himmel marker and a 32-bit generation
//! id) spread over every frame as a faint, smooth luminance pattern (PSNR about 40.5 dB), found
//! again after re-encoding, scaling, cropping and trimming.
//!
//! The pattern is defined relative to the frame and periodic over it (see [`pattern`]): the
//! same on every frame, so the detector averages all frames (moving content fades, the mark
//! adds up), and scaling leaves it in place while a crop only zooms and shifts it. The
//! detector ([`detect`]) tries zooms, finds the shift by correlating with a sync pattern
//! (whitened, so the picture's own structure weighs little), reads the bits there, and calls
//! the mark present only when the sync peak is high and the marker bits are right.
//!
//! Limits: it is a deterrent and a label, not a lock. Someone who knows the scheme can remove
//! it, heavy blurring or rotation defeats it, and frames smaller than [`MIN_SIDE`] carry none.

mod detect;
mod fft;
mod pattern;

use candle_core::{Device, Tensor};
use himmel_core::{Video, VideoError};

pub use detect::{Detection, detect};
pub use pattern::PAYLOAD_BITS;
use pattern::{Patterns, class_of};

/// The first 16 payload bits of every Himmel watermark ("HM").
pub const MARKER: u16 = 0x484D;

/// The mark's RMS amplitude on each colour channel, in 0..=1 units (2.4 of 255 levels: a
/// PSNR of 40.5 dB against the unmarked frames).
pub const AMPLITUDE: f32 = 2.4 / 255.0;

/// Frames narrower or lower than this carry no watermark (too few pixels to hold it).
pub const MIN_SIDE: usize = 48;

/// Why a watermark could not be embedded or read.
#[derive(Debug, thiserror::Error)]
pub enum WatermarkError {
    /// The frames could not be used.
    #[error(transparent)]
    Video(#[from] VideoError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

/// What the watermark carries: the id of one generation (the marker is implied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    /// The generation's id (also recorded in the file's provenance manifest).
    pub generation: u32,
}

impl Payload {
    /// The payload bits, most significant first: the marker, then the generation id.
    pub fn bits(&self) -> [bool; PAYLOAD_BITS] {
        let word = (u64::from(MARKER) << 32) | u64::from(self.generation);
        std::array::from_fn(|i| (word >> (PAYLOAD_BITS - 1 - i)) & 1 == 1)
    }

    /// The payload of `bits`, and how many of its marker bits are right.
    pub fn from_bits(bits: &[bool; PAYLOAD_BITS]) -> (Self, usize) {
        let word = bits
            .iter()
            .fold(0u64, |word, &bit| (word << 1) | u64::from(bit));
        let marker = (word >> 32) as u16;
        let agreement = 16 - (marker ^ MARKER).count_ones() as usize;
        (
            Self {
                generation: word as u32,
            },
            agreement,
        )
    }
}

/// Adds the watermark of one payload to frames; keeps the pattern of the last frame size.
pub struct Watermarker {
    payload: Payload,
    field: Option<(usize, usize, Tensor)>,
}

impl Watermarker {
    /// A watermarker for `payload`.
    pub fn new(payload: Payload) -> Self {
        Self {
            payload,
            field: None,
        }
    }

    /// The payload this watermarker embeds.
    pub fn payload(&self) -> Payload {
        self.payload
    }

    /// `video` with the mark added to every frame (as f32 frames); unchanged when its frames
    /// are smaller than [`MIN_SIDE`].
    pub fn mark(&mut self, video: &Video) -> Result<Video, WatermarkError> {
        let (width, height) = (video.width(), video.height());
        if width < MIN_SIDE || height < MIN_SIDE {
            return Ok(video.clone());
        }
        let field = match &self.field {
            Some((w, h, field)) if (*w, *h) == (width, height) => field.clone(),
            _ => {
                let patterns = Patterns::get(class_of(width.min(height)));
                let coefficients = patterns.mark(&self.payload.bits());
                let values = patterns.field(&coefficients, width, height);
                let field = (Tensor::from_vec(values, (1, height, width, 1), &Device::Cpu)?
                    * f64::from(AMPLITUDE))?;
                self.field = Some((width, height, field.clone()));
                field
            }
        };
        let frames = video.to_f32()?.broadcast_add(&field)?.clamp(0f32, 1f32)?;
        Ok(Video::new(frames, video.fps())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use himmel_core::compare::psnr;

    #[test]
    fn payload_bits_round_trip() {
        let payload = Payload {
            generation: 0xDEAD_BEEF,
        };
        let bits = payload.bits();
        assert_eq!(Payload::from_bits(&bits), (payload, 16));
        let mut wrong = bits;
        wrong[3] = !wrong[3];
        assert_eq!(Payload::from_bits(&wrong).1, 15);
    }

    fn grey_ramp(frames: usize, width: usize, height: usize) -> Video {
        let values: Vec<f32> = (0..frames * height * width * 3)
            .map(|i| 0.3 + 0.4 * ((i / 3) % width) as f32 / width as f32)
            .collect();
        Video::new(
            Tensor::from_vec(values, (frames, height, width, 3), &Device::Cpu).unwrap(),
            16.0,
        )
        .unwrap()
    }

    #[test]
    fn mark_is_invisible_and_found() {
        let video = grey_ramp(4, 96, 64);
        let payload = Payload { generation: 12345 };
        let marked = Watermarker::new(payload).mark(&video).unwrap();
        let quality = psnr(&video.to_rgb8().unwrap(), &marked.to_rgb8().unwrap());
        assert!(quality >= 40.0, "{quality}");
        let found = detect(&marked).unwrap();
        assert!(found.present, "{found:?}");
        assert_eq!(found.payload, Some(payload));
        let unmarked = detect(&video).unwrap();
        assert!(!unmarked.present, "{unmarked:?}");
    }

    #[test]
    fn small_frames_are_left_alone() {
        let video = grey_ramp(2, 16, 48);
        let marked = Watermarker::new(Payload { generation: 1 })
            .mark(&video)
            .unwrap();
        assert_eq!(marked.to_rgb8().unwrap(), video.to_rgb8().unwrap());
    }
}
