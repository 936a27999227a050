//! [`VideoWriter`]: a video written as its frames arrive, so that long generations need not
//! hold every frame.

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use himmel_core::{Progress, ProgressEvent, Video};

use crate::mp4::Mp4Stream;
use crate::{Format, MediaError, WriteOptions, write_video};

/// Writes a video in parts: MP4 encodes each part as it comes (memory stays flat however
/// long the video); other formats keep the parts until [`VideoWriter::finish`]. Nothing
/// appears at the path until `finish` succeeds.
pub struct VideoWriter {
    path: PathBuf,
    options: WriteOptions,
    state: State,
    frames: usize,
}

enum State {
    /// Nothing written yet (the first part fixes the size and rate).
    Empty,
    Mp4(Box<Mp4Stream>),
    Buffered(Vec<Tensor>, f64),
}

impl VideoWriter {
    /// A writer for `path` (the format its extension names); fails at once if the format or
    /// the folder is wrong.
    pub fn create(path: &Path, options: &WriteOptions) -> Result<Self, MediaError> {
        Format::of_output(path)?;
        crate::check_output_path(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            options: *options,
            state: State::Empty,
            frames: 0,
        })
    }

    /// Frames written so far.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Appends the frames of `part`, which must have the size and rate of the first part.
    pub fn push(&mut self, part: &Video) -> Result<(), MediaError> {
        if let State::Empty = self.state {
            self.state = match Format::of_output(&self.path)? {
                Format::Mp4 => State::Mp4(Box::new(Mp4Stream::create(
                    &self.path,
                    part,
                    self.options.quality,
                )?)),
                _ => State::Buffered(Vec::new(), part.fps()),
            };
        }
        match &mut self.state {
            State::Empty => unreachable!("the state was set above"),
            State::Mp4(stream) => {
                for index in 0..part.num_frames() {
                    stream.push_frame(&part.frame_rgb8(index)?)?;
                }
            }
            State::Buffered(parts, _) => parts.push(part.to_u8()?),
        }
        self.frames += part.num_frames();
        Ok(())
    }

    /// Completes the file; an error if no frame was pushed.
    pub fn finish(self, progress: &dyn Progress) -> Result<(), MediaError> {
        match self.state {
            State::Empty => Err(MediaError::Encode {
                format: "video",
                reason: "no frames were written".into(),
            }),
            State::Mp4(stream) => {
                progress.event(ProgressEvent::StageStarted {
                    stage: "finish mp4",
                    total: 0,
                });
                stream.finish()?;
                progress.event(ProgressEvent::StageFinished);
                Ok(())
            }
            State::Buffered(parts, fps) => {
                let video = Video::new(Tensor::cat(&parts, 0)?, fps)?;
                write_video(&video, &self.path, &self.options, progress)
            }
        }
    }
}
