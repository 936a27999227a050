//! The scorer: detects objects in every frame of any video (rendered or generated), links them
//! into tracks, and scores the clip against a spec: colour, count and shape agreement, motion
//! direction, physical plausibility of each trajectory (residual against a fitted
//! ballistic-with-bounce, constant-velocity or circular model), temporal consistency (objects
//! that vanish, appear, or change colour, shape or size without cause) and whether the backdrop
//! is the one asked for.

use serde::{Deserialize, Serialize};

use himmel_core::{Video, VideoError};

use crate::camera::View;
use crate::detect::{Detection, detect};
use crate::fault::{Fault, FaultKind};
use crate::physics::GRAVITY;
use crate::render::render_backdrop;
use crate::spec::{ObjectSpec, SceneSpec, clashes_with};
use crate::vocab::{Background, Color, Motion, Shape};

/// Frames a track may go unseen (hidden behind something) and still continue.
const MAX_GAP: usize = 8;
/// A track counts when seen in at least this share of the frames (and 3 frames).
const SIGNIFICANT_SHARE: f32 = 0.15;
/// A trajectory is plausible when its residual is below this (world units) plus half a pixel.
const PLAUSIBLE_RESIDUAL: f64 = 0.07;
/// An airborne stretch that fits free fall worse than this is split at its sharpest kink.
const SPLIT_RESIDUAL: f64 = 0.04;

/// Scores of one clip, each in 0..=1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Share of the spec's objects seen in their colour (objects and seen tracks are paired
    /// by agreement of colour, shape and motion).
    pub color: f64,
    /// 1 minus the relative difference between objects seen and asked for.
    pub count: f64,
    /// Share of found objects whose shape matches.
    pub shape: f64,
    /// Share of found objects moving as asked (direction, falling, resting, orbit sense); all
    /// of them in a still.
    pub motion: f64,
    /// Share of found objects whose trajectory fits its physical model.
    pub physics: f64,
    /// 1 minus faults per object (vanishing, appearing, colour, shape or size changes).
    pub consistency: f64,
    /// 1 when the clip is nearer the spec's backdrop than any other backdrop (every kind, and
    /// plain in every colour), else 0.
    pub backdrop: f64,
}

/// What the scorer saw of one object of the spec.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObjectReport {
    /// The object asked for, in words.
    pub expected: String,
    /// The shape asked for.
    pub asked_shape: Shape,
    /// Whether a seen object was paired with it.
    pub found: bool,
    /// The colour of the object paired with it.
    pub observed_color: Option<Color>,
    /// The shape most often seen.
    pub observed_shape: Option<Shape>,
    /// Whether it moved as asked.
    pub motion_ok: bool,
    /// Physics residual in world units, when enough of the trajectory was seen.
    pub residual: Option<f64>,
    /// Gravity estimated from its flight (units/s²; the world's is 9.81), when it flew long
    /// enough to tell.
    pub gravity: Option<f64>,
}

/// The full report on one clip.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The six scores.
    pub scores: Scores,
    /// Mean physics residual over found objects, world units.
    pub physics_residual: f64,
    /// Temporal consistency faults (saved in words).
    pub faults: Vec<Fault>,
    /// Per-object findings, in spec order.
    pub objects: Vec<ObjectReport>,
}

impl Report {
    /// Whether the clip shows what was asked: every object of the spec seen in its colour and
    /// moving as asked, on the asked backdrop, with no consistency fault. (A clip that draws
    /// no objects has no faults, but is not as asked.)
    pub fn as_asked(&self) -> bool {
        self.scores.as_asked(self.faults.len())
    }
}

impl Scores {
    /// Whether a clip of these scores with `faults` consistency faults shows what was asked
    /// (see [`Report::as_asked`]).
    pub fn as_asked(&self, faults: usize) -> bool {
        self.color == 1.0 && self.motion == 1.0 && self.backdrop == 1.0 && faults == 0
    }
}

/// One object followed through the clip.
#[derive(Debug, Clone)]
struct Track {
    color: Color,
    seen: Vec<Option<Detection>>,
}

impl Track {
    fn observations(&self) -> impl Iterator<Item = (usize, &Detection)> {
        self.seen
            .iter()
            .enumerate()
            .filter_map(|(frame, d)| d.as_ref().map(|d| (frame, d)))
    }

