//! Edits on whole clips: trim to a frame range, resize, and resample to another frame rate.

use std::fmt;
use std::str::FromStr;

use candle_core::{Device, Tensor};
use himmel_core::Video;
use image::Rgb32FImage;
use image::imageops::{self, FilterType};

use crate::MediaError;

/// A half-open range of frame indices, `A..B`, `A..` or `..B` (0-based, end excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRange {
    /// First frame kept.
    pub start: usize,
    /// One past the last frame kept; `None` means the end of the clip.
    pub end: Option<usize>,
}

impl FromStr for FrameRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let usage = || {
            format!("frame range {text:?} should look like A..B, A.. or ..B (0-based, B excluded)")
        };
        let (start, end) = text.split_once("..").ok_or_else(usage)?;
        let start = if start.is_empty() {
            0
        } else {
            start.parse().map_err(|_| usage())?
        };
        let end = if end.is_empty() {
            None
        } else {
            Some(end.parse().map_err(|_| usage())?)
        };
        Ok(Self { start, end })
    }
}

impl fmt::Display for FrameRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.end {
            Some(end) => write!(f, "{}..{end}", self.start),
            None => write!(f, "{}..", self.start),
        }
    }
}

/// Keeps the frames in `range`; an empty range or one past the clip is an error.
pub fn trim(video: &Video, range: FrameRange) -> Result<Video, MediaError> {
    let frames = video.num_frames();
    let end = range.end.unwrap_or(frames);
    if range.start >= end || end > frames {
        return Err(MediaError::FrameRange {
            range: range.to_string(),
            frames,
        });
    }
    let kept = video.frames().narrow(0, range.start, end - range.start)?;
    Ok(Video::new(kept, video.fps())?)
}

/// Resizes every frame to `width`x`height` with a Lanczos filter.
pub fn resize(video: &Video, width: usize, height: usize) -> Result<Video, MediaError> {
    if width == 0 || height == 0 {
        return Err(MediaError::ZeroSize { width, height });
    }
    if (width, height) == (video.width(), video.height()) {
        return Ok(video.clone());
    }
    let frames = video.to_f32()?;
    let mut resized = Vec::with_capacity(video.num_frames() * width * height * 3);
    for index in 0..video.num_frames() {
        let values = frames.get(index)?.flatten_all()?.to_vec1::<f32>()?;
        let image = Rgb32FImage::from_raw(video.width() as u32, video.height() as u32, values)
            .expect("frame buffer matches the video's size");
        resized.extend(
            imageops::resize(&image, width as u32, height as u32, FilterType::Lanczos3).into_raw(),
        );
    }
    let tensor = Tensor::from_vec(
        resized,
        (video.num_frames(), height, width, 3),
        &Device::Cpu,
    )?;
    Ok(Video::new(tensor.clamp(0f32, 1f32)?, video.fps())?)
}

/// Resamples to `fps`, keeping the duration: frames are dropped or repeated (nearest in time).
pub fn resample(video: &Video, fps: f64) -> Result<Video, MediaError> {
    if !(fps.is_finite() && fps > 0.0) {
        return Err(himmel_core::VideoError::BadFps(fps).into());
    }
    let ratio = video.fps() / fps;
    let count = ((video.num_frames() as f64 / ratio).round() as usize).max(1);
    let last = video.num_frames() - 1;
    let indices: Vec<u32> = (0..count)
        .map(|i| ((i as f64 * ratio + 1e-6).floor() as usize).min(last) as u32)
        .collect();
    let indices = Tensor::new(indices.as_slice(), &Device::Cpu)?;
    Ok(Video::new(video.frames().index_select(&indices, 0)?, fps)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(frames: usize, fps: f64) -> Video {
        let rgb: Vec<u8> = (0..frames).flat_map(|f| [f as u8; 4 * 2 * 3]).collect();
        Video::from_rgb8(rgb, frames, (4, 2), fps).unwrap()
    }

    fn first_values(video: &Video) -> Vec<u8> {
        let rgb = video.to_rgb8().unwrap();
        rgb.chunks(video.width() * video.height() * 3)
            .map(|f| f[0])
            .collect()
    }

    #[test]
    fn parses_ranges() {
        assert_eq!(
            "2..5".parse(),
            Ok(FrameRange {
                start: 2,
                end: Some(5)
            })
        );
        assert_eq!(
            "3..".parse(),
            Ok(FrameRange {
                start: 3,
                end: None
            })
        );
        assert_eq!(
            "..4".parse(),
            Ok(FrameRange {
                start: 0,
                end: Some(4)
            })
        );
        assert!("4".parse::<FrameRange>().is_err());
        assert!("a..b".parse::<FrameRange>().is_err());
    }

    #[test]
    fn trims_and_rejects_out_of_range() {
        let video = numbered(10, 8.0);
        assert_eq!(
            first_values(&trim(&video, "2..5".parse().unwrap()).unwrap()),
            [2, 3, 4]
        );
        let err = trim(&video, "5..11".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("5..11") && err.contains("10 frames"), "{err}");
        assert!(trim(&video, "4..4".parse().unwrap()).is_err());
    }

    #[test]
    fn resamples_keeping_duration() {
        let video = numbered(8, 8.0);
        let doubled = resample(&video, 16.0).unwrap();
        assert_eq!(
            first_values(&doubled),
            [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7]
        );
        let halved = resample(&video, 4.0).unwrap();
        assert_eq!(first_values(&halved), [0, 2, 4, 6]);
        assert_eq!(halved.fps(), 4.0);
    }

    #[test]
    fn resizes_flat_frames_exactly() {
        let video = numbered(2, 8.0);
        let resized = resize(&video, 6, 3).unwrap();
        assert_eq!((resized.width(), resized.height()), (6, 3));
        assert_eq!(first_values(&resized), [0, 1]);
        assert!(matches!(
            resize(&video, 0, 3),
            Err(MediaError::ZeroSize { .. })
        ));
    }
}
