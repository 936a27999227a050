//! H.264 through OpenH264 (compiled from source by cargo): packed RGB frames to Annex B
//! access units, and back. Colours are BT.601 limited range, signalled in the stream.

use openh264::OpenH264API;
use openh264::decoder::{DecodedYUV, Decoder, DecoderConfig, Flush};
use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, QpRange,
    RateControlMode, UsageType, VuiConfig,
};
use openh264::formats::{RgbSliceU8, YUVBuffer, YUVSource};

/// How hard the H.264 encoder compresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    /// Constant quantiser, like x264's CRF: 0 is best, 51 worst; 20 looks clean for
    /// generated video.
    Constant(u8),
    /// Average bitrate in kilobits per second.
    Bitrate(u32),
}

impl Default for Quality {
    fn default() -> Self {
        Self::Constant(20)
    }
}

/// Largest frame OpenH264 encodes (level 5.2), in either orientation.
const MAX_LONG_SIDE: usize = 3840;
const MAX_SHORT_SIDE: usize = 2160;

/// Why H.264 cannot hold frames of this size, if it cannot.
pub(crate) fn size_problem(width: usize, height: usize) -> Option<&'static str> {
    if width % 2 == 1 || height % 2 == 1 {
        Some(
            "H.264 (4:2:0) needs an even width and height; resize with --width/--height or write .png/.gif/.safetensors",
        )
    } else if width.max(height) > MAX_LONG_SIDE || width.min(height) > MAX_SHORT_SIDE {
        Some("the H.264 encoder's limit is 3840x2160 (or 2160x3840)")
    } else if width < 16 || height < 16 {
        Some("H.264 frames must be at least 16x16")
    } else {
        None
    }
}

/// One encoded frame: an Annex B access unit.
pub(crate) struct EncodedFrame {
    /// Start-code-prefixed NAL units (parameter sets included on key frames).
    pub annex_b: Vec<u8>,
    /// Whether the frame is an IDR (random access point).
    pub is_key: bool,
}

/// Encodes same-sized RGB frames, one call per frame.
pub(crate) struct H264Encoder {
    encoder: Encoder,
    width: usize,
    height: usize,
}

/// Bitrate target for constant-quality encoding: high enough never to bind.
const UNCAPPED_BPS: u32 = 100_000_000;

/// A key frame at least every this many seconds, so players can seek.
const KEY_FRAME_SECONDS: f64 = 2.0;

impl H264Encoder {
    /// An encoder for `width`x`height` frames at `fps`.
    pub fn new(width: usize, height: usize, fps: f64, quality: Quality) -> Result<Self, String> {
        let key_interval = (fps * KEY_FRAME_SECONDS).round().max(1.0) as u32;
        let config = EncoderConfig::new()
            .usage_type(UsageType::CameraVideoRealTime)
            .complexity(Complexity::High)
            .max_frame_rate(FrameRate::from_hz(fps as f32))
            .skip_frames(false)
            .intra_frame_period(IntraFramePeriod::from_num_frames(key_interval))
            .vui(VuiConfig::bt601());
        let config = match quality {
            // With rate control off OpenH264 ignores the QP range (it uses a fixed QP of 26),
            // so quality mode with a one-value QP range is what holds the quantiser constant.
            Quality::Constant(qp) => config
                .rate_control_mode(RateControlMode::Quality)
                .bitrate(BitRate::from_bps(UNCAPPED_BPS))
                .qp(QpRange::new(qp, qp)),
            Quality::Bitrate(kbps) => config
                .rate_control_mode(RateControlMode::Bitrate)
                .bitrate(BitRate::from_bps(kbps.saturating_mul(1000))),
        };
        let mut encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| e.to_string())?;
        silence_encoder_log(&mut encoder);
        Ok(Self {
            encoder,
            width,
            height,
        })
    }

    /// Encodes one packed RGB frame.
    pub fn encode(&mut self, rgb: &[u8]) -> Result<EncodedFrame, String> {
        let source = RgbSliceU8::new(rgb, (self.width, self.height));
        let yuv = YUVBuffer::from_rgb8_source(source);
        let stream = self.encoder.encode(&yuv).map_err(|e| e.to_string())?;
        let is_key = matches!(stream.frame_type(), FrameType::IDR);
        let annex_b = stream.to_vec();
        if annex_b.is_empty() {
            return Err("the encoder produced an empty frame".into());
        }
        Ok(EncodedFrame { annex_b, is_key })
    }
}

/// Quiets OpenH264's log before its first initialisation, which otherwise prints parameter
/// warnings to stderr (the `openh264` crate lowers the level only after initialising).
fn silence_encoder_log(encoder: &mut Encoder) {
    let mut level = openh264_sys2::WELS_LOG_QUIET as std::ffi::c_int;
    // SAFETY: TRACE_LEVEL takes a pointer to an int that lives for the duration of the call;
    // setting it is valid on a created encoder before initialisation.
    unsafe {
        encoder.raw_api().set_option(
            openh264_sys2::ENCODER_OPTION_TRACE_LEVEL,
            (&raw mut level).cast(),
        );
    }
}

/// Decodes Annex B access units into packed RGB frames, in display order.
pub(crate) struct H264Decoder {
    decoder: Decoder,
    frames: Vec<RgbFrame>,
}

/// A decoded frame: packed RGB bytes and its size.
pub(crate) struct RgbFrame {
    /// `[H, W, 3]` bytes.
    pub rgb: Vec<u8>,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
}

impl H264Decoder {
    /// A fresh decoder.
    pub fn new() -> Result<Self, String> {
        let config = DecoderConfig::new().flush_after_decode(Flush::NoFlush);
        let decoder = Decoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| e.to_string())?;
        Ok(Self {
            decoder,
            frames: Vec::new(),
        })
    }

    /// Feeds one access unit (or parameter sets); completed pictures are kept.
    pub fn push(&mut self, annex_b: &[u8]) -> Result<(), String> {
        if let Some(picture) = self.decoder.decode(annex_b).map_err(|e| e.to_string())? {
            self.frames.push(to_rgb(&picture));
        }
        Ok(())
    }

    /// Flushes the decoder and returns every picture.
    pub fn finish(mut self) -> Result<Vec<RgbFrame>, String> {
        let remaining = self.decoder.flush_remaining().map_err(|e| e.to_string())?;
        let mut frames = std::mem::take(&mut self.frames);
        frames.extend(remaining.iter().map(to_rgb));
        Ok(frames)
    }
}

fn to_rgb(picture: &DecodedYUV<'_>) -> RgbFrame {
    let (width, height) = picture.dimensions();
    let mut rgb = vec![0; width * height * 3];
    picture.write_rgb8(&mut rgb);
    RgbFrame { rgb, width, height }
}
