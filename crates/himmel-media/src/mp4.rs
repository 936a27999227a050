//! MP4/MOV files with H.264 video: demuxed with `re_mp4`, decoded and encoded with OpenH264
//! ([`crate::h264`]), muxed (fast start, for browsers) with `muxide`.

use std::fs;
use std::path::{Path, PathBuf};

use himmel_core::{Progress, ProgressEvent, Video};
use muxide::api::{Muxer, MuxerBuilder, VideoCodec};
use re_mp4::{Mp4, StsdBoxContent, TrackKind};

use crate::MediaError;
use crate::h264::{self, H264Decoder, H264Encoder, Quality};
use crate::output::temp_file_for;

const FORMAT: &str = "MP4";

/// Reads the first video track of an MP4/MOV file; it must be H.264.
pub(crate) fn read(path: &Path, progress: &dyn Progress) -> Result<Video, MediaError> {
    let bytes = fs::read(path).map_err(|e| MediaError::io(path, e))?;
    if !starts_with_mp4_box(&bytes) {
        return Err(MediaError::malformed(
            path,
            FORMAT,
            "it does not begin with an MP4 box such as 'ftyp'",
        ));
    }
    let mp4 = Mp4::read_bytes(&bytes).map_err(|e| {
        MediaError::malformed(
            path,
            FORMAT,
            format!("{e} (is the file truncated or corrupt?)"),
        )
    })?;
    let track = mp4
        .tracks()
        .values()
        .find(|track| track.kind == Some(TrackKind::Video))
        .ok_or_else(|| MediaError::malformed(path, FORMAT, "it has no video track"))?;
    let avcc = match &track.trak(&mp4).mdia.minf.stbl.stsd.contents {
        StsdBoxContent::Avc1(avc1) => &avc1.avcc.contents,
        other => {
            return Err(MediaError::UnsupportedCodec {
                path: path.into(),
                codec: codec_name(other),
            });
        }
    };
    if track.samples.is_empty() {
        return Err(MediaError::malformed(
            path,
            FORMAT,
            "its video track has no frames",
        ));
    }
    let length_size = usize::from(avcc.length_size_minus_one & 3) + 1;

    let decode_error =
        |e: String| MediaError::malformed(path, FORMAT, format!("H.264 decoding failed: {e}"));
    let mut decoder = H264Decoder::new().map_err(decode_error)?;
    let mut parameter_sets = Vec::new();
    for nal in avcc
        .sequence_parameter_sets
        .iter()
        .chain(&avcc.picture_parameter_sets)
    {
        append_nal(&mut parameter_sets, &nal.bytes);
    }
    decoder.push(&parameter_sets).map_err(decode_error)?;

    progress.event(ProgressEvent::StageStarted {
        stage: "decode",
        total: track.samples.len() as u64,
    });
    let mut access_unit = Vec::new();
    for (index, sample) in track.samples.iter().enumerate() {
        let data = usize::try_from(sample.offset)
            .ok()
            .zip(usize::try_from(sample.size).ok())
            .and_then(|(start, size)| bytes.get(start..start.checked_add(size)?))
            .ok_or_else(|| {
                MediaError::malformed(
                    path,
                    FORMAT,
                    format!("frame {index} lies past the end of the file (is it truncated?)"),
                )
            })?;
        access_unit.clear();
        avcc_to_annex_b(data, length_size, &mut access_unit).map_err(|reason| {
            MediaError::malformed(path, FORMAT, format!("frame {index}: {reason}"))
        })?;
        decoder.push(&access_unit).map_err(decode_error)?;
        progress.event(ProgressEvent::Step {
            done: index as u64 + 1,
        });
    }
    let frames = decoder.finish().map_err(decode_error)?;
    progress.event(ProgressEvent::StageFinished);

    if frames.len() != track.samples.len() {
        return Err(MediaError::malformed(
            path,
            FORMAT,
            format!("decoded {} of {} frames", frames.len(), track.samples.len()),
        ));
    }
    let (width, height) = (frames[0].width, frames[0].height);
    if frames
        .iter()
        .any(|frame| (frame.width, frame.height) != (width, height))
    {
        return Err(MediaError::malformed(
            path,
            FORMAT,
            "the frame size changes mid-stream",
        ));
    }
    let count = frames.len();
    let rgb: Vec<u8> = frames.into_iter().flat_map(|frame| frame.rgb).collect();
    Ok(Video::from_rgb8(
        rgb,
        count,
        (width, height),
        frame_rate(track),
    )?)
}

