//! Matrix products of bf16 inputs into f32 sums with AVX-512 BF16 (`vdpbf16ps`: sixteen lanes,
//! each adding the products of a pair of bf16 values to an f32 sum), on CPUs that have it.
//!
//! `out = x w^T` with `x` `m x k` and `w` `n x k` (a linear layer's weight as stored). Both are
//! read as pairs of neighbouring `k` values (one 32-bit word): `x`'s pairs are broadcast to all
//! lanes from strips of `MR` rows ([`Rows`]), `w`'s are packed for each block of `KC_PAIRS x NC`
//! into panels of `NR` columns, so that one vector load takes a pair from sixteen columns. The
//! microkernel keeps `MR x NR` sums in 24 of the 32 vector registers; blocks are sized so that
//! a packed block stays in L2 and a strip of `x` in L1 while a block is swept.

use std::arch::x86_64::{
    __m256bh, __m256i, __m512, __m512bh, _MM_HINT_T0, _mm_prefetch, _mm256_storeu_si256,
    _mm512_add_ps, _mm512_cvtneps_pbh, _mm512_dpbf16_ps, _mm512_loadu_ps, _mm512_loadu_si512,
    _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_set1_epi32, _mm512_setzero_ps,
    _mm512_storeu_ps,
};
use std::ops::Range;

use half::bf16;
use rayon::prelude::*;

/// Rows of `x` per microkernel call.
const MR: usize = 6;
/// Vectors of sixteen output columns per microkernel call.
const NV: usize = 4;
/// Output columns per packed panel.
const NR: usize = 16 * NV;
/// Pairs of `k` per packed block. On 2048^3 (2 threads): 128 pairs 292 GFLOP/s, 256 362,
/// 384 (with 256 columns) 371.
const KC_PAIRS: usize = 384;
/// Output columns per packed block (384 pairs x 256 columns are 384 KiB).
const NC: usize = 256;

/// Whether this CPU runs [`matmul_transposed`].
pub fn is_available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// `dst[i] = src[i]` rounded to bf16 (to nearest, ties to even, as `bf16::from_f32` rounds
/// normal values; AVX-512 BF16 flushes subnormals to zero), sixteen at a time with AVX-512 BF16
/// where the CPU has it.
pub fn narrow(src: &[f32], dst: &mut [bf16]) {
    let len = src.len().min(dst.len());
    let mut done = 0;
    if is_available() {
        // SAFETY: the features were checked; both slices hold `len` values.
        unsafe { narrow_vectors(&src[..len], &mut dst[..len]) };
        done = len / 16 * 16;
    }
    for (dst, src) in dst[done..len].iter_mut().zip(&src[done..len]) {
        *dst = bf16::from_f32(*src);
    }
}

/// [`narrow`]'s whole vectors of sixteen.
///
/// # Safety
/// The CPU has AVX-512 BF16.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn narrow_vectors(src: &[f32], dst: &mut [bf16]) {
    for (src, dst) in src.chunks_exact(16).zip(dst.chunks_exact_mut(16)) {
        // SAFETY: each chunk holds sixteen values; `bf16` is 16 bits.
        unsafe {
            let narrowed = _mm512_cvtneps_pbh(_mm512_loadu_ps(src.as_ptr()));
            _mm256_storeu_si256(
                dst.as_mut_ptr().cast(),
                std::mem::transmute::<__m256bh, __m256i>(narrowed),
            );
        }
    }
}

/// The left operand `x` (`rows x k`) as the products read it: strips of `MR` rows (the last
/// padded with zero rows), each strip its `k.div_ceil(2)` pairs in order with the strip's rows
/// side by side, an odd `k`'s last pair padded with zero.
#[derive(Default)]
pub struct Rows {
    words: Vec<u32>,
    rows: usize,
    k: usize,
}

impl Rows {
    /// `values` (`rows x k`, row-major) laid out in strips, in parallel.
    pub fn new(values: &[bf16], k: usize) -> Self {
        let rows = values.len().checked_div(k).unwrap_or(0);
        let k_pairs = k.div_ceil(2);
        let mut words = vec![0u32; rows.div_ceil(MR) * MR * k_pairs];
        if k > 0 {
            let bits = |value: &bf16| u32::from(value.to_bits());
            let strips = words.par_chunks_mut(MR * k_pairs);
            strips
                .zip(values.par_chunks(MR * k))
                .for_each(|(strip, rows)| {
                    for (r, row) in rows.chunks_exact(k).enumerate() {
                        for (p, pair) in row.chunks(2).enumerate() {
                            let high = pair.get(1).map_or(0, bits);
                            strip[p * MR + r] = bits(&pair[0]) | high << 16;
                        }
                    }
                });
        }
        Self { words, rows, k }
    }

