//! Sora's editing tasks as thin layers over one generation with known clips: extending a clip
//! forwards or backwards, long videos, connecting two clips and loops. Each runs the model in
//! windows of at most [`Windows::frames`] frames; consecutive windows share the frames of
//! [`Windows::overlap`] latent frames, which the later window is given as known. Given frames
//! are kept exactly; the model renders them through its autoencoder a little off, and that
//! difference is faded out over the first new frames beside them, so seams stay continuous.

use candle_core::{DType, Tensor};
use himmel_core::Video;

use crate::PipelineError;
use crate::conditioning::{Anchor, KnownClip};
use crate::request::GenerationRequest;

/// Generates one window: validates the request for the model and runs it.
pub type Generate<'a> = dyn FnMut(GenerationRequest) -> Result<Video, PipelineError> + 'a;

/// Receives the finished frames of a task in order, part by part (a long video arrives window
/// by window, so it never has to be held whole).
pub type Sink<'a> = dyn FnMut(Video) -> Result<(), PipelineError> + 'a;

/// Runs `produce` with a sink that gathers its parts into one video.
pub fn collect(
    produce: impl FnOnce(&mut Sink) -> Result<(), PipelineError>,
) -> Result<Video, PipelineError> {
    let mut parts = Vec::new();
    let mut fps = 0.0;
    produce(&mut |part: Video| {
        fps = part.fps();
        parts.push(part.to_u8()?);
        Ok(())
    })?;
    Ok(Video::new(Tensor::cat(&parts, 0)?, fps)?)
}

/// How a task cuts its work into windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// Frames per window, `1 + tk` (the model's longest clip or its usual length).
    pub frames: usize,
    /// Latent frames a window shares with the one before: `1 + t(o - 1)` pixel frames when
    /// known at its start, `t * o` at its end.
    pub overlap: usize,
    /// Pixel frames per latent frame after the first, `t`: the model's temporal factor.
    pub temporal_factor: usize,
}

/// Which way an extension grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// New frames after the clip.
    Forward,
    /// New frames before the clip.
    Backward,
}

/// Longest video a task makes, in seconds.
pub const MAX_SECONDS: f64 = 120.0;

/// What to make; the base request carries the prompt, settings and, for video to video and
/// image to video, the source clip or the known first frame.
#[derive(Debug, Clone)]
pub enum Task {
    /// A new video of the base request's length (longer than a window: by extension).
    Create,
    /// `clip` (fitted to the base size and resampled to its rate) and `new_frames` more.
    Extend {
        /// The clip to extend.
        clip: Video,
        /// Which way.
        direction: Direction,
        /// Frames to add.
        new_frames: usize,
    },
    /// A transition of `new_frames` frames from the end of `from` to the start of `to`.
    Connect {
        /// The clip the transition starts from.
        from: Video,
        /// The clip it arrives at.
        to: Video,
        /// Frames between them.
        new_frames: usize,
    },
    /// A video of the base request's length whose last frame flows into its first.
    Loop,
}

/// Runs `task` with `generate`, cutting it into `windows`, and hands the frames to `sink`.
pub fn run(
    task: &Task,
    generate: &mut Generate,
    base: &GenerationRequest,
    windows: Windows,
    sink: &mut Sink,
) -> Result<(), PipelineError> {
    let frames = match task {
        Task::Create | Task::Loop => base.frames,
        Task::Extend {
            clip, new_frames, ..
        } => clip.num_frames() + new_frames,
        Task::Connect { new_frames, .. } => new_frames + 2,
    };
    let most = (MAX_SECONDS * base.fps).floor() as usize;
    if frames > most {
        return Err(TaskError::TooLong { frames, most }.into());
    }
    let prepare = |clip: &Video| -> Result<Video, PipelineError> {
        let resampled = himmel_media::resample(clip, base.fps)?;
        crate::conditioning::fit(&resampled, base.width, base.height)
    };
    match task {
        Task::Create => long_video(generate, base, windows, sink),
        Task::Loop => sink(seamless_loop(generate, base, windows)?),
        Task::Extend {
            clip,
            direction,
            new_frames,
        } => extend(
            generate,
            base,
            &prepare(clip)?,
            (*direction, *new_frames),
            windows,
            sink,
        ),
        Task::Connect {
            from,
            to,
            new_frames,
        } => sink(connect(
            generate,
            base,
            &prepare(from)?,
            &prepare(to)?,
            *new_frames,
            windows,
        )?),
    }
}

