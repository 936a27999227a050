//! Finding the world's objects in any video frame: pixels are classed by hue (or as neutral
//! white/grey/black), pixels that look like the scene's own backdrop at that spot are set
//! aside, and connected regions of one class become detections with a colour, a centroid, a
//! size and a shape read from rotation-invariant features.

use crate::vocab::{Color, Shape};

/// One object seen in one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// Colour class.
    pub color: Color,
    /// Shape class.
    pub shape: Shape,
    /// Centroid column, pixels.
    pub x: f32,
    /// Centroid row, pixels.
    pub y: f32,
    /// Area in pixels.
    pub area: f32,
    /// Whether it touches the frame's edge (so it may be cut off).
    pub at_border: bool,
}

/// Pixel class codes: 0 none, 1..=8 hue classes, then white, grey and black.
const NONE: u8 = 0;
const WHITE: u8 = 9;
const GRAY: u8 = 10;
const BLACK: u8 = 11;
/// Hue classes in order of their codes 1..=8; orange and brown share a hue.
const HUES: [(f32, f32); 8] = [
    (345.0, 15.0),  // red
    (15.0, 42.0),   // orange or brown
    (42.0, 75.0),   // yellow
    (75.0, 160.0),  // green
    (160.0, 200.0), // cyan
    (200.0, 255.0), // blue
    (255.0, 300.0), // purple
    (300.0, 345.0), // pink
];

/// Largest difference in any channel's share of the brightness (r, g, b over r + g + b) at
/// which a pixel of its backdrop's class still counts as backdrop. Shadows and the backdrops'
/// textures scale brightness and keep these shares; an object of the backdrop's hue (a blue
/// cube on the water, a brown box on a wooden floor) differs by 0.07 or more.
const BACKDROP_CHROMA: f32 = 0.04;
/// Regions larger than this share of the frame are backdrop, not objects (the largest object,
/// zoomed in, covers under a fifth).
const MAX_OBJECT_SHARE: f32 = 0.25;

/// Class of one RGB pixel.
fn pixel_class(r: u8, g: u8, b: u8) -> (u8, f32) {
    let (r, g, b) = (
        f32::from(r) / 255.0,
        f32::from(g) / 255.0,
        f32::from(b) / 255.0,
    );
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let saturation = if max > 0.0 { (max - min) / max } else { 0.0 };
    if saturation < 0.12 {
        let code = if max > 0.6 {
            WHITE
        } else if max > 0.2 {
            GRAY
        } else {
            BLACK
        };
        return (code, max);
    }
    if saturation < 0.3 || max < 0.18 {
        return (NONE, max);
    }
    let delta = max - min;
    let hue = if max == r {
        60.0 * ((g - b) / delta).rem_euclid(6.0)
    } else if max == g {
        60.0 * ((b - r) / delta + 2.0)
    } else {
        60.0 * ((r - g) / delta + 4.0)
    };
    let code = HUES
        .iter()
        .position(|&(low, high)| {
            if low > high {
                hue >= low || hue < high
            } else {
                hue >= low && hue < high
            }
        })
        .map_or(NONE, |i| i as u8 + 1);
    (code, max)
}

/// Whether `pixel` is the backdrop `behind` it: the same class and the same chromaticity.
fn is_backdrop(pixel: &[u8], code: u8, behind: &[u8]) -> bool {
    if pixel_class(behind[0], behind[1], behind[2]).0 != code {
        return false;
    }
    let shares = |p: &[u8]| {
        let sum = (u32::from(p[0]) + u32::from(p[1]) + u32::from(p[2])).max(1) as f32;
        [0, 1, 2].map(|c| f32::from(p[c]) / sum)
    };
    let (a, b) = (shares(pixel), shares(behind));
    (0..3).all(|c| (a[c] - b[c]).abs() < BACKDROP_CHROMA)
}

/// The colour of a region of pixel class `code` with mean brightness `value`.
fn region_color(code: u8, value: f32) -> Option<Color> {
    Some(match code {
        1 => Color::Red,
        2 if value > 0.62 => Color::Orange,
        2 => Color::Brown,
        3 => Color::Yellow,
        4 => Color::Green,
        5 => Color::Cyan,
        6 => Color::Blue,
        7 => Color::Purple,
        8 => Color::Pink,
        WHITE => Color::White,
        GRAY => Color::Gray,
        BLACK => Color::Black,
        _ => return None,
    })
}