    fn last(&self) -> Option<(usize, &Detection)> {
        self.observations().last()
    }

    fn first(&self) -> Option<(usize, &Detection)> {
        self.observations().next()
    }

    fn len(&self) -> usize {
        self.seen.iter().flatten().count()
    }
}

/// Links per-frame detections into tracks by colour and proximity.
fn link(frames: &[Vec<Detection>], width: usize) -> Vec<Track> {
    let step = 0.25 * width as f32;
    let mut tracks: Vec<Track> = Vec::new();
    for (frame, detections) in frames.iter().enumerate() {
        let mut taken = vec![false; tracks.len()];
        let mut order: Vec<&Detection> = detections.iter().collect();
        order.sort_by(|a, b| b.area.total_cmp(&a.area));
        for detection in order {
            let candidate = tracks
                .iter()
                .enumerate()
                .filter(|(i, t)| !taken[*i] && t.color == detection.color)
                .filter_map(|(i, t)| {
                    let (last_frame, last) = t.last()?;
                    let gap = frame - last_frame;
                    let distance = (last.x - detection.x).hypot(last.y - detection.y);
                    (gap <= MAX_GAP && distance <= step * gap as f32 + 2.0).then_some((i, distance))
                })
                .min_by(|a, b| a.1.total_cmp(&b.1));
            match candidate {
                Some((index, _)) => {
                    taken[index] = true;
                    tracks[index].seen[frame] = Some(*detection);
                }
                None => {
                    let mut seen = vec![None; frames.len()];
                    seen[frame] = Some(*detection);
                    tracks.push(Track {
                        color: detection.color,
                        seen,
                    });
                    taken.push(true);
                }
            }
        }
    }
    tracks
}

/// Joins tracks of one colour that never coexist: one object lost for a while (hidden, or
/// briefly misread), not two objects.
fn merge_fragments(mut tracks: Vec<Track>) -> Vec<Track> {
    tracks.sort_by_key(|t| t.first().map_or(usize::MAX, |(f, _)| f));
    let mut merged: Vec<Track> = Vec::new();
    for track in tracks {
        let Some((start, _)) = track.first() else {
            continue;
        };
        let earlier = merged
            .iter_mut()
            .filter(|m| m.color == track.color && m.last().is_some_and(|(end, _)| end < start))
            .max_by_key(|m| m.len());
        match earlier {
            Some(target) => {
                for (frame, detection) in track.seen.into_iter().enumerate() {
                    if detection.is_some() {
                        target.seen[frame] = detection;
                    }
                }
            }
            None => merged.push(track),
        }
    }
    merged
}

/// The colours a detector should look for on the spec's backdrop: those that stand out from it,
/// and those the spec asks for even where they do not (a generated backdrop that strays from
/// the rendered one must not turn into objects of its own colour).
fn visible_colors(spec: &SceneSpec) -> Vec<Color> {
    Color::ALL
        .into_iter()
        .filter(|c| {
            !clashes_with(*c, spec.background) || spec.objects.iter().any(|o| o.color == *c)
        })
        .collect()
}

fn describe(object: &ObjectSpec) -> String {
    let direction = object
        .direction
        .filter(|_| object.motion.has_direction())
        .map(|d| format!(" {d:?}"))
        .unwrap_or_default();
    format!(
        "{:?} {:?} {:?}{direction}",
        object.color, object.shape, object.motion
    )
    .to_lowercase()
}