/// Why a task cannot run, found before any work starts.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TaskError {
    /// The windows do not fit together.
    #[error(
        "windows of {frames} frames cannot share {overlap} latent frames; use windows of 1 + {temporal_factor}k frames and an overlap of at least 1 latent frame that leaves room for new frames"
    )]
    Windows {
        /// Frames per window.
        frames: usize,
        /// Overlap in latent frames.
        overlap: usize,
        /// Pixel frames per latent frame after the first.
        temporal_factor: usize,
    },
    /// A clip is shorter than the overlap it must provide.
    #[error("{what} has {given} frames; it needs at least {needed} to overlap the new frames")]
    ClipTooShort {
        /// The clip, in words.
        what: &'static str,
        /// Its frames.
        given: usize,
        /// Frames needed.
        needed: usize,
    },
    /// The result would be too long.
    #[error(
        "the video would have {frames} frames; at most {most} ({MAX_SECONDS} seconds) are made"
    )]
    TooLong {
        /// Frames asked for.
        frames: usize,
        /// Most frames allowed at the request's rate.
        most: usize,
    },
    /// Nothing to generate.
    #[error("{what} must be at least {least} frames; got {given}")]
    TooFew {
        /// What was asked for, in words.
        what: &'static str,
        /// The smallest sensible value.
        least: usize,
        /// The value given.
        given: usize,
    },
}

impl Windows {
    /// Pixel frames shared with the window before, known at the start of a window.
    pub fn start_overlap(&self) -> usize {
        1 + self.temporal_factor * (self.overlap - 1)
    }

    /// Pixel frames shared with the window after, known at the end of a window.
    fn end_overlap(&self) -> usize {
        self.temporal_factor * self.overlap
    }

    /// `frames` rounded up to whole latent frames after the first: a multiple of `t`.
    pub fn whole_groups(&self, frames: usize) -> usize {
        frames.div_ceil(self.temporal_factor) * self.temporal_factor
    }

    /// Checks that windows fit together: `1 + tk` frames with room for new frames after the
    /// overlaps of both ends.
    pub fn check(&self) -> Result<(), TaskError> {
        let fits = self.temporal_factor >= 1
            && self.frames >= 1
            && (self.frames - 1).is_multiple_of(self.temporal_factor)
            && self.overlap >= 1
            && self.start_overlap() + self.end_overlap() < self.frames;
        if fits {
            Ok(())
        } else {
            Err(TaskError::Windows {
                frames: self.frames,
                overlap: self.overlap,
                temporal_factor: self.temporal_factor,
            })
        }
    }
}

/// Frames built up window by window, kept as RGB bytes; [`Timeline::flush`] hands finished
/// frames on, so long videos need not be held whole.
struct Timeline {
    rgb: Vec<u8>,
    frames: usize,
    width: usize,
    height: usize,
    fps: f64,
}

impl Timeline {
    fn new(video: &Video) -> Result<Self, PipelineError> {
        Ok(Self {
            rgb: video.to_rgb8()?,
            frames: video.num_frames(),
            width: video.width(),
            height: video.height(),
            fps: video.fps(),
        })
    }

    fn frame_bytes(&self) -> usize {
        self.width * self.height * 3
    }

    /// Frames `start..start + count` as a video.
    fn range(&self, start: usize, count: usize) -> Result<Video, PipelineError> {
        let bytes = self.frame_bytes();
        let rgb = self.rgb[start * bytes..(start + count) * bytes].to_vec();
        Ok(Video::from_rgb8(
            rgb,
            count,
            (self.width, self.height),
            self.fps,
        )?)
    }

    fn tail(&self, count: usize) -> Result<Video, PipelineError> {
        self.range(self.frames - count, count)
    }

    fn head(&self, count: usize) -> Result<Video, PipelineError> {
        self.range(0, count)
    }

