//! Animated GIF, looping forever. GIF delays are whole centiseconds: frame delays are rounded
//! cumulatively so the clip's total duration stays right.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use himmel_core::{Progress, ProgressEvent, Video};
use image::codecs::gif::{GifDecoder, GifEncoder, Repeat};
use image::{AnimationDecoder, Delay, Frame, RgbaImage};

use crate::MediaError;
use crate::output::write_file;

const FORMAT: &str = "GIF";
/// Colour quantisation speed, 1 (best) to 30 (fastest); 10 is the usual trade-off.
const QUANTISE_SPEED: i32 = 10;
/// Browsers play delays under 2 cs at 10 cs; so do we when reading.
const SHORTEST_DELAY_CS: u32 = 2;
const BROWSER_DEFAULT_DELAY_CS: u32 = 10;

/// Reads every frame of an animated (or still) GIF, composited to the full canvas.
pub(crate) fn read(path: &Path, progress: &dyn Progress) -> Result<Video, MediaError> {
    let file = File::open(path).map_err(|e| MediaError::io(path, e))?;
    let decoder = GifDecoder::new(BufReader::new(file))
        .map_err(|e| MediaError::malformed(path, FORMAT, e))?;
    progress.event(ProgressEvent::StageStarted {
        stage: "decode gif",
        total: 0,
    });
    let mut rgb = Vec::new();
    let (mut count, mut size, mut total_cs) = (0usize, (0, 0), 0u64);
    for frame in decoder.into_frames() {
        let frame = frame.map_err(|e| MediaError::malformed(path, FORMAT, e))?;
        let (numer, denom) = frame.delay().numer_denom_ms();
        let delay_cs = (f64::from(numer) / f64::from(denom.max(1)) / 10.0).round() as u32;
        total_cs += u64::from(if delay_cs < SHORTEST_DELAY_CS {
            BROWSER_DEFAULT_DELAY_CS
        } else {
            delay_cs
        });
        let image = frame.into_buffer();
        size = (image.width() as usize, image.height() as usize);
        rgb.extend(
            image
                .pixels()
                .flat_map(|pixel| [pixel[0], pixel[1], pixel[2]]),
        );
        count += 1;
        progress.event(ProgressEvent::Step { done: count as u64 });
    }
    progress.event(ProgressEvent::StageFinished);
    if count == 0 {
        return Err(MediaError::malformed(path, FORMAT, "it has no frames"));
    }
    let fps = count as f64 * 100.0 / total_cs as f64;
    Ok(Video::from_rgb8(rgb, count, size, fps)?)
}

/// Writes `video` as a GIF that loops forever.
pub(crate) fn write(video: &Video, path: &Path, progress: &dyn Progress) -> Result<(), MediaError> {
    let (width, height) = (video.width(), video.height());
    if width > usize::from(u16::MAX) || height > usize::from(u16::MAX) {
        return Err(MediaError::UnsupportedSize {
            format: FORMAT,
            width,
            height,
            reason: "GIF frames are at most 65535 pixels on a side",
        });
    }
    let encode_error = |e: image::ImageError| MediaError::Encode {
        format: FORMAT,
        reason: e.to_string(),
    };
    write_file(path, |file| {
        let mut encoder = GifEncoder::new_with_speed(file, QUANTISE_SPEED);
        encoder.set_repeat(Repeat::Infinite).map_err(encode_error)?;
        progress.event(ProgressEvent::StageStarted {
            stage: "encode gif",
            total: video.num_frames() as u64,
        });
        let mut elapsed_cs = 0u64;
        for index in 0..video.num_frames() {
            let end_cs = ((index + 1) as f64 * 100.0 / video.fps()).round() as u64;
            let delay_cs = (end_cs - elapsed_cs.min(end_cs)).max(u64::from(SHORTEST_DELAY_CS));
            elapsed_cs += delay_cs;
            let rgba: Vec<u8> = video
                .frame_rgb8(index)?
                .chunks_exact(3)
                .flat_map(|pixel| [pixel[0], pixel[1], pixel[2], 255])
                .collect();
            let image = RgbaImage::from_raw(width as u32, height as u32, rgba)
                .expect("frame buffer matches the video's size");
            let delay = Delay::from_numer_denom_ms(delay_cs as u32 * 10, 1);
            encoder
                .encode_frame(Frame::from_parts(image, 0, 0, delay))
                .map_err(encode_error)?;
            progress.event(ProgressEvent::Step {
                done: index as u64 + 1,
            });
        }
        progress.event(ProgressEvent::StageFinished);
        Ok(())
    })
}
