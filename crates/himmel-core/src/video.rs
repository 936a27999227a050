//! [`Video`]: frames `[F, H, W, 3]` (f32 in 0..=1, or u8 at the edges) plus a frame rate.

use candle_core::{DType, Device, Tensor};

/// Why a [`Video`] could not be made or converted.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    /// The frames tensor does not have the shape `[F, H, W, 3]`.
    #[error("video frames must have shape [frames, height, width, 3], got {0:?}")]
    BadShape(Vec<usize>),
    /// A video needs at least one frame and a non-zero size.
    #[error(
        "video must have at least one frame and a non-zero size, got {frames} frames of {width}x{height}"
    )]
    Empty {
        /// Number of frames given.
        frames: usize,
        /// Width given.
        width: usize,
        /// Height given.
        height: usize,
    },
    /// Frames must be f32 (0..=1) or u8 (0..=255).
    #[error("video frames must be f32 or u8, got {0:?}")]
    BadDType(DType),
    /// The frame rate must be a positive finite number.
    #[error("frame rate must be a positive number, got {0}")]
    BadFps(f64),
    /// A raw RGB buffer's length does not match the size it claims.
    #[error(
        "RGB buffer holds {actual} bytes but {frames} frames of {width}x{height} need {expected}"
    )]
    BufferSize {
        /// Bytes present.
        actual: usize,
        /// Bytes needed.
        expected: usize,
        /// Frames claimed.
        frames: usize,
        /// Width claimed.
        width: usize,
        /// Height claimed.
        height: usize,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

/// A clip: frames `[F, H, W, 3]` on the CPU, either f32 in 0..=1 or u8, plus its frame rate.
#[derive(Debug, Clone)]
pub struct Video {
    frames: Tensor,
    fps: f64,
}

impl Video {
    /// Wraps a `[F, H, W, 3]` tensor of f32 (0..=1) or u8 frames, checking shape, dtype and fps.
    pub fn new(frames: Tensor, fps: f64) -> Result<Self, VideoError> {
        let dims = frames.dims().to_vec();
        let [count, height, width, 3] = dims[..] else {
            return Err(VideoError::BadShape(dims));
        };
        if count == 0 || height == 0 || width == 0 {
            return Err(VideoError::Empty {
                frames: count,
                width,
                height,
            });
        }
        if !matches!(frames.dtype(), DType::F32 | DType::U8) {
            return Err(VideoError::BadDType(frames.dtype()));
        }
        if !(fps.is_finite() && fps > 0.0) {
            return Err(VideoError::BadFps(fps));
        }
        Ok(Self { frames, fps })
    }

    /// Builds a u8 video from packed RGB bytes laid out `[F, H, W, 3]`.
    pub fn from_rgb8(
        rgb: Vec<u8>,
        frames: usize,
        (width, height): (usize, usize),
        fps: f64,
    ) -> Result<Self, VideoError> {
        let expected = frames * height * width * 3;
        if rgb.len() != expected {
            return Err(VideoError::BufferSize {
                actual: rgb.len(),
                expected,
                frames,
                width,
                height,
            });
        }
        let tensor = Tensor::from_vec(rgb, (frames, height, width, 3), &Device::Cpu)?;
        Self::new(tensor, fps)
    }

    /// The frames tensor `[F, H, W, 3]`.
    pub fn frames(&self) -> &Tensor {
        &self.frames
    }

    /// Frames per second.
    pub fn fps(&self) -> f64 {
        self.fps
    }

    /// Number of frames.
    pub fn num_frames(&self) -> usize {
        self.frames.dims()[0]
    }

    /// Frame height in pixels.
    pub fn height(&self) -> usize {
        self.frames.dims()[1]
    }

    /// Frame width in pixels.
    pub fn width(&self) -> usize {
        self.frames.dims()[2]
    }

    /// Duration in seconds.
    pub fn duration(&self) -> f64 {
        self.num_frames() as f64 / self.fps
    }

    /// The same clip with another frame rate (the frames are not resampled).
    pub fn with_fps(self, fps: f64) -> Result<Self, VideoError> {
        Self::new(self.frames, fps)
    }

    /// The frames as f32 in 0..=1.
    pub fn to_f32(&self) -> Result<Tensor, VideoError> {
        Ok(match self.frames.dtype() {
            DType::U8 => (self.frames.to_dtype(DType::F32)? / 255.0)?,
            _ => self.frames.clone(),
        })
    }

    /// The frames as u8, rounding and clamping f32 values to 0..=255.
    pub fn to_u8(&self) -> Result<Tensor, VideoError> {
        Ok(match self.frames.dtype() {
            DType::U8 => self.frames.clone(),
            _ => (self.frames.clamp(0f32, 1f32)? * 255.0)?
                .round()?
                .to_dtype(DType::U8)?,
        })
    }

    /// All frames as packed RGB bytes `[F, H, W, 3]`.
    pub fn to_rgb8(&self) -> Result<Vec<u8>, VideoError> {
        Ok(self.to_u8()?.flatten_all()?.to_vec1::<u8>()?)
    }

    /// One frame as packed RGB bytes `[H, W, 3]`.
    pub fn frame_rgb8(&self, index: usize) -> Result<Vec<u8>, VideoError> {
        let frame = self.frames.get(index)?;
        let frame = Self::new(frame.unsqueeze(0)?, self.fps)?;
        frame.to_rgb8()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_wrong_shapes_and_fps() {
        let flat = Tensor::zeros((4, 4, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(
            Video::new(flat, 16.0),
            Err(VideoError::BadShape(_))
        ));
        let empty = Tensor::zeros((0, 4, 4, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(
            Video::new(empty, 16.0),
            Err(VideoError::Empty { .. })
        ));
        let ok = Tensor::zeros((1, 4, 4, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(
            Video::new(ok.clone(), 0.0),
            Err(VideoError::BadFps(_))
        ));
        assert!(matches!(
            Video::new(ok, f64::NAN),
            Err(VideoError::BadFps(_))
        ));
        let short = Video::from_rgb8(vec![0; 10], 1, (2, 2), 8.0);
        assert!(matches!(
            short,
            Err(VideoError::BufferSize { expected: 12, .. })
        ));
    }

    #[test]
    fn u8_and_f32_round_trip() {
        let rgb: Vec<u8> = (0..2 * 3 * 5 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let video = Video::from_rgb8(rgb.clone(), 2, (5, 3), 24.0).unwrap();
        assert_eq!(
            (video.num_frames(), video.height(), video.width()),
            (2, 3, 5)
        );
        let float = Video::new(video.to_f32().unwrap(), 24.0).unwrap();
        assert_eq!(float.to_rgb8().unwrap(), rgb);
        assert_eq!(float.frame_rgb8(1).unwrap(), rgb[45..]);
    }

    #[test]
    fn f32_values_are_clamped() {
        let values = Tensor::new(&[[[[-0.5f32, 0.5, 1.5]]]], &Device::Cpu).unwrap();
        let video = Video::new(values, 1.0).unwrap();
        assert_eq!(video.to_rgb8().unwrap(), vec![0, 128, 255]);
    }
}
