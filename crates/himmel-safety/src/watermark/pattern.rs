//! The watermark's patterns: smooth random fields defined in coordinates relative to the frame
//! (so scaling a video leaves them where they were), periodic over the frame (so a crop only
//! shifts them), made of spatial frequencies in a mid band that survives compression and
//! resampling. One pattern finds the geometry (sync); one pattern per payload bit, added with
//! the bit's sign, carries the payload. The patterns are orthonormal, so bits do not disturb
//! each other or the sync.

use std::sync::OnceLock;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rustfft::num_complex::Complex32;

/// Payload bits carried by every frame.
pub const PAYLOAD_BITS: usize = 48;

/// Size classes: class `c` serves frames whose shorter side is at least `64 << c` pixels (the
/// smallest class also smaller frames). Bigger frames get finer patterns with more
/// frequencies, so the mark grows with the picture.
pub const CLASSES: usize = 5;

/// Spatial frequencies of class 0, in cycles per frame width or height: the ring between
/// these radii (periods of 4 to 16 pixels on a 64-pixel frame). Class `c` uses `2^c` times
/// these.
const BAND: (f64, f64) = (4.0, 16.0);

/// Energy of the sync pattern relative to one payload bit's: it must stand out among every
/// position and zoom the detector tries, where a bit is read at one known position.
const SYNC_WEIGHT: f32 = 32.0;

/// Seed of the pseudo-random patterns (changing it changes the watermark).
const SEED: u64 = 0x4869_6d6d_656c_574d;

/// The size class of frames whose shorter side is `side` pixels.
pub fn class_of(side: usize) -> usize {
    let mut class = 0;
    while class + 1 < CLASSES && side >= 64 << (class + 1) {
        class += 1;
    }
    class
}

/// The sync and bit patterns of one size class, as coefficients of the frequencies in
/// [`Patterns::frequencies`] (one of each conjugate pair: the fields are real).
pub struct Patterns {
    /// The size class.
    pub class: usize,
    /// `(kx, ky)` in cycles per frame width and height, `ky > 0` or `ky == 0, kx > 0`.
    pub frequencies: Vec<(i32, i32)>,
    /// The sync pattern's coefficients (unit energy).
    pub sync: Vec<Complex32>,
    /// Each payload bit's pattern's coefficients (unit energy, orthogonal to all others).
    pub bits: Vec<Vec<Complex32>>,
}

