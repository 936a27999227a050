//! Finding the watermark in a video that may have been re-encoded, scaled, cropped or trimmed.
//!
//! All frames' luminance is summed (the mark is the same on every frame) and weighed down
//! where the picture is busy (edges and texture hide the mark; flat areas show it clean).
//! Then for each size class and each zoom the detector tries (a crop enlarges what is
//! left), the sum is resampled onto a square grid spanning one period of the pattern,
//! whitened (each frequency weighed by the inverse of the picture's own power there), and
//! correlated with the sync pattern at every cyclic shift at once. The best peak gives class,
//! zoom and shift; the bits are read there. A mark is present when the peak is high and the
//! marker bits read there are right.

use candle_core::{DType, IndexOp};
use himmel_core::Video;
use rustfft::num_complex::Complex32;

use super::fft::Fft2;
use super::pattern::{CLASSES, PAYLOAD_BITS, Patterns};
use super::{Payload, WatermarkError};

/// Zooms tried: from 1 (no crop) up to this (a crop keeping 1/1.6 of each side)...
const MAX_ZOOM: f64 = 1.6;

/// ...in geometric steps of this ratio.
const ZOOM_STEP: f64 = 1.0075;

/// The sync score a mark needs: the correlation surfaces of real pictures have heavier tails
/// than a normal law (unmarked clips reach 6.3 in the tests; marked ones after every attack
/// 8.7 or more).
const MIN_SYNC_SCORE: f64 = 7.5;

/// Marker bits that must be read right as well (16 random bits reach this one time in 95).
const MIN_MARKER_AGREEMENT: usize = 13;

/// Radius of the neighbourhood whose activity sets a pixel's weight.
const ACTIVITY_RADIUS: usize = 3;

/// What the detector found.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// Whether a Himmel watermark is present.
    pub present: bool,
    /// The payload read, when present.
    pub payload: Option<Payload>,
    /// The bits read at the best position (meaningful only when present).
    pub bits: [bool; PAYLOAD_BITS],
    /// The expected share of `bits` read right, from each bit's margin (0.5 to 1).
    pub bit_reliability: f64,
    /// How many of the 16 marker bits were read right.
    pub marker_agreement: usize,
    /// How far the sync peak stands above the correlation noise, in standard deviations.
    pub sync_score: f64,
    /// 1 minus the chance that an unmarked video scores this high, were the correlation noise
    /// normal (real pictures' is heavier-tailed: `present` uses fixed thresholds).
    pub confidence: f64,
    /// The zoom at which the mark was found (1 = uncropped).
    pub zoom: f64,
}

/// Looks for the watermark in `video`.
pub fn detect(video: &Video) -> Result<Detection, WatermarkError> {
    let luma = weighed_luma(video)?;
    let zooms: Vec<f64> = std::iter::successors(Some(1.0), |z| Some(z * ZOOM_STEP))
        .take_while(|&z| z <= MAX_ZOOM)
        .collect();
    let mut best: Option<Candidate> = None;
    let mut hypotheses = 0.0;
    // A class is tried when the frame can hold its finest frequency.
    let side = luma.width.min(luma.height) * luma.factor;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for class in (0..CLASSES).filter(|&c| c == 0 || 32 << c <= side) {
        let patterns = Patterns::get(class);
        let grid = Grid::new(64 << class);
        hypotheses += (zooms.len() * grid.size * grid.size) as f64;
        let found = std::thread::scope(|scope| {
            let workers: Vec<_> = zooms
                .chunks(zooms.len().div_ceil(threads))
                .map(|zooms| {
                    let (luma, grid) = (&luma, &grid);
                    scope.spawn(move || {
                        zooms
                            .iter()
                            .map(|&zoom| Candidate::at(luma, zoom, patterns, grid))
                            .max_by(|a, b| a.score.total_cmp(&b.score))
                    })
                })
                .collect();
            workers
                .into_iter()
                .filter_map(|worker| worker.join().expect("a zoom worker panicked"))
                .max_by(|a, b| a.score.total_cmp(&b.score))
        });
        if let Some(candidate) = found
            && best.as_ref().is_none_or(|b| candidate.score > b.score)
        {
            best = Some(candidate);
        }
    }
    let mut best = best.expect("class 0 is always tried");
    let patterns = Patterns::get(best.class);
    let grid = Grid::new(64 << best.class);
    let fine = ZOOM_STEP.powf(0.25);
    let coarse_zoom = best.zoom;
    for step in [-3, -2, -1, 1, 2, 3] {
        let zoom = coarse_zoom * fine.powi(step);
        if (1.0 / fine..=MAX_ZOOM).contains(&zoom) {
            let candidate = Candidate::at(&luma, zoom, patterns, &grid);
            if candidate.score > best.score {
                best = candidate;
            }
        }
    }
    let soft = best.soft_bits(patterns, &grid);
    let bits: [bool; PAYLOAD_BITS] = std::array::from_fn(|i| soft[i] > 0.0);
    let bit_reliability =
        soft.iter().map(|s| 1.0 - normal_tail(s.abs())).sum::<f64>() / PAYLOAD_BITS as f64;
    let (payload, marker_agreement) = Payload::from_bits(&bits);
    let chance = (hypotheses * normal_tail(best.score)).min(1.0) * marker_tail(marker_agreement);
    let present = best.score >= MIN_SYNC_SCORE && marker_agreement >= MIN_MARKER_AGREEMENT;
    Ok(Detection {
        present,
        payload: present.then_some(payload),
        bits,
        bit_reliability,
        marker_agreement,
        sync_score: best.score,
        confidence: 1.0 - chance,
        zoom: best.zoom,
    })
}

