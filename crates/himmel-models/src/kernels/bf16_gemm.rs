//! Matrix products of bf16 inputs into f32 sums with AVX-512 BF16 (`vdpbf16ps`: sixteen lanes,
//! each adding the products of a pair of bf16 values to an f32 sum), on CPUs that have it.
//!
//! `out = x w^T` with `x` `m x k` and `w` `n x k` (a linear layer's weight as stored). Both are
//! read as pairs of neighbouring `k` values (one 32-bit word): `x`'s pairs are broadcast to all
//! lanes straight from its rows ([`Rows`], row-major as a tensor holds them: no packing), `w`'s
//! are packed once into panels of `NR` columns ([`Panels`]), so that one vector load takes a
//! pair from sixteen columns. The microkernel keeps `MR x NR` sums in 24 of the 32 vector
//! registers; [`product_tiles`] sweeps blocks sized so that a block of panels stays in L2 and
//! a strip of `MR` rows of `x` in L1, and hands each tile of sums to the caller while it is in
//! cache.

use std::arch::x86_64::{
    __m256bh, __m256i, __m512, __m512bh, _mm256_storeu_si256, _mm512_add_ps, _mm512_cvtneps_pbh,
    _mm512_dpbf16_ps, _mm512_loadu_ps, _mm512_loadu_si512, _mm512_mask_storeu_ps,
    _mm512_maskz_loadu_ps, _mm512_set1_epi32, _mm512_setzero_ps, _mm512_storeu_ps,
};
use std::borrow::Cow;
use std::ops::Range;

use half::bf16;
use rayon::prelude::*;

/// Rows of `x` per microkernel call.
const MR: usize = 6;
/// Vectors of sixteen output columns per microkernel call.
const NV: usize = 4;
/// Output columns per packed panel.
const NR: usize = 16 * NV;
/// Pairs of `k` per block of [`product_tiles`]. On 2048^3 (2 threads): 128 pairs 292 GFLOP/s,
/// 256 362, 384 (with 256 columns) 371.
const KC_PAIRS: usize = 384;
/// Output columns per task of [`product_tiles`] (384 pairs x 256 columns are 384 KiB).
const NC: usize = 256;

/// Whether this CPU runs these products.
pub fn is_available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// `dst[i] = src[i]` rounded to bf16 (to nearest, ties to even, as `bf16::from_f32` rounds
/// normal values; AVX-512 BF16 flushes subnormals to zero), sixteen at a time with AVX-512 BF16
/// where the CPU has it, else in plain Rust built for AVX2 where the CPU has that.
pub fn narrow(src: &[f32], dst: &mut [bf16]) {
    let len = src.len().min(dst.len());
    let mut done = 0;
    if is_available() {
        // SAFETY: the features were checked; both slices hold `len` values.
        unsafe { narrow_vectors(&src[..len], &mut dst[..len]) };
        done = len / 16 * 16;
    }
    narrow_rest(&src[done..len], &mut dst[done..len]);
}

/// [`narrow`] in plain Rust, built for AVX2 where the CPU has it.
fn narrow_rest(src: &[f32], dst: &mut [bf16]) {
    return_built_for!([("avx2")], narrow_portable(src: &[f32], dst: &mut [bf16]));
    narrow_portable(src, dst)
}