impl Patterns {
    /// The patterns of size class `class` (made once).
    pub fn get(class: usize) -> &'static Patterns {
        static PATTERNS: [OnceLock<Patterns>; CLASSES] = [const { OnceLock::new() }; CLASSES];
        PATTERNS[class].get_or_init(|| Patterns::make(class))
    }

    /// The highest frequency used, in cycles per frame.
    pub fn reach(&self) -> i32 {
        (BAND.1 as i32) << self.class
    }

    fn make(class: usize) -> Patterns {
        let scale = f64::from(1u32 << class);
        let (low, high) = (BAND.0 * scale, BAND.1 * scale);
        let reach = high as i32;
        let mut frequencies = Vec::new();
        for ky in 0..=reach {
            for kx in -reach..=reach {
                let radius = f64::from(kx * kx + ky * ky).sqrt();
                let half_plane = ky > 0 || kx > 0;
                if half_plane && (low..=high).contains(&radius) {
                    frequencies.push((kx, ky));
                }
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(SEED);
        rng.set_stream(class as u64);
        let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(PAYLOAD_BITS + 1);
        for _ in 0..=PAYLOAD_BITS {
            let mut vector: Vec<f32> = (0..2 * frequencies.len())
                .map(|_| StandardNormal.sample(&mut rng))
                .collect();
            for done in &vectors {
                let along: f32 = dot(&vector, done);
                vector
                    .iter_mut()
                    .zip(done)
                    .for_each(|(v, d)| *v -= along * d);
            }
            let norm = dot(&vector, &vector).sqrt();
            vector.iter_mut().for_each(|v| *v /= norm);
            vectors.push(vector);
        }
        let as_complex = |v: &Vec<f32>| -> Vec<Complex32> {
            v.chunks(2).map(|c| Complex32::new(c[0], c[1])).collect()
        };
        let mut patterns = vectors.iter().map(as_complex);
        let sync = patterns.next().expect("the sync pattern was made");
        Patterns {
            class,
            frequencies,
            sync,
            bits: patterns.collect(),
        }
    }

    /// The coefficients of the whole mark for `bits` (sync plus each bit's pattern with its
    /// sign), scaled so that the field has unit RMS.
    pub fn mark(&self, bits: &[bool; PAYLOAD_BITS]) -> Vec<Complex32> {
        let sync_amplitude = SYNC_WEIGHT.sqrt();
        let mut mark: Vec<Complex32> = self.sync.iter().map(|c| c * sync_amplitude).collect();
        for (pattern, &bit) in self.bits.iter().zip(bits) {
            let sign = if bit { 1.0 } else { -1.0 };
            mark.iter_mut()
                .zip(pattern)
                .for_each(|(m, p)| *m += p * sign);
        }
        // A real field sum of c e^{iθ} + conj: mean square 2 Σ|c|².
        let mean_square: f32 = 2.0 * mark.iter().map(|c| c.norm_sqr()).sum::<f32>();
        let scale = mean_square.sqrt().recip();
        mark.iter_mut().for_each(|c| *c *= scale);
        mark
    }

    /// The field of `coefficients` sampled on a `width` x `height` frame (pixel `x` at
    /// `x / width` of the period), row-major.
    pub fn field(&self, coefficients: &[Complex32], width: usize, height: usize) -> Vec<f32> {
        let phase = |k: i32, position: usize, size: usize| {
            let angle = std::f64::consts::TAU * f64::from(k) * position as f64 / size as f64;
            Complex32::new(angle.cos() as f32, angle.sin() as f32)
        };
        // rows[ky][x] = Σ_kx c(kx, ky) e^{2πi kx x / width}; then the field sums over ky.
        let mut rows = vec![vec![Complex32::default(); width]; self.reach() as usize + 1];
        for (&(kx, ky), &c) in self.frequencies.iter().zip(coefficients) {
            let row = &mut rows[ky as usize];
            for (x, value) in row.iter_mut().enumerate() {
                *value += c * phase(kx, x, width);
            }
        }
        let mut field = vec![0.0f32; width * height];
        for (ky, row) in rows.iter().enumerate() {
            for y in 0..height {
                let turn = phase(ky as i32, y, height);
                let line = &mut field[y * width..(y + 1) * width];
                for (value, r) in line.iter_mut().zip(row) {
                    *value += 2.0 * (r * turn).re;
                }
            }
        }
        field
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_orthonormal() {
        let patterns = Patterns::get(0);
        assert!(patterns.frequencies.len() > 3 * PAYLOAD_BITS);
        let inner = |a: &[Complex32], b: &[Complex32]| -> f32 {
            a.iter().zip(b).map(|(x, y)| (x * y.conj()).re).sum()
        };
        let all: Vec<&Vec<Complex32>> = std::iter::once(&patterns.sync)
            .chain(&patterns.bits)
            .collect();
        for (i, a) in all.iter().enumerate() {
            for (j, b) in all.iter().enumerate() {
                let expected = if i == j { 1.0 } else { 0.0 };
                assert!((inner(a, b) - expected).abs() < 1e-4, "{i} {j}");
            }
        }
    }

    #[test]
    fn mark_field_has_unit_rms_and_scales_with_the_frame() {
        let patterns = Patterns::get(1);
        let mut bits = [false; PAYLOAD_BITS];
        bits.iter_mut().step_by(3).for_each(|b| *b = true);
        let mark = patterns.mark(&bits);
        let field = patterns.field(&mark, 96, 64);
        let rms = (field.iter().map(|v| v * v).sum::<f32>() / field.len() as f32).sqrt();
        assert!((rms - 1.0).abs() < 1e-3, "{rms}");
        // A frame twice as wide holds the same field, stretched.
        let wide = patterns.field(&mark, 192, 64);
        for (y, x) in [(0, 0), (7, 30), (63, 95)] {
            assert!((wide[y * 192 + 2 * x] - field[y * 96 + x]).abs() < 1e-4);
        }
    }

    #[test]
    fn classes_follow_the_shorter_side() {
        assert_eq!(class_of(16), 0);
        assert_eq!(class_of(127), 0);
        assert_eq!(class_of(128), 1);
        assert_eq!(class_of(480), 2);
        assert_eq!(class_of(720), 3);
        assert_eq!(class_of(4096), CLASSES - 1);
    }
}