/// A single-channel image, row-major; pixel `x` stands for `(x + offset) / width` of the
/// frame, and for `factor` x `factor` frame pixels.
struct Image {
    width: usize,
    height: usize,
    factor: usize,
    offset: f64,
    values: Vec<f32>,
}

impl Image {
    fn at(&self, x: usize, y: usize) -> f32 {
        self.values[y * self.width + x]
    }

    /// Bilinear sample at pixel coordinates (clamped at the borders).
    fn sample(&self, x: f64, y: f64) -> f32 {
        let x = x.clamp(0.0, (self.width - 1) as f64);
        let y = y.clamp(0.0, (self.height - 1) as f64);
        let (x0, y0) = (x.floor() as usize, y.floor() as usize);
        let (x1, y1) = ((x0 + 1).min(self.width - 1), (y0 + 1).min(self.height - 1));
        let (fx, fy) = ((x - x0 as f64) as f32, (y - y0 as f64) as f32);
        let top = self.at(x0, y0) * (1.0 - fx) + self.at(x1, y0) * fx;
        let bottom = self.at(x0, y1) * (1.0 - fx) + self.at(x1, y1) * fx;
        top * (1.0 - fy) + bottom * fy
    }

    /// The mean squared gradient over each pixel's neighbourhood.
    fn activity(&self) -> Vec<f32> {
        let (width, height) = (self.width, self.height);
        let mut gradient = vec![0.0f32; width * height];
        for y in 0..height {
            for x in 0..width {
                let gx = self.at((x + 1).min(width - 1), y) - self.at(x.saturating_sub(1), y);
                let gy = self.at(x, (y + 1).min(height - 1)) - self.at(x, y.saturating_sub(1));
                gradient[y * width + x] = gx * gx + gy * gy;
            }
        }
        let mut activity = vec![0.0f32; width * height];
        for y in 0..height {
            let rows = y.saturating_sub(ACTIVITY_RADIUS)..(y + ACTIVITY_RADIUS + 1).min(height);
            for x in 0..width {
                let columns =
                    x.saturating_sub(ACTIVITY_RADIUS)..(x + ACTIVITY_RADIUS + 1).min(width);
                let count = rows.len() * columns.len();
                let total: f32 = rows
                    .clone()
                    .flat_map(|row| gradient[row * width..][columns.clone()].iter())
                    .sum();
                activity[y * width + x] = total / count as f32;
            }
        }
        activity
    }
}

