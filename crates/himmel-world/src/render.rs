//! Drawing the world: backdrops with texture that moves with the camera, soft ground
//! shadows, and anti-aliased, shaded shapes from signed distance functions. Deterministic:
//! the same spec and settings give the same pixels.

use himmel_core::Video;

use crate::camera::View;
use crate::physics::{BodyState, Trajectory, simulate};
use crate::spec::SceneSpec;
use crate::vocab::{Background, Shape};

/// Size, length and rate of a rendered clip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenderSettings {
    /// Frame width in pixels.
    pub width: usize,
    /// Frame height in pixels.
    pub height: usize,
    /// Number of frames.
    pub frames: usize,
    /// Frames per second.
    pub fps: f64,
}

/// A rendered clip and the ground truth behind it.
pub struct Clip {
    /// The frames, u8.
    pub video: Video,
    /// Where every object was in every frame, and what happened.
    pub trajectory: Trajectory,
    /// `visibility[frame][object]`.
    pub visibility: Vec<Vec<Visibility>>,
}

/// Whether an object can be seen in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// In view and not covered.
    Visible,
    /// Outside the camera's view.
    OutOfView,
    /// In view but covered by the nearer object `by`.
    Hidden {
        /// Index of the covering object.
        by: usize,
    },
}

/// Simulates and draws `spec`.
pub fn render(
    spec: &SceneSpec,
    settings: &RenderSettings,
) -> Result<Clip, himmel_core::VideoError> {
    let RenderSettings {
        width,
        height,
        frames,
        fps,
    } = *settings;
    let times: Vec<f64> = (0..frames).map(|i| i as f64 / fps).collect();
    let trajectory = simulate(spec, &times);
    let mut order: Vec<usize> = (0..spec.objects.len()).collect();
    order.sort_by_key(|&i| spec.objects[i].depth);

    let mut canvas = vec![0f32; width * height * 3];
    let mut rgb = Vec::with_capacity(frames * width * height * 3);
    let mut visibility = Vec::with_capacity(frames);
    for (frame, states) in trajectory.frames.iter().enumerate() {
        let view = View::at(spec.camera, times[frame] as f32, width, height);
        draw_background(&mut canvas, spec.background, &view);
        if has_ground(spec.background) {
            for (object, state) in spec.objects.iter().zip(states) {
                draw_shadow(&mut canvas, &view, state, object.size.radius());
            }
        }
        for &index in &order {
            let object = &spec.objects[index];
            draw_shape(
                &mut canvas,
                &view,
                object.shape,
                object.color.rgb(),
                object.size.radius(),
                &states[index],
            );
        }
        rgb.extend(canvas.iter().map(|&v| to_byte(v)));
        visibility.push(visibility_in(spec, &view, states));
    }
    let video = Video::from_rgb8(rgb, frames, (width, height), fps)?;
    Ok(Clip {
        video,
        trajectory,
        visibility,
    })
}

/// Which objects are in view, and which of those a nearer one covers.
fn visibility_in(spec: &SceneSpec, view: &View, states: &[BodyState]) -> Vec<Visibility> {
    spec.objects
        .iter()
        .zip(states)
        .map(|(object, state)| {
            let radius = object.size.radius();
            if !view.sees_disc(state.x, state.y, -0.5 * radius) {
                return Visibility::OutOfView;
            }
            let cover = spec
                .objects
                .iter()
                .zip(states)
                .position(|(other, other_state)| {
                    let distance = (other_state.x - state.x).hypot(other_state.y - state.y);
                    other.depth > object.depth && distance + 0.7 * radius <= other.size.radius()
                });
            cover.map_or(Visibility::Visible, |by| Visibility::Hidden { by })
        })
        .collect()
}

/// Whether the backdrop shows the ground (plain colour does not).
pub fn has_ground(background: Background) -> bool {
    !matches!(background, Background::Plain(_))
}