    /// Appends `keep` frames of `window` after its first `overlap` frames, which show the last
    /// `overlap` frames again: the new frames are made to meet the last frame (see [`meet`]).
    fn append(&mut self, window: &Video, overlap: usize, keep: usize) -> Result<(), PipelineError> {
        let new = window.to_f32()?;
        let last = self.tail(1)?.to_f32()?;
        let gap = (last - new.narrow(0, overlap - 1, 1)?)?;
        let added = meet(&new.narrow(0, overlap, keep)?, &gap, Side::Start, 1)?;
        self.rgb.extend(rgb8(&added)?);
        self.frames += keep;
        Ok(())
    }

    /// Prepends the last `keep` of `window`'s first frames; `window` ends with `overlap`
    /// frames showing the first `overlap` frames again. The new frames are made to meet the
    /// first frame.
    fn prepend(
        &mut self,
        window: &Video,
        overlap: usize,
        keep: usize,
    ) -> Result<(), PipelineError> {
        let new = window.to_f32()?;
        let fresh = window.num_frames() - overlap;
        let first = self.head(1)?.to_f32()?;
        let gap = (first - new.narrow(0, fresh, 1)?)?;
        let added = meet(&new.narrow(0, fresh - keep, keep)?, &gap, Side::End, 1)?;
        let mut rgb = rgb8(&added)?;
        rgb.extend_from_slice(&self.rgb);
        self.rgb = rgb;
        self.frames += keep;
        Ok(())
    }

    /// Hands all but the last `hold` frames to `sink` and forgets them.
    fn flush(&mut self, sink: &mut Sink, hold: usize) -> Result<(), PipelineError> {
        let ready = self.frames.saturating_sub(hold);
        if ready == 0 {
            return Ok(());
        }
        sink(self.range(0, ready)?)?;
        self.rgb.drain(..ready * self.frame_bytes());
        self.frames -= ready;
        Ok(())
    }
}

/// Frames over which generated frames fade from a given frame's exact values to their own.
const MEETING_FADE: usize = 4;

/// Which end of a run of frames meets a given frame.
#[derive(Clone, Copy)]
enum Side {
    Start,
    End,
}

/// Makes generated `frames` `[n, H, W, 3]` meet a given frame at `side`: `gap` (the given
/// frame less the model's rendition of it, `[1, H, W, 3]`) is added in full at `distance` 0
/// from the given frame and fades out over [`MEETING_FADE`] frames. The model renders a given
/// frame through its autoencoder, a little off; this closes that step without touching the
/// given frames.
fn meet(frames: &Tensor, gap: &Tensor, side: Side, distance: usize) -> candle_core::Result<Tensor> {
    let count = frames.dims()[0];
    let weights: Vec<f32> = (0..count)
        .map(|i| {
            let from_edge = match side {
                Side::Start => i,
                Side::End => count - 1 - i,
            };
            let steps = (from_edge + distance) as f32;
            (1.0 - steps / (MEETING_FADE + 1) as f32).max(0.0)
        })
        .collect();
    let weights = Tensor::from_vec(weights, (count, 1, 1, 1), frames.device())?;
    (frames + weights.broadcast_mul(gap)?)?.clamp(0f32, 1f32)
}

/// `[n, H, W, 3]` f32 frames in 0..=1 as RGB bytes.
fn rgb8(frames: &Tensor) -> candle_core::Result<Vec<u8>> {
    (frames.clamp(0f32, 1f32)? * 255.0)?
        .round()?
        .to_dtype(DType::U8)?
        .flatten_all()?
        .to_vec1()
}

/// One window of `frames` frames from `base` with `known` clips and seed `base.seed + index`.
fn window(
    generate: &mut Generate,
    base: &GenerationRequest,
    frames: usize,
    known: Vec<KnownClip>,
    index: usize,
) -> Result<Video, PipelineError> {
    generate(GenerationRequest {
        frames,
        known,
        seed: base.seed.wrapping_add(index as u64),
        source: None,
        initial_latents: None,
        ..base.clone()
    })
}

/// The first `count` frames of `video`.
fn first_frames(video: &Video, count: usize) -> Result<Video, PipelineError> {
    Ok(Video::new(
        video.frames().narrow(0, 0, count)?,
        video.fps(),
    )?)
}