    /// `values` (`rows x k`, row-major f32) rounded to bf16 in strips, on the calling thread,
    /// reusing this operand's memory.
    pub fn refill_rounded(&mut self, rows: usize, k: usize, values: &[f32]) {
        let mut narrowed = vec![bf16::ZERO; rows * k];
        narrow(&values[..rows * k], &mut narrowed);
        self.refill(rows, k, |r, i| narrowed[r * k + i]);
    }

    /// `rows x k` values `value(row, index)` in strips, on the calling thread, reusing this
    /// operand's memory.
    pub fn refill(&mut self, rows: usize, k: usize, value: impl Fn(usize, usize) -> bf16) {
        let k_pairs = k.div_ceil(2);
        self.words.clear();
        self.words.resize(rows.div_ceil(MR) * MR * k_pairs, 0);
        (self.rows, self.k) = (rows, k);
        for r in 0..rows {
            let strip = &mut self.words[r / MR * MR * k_pairs..];
            for p in 0..k_pairs {
                let high = if 2 * p + 1 < k {
                    value(r, 2 * p + 1).to_bits()
                } else {
                    0
                };
                strip[p * MR + r % MR] =
                    u32::from(value(r, 2 * p).to_bits()) | u32::from(high) << 16;
            }
        }
    }
}

/// The right operand `w` (`n x k`) packed whole, for products of small operands on one thread
/// (attention's keys and values).
#[derive(Default)]
pub struct Panels {
    words: Vec<u32>,
    n: usize,
    k: usize,
}

impl Panels {
    /// `n x k` values `value(column, index)` in panels, reusing this operand's memory.
    pub fn refill(&mut self, n: usize, k: usize, value: impl Fn(usize, usize) -> bf16) {
        let k_pairs = k.div_ceil(2);
        self.words.resize(n.div_ceil(NR) * NR * k_pairs, 0);
        (self.n, self.k) = (n, k);
        pack_with(
            |column, index| value(column, index).to_bits(),
            k,
            0..n,
            0..k_pairs,
            &mut self.words,
        );
    }
}

/// `out` (`x.rows x w.n`, rows `out_stride` apart) = `x w^T`, or `+=` with `accumulate`, on the
/// calling thread.
///
/// # Panics
/// If the CPU lacks AVX-512 BF16, the operands' `k` differ, or `out` is too short.
pub fn product(x: &Rows, w: &Panels, out: &mut [f32], out_stride: usize, accumulate: bool) {
    assert!(is_available(), "bf16 product: this CPU lacks AVX-512 BF16");
    assert_eq!(x.k, w.k, "bf16 product: operands of different depth");
    let (m, n) = (x.rows, w.n);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        n <= out_stride && out.len() >= (m - 1) * out_stride + n,
        "bf16 product: out too short"
    );
    if x.k == 0 {
        if !accumulate {
            out.chunks_mut(out_stride)
                .for_each(|row| row[..n].fill(0.0));
        }
        return;
    }
    let pairs = 0..x.k.div_ceil(2);
    let out = OutPtr(out.as_mut_ptr());
    // SAFETY: the CPU has the features (checked above); the operands hold what they say, and
    // `out` is this thread's own.
    unsafe { block((m, out_stride), x, pairs, &w.words, 0..n, out, accumulate) };
}

/// `out` (`x.rows x n`, f32) = `x` times the transpose of `w` (`n x x.k`, row-major). Runs on
/// rayon's pool.
///
/// # Panics
/// If the CPU lacks AVX-512 BF16 (check [`is_available`]) or `w` or `out` is shorter than the
/// sizes say.
pub fn matmul_transposed(x: &Rows, w: &[bf16], n: usize, out: &mut [f32]) {
    assert!(is_available(), "bf16 product: this CPU lacks AVX-512 BF16");
    let (m, k) = (x.rows, x.k);
    assert!(
        w.len() >= n * k && out.len() >= m * n,
        "bf16 product: operands too short"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out[..m * n].fill(0.0);
        return;
    }
    // Tasks of whole panels, as many for each thread, so that the cores get equal work.
    let threads = rayon::current_num_threads();
    let panels = n.div_ceil(NR);
    let tasks = panels.div_ceil(NC / NR).div_ceil(threads) * threads;
    let panels_per_task = panels.div_ceil(tasks);
    let out = OutPtr(out.as_mut_ptr());
    let k_pairs = k.div_ceil(2);
    (0..panels.div_ceil(panels_per_task))
        .into_par_iter()
        .for_each(|task| {
            let columns = task * panels_per_task * NR..((task + 1) * panels_per_task * NR).min(n);
            let mut packed = vec![0u32; KC_PAIRS * panels_per_task * NR];
            for k0 in (0..k_pairs).step_by(KC_PAIRS) {
                let pairs = k0..k_pairs.min(k0 + KC_PAIRS);
                let accumulate = pairs.start > 0;
                let value = |column: usize, index: usize| w[column * k + index].to_bits();
                pack_with(value, k, columns.clone(), pairs.clone(), &mut packed);
                // SAFETY: the CPU has the features (checked above); `x` holds `m` rows of
                // `k_pairs` in strips, `packed` this block, and each task writes its own columns
                // of `out`.
                unsafe { block((m, n), x, pairs, &packed, columns.clone(), out, accumulate) };
            }
        });
}

