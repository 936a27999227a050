//! Matrix products of int8 weights and int8 activations: with AVX-512 VNNI (`vpdpbusd`: sixteen
//! lanes, each adding four products of an unsigned and a signed byte to an i32 sum, twice the
//! multiply-adds of `vdpbf16ps` per instruction), or with AVX2 (`vpmaddubsw`, then `vpmaddwd`
//! by ones: the same four products per i32 lane in two instructions, about twice the
//! multiply-adds of f32 FMA on Zen 3).
//!
//! `out = x w^T` with `x` `m x k` and `w` `n x k` (a linear layer's weight as stored). The
//! weight is quantised once per output channel (symmetric: `w ≈ scale_c q`) and packed in
//! panels of `NR` columns, four neighbouring `k` of a column in a 32-bit word
//! ([`QuantizedWeight`]); the activations are quantised per row when a product runs
//! (`x ≈ scale_r (u - 128)`, `u` an unsigned byte) and laid out in strips of `MR` rows
//! ([`QuantizedRows`]). The i32 sums become `scale_r scale_c (sum(u q) - 128 sum(q))`. Blocks and
//! tiles are laid out as in [`super::bf16_gemm`]. AVX2's `vpmaddubsw` adds two products in a
//! saturating i16, so weights for it keep to `|q| <= 63` (`2 x 255 x 63` fits; oneDNN does the
//! same); VNNI's weights use `|q| <= 127`.

use std::arch::x86_64::{
    __m256i, __m512i, _mm256_add_epi32, _mm256_loadu_si256, _mm256_madd_epi16,
    _mm256_maddubs_epi16, _mm256_set1_epi16, _mm256_set1_epi32, _mm256_setzero_si256,
    _mm256_storeu_si256, _mm512_add_epi32, _mm512_dpbusd_epi32, _mm512_loadu_si512,
    _mm512_set1_epi32, _mm512_setzero_si512, _mm512_storeu_si512,
};
use std::ops::Range;

use rayon::prelude::*;

/// Rows of `x` per microkernel call.
const MR: usize = 6;
/// Vectors of sixteen output columns per VNNI microkernel call.
const NV: usize = 4;
/// Output columns per packed panel.
const NR: usize = 16 * NV;
/// Output columns per AVX2 microkernel call (two vectors of eight).
const NR_AVX2: usize = 16;
/// Quads of `k` per block of a tile (384 quads x 256 columns are 384 KiB).
const KC_QUADS: usize = 384;
/// Rows of the output summed per task.
const MC: usize = 192;
/// Output columns per task.
const NC: usize = 256;
/// The activations' zero point: stored bytes are `round(x / scale) + 128`.
const ZERO_POINT: i32 = 128;
/// Steps either side of zero that the activations take (`|u - 128| <= 127`).
const ROW_LEVELS: f32 = 127.0;

/// The instructions a product runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512 VNNI's `vpdpbusd`; weights within -127..=127.
    Vnni,
    /// AVX2's `vpmaddubsw` and `vpmaddwd`; weights within -63..=63.
    Avx2,
}

impl Kernel {
    /// The fastest kernel this CPU runs, if any.
    pub fn detect() -> Option<Self> {
        if Self::Vnni.runs_here() {
            Some(Self::Vnni)
        } else if Self::Avx2.runs_here() {
            Some(Self::Avx2)
        } else {
            None
        }
    }

    /// Whether this CPU has the kernel's instructions.
    pub fn runs_here(self) -> bool {
        match self {
            Self::Vnni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            Self::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
        }
    }

    /// Steps either side of zero that the kernel's weights may take without its sums
    /// saturating.
    fn weight_levels(self) -> f32 {
        match self {
            Self::Vnni => 127.0,
            Self::Avx2 => 63.0,
        }
    }

    /// The instructions, as the benchmark names them.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vnni => "AVX-512 VNNI",
            Self::Avx2 => "AVX2",
        }
    }
}

/// Whether this CPU runs these products.
pub fn is_available() -> bool {
    Kernel::detect().is_some()
}