/// The last `count` frames of `video`.
fn last_frames(video: &Video, count: usize) -> Result<Video, PipelineError> {
    let start = video.num_frames() - count;
    Ok(Video::new(
        video.frames().narrow(0, start, count)?,
        video.fps(),
    )?)
}

/// Extends `clip` by `new_frames` frames in `direction` under `base`'s prompt and settings
/// (its size must be the clip's; its frame count is ignored) and hands the clip and the new
/// frames to `sink` (forwards, window by window).
pub fn extend(
    generate: &mut Generate,
    base: &GenerationRequest,
    clip: &Video,
    (direction, new_frames): (Direction, usize),
    windows: Windows,
    sink: &mut Sink,
) -> Result<(), PipelineError> {
    windows.check()?;
    let overlap = match direction {
        Direction::Forward => windows.start_overlap(),
        Direction::Backward => windows.end_overlap(),
    };
    if clip.num_frames() < overlap {
        return Err(TaskError::ClipTooShort {
            what: "the clip to extend",
            given: clip.num_frames(),
            needed: overlap,
        }
        .into());
    }
    if new_frames == 0 {
        return Err(TaskError::TooFew {
            what: "new frames",
            least: 1,
            given: 0,
        }
        .into());
    }
    let mut timeline = Timeline::new(clip)?;
    let mut remaining = new_frames;
    let mut index = 0;
    while remaining > 0 {
        let fresh = match direction {
            // Windows of 1 + tk frames: overlap 1 + t(o - 1) leaves multiples of t.
            Direction::Forward => windows
                .whole_groups(remaining)
                .min(windows.frames - overlap),
            // Overlap t * o leaves 1 + tj frames.
            Direction::Backward => (1 + windows.whole_groups(remaining.saturating_sub(1)))
                .min(windows.frames - overlap),
        };
        let keep = fresh.min(remaining);
        match direction {
            Direction::Forward => {
                let known = KnownClip {
                    video: timeline.tail(overlap)?,
                    anchor: Anchor::Start,
                };
                let video = window(generate, base, overlap + fresh, vec![known], index)?;
                timeline.append(&video, overlap, keep)?;
                timeline.flush(sink, overlap)?;
            }
            Direction::Backward => {
                let known = KnownClip {
                    video: timeline.head(overlap)?,
                    anchor: Anchor::End,
                };
                let video = window(generate, base, overlap + fresh, vec![known], index)?;
                timeline.prepend(&video, overlap, keep)?;
            }
        }
        remaining -= keep;
        index += 1;
    }
    timeline.flush(sink, 0)
}

/// Generates `base` (which may know its first frames) at any length: the first window as
/// asked, then extensions forwards, handed to `sink` window by window.
pub fn long_video(
    generate: &mut Generate,
    base: &GenerationRequest,
    windows: Windows,
    sink: &mut Sink,
) -> Result<(), PipelineError> {
    if base.frames <= windows.frames {
        return sink(generate(base.clone())?);
    }
    windows.check()?;
    let first = generate(GenerationRequest {
        frames: windows.frames,
        ..base.clone()
    })?;
    let rest = GenerationRequest {
        seed: base.seed.wrapping_add(1),
        ..base.clone()
    };
    extend(
        generate,
        &rest,
        &first,
        (Direction::Forward, base.frames - windows.frames),
        windows,
        sink,
    )
}

/// A transition of `new_frames` frames (rounded up to whole latent frames) from the last frame of
/// `from` to the first frame of `to`; the result starts with the one and ends with the other.
pub fn connect(
    generate: &mut Generate,
    base: &GenerationRequest,
    from: &Video,
    to: &Video,
    new_frames: usize,
    windows: Windows,
) -> Result<Video, PipelineError> {
    let bridge = bridge(generate, base, from, to, new_frames, windows)?;
    let start = windows.start_overlap();
    let new_frames = bridge.num_frames() - start - windows.end_overlap();
    // From the last frame of `from` to the first of `to`, as the windows show them ...
    let frames = bridge.to_f32()?.narrow(0, start - 1, new_frames + 2)?;
    // ... made exact at both ends.
    let from_last = from.to_f32()?.narrow(0, from.num_frames() - 1, 1)?;
    let to_first = to.to_f32()?.narrow(0, 0, 1)?;
    let frames = meet(
        &frames,
        &(from_last - frames.narrow(0, 0, 1)?)?,
        Side::Start,
        0,
    )?;
    let frames = meet(
        &frames,
        &(to_first - frames.narrow(0, new_frames + 1, 1)?)?,
        Side::End,
        0,
    )?;
    Ok(Video::new(frames, bridge.fps())?)
}