/// Packs columns `columns` of `w` (`w(column, index)`: bf16 bits, `index < k`) at `pairs` into
/// `packed`: a panel of `pairs.len() x NR` words for each `NR` columns, zero past the last
/// column and past `k`.
fn pack_with(
    w: impl Fn(usize, usize) -> u16,
    k: usize,
    columns: Range<usize>,
    pairs: Range<usize>,
    packed: &mut [u32],
) {
    let kc = pairs.len();
    for (panel, start) in columns.clone().step_by(NR).enumerate() {
        let panel = &mut packed[panel * kc * NR..(panel + 1) * kc * NR];
        let width = NR.min(columns.end - start);
        // Pair by pair, so that writes are sequential and reads of a column's neighbouring
        // pairs (or of neighbouring columns, where `w` is stored by `index`) share cache lines.
        for (words, pair) in panel.chunks_exact_mut(NR).zip(pairs.clone()) {
            let has_high = 2 * pair + 1 < k;
            for (c, word) in words[..width].iter_mut().enumerate() {
                let low = u32::from(w(start + c, 2 * pair));
                let high = if has_high {
                    u32::from(w(start + c, 2 * pair + 1))
                } else {
                    0
                };
                *word = low | high << 16;
            }
            words[width..].fill(0);
        }
    }
}

/// The pointer to `out` that the tasks share, each writing its own columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the tasks write disjoint columns.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// All rows of `out` (`m` rows `n` apart) in `columns` for `pairs` (stored, or added with
/// `accumulate`), from the packed block.
///
/// # Safety
/// The CPU has AVX-512 BF16, `x` and `packed` hold what [`matmul_transposed`] says, and no
/// other thread touches `columns` of `out`.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn block(
    (m, n): (usize, usize),
    x: &Rows,
    pairs: Range<usize>,
    packed: &[u32],
    columns: Range<usize>,
    out: OutPtr,
    accumulate: bool,
) {
    let (kc, k_pairs) = (pairs.len(), x.k.div_ceil(2));
    for r0 in (0..m).step_by(MR) {
        let rows = MR.min(m - r0);
        let strip = x.words[r0 * k_pairs + pairs.start * MR..].as_ptr();
        for (panel, c0) in columns.clone().step_by(NR).enumerate() {
            let b = packed[panel * kc * NR..].as_ptr();
            let width = NR.min(columns.end - c0);
            // SAFETY: `strip` holds `kc` pairs of `MR` rows, `b` a panel of `kc x NR`, and `out`
            // the `rows x width` tile at `(r0, c0)` and the next strip's (caller's promise).
            unsafe {
                let dst = out.0.add(r0 * n + c0);
                // The next strip's tile, read when this one is done.
                for r in 0..MR.min(m.saturating_sub(r0 + MR)) {
                    for v in 0..width.div_ceil(16) {
                        _mm_prefetch::<_MM_HINT_T0>(dst.add((MR + r) * n + 16 * v).cast());
                    }
                }
                let tile = (dst, n, width, accumulate);
                match rows {
                    6 => microkernel::<6>(kc, strip, b, tile),
                    5 => microkernel::<5>(kc, strip, b, tile),
                    4 => microkernel::<4>(kc, strip, b, tile),
                    3 => microkernel::<3>(kc, strip, b, tile),
                    2 => microkernel::<2>(kc, strip, b, tile),
                    _ => microkernel::<1>(kc, strip, b, tile),
                }
            }
        }
    }
}

/// `R x NR` sums over `kc` pairs of the strip `x` and the packed panel `b`, stored to (or, with
/// `accumulate`, added into) the tile `(dst, row stride, width, accumulate)`.
///
/// # Safety
/// As [`block`]'s, for this tile.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn microkernel<const R: usize>(
    kc: usize,
    x: *const u32,
    b: *const u32,
    (dst, dst_stride, width, accumulate): (*mut f32, usize, usize, bool),
) {
    let mut sums = [[_mm512_setzero_ps(); NV]; R];
    // SAFETY: reads stay inside the strip and the panel (caller's promise); the transmutes
    // reinterpret 512 bits as 32 bf16.
    unsafe {
        for p in 0..kc {
            let columns: [__m512bh; NV] = std::array::from_fn(|v| {
                std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16 * v).cast()))
            });
            for (r, row) in sums.iter_mut().enumerate() {
                let pair: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*x.add(p * MR + r) as i32));
                for (sum, column) in row.iter_mut().zip(columns) {
                    *sum = _mm512_dpbf16_ps(*sum, column, pair);
                }
            }
        }
        for (r, row) in sums.iter().enumerate() {
            let dst = dst.add(r * dst_stride);
            for (v, sum) in row.iter().enumerate() {
                let lanes = width.saturating_sub(16 * v).min(16);
                store(dst.add(16 * v), *sum, lanes, accumulate);
            }
        }
    }
}