/// `values` divided into steps of `max |value| / levels` (1 for an all-zero slice), rounded:
/// the scale and the steps.
fn quantise(values: &[f32], levels: f32) -> (f32, impl Iterator<Item = i32> + '_) {
    let scale = step_of(values, levels);
    let inverse = 1.0 / scale;
    let steps = values.iter().map(move |v| rounded(v * inverse));
    (scale, steps)
}

/// `max |value| / levels`, or 1 where all are zero.
fn step_of(values: &[f32], levels: f32) -> f32 {
    let largest = super::elementwise::fold_lanes(values, 0.0, |m, v| {
        // A compare and select rather than `f32::max`, so that the loop vectorises.
        if v.abs() > m { v.abs() } else { m }
    });
    if largest > 0.0 { largest / levels } else { 1.0 }
}

/// `steps` (within -127..=127) rounded to the nearest integer, halves up, without
/// a call to libm's `round` (which baseline x86-64 has no instruction for).
fn rounded(steps: f32) -> i32 {
    // Shifted to be positive, truncation rounds down.
    (steps + 128.5) as i32 - 128
}

/// A linear layer's weight (`n x k`) quantised per output channel for a [`Kernel`] and packed: a
/// panel of `k.div_ceil(4) x NR` words for each `NR` columns, zero past the last column and past
/// `k`.
pub struct QuantizedWeight {
    words: Vec<u32>,
    /// The kernel whose weight range the steps keep to.
    kernel: Kernel,
    /// Per column: `w ≈ scale q`.
    scales: Vec<f32>,
    /// Per column: the sum of its `q`, for the activations' zero point.
    sums: Vec<i32>,
    n: usize,
    k: usize,
}

impl QuantizedWeight {
    /// `w` (`n x k`, row-major) quantised and packed for `kernel`, in parallel.
    ///
    /// # Panics
    /// If `w` holds fewer than `n x k` values.
    pub fn new(w: &[f32], n: usize, k: usize, kernel: Kernel) -> Self {
        assert!(w.len() >= n * k, "int8 weight: too few values");
        let k_quads = k.div_ceil(4);
        let mut words = vec![0u32; n.div_ceil(NR) * NR * k_quads];
        let mut scales = vec![1f32; n];
        let mut sums = vec![0i32; n];
        if k > 0 {
            let panels = words
                .par_chunks_mut(k_quads * NR)
                .zip(scales.par_chunks_mut(NR))
                .zip(sums.par_chunks_mut(NR));
            panels
                .enumerate()
                .for_each(|(panel, ((words, scales), sums))| {
                    for (c, (scale, sum)) in scales.iter_mut().zip(sums).enumerate() {
                        let column = panel * NR + c;
                        let values = &w[column * k..(column + 1) * k];
                        let (column_scale, steps) = quantise(values, kernel.weight_levels());
                        *scale = column_scale;
                        for (i, step) in steps.enumerate() {
                            *sum += step;
                            words[i / 4 * NR + c] |= u32::from(step as i8 as u8) << (8 * (i % 4));
                        }
                    }
                });
        }
        Self {
            words,
            kernel,
            scales,
            sums,
            n,
            k,
        }
    }

    /// Columns (`n`) and depth (`k`).
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }
}

/// The left operand `x` (`rows x k`) quantised per row and laid out in strips of `MR` rows
/// (the last padded), each strip its `k.div_ceil(4)` quads in order with the strip's rows side
/// by side.
pub struct QuantizedRows {
    words: Vec<u32>,
    /// Per row: `x ≈ scale (u - 128)`.
    scales: Vec<f32>,
    rows: usize,
    k: usize,
}