/// Whether `bytes` begin with a box type that MP4 and MOV files begin with.
fn starts_with_mp4_box(bytes: &[u8]) -> bool {
    const FIRST_BOXES: [&[u8; 4]; 6] = [b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"];
    bytes
        .get(4..8)
        .is_some_and(|kind| FIRST_BOXES.iter().any(|first| kind == *first))
}

/// Frame rate from the track's typical sample duration.
fn frame_rate(track: &re_mp4::Track) -> f64 {
    let mut durations: Vec<u64> = track
        .samples
        .iter()
        .map(|s| s.duration)
        .filter(|&d| d > 0)
        .collect();
    durations.sort_unstable();
    match durations.get(durations.len() / 2) {
        Some(&typical) if track.timescale > 0 => track.timescale as f64 / typical as f64,
        _ => {
            track.samples.len() as f64
                / (track.duration.max(1) as f64 / track.timescale.max(1) as f64)
        }
    }
}

fn codec_name(content: &StsdBoxContent) -> String {
    match content {
        StsdBoxContent::Hvc1(_) => "HEVC (hvc1)".into(),
        StsdBoxContent::Hev1(_) => "HEVC (hev1)".into(),
        StsdBoxContent::Av01(_) => "AV1 (av01)".into(),
        StsdBoxContent::Vp08(_) => "VP8 (vp08)".into(),
        StsdBoxContent::Vp09(_) => "VP9 (vp09)".into(),
        StsdBoxContent::Unknown(fourcc) => format!("'{fourcc}'"),
        other => format!("{other:?}").chars().take(40).collect(),
    }
}

/// Appends one NAL unit with a 4-byte start code.
fn append_nal(out: &mut Vec<u8>, nal: &[u8]) {
    out.extend_from_slice(&[0, 0, 0, 1]);
    out.extend_from_slice(nal);
}

/// Rewrites length-prefixed (AVCC) NAL units as start-code-prefixed (Annex B) ones.
fn avcc_to_annex_b(mut data: &[u8], length_size: usize, out: &mut Vec<u8>) -> Result<(), String> {
    while !data.is_empty() {
        let Some((prefix, rest)) = data.split_at_checked(length_size) else {
            return Err("a NAL unit length is cut off".into());
        };
        let length = prefix
            .iter()
            .fold(0usize, |acc, &byte| (acc << 8) | usize::from(byte));
        let Some((nal, rest)) = rest.split_at_checked(length) else {
            return Err(format!(
                "a NAL unit claims {length} bytes but only {} remain",
                rest.len()
            ));
        };
        append_nal(out, nal);
        data = rest;
    }
    Ok(())
}

/// Writes `video` as an MP4 with H.264 video.
pub(crate) fn write(
    video: &Video,
    path: &Path,
    quality: Quality,
    progress: &dyn Progress,
) -> Result<(), MediaError> {
    let mut stream = Mp4Stream::create(path, video, quality)?;
    progress.event(ProgressEvent::StageStarted {
        stage: "encode mp4",
        total: video.num_frames() as u64,
    });
    for index in 0..video.num_frames() {
        stream.push_frame(&video.frame_rgb8(index)?)?;
        progress.event(ProgressEvent::Step {
            done: index as u64 + 1,
        });
    }
    stream.finish()?;
    progress.event(ProgressEvent::StageFinished);
    Ok(())
}

/// An MP4 encoded frame by frame into a temporary file, which replaces the target on
/// [`Mp4Stream::finish`]; dropped unfinished, it leaves nothing.
pub(crate) struct Mp4Stream {
    path: PathBuf,
    temp: tempfile::NamedTempFile,
    encoder: H264Encoder,
    muxer: Muxer<fs::File>,
    fps: f64,
    written: usize,
}

fn encode_error(reason: String) -> MediaError {
    MediaError::Encode {
        format: FORMAT,
        reason,
    }
}

fn mux_error(error: muxide::api::MuxerError) -> MediaError {
    encode_error(error.to_string())
}

impl Mp4Stream {
    /// Starts writing `path` for frames of the size and rate of `like`.
    pub(crate) fn create(path: &Path, like: &Video, quality: Quality) -> Result<Self, MediaError> {
        let (width, height, fps) = (like.width(), like.height(), like.fps());
        if let Some(reason) = h264::size_problem(width, height) {
            return Err(MediaError::UnsupportedSize {
                format: FORMAT,
                width,
                height,
                reason,
            });
        }
        let temp = temp_file_for(path)?;
        let file = temp
            .as_file()
            .try_clone()
            .map_err(|e| MediaError::io(path, e))?;
        let encoder = H264Encoder::new(width, height, fps, quality).map_err(encode_error)?;
        let muxer = MuxerBuilder::new(file)
            .video(VideoCodec::H264, width as u32, height as u32, fps)
            .with_fast_start(true)
            .build()
            .map_err(mux_error)?;
        Ok(Self {
            path: path.to_path_buf(),
            temp,
            encoder,
            muxer,
            fps,
            written: 0,
        })
    }

    /// Encodes one packed RGB frame of the stream's size.
    pub(crate) fn push_frame(&mut self, rgb: &[u8]) -> Result<(), MediaError> {
        let frame = self.encoder.encode(rgb).map_err(encode_error)?;
        self.muxer
            .write_video(self.written as f64 / self.fps, &frame.annex_b, frame.is_key)
            .map_err(mux_error)?;
        self.written += 1;
        Ok(())
    }

    /// Writes the index and moves the file into place.
    pub(crate) fn finish(self) -> Result<(), MediaError> {
        self.muxer.finish().map_err(mux_error)?;
        self.temp
            .persist(&self.path)
            .map_err(|e| MediaError::io(&self.path, e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avcc_becomes_annex_b() {
        let mut out = Vec::new();
        avcc_to_annex_b(&[0, 0, 0, 2, 0x65, 0xAA, 0, 0, 0, 1, 0x41], 4, &mut out).unwrap();
        assert_eq!(out, [0, 0, 0, 1, 0x65, 0xAA, 0, 0, 0, 1, 0x41]);
        let cut = avcc_to_annex_b(&[0, 0, 0, 9, 0x65], 4, &mut Vec::new()).unwrap_err();
        assert!(cut.contains("claims 9 bytes"), "{cut}");
    }
}