/// The sum over frames of each frame's luminance minus its mean, box-averaged down so that
/// the grid's resampling does not alias, then weighed by `1 / sqrt(activity)` so that edges
/// and texture, where the picture drowns the mark, count less than flat areas.
fn weighed_luma(video: &Video) -> Result<Image, WatermarkError> {
    let (width, height) = (video.width(), video.height());
    let frames = video.frames();
    let scale = if frames.dtype() == DType::U8 {
        1.0 / 255.0
    } else {
        1.0
    };
    let mut sum = vec![0.0f32; width * height];
    for index in 0..video.num_frames() {
        let frame = frames.i(index)?.to_dtype(DType::F32)?.flatten_all()?;
        let rgb = frame.to_vec1::<f32>()?;
        let luma: Vec<f32> = rgb
            .chunks_exact(3)
            .map(|p| (0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]) * scale)
            .collect();
        let mean = luma.iter().sum::<f32>() / luma.len() as f32;
        sum.iter_mut().zip(&luma).for_each(|(s, l)| *s += l - mean);
    }
    // The largest grid has 64 << (CLASSES - 1) cells; finer detail than that is not needed.
    let factor = (width.min(height) / (64 << (CLASSES - 1))).max(1);
    let (small_width, small_height) = (width / factor, height / factor);
    let mut values = vec![0.0f32; small_width * small_height];
    for y in 0..small_height * factor {
        for x in 0..small_width * factor {
            values[(y / factor) * small_width + x / factor] += sum[y * width + x];
        }
    }
    let mut image = Image {
        width: small_width,
        height: small_height,
        factor,
        // The mark samples pixel x at x / width; a box of `factor` pixels averages those.
        offset: 0.5 - 0.5 / factor as f64,
        values,
    };
    let activity = image.activity();
    let floor = 0.1 * activity.iter().sum::<f32>() / activity.len() as f32 + f32::MIN_POSITIVE;
    for (value, busy) in image.values.iter_mut().zip(&activity) {
        *value /= (busy + floor).sqrt();
    }
    Ok(image)
}

/// The square grid one period of a class's pattern is resampled onto, and its transforms.
struct Grid {
    size: usize,
    fft: Fft2,
}

impl Grid {
    fn new(size: usize) -> Self {
        Self {
            size,
            fft: Fft2::new(size),
        }
    }

    /// The position of frequency `(kx, ky)`.
    fn bin(&self, kx: i32, ky: i32) -> usize {
        let wrap = |k: i32| k.rem_euclid(self.size as i32) as usize;
        wrap(ky) * self.size + wrap(kx)
    }
}

/// The correlation at one zoom of one class: the whitened spectrum of the resampled
/// luminance and the best sync peak.
struct Candidate {
    class: usize,
    zoom: f64,
    /// The peak's height above the surface's mean, in standard deviations.
    score: f64,
    /// The surface's standard deviation (the noise of any unit-energy pattern's correlation).
    spread: f64,
    /// The peak's shift in grid cells (sub-cell).
    shift: (f64, f64),
    /// The spectrum at the class's frequencies divided by the picture's power there.
    whitened: Vec<Complex32>,
}

impl Candidate {
    fn at(luma: &Image, zoom: f64, patterns: &Patterns, grid: &Grid) -> Candidate {
        let size = grid.size;
        let mut spectrum = resample(luma, zoom, size);
        grid.fft.forward(&mut spectrum);
        let power = smoothed_power(&spectrum, patterns, grid);
        let whitened: Vec<Complex32> = patterns
            .frequencies
            .iter()
            .zip(&power)
            .map(|(&(kx, ky), p)| spectrum[grid.bin(kx, ky)].conj() / *p)
            .collect();
        let mut surface = vec![Complex32::default(); size * size];
        for ((&(kx, ky), &c), &w) in patterns
            .frequencies
            .iter()
            .zip(&patterns.sync)
            .zip(&whitened)
        {
            surface[grid.bin(kx, ky)] = w * c;
            surface[grid.bin(-kx, -ky)] = (w * c).conj();
        }
        grid.fft.inverse(&mut surface);
        let values: Vec<f64> = surface.iter().map(|v| f64::from(v.re)).collect();
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let spread =
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64).sqrt();
        let (peak, &top) = values
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .expect("the grid is not empty");
        let (px, py) = (peak % size, peak / size);
        let at = |x: usize, y: usize| values[(y % size) * size + x % size];
        let refine = |before: f64, after: f64| {
            let curvature = before - 2.0 * top + after;
            if curvature < 0.0 {
                (0.5 * (before - after) / curvature).clamp(-0.5, 0.5)
            } else {
                0.0
            }
        };
        let dx = refine(at(px + size - 1, py), at(px + 1, py));
        let dy = refine(at(px, py + size - 1), at(px, py + 1));
        Candidate {
            class: patterns.class,
            zoom,
            score: if spread > 0.0 {
                (top - mean) / spread
            } else {
                0.0
            },
            spread,
            shift: (px as f64 + dx, py as f64 + dy),
            whitened,
        }
    }

    /// Each bit pattern's whitened correlation at this candidate's shift, in standard
    /// deviations of the noise (positive: a 1).
    fn soft_bits(&self, patterns: &Patterns, grid: &Grid) -> [f64; PAYLOAD_BITS] {
        let turns: Vec<Complex32> = patterns
            .frequencies
            .iter()
            .map(|&(kx, ky)| {
                let angle = std::f64::consts::TAU
                    * (f64::from(kx) * self.shift.0 + f64::from(ky) * self.shift.1)
                    / grid.size as f64;
                Complex32::from_polar(1.0, angle as f32)
            })
            .collect();
        std::array::from_fn(|i| {
            let correlation: f64 = patterns.bits[i]
                .iter()
                .zip(&self.whitened)
                .zip(&turns)
                .map(|((&c, &w), &turn)| 2.0 * f64::from((w * c * turn).re))
                .sum();
            if self.spread > 0.0 {
                correlation / self.spread
            } else {
                0.0
            }
        })
    }
}