impl QuantizedRows {
    /// `values` (`rows x k`, row-major; f32 or bf16) quantised, in parallel.
    pub fn new<T: Copy + Into<f32> + Sync>(values: &[T], k: usize) -> Self {
        let rows = values.len().checked_div(k).unwrap_or(0);
        let k_quads = k.div_ceil(4);
        // Padding bytes are the zero point: they stand for 0 (and meet zero weights anyway).
        let mut words = vec![0x8080_8080u32; rows.div_ceil(MR) * MR * k_quads];
        let mut scales = vec![1f32; rows];
        if k > 0 {
            let strips = words
                .par_chunks_mut(MR * k_quads)
                .zip(scales.par_chunks_mut(MR))
                .zip(values.par_chunks(MR * k));
            let buffers = || (vec![0f32; k], vec![ZERO_POINT as u8; k_quads * 4]);
            strips.for_each_init(buffers, |(row, bytes), ((strip, scales), values)| {
                for (r, (values, scale)) in values.chunks_exact(k).zip(scales).enumerate() {
                    row.iter_mut()
                        .zip(values)
                        .for_each(|(out, value)| *out = (*value).into());
                    *scale = step_of(row, ROW_LEVELS);
                    let inverse = 1.0 / *scale;
                    for (byte, value) in bytes.iter_mut().zip(row.iter()) {
                        *byte = (rounded(value * inverse) + ZERO_POINT) as u8;
                    }
                    for (q, quad) in bytes.chunks_exact(4).enumerate() {
                        strip[q * MR + r] =
                            u32::from_le_bytes([quad[0], quad[1], quad[2], quad[3]]);
                    }
                }
            });
        }
        Self {
            words,
            scales,
            rows,
            k,
        }
    }
}

/// `x w^T` (`x.rows x w.n`) on rayon's pool with the weight's kernel: each task sums a tile of
/// up to `MC x NC` in i32 and hands it on row by row, scaled back to f32:
/// `finish(row, columns, values)`.
///
/// # Panics
/// If the CPU lacks the weight's kernel (see [`Kernel::runs_here`]) or the operands' `k`
/// differ.
pub fn product_tiles(
    x: &QuantizedRows,
    w: &QuantizedWeight,
    finish: impl Fn(usize, Range<usize>, &mut [f32]) + Sync,
) {
    assert!(
        w.kernel.runs_here(),
        "int8 product: this CPU lacks {}",
        w.kernel.name()
    );
    assert_eq!(x.k, w.k, "int8 product: operands of different depth");
    super::blocked_product(
        (x.rows, w.n, x.k.div_ceil(4)),
        (MC, NC, KC_QUADS),
        |rows, columns, quads, sums: &mut [i32], accumulate| {
            let parts = ((x, rows), (w, columns), quads);
            // SAFETY: the CPU has the kernel (checked above); the parts lie inside the
            // operands, and `sums` holds `MC x NC`.
            unsafe { sweep(parts, sums.as_mut_ptr(), accumulate) };
        },
        |rows, columns, sums| {
            let mut values = [0f32; NC];
            let values = &mut values[..columns.len()];
            let column_sums = &w.sums[columns.clone()];
            let column_scales = &w.scales[columns.clone()];
            for (r, sums) in rows.zip(sums.chunks_exact(NC)) {
                let row_scale = x.scales[r];
                let each = values.iter_mut().zip(sums).zip(column_sums);
                for (((value, sum), column_sum), column_scale) in each.zip(column_scales) {
                    let centred = sum - ZERO_POINT * column_sum;
                    *value = centred as f32 * row_scale * column_scale;
                }
                finish(r, columns.clone(), values);
            }
        },
    );
}

/// An operand and the rows (or columns) of it that a sweep reads.
type Part<'a, T> = (&'a T, Range<usize>);

/// The i32 sums of `x`'s `rows` (from a multiple of `MR`) and `w`'s `columns` (from a
/// multiple of `NR`) over `quads`, stored to (or added into, with `accumulate`) `out`, rows
/// `NC` apart, whole panels wide, with the weight's kernel.
///
/// # Safety
/// The CPU has the weight's kernel; the parts lie inside the operands; `out` holds
/// `rows.len()` rows of `NC` and no other thread touches it.
unsafe fn sweep(
    ((x, rows), (w, columns), quads): (
        Part<'_, QuantizedRows>,
        Part<'_, QuantizedWeight>,
        Range<usize>,
    ),
    out: *mut i32,
    accumulate: bool,
) {
    let (x_quads, w_quads) = (x.k.div_ceil(4), w.k.div_ceil(4));
    let kc = quads.len();
    for r0 in rows.clone().step_by(MR) {
        let strip = x.words[r0 * x_quads + quads.start * MR..].as_ptr();
        let strip_rows = MR.min(rows.end - r0);
        for c0 in columns.clone().step_by(NR) {
            let panel = w.words[c0 / NR * NR * w_quads + quads.start * NR..].as_ptr();
            // SAFETY: the strip holds `kc` quads of `MR` rows, the panel `kc x NR`, and `out`
            // this tile; the CPU has the kernel (caller's promise).
            unsafe {
                let dst = out.add((r0 - rows.start) * NC + c0 - columns.start);
                match w.kernel {
                    Kernel::Vnni => with_strip_rows!(
                        strip_rows,
                        microkernel_vnni(kc, strip, panel, (dst, accumulate))
                    ),
                    Kernel::Avx2 => {
                        for sub in (0..NR).step_by(NR_AVX2) {
                            let tile = (dst.add(sub), accumulate);
                            with_strip_rows!(
                                strip_rows,
                                microkernel_avx2(kc, strip, panel.add(sub), tile)
                            );
                        }
                    }
                }
            }
        }
    }
}