/// The frames of a connection: the last `start overlap` frames of `from` (cross-faded into
/// the new ones), the new frames, and the first `end overlap` frames of `to` as the last
/// window shows them.
fn bridge(
    generate: &mut Generate,
    base: &GenerationRequest,
    from: &Video,
    to: &Video,
    new_frames: usize,
    windows: Windows,
) -> Result<Video, PipelineError> {
    windows.check()?;
    let (start, end) = (windows.start_overlap(), windows.end_overlap());
    for (what, clip, needed) in [
        ("the first clip", from, start),
        ("the second clip", to, end),
    ] {
        if clip.num_frames() < needed {
            return Err(TaskError::ClipTooShort {
                what,
                given: clip.num_frames(),
                needed,
            }
            .into());
        }
    }
    let new_frames = windows.whole_groups(new_frames.max(1));
    let mut timeline = Timeline::new(&last_frames(from, start)?)?;
    let mut remaining = new_frames;
    let mut index = 0;
    // Extend towards the second clip until one last window holds the rest and both ends.
    while start + remaining + end > windows.frames {
        // Both multiples of t; what is left still fills at least the room of the last window.
        let fresh = (windows.frames - start).min(start + remaining + end - windows.frames);
        let known = KnownClip {
            video: timeline.tail(start)?,
            anchor: Anchor::Start,
        };
        let video = window(generate, base, start + fresh, vec![known], index)?;
        timeline.append(&video, start, fresh)?;
        remaining -= fresh;
        index += 1;
    }
    let known = vec![
        KnownClip {
            video: timeline.tail(start)?,
            anchor: Anchor::Start,
        },
        KnownClip {
            video: first_frames(to, end)?,
            anchor: Anchor::End,
        },
    ];
    let video = window(generate, base, start + remaining + end, known, index)?;
    timeline.append(&video, start, remaining + end)?;
    timeline.range(
        timeline.frames - (start + new_frames + end),
        start + new_frames + end,
    )
}