/// Scores `video` against `spec`. A still (a clip of one or two frames) shows no motion: its
/// objects count as moving as asked, and colour, shape, count and backdrop judge it.
pub fn score(video: &Video, spec: &SceneSpec) -> Result<Report, VideoError> {
    let (width, height, count) = (video.width(), video.height(), video.num_frames());
    let rgb = video.to_rgb8()?;
    let colors = visible_colors(spec);
    let frame_size = width * height * 3;
    let views: Vec<View> = (0..count)
        .map(|f| View::at(spec.camera, (f as f64 / video.fps()) as f32, width, height))
        .collect();
    let mut backdrop = Backdrop::new(spec.background);
    let frames: Vec<Vec<Detection>> = rgb
        .chunks_exact(frame_size)
        .zip(&views)
        .map(|(frame, view)| detect(frame, backdrop.seen_through(view), width, height, &colors))
        .collect();
    let tracks = merge_fragments(link(&frames, width));
    // A still (or two frames) shows no motion: its objects are judged by colour and shape.
    let still = count < 3;
    let significant: Vec<&Track> = tracks
        .iter()
        .filter(|t| t.len() >= 3.min(count) && t.len() as f32 >= SIGNIFICANT_SHARE * count as f32)
        .collect();

    // What each track shows, judged against each spec object.
    let tolerance = PLAUSIBLE_RESIDUAL + 0.5 * f64::from(views[0].units_per_pixel);
    let observed: Vec<(Option<Shape>, Path, Path)> = significant
        .iter()
        .map(|track| {
            let shape = majority_shape(
                track
                    .observations()
                    .filter(|(_, d)| still || !d.at_border)
                    .map(|(_, d)| d.shape),
            );
            (
                shape,
                world_path(track, &views, video.fps(), true),
                world_path(track, &views, video.fps(), false),
            )
        })
        .collect();
    let judge = |object: &ObjectSpec, track: usize| {
        let (shape, clean, all) = &observed[track];
        // An object mostly cut off by the frame's edge still shows which way it goes.
        let moves = still || motion_matches(object, if clean.len() >= 3 { clean } else { all });
        let color = significant[track].color == object.color;
        (color, *shape == Some(object.shape), moves)
    };
    // Objects and tracks are paired by how many of colour, shape and motion agree, so a
    // swapped colour shows as a colour fault, not a shape fault.
    let mut pairs: Vec<(usize, usize, usize)> = Vec::new();
    for (object_index, object) in spec.objects.iter().enumerate() {
        for track in 0..significant.len() {
            let (color, shape, moves) = judge(object, track);
            let misses = usize::from(!color) + usize::from(!shape) + usize::from(!moves);
            pairs.push((misses, object_index, track));
        }
    }
    pairs.sort_by_key(|&(misses, object, track)| {
        (misses, usize::MAX - significant[track].len(), object)
    });
    let mut match_of = vec![None; spec.objects.len()];
    let mut taken = vec![false; significant.len()];
    for (_, object, track) in pairs {
        if match_of[object].is_none() && !taken[track] {
            match_of[object] = Some(track);
            taken[track] = true;
        }
    }
    let (mut color_ok, mut shape_ok, mut motion_ok, mut physics_ok, mut found) = (0, 0, 0, 0, 0);
    let mut residuals = Vec::new();
    let mut objects = Vec::new();
    for (object, matched) in spec.objects.iter().zip(&match_of) {
        let Some(track) = *matched else {
            objects.push(ObjectReport {
                expected: describe(object),
                asked_shape: object.shape,
                found: false,
                observed_color: None,
                observed_shape: None,
                motion_ok: false,
                residual: None,
                gravity: None,
            });
            continue;
        };
        let (color, shape, moves) = judge(object, track);
        let fit = physics_fit(object.motion, &observed[track].1);
        let residual = fit.map(|f| f.residual);
        found += 1;
        color_ok += usize::from(color);
        shape_ok += usize::from(shape);
        motion_ok += usize::from(moves);
        physics_ok += usize::from(fit.is_none_or(|f| f.plausible(tolerance)));
        residuals.extend(residual);
        objects.push(ObjectReport {
            expected: describe(object),
            asked_shape: object.shape,
            found: true,
            observed_color: Some(significant[track].color),
            observed_shape: observed[track].0,
            motion_ok: moves,
            residual,
            gravity: fit.and_then(|f| f.gravity),
        });
    }
    let faults = consistency_faults(&significant, count);
    let share = |good: usize, of: usize| {
        if of == 0 {
            1.0
        } else {
            good as f64 / of as f64
        }
    };
    let wanted = spec.objects.len();
    let seen = significant.len();
    let scores = Scores {
        color: share(color_ok, wanted),
        count: 1.0 - wanted.abs_diff(seen) as f64 / wanted.max(seen).max(1) as f64,
        shape: share(shape_ok, found),
        motion: share(motion_ok, found),
        physics: share(physics_ok, found),
        consistency: (1.0 - faults.len() as f64 / wanted.max(1) as f64).max(0.0),
        backdrop: f64::from(u8::from(nearest_backdrop(&rgb, &views) == spec.background)),
    };
    let physics_residual = if residuals.is_empty() {
        0.0
    } else {
        residuals.iter().sum::<f64>() / residuals.len() as f64
    };
    Ok(Report {
        scores,
        physics_residual,
        faults,
        objects,
    })
}