/// `R x NR` i32 sums over `kc` quads of the strip `x` and the panel `b`, stored to (or, with
/// `accumulate`, added into) the tile at `dst` (rows `NC` apart).
///
/// # Safety
/// The CPU has AVX-512 VNNI; reads of `kc` quads stay inside the strip and the panel, and the
/// tile lies inside the caller's sums.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn microkernel_vnni<const R: usize>(
    kc: usize,
    x: *const u32,
    b: *const u32,
    (dst, accumulate): (*mut i32, bool),
) {
    let mut sums = [[_mm512_setzero_si512(); NV]; R];
    // SAFETY: reads stay inside the strip and the panel, writes inside the tile (caller's
    // promise).
    unsafe {
        for p in 0..kc {
            let columns: [__m512i; NV] =
                std::array::from_fn(|v| _mm512_loadu_si512(b.add(p * NR + 16 * v).cast()));
            for (r, row) in sums.iter_mut().enumerate() {
                let quad = _mm512_set1_epi32(*x.add(p * MR + r) as i32);
                for (sum, column) in row.iter_mut().zip(columns) {
                    *sum = _mm512_dpbusd_epi32(*sum, quad, column);
                }
            }
        }
        for (r, row) in sums.iter().enumerate() {
            for (v, sum) in row.iter().enumerate() {
                let dst = dst.add(r * NC + 16 * v).cast();
                let value = if accumulate {
                    _mm512_add_epi32(_mm512_loadu_si512(dst), *sum)
                } else {
                    *sum
                };
                _mm512_storeu_si512(dst, value);
            }
        }
    }
}