/// Stores (or adds) the first `lanes` lanes of `sum` at `dst`.
///
/// # Safety
/// `dst` has `lanes` writable f32.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store(dst: *mut f32, sum: __m512, lanes: usize, accumulate: bool) {
    // SAFETY: as the caller promises.
    unsafe {
        if lanes == 16 {
            let value = if accumulate {
                _mm512_add_ps(_mm512_loadu_ps(dst), sum)
            } else {
                sum
            };
            _mm512_storeu_ps(dst, value);
        } else if lanes > 0 {
            let mask = ((1u32 << lanes) - 1) as u16;
            let value = if accumulate {
                _mm512_add_ps(_mm512_maskz_loadu_ps(mask, dst), sum)
            } else {
                sum
            };
            _mm512_mask_storeu_ps(dst, mask, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values in -1..1 from a fixed sequence, rounded to bf16.
    fn values(len: usize, seed: u64) -> Vec<bf16> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                bf16::from_f32((state >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
            })
            .collect()
    }

    #[test]
    fn matches_f64_sums_on_ragged_shapes() {
        if !is_available() {
            eprintln!("skipped: this CPU lacks AVX-512 BF16");
            return;
        }
        // Rows past a strip, columns past a panel and a block, odd k, k past a block of pairs.
        let shapes = [
            (1, 1, 1),
            (5, 63, 7),
            (13, 65, 129),
            (7, 130, 300),
            (64, 600, 769),
            (6, 64, 2),
        ];
        for (seed, &(m, n, k)) in shapes.iter().enumerate() {
            let x = values(m * k, 2 * seed as u64);
            let w = values(n * k, 2 * seed as u64 + 1);
            let mut out = vec![f32::NAN; m * n];
            matmul_transposed(&Rows::new(&x, k), &w, n, &mut out);
            for i in 0..m {
                for j in 0..n {
                    let expected: f64 = (0..k)
                        .map(|t| f64::from(x[i * k + t]) * f64::from(w[j * k + t]))
                        .sum();
                    let error = (f64::from(out[i * n + j]) - expected).abs();
                    // f32 sums of k terms below 1 each.
                    assert!(
                        error <= 1e-6 * k as f64,
                        "{m}x{n}x{k} at ({i}, {j}): {error}"
                    );
                }
            }
        }
    }

    #[test]
    fn narrowing_rounds_as_bf16_from_f32() {
        let src: Vec<f32> = (0..37)
            .map(|i| (i as f32 * 0.377 - 5.0) * (1.0 + 1.0 / 512.0 + i as f32 * 1e-4))
            .chain([1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, 0.0, -0.0])
            .collect();
        let mut dst = vec![bf16::ZERO; src.len()];
        narrow(&src, &mut dst);
        for (ours, value) in dst.iter().zip(&src) {
            assert_eq!(ours.to_bits(), bf16::from_f32(*value).to_bits(), "{value}");
        }
        let mut rows = Rows::default();
        rows.refill_rounded(2, 3, &src[..6]);
        let mut expected = Rows::default();
        expected.refill(2, 3, |r, i| bf16::from_f32(src[r * 3 + i]));
        assert_eq!(rows.words, expected.words);
    }

    #[test]
    fn rounds_f32_rows_to_bf16_and_pads_odd_k() {
        let x = [1.0f32, 2.0, 3.0, 1.0 + 1.0 / 1024.0, 5.0, 6.0];
        let rows = Rows::new(&x.map(bf16::from_f32), 3);
        assert_eq!((rows.rows, rows.k), (2, 3));
        let word = |row: usize, pair: usize| rows.words[pair * MR + row];
        let bits = |value: f32| u32::from(bf16::from_f32(value).to_bits());
        assert_eq!(word(0, 0), bits(1.0) | bits(2.0) << 16);
        assert_eq!(word(0, 1), bits(3.0));
        // 1 + 2^-10 is below bf16's resolution at 1: rounds to 1.
        assert_eq!(word(1, 0), bits(1.0) | bits(5.0) << 16);
        assert_eq!(word(2, 0), 0, "rows past the last are zero");
    }
}