/// A backdrop as the frames see it, drawn again only when the camera has moved.
struct Backdrop {
    background: Background,
    drawn: Option<(View, Vec<u8>)>,
}

impl Backdrop {
    fn new(background: Background) -> Self {
        Self {
            background,
            drawn: None,
        }
    }

    /// The backdrop's RGB pixels through `view`.
    fn seen_through(&mut self, view: &View) -> &[u8] {
        if self.drawn.as_ref().is_none_or(|(seen, _)| seen != view) {
            self.drawn = Some((*view, render_backdrop(self.background, view)));
        }
        self.drawn
            .as_ref()
            .map_or(&[], |(_, pixels)| pixels.as_slice())
    }
}

/// The backdrop `rgb` (all frames, seen through `views`) differs least from, by mean absolute
/// difference: each kind, and plain in each colour. Objects differ from every backdrop alike.
fn nearest_backdrop(rgb: &[u8], views: &[View]) -> Background {
    let frame_size = rgb.len() / views.len().max(1);
    let candidates = Background::KINDS
        .into_iter()
        .filter(|b| !matches!(b, Background::Plain(_)))
        .chain(Color::ALL.into_iter().map(Background::Plain));
    let distance = |background: Background| {
        let mut backdrop = Backdrop::new(background);
        let mut total = 0u64;
        for (frame, view) in rgb.chunks_exact(frame_size).zip(views) {
            let behind = backdrop.seen_through(view);
            total += frame
                .iter()
                .zip(behind)
                .map(|(a, b)| u64::from(a.abs_diff(*b)))
                .sum::<u64>();
        }
        total
    };
    candidates
        .min_by_key(|b| distance(*b))
        .expect("there are backdrops to compare with")
}

fn majority_shape(shapes: impl Iterator<Item = Shape>) -> Option<Shape> {
    let mut counts = [0usize; 6];
    for shape in shapes {
        counts[Shape::ALL.iter().position(|s| *s == shape).unwrap_or(0)] += 1;
    }
    let (index, &best) = counts.iter().enumerate().max_by_key(|(_, c)| **c)?;
    (best > 0).then_some(Shape::ALL[index])
}

/// A trajectory point in world units: time, x, y; only clean observations (not cut off by
/// the frame edge and not shrunk by something in front).
type Path = Vec<(f64, f64, f64)>;

fn world_path(track: &Track, views: &[View], fps: f64, clean: bool) -> Path {
    let mut areas: Vec<f32> = track
        .observations()
        .filter(|(_, d)| !d.at_border)
        .map(|(_, d)| d.area)
        .collect();
    areas.sort_by(f32::total_cmp);
    let typical = areas.get(areas.len() / 2).copied().unwrap_or(0.0);
    track
        .observations()
        .filter(|(_, d)| !clean || (!d.at_border && d.area >= 0.75 * typical))
        .map(|(frame, d)| {
            let (x, y) = views[frame].to_world(d.x, d.y);
            (frame as f64 / fps, f64::from(x), f64::from(y))
        })
        .collect()
}