/// [`narrow_rest`] as built for any CPU of the target: `bf16::from_f32`'s rounding written
/// without branches, so that the loop vectorises.
#[inline(always)]
fn narrow_portable(src: &[f32], dst: &mut [bf16]) {
    for (dst, src) in dst.iter_mut().zip(src) {
        let bits = src.to_bits();
        // Half of the dropped part's step, plus one where the kept part is odd: ties to even.
        let rounded = (bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16) as u16;
        let quiet_nan = (bits >> 16) as u16 | 0x0040;
        let nan = bits & 0x7FFF_FFFF > 0x7F80_0000;
        *dst = bf16::from_bits(if nan { quiet_nan } else { rounded });
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

/// `dst[i] = src[i] + bias[i]`, through the tanh-approximated GELU with `gelu`, rounded to
/// bf16 as [`narrow`] rounds: a row of sums finished and narrowed in one pass.
pub fn narrow_finished(src: &[f32], bias: &[f32], gelu: bool, dst: &mut [bf16]) {
    let len = src.len().min(bias.len()).min(dst.len());
    let mut done = 0;
    if is_available() {
        let whole = len / 16 * 16;
        // SAFETY: the features were checked; the slices hold `whole` values.
        unsafe { narrow_finished_vectors(&src[..whole], &bias[..whole], gelu, &mut dst[..whole]) };
        done = whole;
    }
    let mut rest = src[done..len].to_vec();
    super::elementwise::add_bias(&mut rest, &bias[done..len], gelu);
    narrow(&rest, &mut dst[done..len]);
}

/// [`narrow_finished`] sixteen at a time.
///
/// # Safety
/// The CPU has AVX-512 BF16; the slices hold the same multiple of sixteen values.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn narrow_finished_vectors(src: &[f32], bias: &[f32], gelu: bool, dst: &mut [bf16]) {
    let rows = src.chunks_exact(16).zip(bias.chunks_exact(16));
    for ((src, bias), dst) in rows.zip(dst.chunks_exact_mut(16)) {
        // SAFETY: each chunk holds sixteen values; `bf16` is 16 bits; the CPU has the features.
        unsafe {
            let mut value = _mm512_add_ps(
                _mm512_loadu_ps(src.as_ptr()),
                _mm512_loadu_ps(bias.as_ptr()),
            );
            if gelu {
                value = super::elementwise::gelu16(value);
            }
            let narrowed = _mm512_cvtneps_pbh(value);
            _mm256_storeu_si256(
                dst.as_mut_ptr().cast(),
                std::mem::transmute::<__m256bh, __m256i>(narrowed),
            );
        }
    }
}

/// The left operand `x` (`rows x k`) as the products read it: row-major bf16, each row's pairs
/// whole (an odd `k`'s rows padded with a zero), borrowed where the values already are so.
#[derive(Default)]
pub struct Rows<'a> {
    /// Row `r` from `r * stride`: its `k` values, then a zero where `k` is odd.
    values: Cow<'a, [bf16]>,
    stride: usize,
    rows: usize,
    k: usize,
}

impl<'a> Rows<'a> {
    /// `values` (`rows x k`, row-major), borrowed where `k` is even.
    pub fn new(values: &'a [bf16], k: usize) -> Self {
        let rows = values.len().checked_div(k).unwrap_or(0);
        if k.is_multiple_of(2) {
            let values = Cow::Borrowed(&values[..rows * k]);
            return Self {
                values,
                stride: k,
                rows,
                k,
            };
        }
        let mut padded = Self::default();
        padded.refill(rows, k, |r| &values[r * k..]);
        padded
    }

    /// Rows (`m`) and depth (`k`).
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.k)
    }

    /// `values` (`rows x k`, row-major f32) rounded to bf16, reusing this operand's memory.
    pub fn refill_rounded(&mut self, rows: usize, k: usize, values: &[f32]) {
        self.refill_with(rows, k, |r, row| narrow(&values[r * k..(r + 1) * k], row));
    }

    /// `rows x k` values, row `r` being `row(r)`, reusing this operand's memory.
    pub fn refill<'r>(&mut self, rows: usize, k: usize, row: impl Fn(usize) -> &'r [bf16]) {
        self.refill_with(rows, k, |r, out| out.copy_from_slice(&row(r)[..k]));
    }

    /// `rows x k` values, each row written by `fill(r, row)`.
    fn refill_with(&mut self, rows: usize, k: usize, mut fill: impl FnMut(usize, &mut [bf16])) {
        let stride = k.next_multiple_of(2);
        let values = self.values.to_mut();
        values.resize(rows * stride, bf16::ZERO);
        for (r, row) in values
            .chunks_exact_mut(stride.max(1))
            .take(rows)
            .enumerate()
        {
            fill(r, &mut row[..k]);
            row[k..].fill(bf16::ZERO);
        }
        (self.stride, self.rows, self.k) = (stride, rows, k);
    }

    /// Row `row`'s pairs from pair `pair` on, as words.
    fn pairs(&self, row: usize, pair: usize) -> *const u32 {
        self.values[row * self.stride + 2 * pair..].as_ptr().cast()
    }
}