fn mix(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

fn scale(color: [f32; 3], factor: f32) -> [f32; 3] {
    color.map(|c| c * factor)
}

/// Cheap deterministic hash of an integer cell to 0..1.
fn hash(x: i32, y: i32) -> f32 {
    let mut h = (x as u32).wrapping_mul(0x8da6_b343) ^ (y as u32).wrapping_mul(0xd816_3841);
    h ^= h >> 13;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 16;
    (h & 0xffff) as f32 / 65535.0
}

/// Colour of the backdrop above the ground at height `y` (and x, for texture).
fn upper_color(background: Background, x: f32, y: f32) -> [f32; 3] {
    let height = (y / 3.0).clamp(0.0, 1.0);
    match background {
        Background::Sky | Background::Grass | Background::Sand | Background::Water => {
            let sky = mix([0.78, 0.88, 0.96], [0.33, 0.58, 0.92], height);
            let hill = 0.25 + 0.12 * (x * 1.3).sin() + 0.06 * (x * 3.1 + 1.0).sin();
            if background == Background::Sky && y < hill {
                [0.55, 0.68, 0.58]
            } else {
                sky
            }
        }
        Background::Night => {
            let sky = mix([0.09, 0.11, 0.25], [0.02, 0.03, 0.09], height);
            let (cell_x, cell_y) = ((x * 6.0).floor() as i32, (y * 6.0).floor() as i32);
            let star = hash(cell_x, cell_y);
            let (dx, dy) = (
                x * 6.0 - cell_x as f32 - star,
                y * 6.0 - cell_y as f32 - hash(cell_y, cell_x),
            );
            if star > 0.55 && dx * dx + dy * dy < 0.004 {
                [0.95, 0.95, 0.85]
            } else {
                sky
            }
        }
        Background::Room => {
            let panel = (x / 0.8).rem_euclid(1.0);
            if panel < 0.04 {
                [0.74, 0.70, 0.62]
            } else {
                [0.86, 0.82, 0.72]
            }
        }
        Background::Plain(color) => color.rgb(),
    }
}

/// Colour of the ground at depth `y` (negative) and x.
fn ground_color(background: Background, x: f32, y: f32) -> [f32; 3] {
    let near = (-y / 0.6).clamp(0.0, 1.0);
    match background {
        Background::Sky => mix([0.55, 0.68, 0.58], [0.45, 0.58, 0.45], near),
        Background::Grass => {
            let blades = 1.0 + 0.10 * (x * 41.0).sin() * (x * 13.0 + y * 9.0).sin();
            scale(mix([0.30, 0.62, 0.22], [0.20, 0.48, 0.14], near), blades)
        }
        Background::Sand => {
            let grain = 0.94 + 0.08 * hash((x * 60.0) as i32, (y * 60.0) as i32);
            scale(mix([0.92, 0.82, 0.58], [0.84, 0.72, 0.48], near), grain)
        }
        Background::Water => {
            let wave = 1.0 + 0.12 * (x * 9.0 + (y * 23.0).sin() * 2.0).sin();
            scale(mix([0.20, 0.48, 0.70], [0.10, 0.32, 0.55], near), wave)
        }
        Background::Night => mix([0.12, 0.14, 0.14], [0.06, 0.08, 0.08], near),
        Background::Room => {
            let board = (x / 0.35).rem_euclid(1.0);
            let wood = if board < 0.05 {
                0.8
            } else {
                1.0 + 0.04 * (x * 17.0).sin()
            };
            scale([0.62, 0.44, 0.27], wood)
        }
        Background::Plain(color) => color.rgb(),
    }
}

/// A colour channel in 0..=1 as the byte a rendered frame stores.
fn to_byte(value: f32) -> u8 {
    (value.clamp(0.0, 1.0) * 255.0 + 0.5) as u8
}

/// The backdrop alone, without objects or shadows, as packed RGB bytes exactly as [`render`]
/// draws it behind them in a frame seen through `view`.
pub fn render_backdrop(background: Background, view: &View) -> Vec<u8> {
    let mut canvas = vec![0f32; view.width * view.height * 3];
    draw_background(&mut canvas, background, view);
    canvas.into_iter().map(to_byte).collect()
}

fn draw_background(canvas: &mut [f32], background: Background, view: &View) {
    for row in 0..view.height {
        let (_, y) = view.to_world(0.0, row as f32);
        let line = &mut canvas[row * view.width * 3..(row + 1) * view.width * 3];
        for (column, pixel) in line.chunks_exact_mut(3).enumerate() {
            let x = view.centre_x
                + (column as f32 + 0.5 - view.width as f32 / 2.0) * view.units_per_pixel;
            let color = if y >= 0.0 {
                upper_color(background, x, y)
            } else {
                ground_color(background, x, y)
            };
            pixel.copy_from_slice(&color);
        }
    }
}

/// Pixel bounds (inclusive start, exclusive end) of a world disc, clipped to the frame.
fn pixel_box(
    view: &View,
    x: f32,
    y: f32,
    radius_x: f32,
    radius_y: f32,
) -> Option<(usize, usize, usize, usize)> {
    let (left, top) = view.to_pixel(x - radius_x, y + radius_y);
    let (right, bottom) = view.to_pixel(x + radius_x, y - radius_y);
    let clip = |v: f32, limit: usize| v.clamp(0.0, limit as f32) as usize;
    let (c0, c1) = (
        clip(left.floor() - 1.0, view.width),
        clip(right.ceil() + 2.0, view.width),
    );
    let (r0, r1) = (
        clip(top.floor() - 1.0, view.height),
        clip(bottom.ceil() + 2.0, view.height),
    );
    (c0 < c1 && r0 < r1).then_some((c0, c1, r0, r1))
}

/// A soft elliptical shadow on the ground, fainter the higher the object.
fn draw_shadow(canvas: &mut [f32], view: &View, state: &BodyState, radius: f32) {
    let strength = 0.45 * (1.0 - state.y / 2.5).clamp(0.0, 1.0);
    let (radius_x, radius_y) = (radius * 1.15, radius * 0.22);
    if strength <= 0.0 {
        return;
    }
    let Some((c0, c1, r0, r1)) = pixel_box(view, state.x, 0.0, radius_x, radius_y) else {
        return;
    };
    for row in r0..r1 {
        for column in c0..c1 {
            let (x, y) = view.to_world(column as f32, row as f32);
            let distance = ((x - state.x) / radius_x).hypot(y / radius_y);
            let shade = strength * ((1.0 - distance) / 0.45).clamp(0.0, 1.0);
            let pixel = &mut canvas[(row * view.width + column) * 3..][..3];
            pixel.iter_mut().for_each(|c| *c *= 1.0 - shade);
        }
    }
}

/// Signed distance (world units) from local point (`px`, `py`) to `shape` of size `radius`.
fn signed_distance(shape: Shape, px: f32, py: f32, radius: f32) -> f32 {
    match shape {
        Shape::Ball => px.hypot(py) - radius,
        Shape::Ring => (px.hypot(py) - 0.8 * radius).abs() - 0.2 * radius,
        Shape::Cube => {
            let half = 0.8 * radius;
            let (dx, dy) = (px.abs() - half, py.abs() - half);
            dx.max(0.0).hypot(dy.max(0.0)) + dx.max(dy).min(0.0)
        }
        Shape::Capsule => (px.abs() - 0.5 * radius).max(0.0).hypot(py) - 0.45 * radius,
        Shape::Triangle => equilateral_triangle(px, py, radius * 3f32.sqrt() / 2.0),
        Shape::Star => star5(px, py, radius, 0.45),
    }
}

/// Equilateral triangle, point up, centroid at the origin, half side `half_side`
/// (Inigo Quilez's formulation).
fn equilateral_triangle(px: f32, py: f32, half_side: f32) -> f32 {
    let k = 3f32.sqrt();
    let (mut x, mut y) = (px.abs() - half_side, py + half_side / k);
    if x + k * y > 0.0 {
        (x, y) = ((x - k * y) / 2.0, (-k * x - y) / 2.0);
    }
    x -= x.clamp(-2.0 * half_side, 0.0);
    -x.hypot(y) * y.signum()
}

/// Five-pointed star, point up, outer radius `radius`, inner radius `inner * radius`
/// (Inigo Quilez's formulation).
fn star5(px: f32, py: f32, radius: f32, inner: f32) -> f32 {
    let (k1x, k1y) = (0.809_017_f32, -0.587_785_f32);
    let (k2x, k2y) = (-k1x, k1y);
    let (mut x, mut y) = (px.abs(), py);
    let d1 = 2.0 * (k1x * x + k1y * y).max(0.0);
    (x, y) = (x - d1 * k1x, y - d1 * k1y);
    let d2 = 2.0 * (k2x * x + k2y * y).max(0.0);
    (x, y) = (x - d2 * k2x, y - d2 * k2y);
    x = x.abs();
    y -= radius;
    let (bax, bay) = (inner * -k1y, inner * k1x - 1.0);
    let h = ((x * bax + y * bay) / (bax * bax + bay * bay)).clamp(0.0, radius);
    (x - bax * h).hypot(y - bay * h) * (y * bax - x * bay).signum()
}

/// Draws one shaded, anti-aliased shape.
fn draw_shape(
    canvas: &mut [f32],
    view: &View,
    shape: Shape,
    color: [f32; 3],
    radius: f32,
    state: &BodyState,
) {
    let Some((c0, c1, r0, r1)) = pixel_box(view, state.x, state.y, radius, radius) else {
        return;
    };
    let (sin, cos) = (-state.angle).sin_cos();
    let pixel_size = view.units_per_pixel;
    for row in r0..r1 {
        for column in c0..c1 {
            let (x, y) = view.to_world(column as f32, row as f32);
            let (dx, dy) = (x - state.x, y - state.y);
            let (local_x, local_y) = (dx * cos - dy * sin, dx * sin + dy * cos);
            let coverage = (0.5 - signed_distance(shape, local_x, local_y, radius) / pixel_size)
                .clamp(0.0, 1.0);
            if coverage <= 0.0 {
                continue;
            }
            let light = match shape {
                Shape::Ball => {
                    let (nx, ny) = (dx / radius, dy / radius);
                    let nz = (1.0 - nx * nx - ny * ny).max(0.0).sqrt();
                    let stripe = if local_y.abs() < 0.12 * radius {
                        0.9
                    } else {
                        1.0
                    };
                    (0.86 + 0.16 * (-0.5 * nx + 0.6 * ny + 0.62 * nz)).min(1.0) * stripe
                }
                _ => 0.92 + 0.1 * dy / radius,
            };
            let pixel = &mut canvas[(row * view.width + column) * 3..][..3];
            for (channel, &base) in pixel.iter_mut().zip(&color) {
                *channel += ((base * light).min(1.0) - *channel) * coverage;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::clip_rng;

    #[test]
    fn rendering_is_deterministic_at_any_size_and_rate() {
        let spec = SceneSpec::sample(&mut clip_rng(21, 4));
        for settings in [
            RenderSettings {
                width: 48,
                height: 80,
                frames: 5,
                fps: 10.0,
            },
            RenderSettings {
                width: 97,
                height: 33,
                frames: 9,
                fps: 30.0,
            },
        ] {
            let first = render(&spec, &settings).unwrap().video.to_rgb8().unwrap();
            let second = render(&spec, &settings).unwrap().video.to_rgb8().unwrap();
            assert_eq!(
                first.len(),
                settings.width * settings.height * settings.frames * 3
            );
            assert!(first == second, "two renders of one spec differ");
        }
    }

    #[test]
    fn distance_functions_have_the_right_extent() {
        for shape in Shape::ALL {
            assert!(
                signed_distance(shape, 0.0, 0.0, 1.0) < 0.0 || shape == Shape::Ring,
                "{shape:?} centre"
            );
            assert!(
                signed_distance(shape, 1.05, 0.0, 1.0) > 0.0,
                "{shape:?} right"
            );
            assert!(
                signed_distance(shape, 0.0, 1.05, 1.0) > 0.0,
                "{shape:?} top"
            );
            // The lowest point: straight down, except for the star, which rests on two tips
            // 36 degrees either side of straight down.
            let (x, y) = if shape == Shape::Star {
                (0.5878, -0.809)
            } else {
                (0.0, -shape.support())
            };
            assert!(
                signed_distance(shape, 0.95 * x, 0.95 * y, 1.0) < 0.0,
                "{shape:?} support inside"
            );
            assert!(
                signed_distance(shape, 1.05 * x, 1.05 * y - 0.01, 1.0) > 0.0,
                "{shape:?} support outside"
            );
        }
        assert!(
            signed_distance(Shape::Star, 0.0, 0.98, 1.0) < 0.0,
            "star point up"
        );
        assert!(
            signed_distance(Shape::Triangle, 0.0, 0.98, 1.0) < 0.0,
            "triangle point up"
        );
    }
}