/// Whether the path moves as `object` asks. Judged on its start, before anything can knock it
/// about; resting and spinning objects need only be still for a moment.
fn motion_matches(object: &ObjectSpec, path: &Path) -> bool {
    let Some(first) = path.first() else {
        return false;
    };
    let early = &path[..path.len().div_ceil(3).max(2).min(path.len())];
    let early_dx = early.last().map_or(0.0, |p| p.1 - first.1);
    match object.motion {
        Motion::Rest | Motion::Spin => path
            .windows(3)
            .any(|w| (w[2].1 - w[0].1).hypot(w[2].2 - w[0].2) < 0.05),
        Motion::Fall => {
            let mut peak = f64::NEG_INFINITY;
            path.iter().any(|p| {
                peak = peak.max(p.2);
                p.2 < peak - 0.2
            })
        }
        Motion::Orbit => {
            let (cx, cy) = path
                .iter()
                .fold((0.0, 0.0), |(sx, sy), p| (sx + p.1, sy + p.2));
            let (cx, cy) = (cx / path.len() as f64, cy / path.len() as f64);
            let turn: f64 = path
                .windows(2)
                .map(|w| (w[0].1 - cx) * (w[1].2 - cy) - (w[0].2 - cy) * (w[1].1 - cx))
                .sum();
            match object.direction {
                Some(direction) => turn.abs() > 1e-3 && (turn < 0.0) == (direction.sign() > 0.0),
                None => turn.abs() > 1e-3,
            }
        }
        Motion::Bounce | Motion::Roll | Motion::Slide | Motion::Throw | Motion::Drift => {
            match object.direction {
                Some(direction) => early_dx * f64::from(direction.sign()) > 0.03,
                None => early_dx.abs() > 0.03,
            }
        }
    }
}

/// How well a path fits its physical model.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Fit {
    /// RMS distance (world units) between the path and the model.
    residual: f64,
    /// Gravity estimated from the airborne stretches (units/s²), when there were enough.
    gravity: Option<f64>,
}

impl Fit {
    /// Whether the residual is within `tolerance` and any estimated gravity near the world's.
    fn plausible(&self, tolerance: f64) -> bool {
        self.residual <= tolerance
            && self
                .gravity
                .is_none_or(|g| (0.5..=2.0).contains(&(g / GRAVITY)))
    }
}

/// Fits the path to the physical model of `motion`; `None` when too little of it was seen.
fn physics_fit(motion: Motion, path: &Path) -> Option<Fit> {
    if path.len() < 4 {
        return None;
    }
    let (squares, gravity): (Vec<f64>, Option<f64>) = match motion {
        Motion::Orbit => (circle_residuals(path), None),
        Motion::Drift => {
            let xs = line_residuals(&path.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>(), 0.0);
            let mean_y = path.iter().map(|p| p.2).sum::<f64>() / path.len() as f64;
            (
                xs.into_iter()
                    .chain(path.iter().map(|p| (p.2 - mean_y).powi(2)))
                    .collect(),
                None,
            )
        }
        _ => ballistic_fit(path),
    };
    let residual = (squares.iter().sum::<f64>() / squares.len().max(1) as f64).sqrt();
    Some(Fit { residual, gravity })
}

/// Gravity from airborne pieces: one curvature shared by all, each piece with its own start
/// height and speed; `None` unless the pieces span enough time to tell.
fn pooled_gravity(pieces: &[&[(f64, f64, f64)]]) -> Option<f64> {
    let (mut cross, mut spread) = (0.0, 0.0);
    // Interior points only: a piece's end frames may lie on the far side of a bounce.
    for piece in pieces
        .iter()
        .filter(|p| p.len() >= 6)
        .map(|p| &p[1..p.len() - 1])
    {
        let heights: Vec<(f64, f64)> = piece.iter().map(|p| (p.0, p.2)).collect();
        let squares: Vec<(f64, f64)> = piece.iter().map(|p| (p.0, p.0 * p.0)).collect();
        let detrended_height = detrend(&heights);
        let detrended_square = detrend(&squares);
        cross += detrended_height
            .iter()
            .zip(&detrended_square)
            .map(|(a, b)| a * b)
            .sum::<f64>();
        spread += detrended_square.iter().map(|b| b * b).sum::<f64>();
    }
    // Below this the pieces are too short for the curvature to show.
    (spread > 2e-4).then(|| -2.0 * cross / spread)
}

/// Residuals of `(t, v)` after removing its least-squares line.
fn detrend(points: &[(f64, f64)]) -> Vec<f64> {
    let n = points.len() as f64;
    let (mt, mv) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), &(t, v)| (a + t / n, b + v / n));
    let (cov, var) = points.iter().fold((0.0, 0.0), |(c, w), &(t, v)| {
        (c + (t - mt) * (v - mv), w + (t - mt).powi(2))
    });
    let slope = if var > 0.0 { cov / var } else { 0.0 };
    points
        .iter()
        .map(|&(t, v)| v - mv - slope * (t - mt))
        .collect()
}