/// The right operand `w` (`n x k`, a linear layer's weight as stored) packed whole: a panel of
/// `k.div_ceil(2) x NR` words for each `NR` columns, zero past the last column and past `k`.
/// Weights are packed once when a layer is made; attention packs each head's keys and values.
#[derive(Default)]
pub struct Panels {
    words: Vec<u32>,
    n: usize,
    k: usize,
}

impl Panels {
    /// `w` (`n x k`, row-major) packed, in parallel.
    ///
    /// # Panics
    /// If `w` holds fewer than `n x k` values.
    pub fn new(w: &[bf16], n: usize, k: usize) -> Self {
        assert!(w.len() >= n * k, "bf16 panels: weight too short");
        let k_pairs = k.div_ceil(2);
        let mut words = vec![0u32; n.div_ceil(NR) * NR * k_pairs];
        if k_pairs > 0 {
            let value = |column: usize, index: usize| w[column * k + index].to_bits();
            let panels = words.par_chunks_mut(k_pairs * NR).enumerate();
            panels.for_each(|(panel, words)| {
                let columns = panel * NR..n.min((panel + 1) * NR);
                pack_with(value, k, columns, 0..k_pairs, words);
            });
        }
        Self { words, n, k }
    }

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

    /// Columns (`n`) and depth (`k`).
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// The panel holding `column` (a multiple of `NR`) from pair `pair` on.
    fn panel(&self, column: usize, pair: usize) -> *const u32 {
        let k_pairs = self.k.div_ceil(2);
        self.words[column / NR * NR * k_pairs + pair * NR..].as_ptr()
    }
}

/// `out` (`x.rows x columns.len()`, rows `out_stride` apart) = `x` times the transpose of
/// `w`'s `columns` (starting at a multiple of 64) over `w`'s pairs of `k` from `first_pair` on,
/// as many as `x` has; or `+=` with `accumulate`. On the calling thread.
///
/// # Panics
/// If the CPU lacks AVX-512 BF16, the operands do not reach, or `out` is too short.
pub fn product(
    x: &Rows,
    w: &Panels,
    (columns, first_pair): (Range<usize>, usize),
    out: &mut [f32],
    out_stride: usize,
    accumulate: bool,
) {
    assert!(is_available(), "bf16 product: this CPU lacks AVX-512 BF16");
    let (m, n, kc) = (x.rows, columns.len(), x.k.div_ceil(2));
    assert!(
        columns.start.is_multiple_of(NR)
            && columns.end <= w.n
            && first_pair + kc <= w.k.div_ceil(2),
        "bf16 product: operands do not fit"
    );
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        n <= out_stride && out.len() >= (m - 1) * out_stride + n,
        "bf16 product: out too short"
    );
    if kc == 0 {
        if !accumulate {
            out.chunks_mut(out_stride)
                .for_each(|row| row[..n].fill(0.0));
        }
        return;
    }
    let panels = (w, columns, first_pair);
    let out = (out.as_mut_ptr(), out_stride, false);
    // SAFETY: the CPU has the features and the operands reach (checked above); `out` is this
    // thread's own.
    unsafe { sweep((x, 0..m, 0), panels, kc, out, accumulate) };
}

/// Rows of the output summed per task of [`product_tiles`].
const MC: usize = 192;