/// Rotation-invariant shape features of a pixel region.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShapeFeatures {
    /// Ratio of the principal axes (1 for round or square regions).
    pub elongation: f32,
    /// Farthest pixel from the centroid over the radius of a disc of equal area.
    pub reach: f32,
    /// Area over the area of its convex hull.
    pub solidity: f32,
    /// Whether the centroid lies outside the region (a hole, as in a ring).
    pub hollow: bool,
}

impl ShapeFeatures {
    /// The shape these features suggest.
    pub fn shape(&self) -> Shape {
        if self.hollow {
            Shape::Ring
        } else if self.elongation > 1.55 {
            Shape::Capsule
        } else if self.reach < 1.16 {
            Shape::Ball
        } else if self.solidity < 0.78 {
            Shape::Star
        } else if self.reach < 1.38 {
            Shape::Cube
        } else {
            Shape::Triangle
        }
    }
}

/// Shape features of the pixels `points` (column, row).
pub fn shape_features(points: &[(i32, i32)], contains: impl Fn(i32, i32) -> bool) -> ShapeFeatures {
    let count = points.len() as f32;
    let (sum_x, sum_y) = points.iter().fold((0.0, 0.0), |(sx, sy), &(x, y)| {
        (sx + x as f32, sy + y as f32)
    });
    let (cx, cy) = (sum_x / count, sum_y / count);
    let (mut xx, mut yy, mut xy, mut farthest) = (0f32, 0f32, 0f32, 0f32);
    for &(x, y) in points {
        let (dx, dy) = (x as f32 - cx, y as f32 - cy);
        xx += dx * dx;
        yy += dy * dy;
        xy += dx * dy;
        farthest = farthest.max((dx * dx + dy * dy).sqrt());
    }
    let (xx, yy, xy) = (xx / count, yy / count, xy / count);
    let spread = ((xx - yy) * (xx - yy) / 4.0 + xy * xy).sqrt();
    let (major, minor) = (
        (xx + yy) / 2.0 + spread,
        ((xx + yy) / 2.0 - spread).max(1e-3),
    );
    let elongation = (major / minor).sqrt();
    let reach = (farthest + 0.5) / (count / std::f32::consts::PI).sqrt();
    let hull = convex_hull(points);
    let (hull_area, hull_perimeter) = polygon_area_perimeter(&hull);
    // Pixels inside a hull of pixel centres: its area plus half its boundary plus one (Pick).
    let solidity = (count / (hull_area + hull_perimeter / 2.0 + 1.0)).min(1.0);
    let hollow = !contains(cx.round() as i32, cy.round() as i32);
    ShapeFeatures {
        elongation,
        reach,
        solidity,
        hollow,
    }
}

fn cross(o: (i32, i32), a: (i32, i32), b: (i32, i32)) -> i64 {
    i64::from(a.0 - o.0) * i64::from(b.1 - o.1) - i64::from(a.1 - o.1) * i64::from(b.0 - o.0)
}

/// Convex hull (monotone chain) of integer points.
fn convex_hull(points: &[(i32, i32)]) -> Vec<(i32, i32)> {
    let mut sorted = points.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() < 3 {
        return sorted;
    }
    let mut hull: Vec<(i32, i32)> = Vec::with_capacity(sorted.len() * 2);
    for pass in 0..2 {
        let start = hull.len();
        let iter: Box<dyn Iterator<Item = &(i32, i32)>> = if pass == 0 {
            Box::new(sorted.iter())
        } else {
            Box::new(sorted.iter().rev())
        };
        for &point in iter {
            while hull.len() >= start + 2
                && cross(hull[hull.len() - 2], hull[hull.len() - 1], point) <= 0
            {
                hull.pop();
            }
            hull.push(point);
        }
        hull.pop();
    }
    hull
}

fn polygon_area_perimeter(polygon: &[(i32, i32)]) -> (f32, f32) {
    let (mut twice_area, mut perimeter) = (0i64, 0f32);
    for (i, &(x0, y0)) in polygon.iter().enumerate() {
        let (x1, y1) = polygon[(i + 1) % polygon.len()];
        twice_area += i64::from(x0) * i64::from(y1) - i64::from(x1) * i64::from(y0);
        perimeter += ((x1 - x0) as f32).hypot((y1 - y0) as f32);
    }
    (twice_area.unsigned_abs() as f32 / 2.0, perimeter)
}