/// Squared residuals of `(t, v)` against `v = a + b t - curvature t²`, fitted by least squares.
fn line_residuals(points: &[(f64, f64)], curvature: f64) -> Vec<f64> {
    let n = points.len() as f64;
    let adjusted: Vec<(f64, f64)> = points
        .iter()
        .map(|&(t, v)| (t, v + curvature * t * t))
        .collect();
    let (st, sv) = adjusted
        .iter()
        .fold((0.0, 0.0), |(a, b), &(t, v)| (a + t, b + v));
    let (mt, mv) = (st / n, sv / n);
    let (cov, var) = adjusted.iter().fold((0.0, 0.0), |(c, w), &(t, v)| {
        (c + (t - mt) * (v - mv), w + (t - mt).powi(2))
    });
    let slope = if var > 0.0 { cov / var } else { 0.0 };
    adjusted
        .iter()
        .map(|&(t, v)| (v - (mv + slope * (t - mt))).powi(2))
        .collect()
}

/// Height under gravity between ground contacts, constant on the ground; x smooth (a
/// quadratic per airborne run, as friction and collisions allow).
fn ballistic_fit(path: &Path) -> (Vec<f64>, Option<f64>) {
    let ground = path.iter().map(|p| p.2).fold(f64::INFINITY, f64::min);
    let grounded: Vec<bool> = path.iter().map(|p| p.2 - ground < 0.05).collect();
    let mut squares = Vec::new();
    let mut pieces: Vec<&[(f64, f64, f64)]> = Vec::new();
    let mut start = 0;
    while start < path.len() {
        let mut end = start + 1;
        while end < path.len() && grounded[end] == grounded[start] {
            end += 1;
        }
        if grounded[start] {
            let run = &path[start..end];
            let level = run.iter().map(|p| p.2).sum::<f64>() / run.len() as f64;
            squares.extend(run.iter().map(|p| (p.2 - level).powi(2)));
        } else {
            // The airborne run plus the contacts either side, where it takes off and lands,
            // cut at every dip: free fall has no interior minimum, so a dip is a bounce whose
            // contact fell between frames.
            let run = &path[start.saturating_sub(1)..(end + 1).min(path.len())];
            let mut piece_start = 0;
            for i in 1..run.len() {
                let dip = i + 1 < run.len() && run[i].2 < run[i - 1].2 && run[i].2 <= run[i + 1].2;
                if dip || i + 1 == run.len() {
                    for piece in airborne_pieces(&run[piece_start..=i], 2) {
                        squares.extend(free_fall_residuals(piece));
                        pieces.push(piece);
                    }
                    piece_start = i;
                }
            }
        }
        start = end;
    }
    (squares, pooled_gravity(&pieces))
}

fn rms(squares: &[f64]) -> f64 {
    (squares.iter().sum::<f64>() / squares.len().max(1) as f64).sqrt()
}

/// Free-fall squared residuals of an airborne stretch.
fn free_fall_residuals(run: &[(f64, f64, f64)]) -> Vec<f64> {
    let heights: Vec<(f64, f64)> = run.iter().map(|p| (p.0, p.2)).collect();
    line_residuals(&heights, GRAVITY / 2.0)
}

/// Splits an airborne stretch that fits free fall badly at its sharpest kink (a collision in
/// the air), up to `splits` times, into the pieces that each follow one parabola.
fn airborne_pieces(run: &[(f64, f64, f64)], splits: usize) -> Vec<&[(f64, f64, f64)]> {
    if run.len() < 3 {
        return Vec::new();
    }
    if splits == 0 || run.len() < 7 || rms(&free_fall_residuals(run)) <= SPLIT_RESIDUAL {
        return vec![run];
    }
    // A collision bends the path at one point; wrong gravity bends it everywhere alike, and
    // is left whole so that it shows.
    let mut errors: Vec<(f64, usize)> = (1..run.len() - 1)
        .map(|i| (curvature_error(run, i), i))
        .collect();
    errors.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (median, (largest, kink)) = (errors[errors.len() / 2].0, errors[errors.len() - 1]);
    if largest < 3.0 * median || largest < 0.5 * GRAVITY {
        return vec![run];
    }
    let (left, right) = (&run[..=kink], &run[kink..]);
    if left.len() < 3 || right.len() < 3 {
        return vec![run];
    }
    let mut pieces = airborne_pieces(left, splits - 1);
    pieces.extend(airborne_pieces(right, splits - 1));
    pieces
}