/// `x w^T` (`x.rows x w.n`) on rayon's pool: each task sums a tile of up to `MC x NC` in f32
/// (in blocks of `KC_PAIRS`, so that a block of the weight stays in L2) and hands it on row by
/// row: `finish(row, columns, sums)`.
///
/// # Panics
/// If the CPU lacks AVX-512 BF16 (check [`is_available`]) or the operands' `k` differ.
pub fn product_tiles(
    x: &Rows,
    w: &Panels,
    finish: impl Fn(usize, Range<usize>, &mut [f32]) + Sync,
) {
    assert!(is_available(), "bf16 product: this CPU lacks AVX-512 BF16");
    assert_eq!(x.k, w.k, "bf16 product: operands of different depth");
    super::blocked_product(
        (x.rows, w.n, x.k.div_ceil(2)),
        (MC, NC, KC_PAIRS),
        |rows, columns, pairs, sums: &mut [f32], accumulate| {
            let (x_part, w_part) = ((x, rows, pairs.start), (w, columns, pairs.start));
            let out = (sums.as_mut_ptr(), NC, true);
            // SAFETY: the CPU has the features (checked above); the parts lie inside the
            // operands, and `sums` holds `MC x NC`.
            unsafe { sweep(x_part, w_part, pairs.len(), out, accumulate) };
        },
        |rows, columns, sums| {
            for (r, sums) in rows.zip(sums.chunks_exact_mut(NC)) {
                finish(r, columns.clone(), &mut sums[..columns.len()]);
            }
        },
    );
}

/// [`product_tiles`] whose rows of sums are written in bf16 by `write(columns, sums, out)` into
/// a new left operand (`x.rows x w.n`): the input of a next product, without a tensor between
/// them.
pub fn product_rows(
    x: &Rows,
    w: &Panels,
    write: impl Fn(Range<usize>, &mut [f32], &mut [bf16]) + Sync,
) -> Rows<'static> {
    let (m, k) = (x.rows, w.n);
    let stride = k.next_multiple_of(2);
    // Not zeroed first: the tiles write every value, and the tile with the last column an odd
    // `k`'s padding.
    let mut values = Vec::<bf16>::with_capacity(m * stride);
    let at = super::SendPtr(values.as_mut_ptr());
    product_tiles(x, w, |row, columns, sums| {
        let start = row * stride + columns.start;
        // SAFETY: the tiles' values are disjoint parts of `values`' capacity.
        let out = unsafe { std::slice::from_raw_parts_mut(at.get().add(start), sums.len()) };
        write(columns.clone(), sums, out);
        if columns.end == k && stride > k {
            // SAFETY: the padding after the row's last value, inside the capacity.
            unsafe { *at.get().add(row * stride + k) = bf16::ZERO };
        }
    });
    // SAFETY: the tiles cover all rows and columns, and the padding: every value was written.
    unsafe { values.set_len(m * stride) };
    Rows {
        values: Cow::Owned(values),
        stride,
        rows: m,
        k,
    }
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

/// The sums over `kc` pairs of `x`'s `rows` (a multiple of `MR` on, from its pair `x_pair`)
/// and `w`'s `columns` (a multiple of `NR` on, from its pair `w_pair`), stored to (or added
/// into, with `accumulate`) `out`: `(pointer to the sums of the first row and column, row
/// stride, padded)`; `padded` says that each row has room for whole panels, so that the last
/// panel's padding columns are written too (unmasked stores).
///
/// # Safety
/// The CPU has AVX-512 BF16; both operands hold `kc` pairs from their first; `out` holds
/// `rows.len()` rows of `columns.len()` (rounded up to `NR` where `padded`) and no other
/// thread touches them.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn sweep(
    (x, rows, x_pair): (&Rows, Range<usize>, usize),
    (w, columns, w_pair): (&Panels, Range<usize>, usize),
    kc: usize,
    (out, out_stride, padded): (*mut f32, usize, bool),
    accumulate: bool,
) {
    let stride = x.stride / 2;
    for r0 in rows.clone().step_by(MR) {
        let strip = (x.pairs(r0, x_pair), stride);
        for c0 in columns.clone().step_by(NR) {
            let width = if padded { NR } else { NR.min(columns.end - c0) };
            // SAFETY: `strip`'s rows hold `kc` pairs from `x_pair`, the panel `kc x NR` from
            // `w_pair`, and `out` this tile (caller's promise).
            unsafe {
                let dst = out.add((r0 - rows.start) * out_stride + c0 - columns.start);
                let tile = (dst, out_stride, width, accumulate);
                let b = w.panel(c0, w_pair);
                with_strip_rows!(MR.min(rows.end - r0), microkernel(kc, strip, b, tile));
            }
        }
    }
}