/// Finds objects of the colours in `allowed` in one packed RGB frame, in front of `backdrop`
/// (the scene without objects, packed RGB of the same size).
pub fn detect(
    rgb: &[u8],
    backdrop: &[u8],
    width: usize,
    height: usize,
    allowed: &[Color],
) -> Vec<Detection> {
    let pixels = width * height;
    let mut codes = vec![NONE; pixels];
    let mut values = vec![0f32; pixels];
    for (index, (pixel, behind)) in rgb
        .chunks_exact(3)
        .zip(backdrop.chunks_exact(3))
        .enumerate()
        .take(pixels)
    {
        let (code, value) = pixel_class(pixel[0], pixel[1], pixel[2]);
        if !is_backdrop(pixel, code, behind) {
            (codes[index], values[index]) = (code, value);
        }
    }
    let min_area = (pixels as f32 * 0.001).max(5.0);
    let max_area = pixels as f32 * MAX_OBJECT_SHARE;
    let mut region = vec![u32::MAX; pixels];
    let mut detections = Vec::new();
    let mut stack = Vec::new();
    let mut points = Vec::new();
    for seed in 0..pixels {
        if codes[seed] == NONE || region[seed] != u32::MAX {
            continue;
        }
        let (code, id) = (codes[seed], seed as u32);
        region[seed] = id;
        stack.push(seed);
        points.clear();
        let mut value_sum = 0.0;
        let mut at_border = false;
        let mut core = 0usize;
        while let Some(index) = stack.pop() {
            let (x, y) = (index % width, index / width);
            points.push((x as i32, y as i32));
            value_sum += values[index];
            at_border |= x == 0 || y == 0 || x + 1 == width || y + 1 == height;
            let neighbours = [
                (x > 0).then(|| index - 1),
                (x + 1 < width).then(|| index + 1),
                (y > 0).then(|| index - width),
                (y + 1 < height).then(|| index + width),
            ];
            let mut same = 0;
            for next in neighbours.into_iter().flatten() {
                if codes[next] == code {
                    same += 1;
                    if region[next] == u32::MAX {
                        region[next] = id;
                        stack.push(next);
                    }
                }
            }
            core += usize::from(same >= 3);
        }
        let area = points.len() as f32;
        let Some(color) = region_color(code, value_sum / area) else {
            continue;
        };
        // Regions that are all edge (thin lines) are anti-aliasing fringes where two colours blend.
        if area < min_area || area > max_area || core < 2 || !allowed.contains(&color) {
            continue;
        }
        let contains = |x: i32, y: i32| {
            x >= 0
                && y >= 0
                && (x as usize) < width
                && (y as usize) < height
                && region[y as usize * width + x as usize] == id
        };
        let features = shape_features(&points, contains);
        let (sum_x, sum_y) = points.iter().fold((0.0, 0.0), |(sx, sy), &(x, y)| {
            (sx + x as f32, sy + y as f32)
        });
        detections.push(Detection {
            color,
            shape: features.shape(),
            x: sum_x / area,
            y: sum_y / area,
            area,
            at_border,
        });
    }
    detections
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn palette_colours_keep_their_class_under_shading() {
        for color in Color::ALL {
            for shade in [0.66, 0.8, 1.0] {
                let [r, g, b] = color.rgb().map(|c| (c * shade * 255.0) as u8);
                let (code, value) = pixel_class(r, g, b);
                let found = region_color(code, value / shade * 0.9);
                assert_eq!(found, Some(color), "{color:?} at shade {shade}");
            }
        }
    }

    #[test]
    fn objects_of_the_backdrops_hue_are_found_and_shadows_are_not() {
        let (width, height) = (32, 32);
        let water = [51u8, 122, 178];
        let backdrop: Vec<u8> = water.repeat(width * height);
        let mut frame = backdrop.clone();
        let mut paint = |columns: std::ops::Range<usize>, color: [u8; 3]| {
            for row in 12..20 {
                for column in columns.clone() {
                    frame[(row * width + column) * 3..][..3].copy_from_slice(&color);
                }
            }
        };
        paint(2..10, water.map(|c| (f32::from(c) * 0.6) as u8));
        paint(20..28, Color::Blue.rgb().map(|c| (c * 255.0) as u8));
        let found = detect(&frame, &backdrop, width, height, &[Color::Blue]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].x, found[0].y, found[0].area), (23.5, 15.5, 64.0));
    }
}