/// How far the second difference of height at `i` departs from free fall.
fn curvature_error(run: &[(f64, f64, f64)], i: usize) -> f64 {
    let (a, b, c) = (run[i - 1], run[i], run[i + 1]);
    let (h1, h2) = (b.0 - a.0, c.0 - b.0);
    let acceleration = 2.0 * ((c.2 - b.2) / h2 - (b.2 - a.2) / h1) / (h1 + h2);
    (acceleration + GRAVITY).abs()
}

/// Squared distances from a circle fitted algebraically (Kåsa).
fn circle_residuals(path: &Path) -> Vec<f64> {
    let n = path.len() as f64;
    let (mx, my) = path
        .iter()
        .fold((0.0, 0.0), |(a, b), p| (a + p.1 / n, b + p.2 / n));
    let (mut suu, mut svv, mut suv, mut suuu, mut svvv, mut suvv, mut svuu) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for p in path {
        let (u, v) = (p.1 - mx, p.2 - my);
        suu += u * u;
        svv += v * v;
        suv += u * v;
        suuu += u * u * u;
        svvv += v * v * v;
        suvv += u * v * v;
        svuu += v * u * u;
    }
    let determinant = suu * svv - suv * suv;
    if determinant.abs() < 1e-12 {
        return path.iter().map(|_| 0.0).collect();
    }
    let (bu, bv) = ((suuu + suvv) / 2.0, (svvv + svuu) / 2.0);
    let uc = (bu * svv - bv * suv) / determinant;
    let vc = (bv * suu - bu * suv) / determinant;
    let radius = (uc * uc + vc * vc + (suu + svv) / n).sqrt();
    path.iter()
        .map(|p| ((p.1 - mx - uc).hypot(p.2 - my - vc) - radius).powi(2))
        .collect()
}

/// Whether some other track's detection is near `detection` at `frame` (so it may hide it).
fn crowded(tracks: &[&Track], own: usize, frame: usize, detection: &Detection) -> bool {
    let reach = |d: &Detection| (d.area / std::f32::consts::PI).sqrt();
    tracks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != own)
        .any(|(_, other)| {
            [
                frame.saturating_sub(1),
                frame,
                (frame + 1).min(other.seen.len() - 1),
            ]
            .iter()
            .any(|&f| {
                other.seen[f].is_some_and(|d| {
                    (d.x - detection.x).hypot(d.y - detection.y)
                        < 1.6 * (reach(&d) + reach(detection))
                })
            })
        })
}