/// The luminance resampled onto a `size` x `size` grid as a crop at `zoom` would place it:
/// the frame spans `size / zoom` cells; the rest of the period is unseen (zero). The covered
/// cells' mean is removed.
fn resample(luma: &Image, zoom: f64, size: usize) -> Vec<Complex32> {
    let covered = size as f64 / zoom;
    let cells = (covered.ceil() as usize).min(size);
    let mut grid = vec![Complex32::default(); size * size];
    let mut total = 0.0f32;
    for j in 0..cells {
        let y = j as f64 / covered * luma.height as f64 - luma.offset;
        for i in 0..cells {
            // Cell i stands for i / covered of the frame.
            let x = i as f64 / covered * luma.width as f64 - luma.offset;
            let value = luma.sample(x, y);
            grid[j * size + i] = Complex32::new(value, 0.0);
            total += value;
        }
    }
    let mean = total / (cells * cells) as f32;
    for j in 0..cells {
        for value in &mut grid[j * size..j * size + cells] {
            value.re -= mean;
        }
    }
    grid
}

/// The spectrum's power at each of the class's frequencies, averaged over the frequency's
/// 5 x 5 neighbourhood (cyclic). A real picture's spectrum is symmetric, so this is also the
/// power at the conjugate frequency.
fn smoothed_power(spectrum: &[Complex32], patterns: &Patterns, grid: &Grid) -> Vec<f32> {
    let total: f32 = spectrum.iter().map(|v| v.norm_sqr()).sum();
    let floor = total / spectrum.len() as f32 * 1e-6 + f32::MIN_POSITIVE;
    patterns
        .frequencies
        .iter()
        .map(|&(kx, ky)| {
            let mut sum = 0.0;
            for dy in -2..=2 {
                for dx in -2..=2 {
                    sum += spectrum[grid.bin(kx + dx, ky + dy)].norm_sqr();
                }
            }
            sum / 25.0 + floor
        })
        .collect()
}

/// The chance that a standard normal variable exceeds `z`.
fn normal_tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function (Numerical Recipes' Chebyshev fit, relative error below
/// 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let result = t * poly.exp();
    if x >= 0.0 { result } else { 2.0 - result }
}

/// The chance that at least `agreement` of 16 random bits match the marker.
fn marker_tail(agreement: usize) -> f64 {
    let choose = |n: u64, k: u64| (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64);
    (agreement as u64..=16).map(|k| choose(16, k)).sum::<f64>() / 65536.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails() {
        assert!((normal_tail(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_tail(3.0) - 1.349_898e-3).abs() < 1e-8);
        assert!((normal_tail(-1.0) - 0.841_344_7).abs() < 1e-6);
        assert_eq!(marker_tail(0), 1.0);
        assert_eq!(marker_tail(16), 1.0 / 65536.0);
    }
}