/// A loop for a request of `base.frames` frames: a clip whose last frame flows into its first,
/// so the asked-for frame count closes the circle and `base.frames - 1` frames are returned
/// (played in a loop, frame `base.frames` is frame 0 again). Made as a clip of about half
/// the length, then a transition from its end back to its second frame (the first is left
/// out, so that the transition arrives where the clip's motion is under way).
pub fn seamless_loop(
    generate: &mut Generate,
    base: &GenerationRequest,
    windows: Windows,
) -> Result<Video, PipelineError> {
    windows.check()?;
    // The clip must provide both overlaps of the transition (the end one after its first
    // frame); the transition takes a latent frame's t frames or more.
    let group = windows.temporal_factor;
    let overlap = windows.start_overlap().max(windows.end_overlap() + 1);
    let least_clip = 1 + windows.whole_groups(overlap - 1);
    if base.frames < least_clip + group {
        return Err(TaskError::TooFew {
            what: "a loop",
            least: least_clip + group,
            given: base.frames,
        }
        .into());
    }
    // About half the frames for the clip (1 + ta), the rest for the transition.
    let clip_frames = (1 + group * ((base.frames - 1) / (2 * group))).max(least_clip);
    let transition = base.frames - clip_frames;
    let first = GenerationRequest {
        frames: clip_frames,
        ..base.clone()
    };
    let clip = collect(|sink| long_video(generate, &first, windows, sink))?;
    let rest = GenerationRequest {
        seed: base.seed.wrapping_add(1000),
        ..base.clone()
    };
    let after_first = last_frames(&clip, clip.num_frames() - 1)?;
    let bridge = bridge(generate, &rest, &clip, &after_first, transition, windows)?;
    let start = windows.start_overlap();
    let bridge = bridge.to_f32()?;
    // The transition, made to meet the clip's second frame, which follows it in the loop.
    let arrival = bridge.narrow(0, start + transition, 1)?;
    let second = after_first.to_f32()?.narrow(0, 0, 1)?;
    let between = meet(
        &bridge.narrow(0, start, transition)?,
        &(second - arrival)?,
        Side::End,
        1,
    )?;
    let frames = Tensor::cat(&[after_first.to_f32()?, between], 0)?;
    Ok(Video::new(frames, clip.fps())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::ModelLimits;

    const SIZE: (usize, usize) = (2, 2);
    const WINDOWS: Windows = Windows {
        frames: 17,
        overlap: 2,
        temporal_factor: 4,
    };

    /// A clip whose frame `i` is a flat grey of `first + i`.
    fn numbered(first: u8, frames: usize) -> Video {
        let rgb = (0..frames)
            .flat_map(|i| [first + i as u8; SIZE.0 * SIZE.1 * 3])
            .collect();
        Video::from_rgb8(rgb, frames, SIZE, 16.0).unwrap()
    }

    fn values(video: &Video) -> Vec<u8> {
        let rgb = video.to_rgb8().unwrap();
        rgb.chunks(SIZE.0 * SIZE.1 * 3).map(|f| f[0]).collect()
    }

    /// A model of `temporal_factor` that checks each request as a model does, shows its known
    /// clips exactly and numbers its other frames from `100 + 10 * (seed mod 10)`; counts its
    /// calls.
    fn fake(
        calls: &mut usize,
        temporal_factor: usize,
    ) -> impl FnMut(GenerationRequest) -> Result<Video, PipelineError> {
        let limits = ModelLimits {
            temporal_factor,
            size_multiple: 1,
            latent_channels: 1,
            spatial_factor: 1,
            max_side: 64,
            max_frames: 1601,
            high_noise_expert: false,
            skip_guidance_layers: None,
        };
        move |request| {
            let request = limits.validate(request)?.get().clone();
            *calls += 1;
            let mut frames = values(&numbered(
                100 + 10 * (request.seed % 10) as u8,
                request.frames,
            ));
            for clip in &request.known {
                let shown = values(&clip.video);
                let count = clip.output_frames(temporal_factor);
                match clip.anchor {
                    Anchor::Start => frames[..count].copy_from_slice(&shown[..count]),
                    Anchor::At(_) => unreachable!("tasks place clips at the ends"),
                    Anchor::End => {
                        let at = request.frames - count;
                        frames[at..].copy_from_slice(&shown[shown.len() - count..]);
                    }
                }
            }
            let rgb = frames
                .iter()
                .flat_map(|&v| [v; SIZE.0 * SIZE.1 * 3])
                .collect();
            Ok(Video::from_rgb8(rgb, request.frames, SIZE, 16.0).unwrap())
        }
    }

    fn base() -> GenerationRequest {
        GenerationRequest::new("a ball", (SIZE.0, SIZE.1, 17), 16.0)
    }

    #[test]
    fn extending_forwards_keeps_the_clip_and_adds_exactly_the_new_frames() {
        let mut calls = 0;
        let clip = numbered(0, 9);
        let video = collect(|sink| {
            let mut generate = fake(&mut calls, 4);
            let task = (Direction::Forward, 30);
            extend(&mut generate, &base(), &clip, task, WINDOWS, sink)
        })
        .unwrap();
        assert_eq!(video.num_frames(), 39);
        // 12 new frames a window.
        assert_eq!(calls, 3);
        let values = values(&video);
        assert_eq!(&values[..9], &[0, 1, 2, 3, 4, 5, 6, 7, 8]);
        // The first window's new frames follow its 5 known frames.
        assert_eq!(&values[9..11], &[105, 106]);
    }

    #[test]
    fn extending_backwards_prepends_and_keeps_the_clip() {
        let mut calls = 0;
        let clip = numbered(0, 9);
        let video = collect(|sink| {
            let mut generate = fake(&mut calls, 4);
            let task = (Direction::Backward, 10);
            extend(&mut generate, &base(), &clip, task, WINDOWS, sink)
        })
        .unwrap();
        assert_eq!(video.num_frames(), 19);
        assert_eq!(calls, 2);
        let values = values(&video);
        assert_eq!(&values[10..], &[0, 1, 2, 3, 4, 5, 6, 7, 8]);
        // The first window (9 new frames before 8 known) gives the 9 frames before the clip.
        assert_eq!(
            &values[1..10],
            &[100, 101, 102, 103, 104, 105, 106, 107, 108]
        );
    }

    #[test]
    fn a_connection_runs_from_the_last_frame_to_the_first() {
        let mut calls = 0;
        let (from, to) = (numbered(0, 9), numbered(50, 9));
        let video = connect(&mut fake(&mut calls, 4), &base(), &from, &to, 8, WINDOWS).unwrap();
        let values = values(&video);
        assert_eq!(values.len(), 10);
        assert_eq!((values[0], values[9]), (8, 50));
        assert_eq!(calls, 2);
    }

    #[test]
    fn a_loop_has_the_asked_length_and_returns_to_its_start() {
        let mut calls = 0;
        let video = seamless_loop(&mut fake(&mut calls, 4), &base(), WINDOWS).unwrap();
        assert_eq!(video.num_frames(), 16);
        let values = values(&video);
        // A 9-frame clip less its first frame, then 8 transition frames back to its second.
        assert_eq!(&values[..8], &[101, 102, 103, 104, 105, 106, 107, 108]);
        assert_eq!(calls, 3);
    }

    #[test]
    fn long_videos_are_one_window_then_extensions() {
        let mut calls = 0;
        let request = GenerationRequest {
            frames: 61,
            ..base()
        };
        let mut parts = Vec::new();
        long_video(&mut fake(&mut calls, 4), &request, WINDOWS, &mut |part| {
            parts.push(part.num_frames());
            Ok(())
        })
        .unwrap();
        // 17 + 12 + 12 + 12 + 8 frames: the first two windows less the overlap held back for
        // the next blend, then each window's new frames as they come, then the held frames.
        assert_eq!(parts, [24, 12, 12, 8, 5]);
        assert_eq!(calls, 5);
    }

    #[test]
    fn impossible_tasks_fail_before_any_work() {
        let mut calls = 0;
        let short = numbered(0, 3);
        let error = collect(|sink| {
            let mut generate = fake(&mut calls, 4);
            let task = (Direction::Forward, 8);
            extend(&mut generate, &base(), &short, task, WINDOWS, sink)
        })
        .unwrap_err();
        assert!(error.to_string().contains("has 3 frames"), "{error}");
        let bad = Windows {
            frames: 16,
            ..WINDOWS
        };
        let request = GenerationRequest {
            frames: 61,
            ..base()
        };
        let error =
            collect(|sink| long_video(&mut fake(&mut calls, 4), &request, bad, sink)).unwrap_err();
        assert!(error.to_string().contains("1 + 4k"), "{error}");
        assert_eq!(calls, 0);
    }

    #[test]
    fn windows_follow_a_model_that_halves_time_once() {
        // Latent frames of two frames: 9-frame windows share 3 frames at a start, 4 at an end.
        let windows = Windows {
            frames: 9,
            overlap: 2,
            temporal_factor: 2,
        };
        let mut calls = 0;
        let video = collect(|sink| {
            let mut generate = fake(&mut calls, 2);
            let task = (Direction::Forward, 10);
            extend(&mut generate, &base(), &numbered(0, 5), task, windows, sink)
        })
        .unwrap();
        assert_eq!(video.num_frames(), 15);
        assert_eq!(calls, 2);
        assert_eq!(&values(&video)[..7], &[0, 1, 2, 3, 4, 103, 104]);
        let mut calls = 0;
        let looped = seamless_loop(&mut fake(&mut calls, 2), &base(), windows).unwrap();
        assert_eq!(looped.num_frames(), 16);
        assert_eq!(
            &values(&looped)[..8],
            &[101, 102, 103, 104, 105, 106, 107, 108]
        );
        assert_eq!(calls, 3);
        // The same windows under a model of four frames a latent frame leave no new frames.
        let four = Windows {
            temporal_factor: 4,
            ..windows
        };
        let error = seamless_loop(&mut fake(&mut calls, 4), &base(), four).unwrap_err();
        assert!(error.to_string().contains("1 + 4k"), "{error}");
    }
}