/// Objects that vanish, appear, or change colour, shape or size without cause.
fn consistency_faults(tracks: &[&Track], frames: usize) -> Vec<Fault> {
    let mut faults = Vec::new();
    let mut explained_starts = vec![false; tracks.len()];
    for (index, track) in tracks.iter().enumerate() {
        let Some((last_frame, last)) = track.last() else {
            continue;
        };
        if last_frame + 2 < frames && !last.at_border && !crowded(tracks, index, last_frame, last) {
            let successor = tracks.iter().enumerate().find(|(other, t)| {
                *other != index
                    && t.color != track.color
                    && t.first().is_some_and(|(f, d)| {
                        f > last_frame
                            && f <= last_frame + 2
                            && (d.x - last.x).hypot(d.y - last.y)
                                < 3.0 + 2.0 * (last.area / std::f32::consts::PI).sqrt()
                    })
            });
            let kind = match successor {
                Some((other, t)) => {
                    explained_starts[other] = true;
                    FaultKind::TurnsColor(t.color)
                }
                None => FaultKind::Vanishes,
            };
            faults.push(Fault {
                kind,
                color: track.color,
                frame: Some(last_frame + 1),
            });
        }
    }
    for (index, track) in tracks.iter().enumerate() {
        let Some((first_frame, first)) = track.first() else {
            continue;
        };
        if first_frame > 2
            && !first.at_border
            && !explained_starts[index]
            && !crowded(tracks, index, first_frame, first)
        {
            faults.push(Fault {
                kind: FaultKind::AppearsFromNowhere,
                color: track.color,
                frame: Some(first_frame),
            });
        }
        let clean: Vec<(usize, &Detection)> = track
            .observations()
            .filter(|(f, d)| !d.at_border && !crowded(tracks, index, *f, d))
            .collect();
        let third = clean.len() / 3;
        if third >= 3 {
            let early = majority_shape(clean[..third].iter().map(|(_, d)| d.shape));
            let late = majority_shape(clean[clean.len() - third..].iter().map(|(_, d)| d.shape));
            let share = |part: &[(usize, &Detection)], shape: Option<Shape>| {
                part.iter().filter(|(_, d)| Some(d.shape) == shape).count() as f64
                    / part.len() as f64
            };
            if let (Some(from), Some(to)) = (early, late)
                && from != to
                && share(&clean[..third], early) >= 0.7
                && share(&clean[clean.len() - third..], late) >= 0.7
            {
                faults.push(Fault {
                    kind: FaultKind::ChangesShape { from, to },
                    color: track.color,
                    frame: None,
                });
            }
        }
        if let Some(pair) = clean.windows(2).find(|w| {
            w[1].0 == w[0].0 + 1 && (w[1].1.area / w[0].1.area).max(w[0].1.area / w[1].1.area) > 2.2
        }) {
            faults.push(Fault {
                kind: FaultKind::ChangesSize,
                color: track.color,
                frame: Some(pair[1].0),
            });
        }
    }
    faults
}

/// Means of many reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Aggregate {
    /// Clips scored.
    pub clips: usize,
    /// Mean of each score.
    pub scores: Scores,
    /// Share of clips with no consistency fault.
    pub fault_free: f64,
    /// Share of clips that show what was asked ([`Report::as_asked`]).
    pub as_asked: f64,
    /// Mean physics residual, world units.
    pub physics_residual: f64,
}

/// Averages reports.
pub fn aggregate(reports: &[Report]) -> Aggregate {
    let n = reports.len().max(1) as f64;
    let mean = |f: fn(&Report) -> f64| reports.iter().map(f).sum::<f64>() / n;
    Aggregate {
        clips: reports.len(),
        scores: Scores {
            color: mean(|r| r.scores.color),
            count: mean(|r| r.scores.count),
            shape: mean(|r| r.scores.shape),
            motion: mean(|r| r.scores.motion),
            physics: mean(|r| r.scores.physics),
            consistency: mean(|r| r.scores.consistency),
            backdrop: mean(|r| r.scores.backdrop),
        },
        fault_free: mean(|r| if r.faults.is_empty() { 1.0 } else { 0.0 }),
        as_asked: mean(|r| if r.as_asked() { 1.0 } else { 0.0 }),
        physics_residual: mean(|r| r.physics_residual),
    }
}

/// How the objects asked for in one shape were seen, over many clips.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapesSeen {
    /// The shape asked for.
    pub asked: Shape,
    /// Objects asked for in that shape.
    pub objects: usize,
    /// How many of them were seen as each shape, in [`Shape::ALL`] order (the rest were not
    /// found or showed no shape).
    pub seen: [usize; Shape::ALL.len()],
}

/// For each shape asked for in `reports`, how its objects were seen: where shape agreement is
/// lost.
pub fn shapes_seen(reports: &[Report]) -> Vec<ShapesSeen> {
    let objects: Vec<&ObjectReport> = reports.iter().flat_map(|r| &r.objects).collect();
    Shape::ALL
        .iter()
        .map(|&asked| {
            let mut tally = ShapesSeen {
                asked,
                objects: 0,
                seen: [0; Shape::ALL.len()],
            };
            for object in objects.iter().filter(|o| o.asked_shape == asked) {
                tally.objects += 1;
                if let Some(seen) = object.observed_shape
                    && let Some(index) = Shape::ALL.iter().position(|s| *s == seen)
                {
                    tally.seen[index] += 1;
                }
            }
            tally
        })
        .filter(|tally| tally.objects > 0)
        .collect()
}