/// `R x NR_AVX2` i32 sums over `kc` quads of the strip `x` and the panel columns at `b` (quads
/// `NR` apart), stored to (or, with `accumulate`, added into) the tile at `dst` (rows `NC`
/// apart). Each quad's four byte products go pairwise into i16 (`vpmaddubsw`: exact while
/// `|q| <= 63`), then into i32 (`vpmaddwd` by ones).
///
/// # Safety
/// As [`microkernel_vnni`]'s, with AVX2 for the CPU.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn microkernel_avx2<const R: usize>(
    kc: usize,
    x: *const u32,
    b: *const u32,
    (dst, accumulate): (*mut i32, bool),
) {
    const VECTORS: usize = NR_AVX2 / 8;
    let ones = _mm256_set1_epi16(1);
    let mut sums = [[_mm256_setzero_si256(); VECTORS]; R];
    // SAFETY: reads stay inside the strip and the panel, writes inside the tile (caller's
    // promise).
    unsafe {
        for p in 0..kc {
            let columns: [__m256i; VECTORS] =
                std::array::from_fn(|v| _mm256_loadu_si256(b.add(p * NR + 8 * v).cast()));
            for (r, row) in sums.iter_mut().enumerate() {
                let quad = _mm256_set1_epi32(*x.add(p * MR + r) as i32);
                for (sum, column) in row.iter_mut().zip(columns) {
                    let pairs = _mm256_maddubs_epi16(quad, column);
                    *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(pairs, ones));
                }
            }
        }
        for (r, row) in sums.iter().enumerate() {
            for (v, sum) in row.iter().enumerate() {
                let dst = dst.add(r * NC + 8 * v).cast();
                let value = if accumulate {
                    _mm256_add_epi32(_mm256_loadu_si256(dst), *sum)
                } else {
                    *sum
                };
                _mm256_storeu_si256(dst, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values in -1..1 from a fixed sequence.
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// The kernels this CPU runs.
    fn kernels() -> Vec<Kernel> {
        let kernels: Vec<Kernel> = [Kernel::Vnni, Kernel::Avx2]
            .into_iter()
            .filter(|kernel| kernel.runs_here())
            .collect();
        if kernels.is_empty() {
            eprintln!("skipped: this CPU lacks AVX2 and AVX-512 VNNI");
        }
        kernels
    }

    /// `x w^T` through the kernel, `x` `m x k` and `w` `n x k`.
    fn product(x: &[f32], w: &[f32], (m, n, k): (usize, usize, usize), kernel: Kernel) -> Vec<f32> {
        let out = std::sync::Mutex::new(vec![f32::NAN; m * n]);
        let (rows, weight) = (
            QuantizedRows::new(x, k),
            QuantizedWeight::new(w, n, k, kernel),
        );
        product_tiles(&rows, &weight, |i, columns, values| {
            out.lock().unwrap()[i * n..][columns].copy_from_slice(values);
        });
        out.into_inner().unwrap()
    }

    #[test]
    fn matches_the_product_of_the_quantised_values_exactly() {
        for kernel in kernels() {
            // Rows past a strip and a tile, columns past a panel and a tile, k not a multiple
            // of four, k past a block of quads, a zero row.
            for (seed, &(m, n, k)) in [
                (1, 1, 1),
                (5, 63, 7),
                (13, 65, 130),
                (200, 300, 1603),
                (6, 64, 4),
            ]
            .iter()
            .enumerate()
            {
                let mut x = values(m * k, 2 * seed as u64);
                x[..k].fill(0.0);
                let w = values(n * k, 2 * seed as u64 + 1);
                let out = product(&x, &w, (m, n, k), kernel);
                for i in 0..m {
                    let (x_scale, x_steps) = quantise(&x[i * k..(i + 1) * k], ROW_LEVELS);
                    let x_steps: Vec<i32> = x_steps.collect();
                    for j in 0..n {
                        let w = &w[j * k..(j + 1) * k];
                        let (w_scale, w_steps) = quantise(w, kernel.weight_levels());
                        let exact: i64 = x_steps
                            .iter()
                            .zip(w_steps)
                            .map(|(a, b)| i64::from(a * b))
                            .sum();
                        let expected = exact as f64 * f64::from(x_scale) * f64::from(w_scale);
                        let error = (f64::from(out[i * n + j]) - expected).abs();
                        // The i32 sums are exact; only the final scaling rounds.
                        assert!(
                            error <= 1e-6 * expected.abs().max(1e-3),
                            "{kernel:?} {m}x{n}x{k} at ({i}, {j}): {error}"
                        );
                        // And the quantised product is close to the f32 one.
                        let real: f32 = (0..k).map(|t| x[i * k + t] * w[t]).sum();
                        assert!(
                            (out[i * n + j] - real).abs() <= 0.02 * (k as f32).sqrt(),
                            "{kernel:?} {m}x{n}x{k} at ({i}, {j})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_largest_steps_do_not_saturate() {
        // Rows of ±1 quantise to bytes 255 and 1, columns of ±1 to the kernel's largest steps:
        // the pairs AVX2 adds in i16 are at their largest.
        let k = 64;
        let x: Vec<f32> = [1.0, -1.0].iter().flat_map(|&v| vec![v; k]).collect();
        for kernel in kernels() {
            let out = product(&x, &x, (2, 2, k), kernel);
            let k = k as f32;
            for (out, expected) in out.iter().zip([k, -k, -k, k]) {
                assert!((out - expected).abs() <= 1e-5 * k, "{kernel:?}: {out}");
            }
        }
    }

    #[test]
    fn quantisation_keeps_the_largest_value_and_zero() {
        let (scale, steps) = quantise(&[0.0, -2.54, 1.26, 0.004], 127.0);
        assert!((scale - 0.02).abs() < 1e-8, "{scale}");
        assert_eq!(steps.collect::<Vec<_>>(), vec![0, -127, 63, 0]);
        let (scale, steps) = quantise(&[0.0; 3], 127.0);
        assert_eq!((scale, steps.collect::<Vec<_>>()), (1.0, vec![0, 0, 0]));
    }
}