/// `R x NR` sums over `kc` pairs of the rows `x` (`(first row's pairs, row stride in words)`)
/// and the packed panel `b`, stored to (or, with `accumulate`, added into) the tile `(dst, row
/// stride, width, accumulate)`.
///
/// # Safety
/// As [`block`]'s, for this tile.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn microkernel<const R: usize>(
    kc: usize,
    (x, x_stride): (*const u32, usize),
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
                let word = x.add(r * x_stride + p).read_unaligned();
                let pair: __m512bh = std::mem::transmute(_mm512_set1_epi32(word as i32));
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

    /// `x_i . w_j` over `k` values from `w`'s value `offset` on, in f64.
    fn exact(
        x: &[bf16],
        w: &[bf16],
        (k, w_k, offset): (usize, usize, usize),
        i: usize,
        j: usize,
    ) -> f64 {
        let x = &x[i * k..(i + 1) * k];
        let w = &w[j * w_k + offset..j * w_k + offset + k];
        x.iter()
            .zip(w)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum()
    }

    #[test]
    fn tiles_match_f64_sums_on_ragged_shapes() {
        if !is_available() {
            eprintln!("skipped: this CPU lacks AVX-512 BF16");
            return;
        }
        // Rows past a strip and a tile, columns past a panel and a tile, odd k, k past a block
        // of pairs.
        let shapes = [
            (1, 1, 1),
            (5, 63, 7),
            (13, 65, 129),
            (7, 130, 300),
            (200, 600, 769),
            (6, 64, 2),
        ];
        for (seed, &(m, n, k)) in shapes.iter().enumerate() {
            let x = values(m * k, 2 * seed as u64);
            let w = values(n * k, 2 * seed as u64 + 1);
            let out = std::sync::Mutex::new(vec![f32::NAN; m * n]);
            product_tiles(
                &Rows::new(&x, k),
                &Panels::new(&w, n, k),
                |i, columns, sums| {
                    out.lock().unwrap()[i * n..][columns].copy_from_slice(sums);
                },
            );
            let out = out.into_inner().unwrap();
            for i in 0..m {
                for j in 0..n {
                    let error = (f64::from(out[i * n + j]) - exact(&x, &w, (k, k, 0), i, j)).abs();
                    // f32 sums of k terms below 1 each.
                    let bound = 1e-6 * k as f64;
                    assert!(error <= bound, "{m}x{n}x{k} at ({i}, {j}): {error}");
                }
            }
        }
    }

    #[test]
    fn products_take_columns_and_pairs_from_within_the_panels() {
        if !is_available() {
            eprintln!("skipped: this CPU lacks AVX-512 BF16");
            return;
        }
        // (rows, x's k, w's columns, w's k, first column, first pair): odd and even depths,
        // a part of `w`'s depth, columns past a panel.
        for (seed, &(m, k, n, w_k, first, pair)) in [
            (5, 7, 70, 7, 0, 0),
            (13, 9, 200, 40, 64, 3),
            (6, 64, 130, 130, 128, 33),
        ]
        .iter()
        .enumerate()
        {
            let x = values(m * k, 3 * seed as u64);
            let w = values(n * w_k, 3 * seed as u64 + 1);
            let mut panels = Panels::default();
            panels.refill(n, w_k, |c, i| w[c * w_k + i]);
            let width = n - first;
            let mut out = vec![f32::NAN; m * width];
            let rows = Rows::new(&x, k);
            product(&rows, &panels, (first..n, pair), &mut out, width, false);
            product(&rows, &panels, (first..n, pair), &mut out, width, true);
            for i in 0..m {
                for j in 0..width {
                    let expected = 2.0 * exact(&x, &w, (k, w_k, 2 * pair), i, first + j);
                    let error = (f64::from(out[i * width + j]) - expected).abs();
                    assert!(error <= 2e-6 * k as f64, "{m}x{k} at ({i}, {j}): {error}");
                }
            }
        }
    }

    #[test]
    fn narrowing_rounds_as_bf16_from_f32() {
        // Ties both ways, signed zeros, the largest finite value (rounds to infinity), infinities
        // and NaNs, in the tail after the whole vectors of sixteen.
        let specials = [
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
        ];
        let src: Vec<f32> = (0..37)
            .map(|i| (i as f32 * 0.377 - 5.0) * (1.0 + 1.0 / 512.0 + i as f32 * 1e-4))
            .chain([1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, 0.0, -0.0])
            .chain(specials)
            .collect();
        type Narrow = fn(&[f32], &mut [bf16]);
        for narrow in [narrow as Narrow, narrow_portable] {
            let mut dst = vec![bf16::ZERO; src.len()];
            narrow(&src, &mut dst);
            for (ours, value) in dst.iter().zip(&src) {
                assert_eq!(ours.to_bits(), bf16::from_f32(*value).to_bits(), "{value}");
            }
        }
        let mut rows = Rows::default();
        rows.refill_rounded(2, 3, &src[..6]);
        let rounded: Vec<bf16> = src[..6].iter().map(|v| bf16::from_f32(*v)).collect();
        let mut expected = Rows::default();
        expected.refill(2, 3, |r| &rounded[r * 3..]);
        assert_eq!(rows.values, expected.values);
    }

    #[test]
    fn finished_rows_narrow_as_bias_and_gelu_then_narrowing() {
        // Two whole vectors and a tail, values across GELU's bend.
        let src: Vec<f32> = (0..37).map(|i| i as f32 * 0.61 - 11.0).collect();
        let bias: Vec<f32> = (0..37).map(|i| i as f32 * 0.013 - 0.2).collect();
        for gelu in [false, true] {
            let mut finished = src.clone();
            if gelu {
                crate::kernels::elementwise::bias_gelu(&mut finished, &bias);
            } else {
                finished.iter_mut().zip(&bias).for_each(|(v, b)| *v += b);
            }
            let mut expected = vec![bf16::ZERO; 37];
            narrow(&finished, &mut expected);
            let mut ours = vec![bf16::ZERO; 37];
            narrow_finished(&src, &bias, gelu, &mut ours);
            assert_eq!(ours, expected, "gelu {gelu}");
        }
    }

    #[test]
    fn refilled_rows_match_new_ones_on_ragged_shapes() {
        // Filled first with more rows and a deeper k, so stale words would show.
        let stale = values(20 * 40, 1);
        let mut refilled = Rows::default();
        refilled.refill(20, 40, |r| &stale[r * 40..]);
        for (rows, k, seed) in [(7, 5, 2), (13, 32, 3), (1, 1, 4), (6, 9, 5)] {
            let x = values(rows * k, seed);
            let expected = Rows::new(&x, k);
            let wide: Vec<f32> = x.iter().map(|value| value.to_f32()).collect();
            refilled.refill_rounded(rows, k, &wide);
            assert_eq!(refilled.dims(), (rows, k));
            assert_eq!(refilled.values, expected.values, "rounded, {rows}x{k}");
            refilled.refill(rows, k, |r| &x[r * k..]);
            assert_eq!(refilled.values, expected.values, "copied, {rows}x{k}");
        }
    }

    #[test]
    fn rounds_f32_rows_to_bf16_and_pads_odd_k() {
        let x = [1.0f32, 2.0, 3.0, 1.0 + 1.0 / 1024.0, 5.0, 6.0];
        let x = x.map(bf16::from_f32);
        let rows = Rows::new(&x, 3);
        assert_eq!((rows.rows, rows.k), (2, 3));
        // SAFETY: both rows hold two pairs.
        let word = |row: usize, pair: usize| unsafe { rows.pairs(row, pair).read_unaligned() };
        let bits = |value: f32| u32::from(bf16::from_f32(value).to_bits());
        assert_eq!(word(0, 0), bits(1.0) | bits(2.0) << 16);
        assert_eq!(word(0, 1), bits(3.0));
        // 1 + 2^-10 is below bf16's resolution at 1: rounds to 1.
        assert_eq!(word(1, 0), bits(1.0) | bits(5.0) << 16);
        assert_eq!(rows.values.len(), 2 * 4, "each row padded to whole pairs");
    }
}
