//! Elementwise passes over rows of f32 that the kernels' softmax, epilogues and norms make:
//! scaling with a running maximum, `exp` with a running sum, bias with GELU, and scaling with
//! SiLU. `exp` is Cephes' single-precision polynomial (within 2 ulp of the true value, NaN stays
//! NaN) in every build: with AVX-512 sixteen lanes at a time by hand; elsewhere plain Rust that
//! the compiler vectorises (built for AVX2 and FMA where the CPU has them). Called per row of a
//! block, so in attention they replace a call to `expf` for every score.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{
    __m512, __mmask16, _MM_FROUND_NO_EXC, _MM_FROUND_TO_NEAREST_INT, _mm512_add_ps, _mm512_div_ps,
    _mm512_fmadd_ps, _mm512_fnmadd_ps, _mm512_loadu_ps, _mm512_mask_add_ps, _mm512_mask_max_ps,
    _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_max_ps, _mm512_min_ps, _mm512_mul_ps,
    _mm512_reduce_add_ps, _mm512_reduce_max_ps, _mm512_roundscale_ps, _mm512_scalef_ps,
    _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps, _mm512_sub_ps,
};

/// Multiplies `values` by `scale` in place; gives the largest of them and `floor`.
pub fn scale_and_max(values: &mut [f32], scale: f32, floor: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if vectors() {
        // SAFETY: the CPU has AVX-512F (checked).
        return unsafe { scale_and_max_avx512(values, scale, floor) };
    }
    return_built_for!(
        [("avx2", "fma")],
        scale_and_max_portable(values: &mut [f32], scale: f32, floor: f32) -> f32
    );
    scale_and_max_portable(values, scale, floor)
}

/// [`scale_and_max`] as built for any CPU of the target.
#[inline(always)]
fn scale_and_max_portable(values: &mut [f32], scale: f32, floor: f32) -> f32 {
    values.iter_mut().for_each(|value| *value *= scale);
    // A compare and select rather than `f32::max`, so that the loop vectorises.
    fold_lanes(values, floor, |m, v| if v > m { v } else { m })
}

/// Replaces each value `v` with `exp(v - shift)`; gives their sum.
pub fn exp_shifted(values: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if vectors() {
        // SAFETY: the CPU has AVX-512F (checked).
        return unsafe { exp_shifted_avx512(values, shift) };
    }
    return_built_for!(
        [("avx2", "fma")],
        exp_shifted_portable(values: &mut [f32], shift: f32) -> f32
    );
    exp_shifted_portable(values, shift)
}

/// [`exp_shifted`] as built for any CPU of the target.
#[inline(always)]
fn exp_shifted_portable(values: &mut [f32], shift: f32) -> f32 {
    values
        .iter_mut()
        .for_each(|value| *value = exp(*value - shift));
    fold_lanes(values, 0.0, |sum, v| sum + v)
}

/// `row[i] += bias[i]`, then GELU (as [`bias_gelu`]) with `gelu`: a linear layer's row of sums
/// finished.
pub fn add_bias(row: &mut [f32], bias: &[f32], gelu: bool) {
    if gelu {
        bias_gelu(row, bias);
    } else {
        row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
    }
}

/// `row[i] = gelu(row[i] + bias[i])`, GELU with the tanh approximation written as
/// `v / (1 + exp(-2 sqrt(2/pi) (v + 0.044715 v^3)))`.
pub fn bias_gelu(row: &mut [f32], bias: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if vectors() {
        // SAFETY: the CPU has AVX-512F (checked).
        return unsafe { bias_gelu_avx512(row, bias) };
    }
    return_built_for!([("avx2", "fma")], bias_gelu_portable(row: &mut [f32], bias: &[f32]));
    bias_gelu_portable(row, bias)
}

/// [`bias_gelu`] as built for any CPU of the target.
#[inline(always)]
fn bias_gelu_portable(row: &mut [f32], bias: &[f32]) {
    for (value, bias) in row.iter_mut().zip(bias) {
        let v = *value + bias;
        *value = v / (1.0 + exp(-2.0 * GELU_SCALE * (v + GELU_CUBIC * v * v * v)));
    }
}

/// `sums[i] += values[i]²`.
pub fn add_squares(sums: &mut [f32], values: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if vectors() {
        // SAFETY: the CPU has AVX-512F (checked).
        return unsafe { add_squares_avx512(sums, values) };
    }
    return_built_for!([("avx2", "fma")], add_squares_portable(sums: &mut [f32], values: &[f32]));
    add_squares_portable(sums, values)
}

/// [`add_squares`] as built for any CPU of the target.
#[inline(always)]
fn add_squares_portable(sums: &mut [f32], values: &[f32]) {
    for (sum, value) in sums.iter_mut().zip(values) {
        *sum += value * value;
    }
}

/// `out[i] = values[i] * factors[i] * gain`, with `silu` passed through SiLU
/// (`v / (1 + exp(-v))`).
pub fn scale_silu(out: &mut [f32], values: &[f32], factors: &[f32], gain: f32, silu: bool) {
    #[cfg(target_arch = "x86_64")]
    if vectors() {
        // SAFETY: the CPU has AVX-512F (checked).
        return unsafe { scale_silu_avx512(out, values, factors, gain, silu) };
    }
    return_built_for!(
        [("avx2", "fma")],
        scale_silu_portable(out: &mut [f32], values: &[f32], factors: &[f32], gain: f32, silu: bool)
    );
    scale_silu_portable(out, values, factors, gain, silu)
}

/// [`scale_silu`] as built for any CPU of the target.
#[inline(always)]
fn scale_silu_portable(out: &mut [f32], values: &[f32], factors: &[f32], gain: f32, silu: bool) {
    for ((out, value), factor) in out.iter_mut().zip(values).zip(factors) {
        let v = value * factor * gain;
        *out = if silu { v / (1.0 + exp(-v)) } else { v };
    }
}

/// Lanes of the plain-Rust reductions: eight f32 fill an AVX2 vector.
const LANES: usize = 8;

/// `values` folded by `combine` from `init` in `LANES` running lanes, the lanes then folded
/// together and with the values past the last whole chunk: one running value would keep the
/// compiler from vectorising a floating-point fold (it may not reorder it).
#[inline(always)]
pub(super) fn fold_lanes(values: &[f32], init: f32, combine: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (lane, value) in lanes.iter_mut().zip(chunk) {
            *lane = combine(*lane, *value);
        }
    }
    let rest = chunks.remainder().iter().copied();
    lanes.into_iter().chain(rest).fold(init, combine)
}

/// The sum of `term(v)` over `values`, in `LANES` running sums (as [`fold_lanes`], which
/// folds its lanes with the same function and so cannot map the values).
#[inline(always)]
pub(super) fn sum_lanes(values: &[f32], term: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0.0; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (lane, value) in lanes.iter_mut().zip(chunk) {
            *lane += term(*value);
        }
    }
    let rest = chunks.remainder().iter().map(|value| term(*value));
    lanes.into_iter().chain(rest).sum()
}

/// `exp(x)` as [`exp16`] computes it, for one value: `x = n ln2 + r` with `|r| <= ln2 / 2`,
/// Cephes' degree-7 polynomial for `exp(r)`, scaled by `2^n` in two halves (so that each is a
/// normal f32 down to subnormal results). Below -104 the result is 0, above 89 infinity; NaN
/// stays NaN. Inlined into the loops above, which the compiler then vectorises.
#[inline(always)]
fn exp(x: f32) -> f32 {
    let x = x.clamp(-104.0, 89.0);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    // ln 2 in two parts, so that `n` times the first is exact.
    let r = n.mul_add(-0.693_359_4, x);
    let r = n.mul_add(2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4f32;
    for coefficient in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = p.mul_add(r, coefficient);
    }
    let y = p.mul_add(r * r, r + 1.0);
    // `n` lies within -150..=129 (0 for NaN, whose `r` carries it on).
    let n = n as i32;
    let half = n >> 1;
    let power = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    y * power(half) * power(n - half)
}

/// `sqrt(2/pi)`.
const GELU_SCALE: f32 = 0.797_884_6;
/// The cubic term's weight in GELU's tanh approximation.
const GELU_CUBIC: f32 = 0.044_715;

/// Whether the sixteen-lane passes run on this CPU.
#[cfg(target_arch = "x86_64")]
fn vectors() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// The lanes of a vector that the `len - start` values left hold.
#[cfg(target_arch = "x86_64")]
fn tail_mask(left: usize) -> __mmask16 {
    ((1u32 << left.min(16)) - 1) as __mmask16
}

/// [`scale_and_max`] sixteen at a time.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn scale_and_max_avx512(values: &mut [f32], scale: f32, floor: f32) -> f32 {
    let factor = _mm512_set1_ps(scale);
    let mut maximum = _mm512_set1_ps(floor);
    let mut chunks = values.chunks_exact_mut(16);
    for chunk in &mut chunks {
        // SAFETY: the chunk holds sixteen values.
        unsafe {
            let scaled = _mm512_mul_ps(_mm512_loadu_ps(chunk.as_ptr()), factor);
            _mm512_storeu_ps(chunk.as_mut_ptr(), scaled);
            maximum = _mm512_max_ps(maximum, scaled);
        }
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let mask = tail_mask(rest.len());
        // SAFETY: the masked lanes lie inside `rest`.
        unsafe {
            let scaled = _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, rest.as_ptr()), factor);
            _mm512_mask_storeu_ps(rest.as_mut_ptr(), mask, scaled);
            maximum = _mm512_mask_max_ps(maximum, mask, maximum, scaled);
        }
    }
    _mm512_reduce_max_ps(maximum)
}

/// [`exp_shifted`] sixteen at a time.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_shifted_avx512(values: &mut [f32], shift: f32) -> f32 {
    let shift = _mm512_set1_ps(shift);
    let mut sum = _mm512_setzero_ps();
    let mut chunks = values.chunks_exact_mut(16);
    for chunk in &mut chunks {
        // SAFETY: the chunk holds sixteen values.
        unsafe {
            let value = exp16(_mm512_sub_ps(_mm512_loadu_ps(chunk.as_ptr()), shift));
            _mm512_storeu_ps(chunk.as_mut_ptr(), value);
            sum = _mm512_add_ps(sum, value);
        }
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let mask = tail_mask(rest.len());
        // SAFETY: the masked lanes lie inside `rest`.
        unsafe {
            let value = exp16(_mm512_sub_ps(
                _mm512_maskz_loadu_ps(mask, rest.as_ptr()),
                shift,
            ));
            _mm512_mask_storeu_ps(rest.as_mut_ptr(), mask, value);
            sum = _mm512_mask_add_ps(sum, mask, sum, value);
        }
    }
    _mm512_reduce_add_ps(sum)
}

/// [`bias_gelu`] sixteen at a time.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn bias_gelu_avx512(row: &mut [f32], bias: &[f32]) {
    let len = row.len().min(bias.len());
    let (row, bias) = (&mut row[..len], &bias[..len]);
    for start in (0..len).step_by(16) {
        let mask = tail_mask(len - start);
        // SAFETY: the masked lanes lie inside both slices.
        unsafe {
            let (out, bias) = (row.as_mut_ptr().add(start), bias.as_ptr().add(start));
            let v = _mm512_add_ps(
                _mm512_maskz_loadu_ps(mask, out),
                _mm512_maskz_loadu_ps(mask, bias),
            );
            _mm512_mask_storeu_ps(out, mask, gelu16(v));
        }
    }
}

/// The tanh-approximated GELU of sixteen values, as [`bias_gelu`] computes it.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn gelu16(v: __m512) -> __m512 {
    let cubic = _mm512_mul_ps(_mm512_mul_ps(v, v), _mm512_set1_ps(GELU_CUBIC));
    let inner = _mm512_fmadd_ps(cubic, v, v);
    let exponent = _mm512_mul_ps(inner, _mm512_set1_ps(-2.0 * GELU_SCALE));
    // SAFETY: the CPU has AVX-512F (the caller's promise).
    let denominator = _mm512_add_ps(unsafe { exp16(exponent) }, _mm512_set1_ps(1.0));
    _mm512_div_ps(v, denominator)
}

/// [`add_squares`] sixteen at a time.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn add_squares_avx512(sums: &mut [f32], values: &[f32]) {
    let len = sums.len().min(values.len());
    for start in (0..len).step_by(16) {
        let mask = tail_mask(len - start);
        // SAFETY: the masked lanes lie inside both slices.
        unsafe {
            let (sum, value) = (sums.as_mut_ptr().add(start), values.as_ptr().add(start));
            let value = _mm512_maskz_loadu_ps(mask, value);
            let total = _mm512_fmadd_ps(value, value, _mm512_maskz_loadu_ps(mask, sum));
            _mm512_mask_storeu_ps(sum, mask, total);
        }
    }
}

/// [`scale_silu`] sixteen at a time.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn scale_silu_avx512(
    out: &mut [f32],
    values: &[f32],
    factors: &[f32],
    gain: f32,
    silu: bool,
) {
    let len = out.len().min(values.len()).min(factors.len());
    let gain = _mm512_set1_ps(gain);
    for start in (0..len).step_by(16) {
        let mask = tail_mask(len - start);
        // SAFETY: the masked lanes lie inside all three slices.
        unsafe {
            let v = _mm512_mul_ps(
                _mm512_maskz_loadu_ps(mask, values.as_ptr().add(start)),
                _mm512_mul_ps(
                    _mm512_maskz_loadu_ps(mask, factors.as_ptr().add(start)),
                    gain,
                ),
            );
            let v = if silu {
                let negative = _mm512_sub_ps(_mm512_setzero_ps(), v);
                _mm512_div_ps(v, _mm512_add_ps(exp16(negative), _mm512_set1_ps(1.0)))
            } else {
                v
            };
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(start), mask, v);
        }
    }
}

/// `exp` of sixteen lanes: `x = n ln2 + r` with `|r| <= ln2 / 2`, Cephes' degree-7 polynomial
/// for `exp(r)`, scaled by `2^n`. Below -104 the result is 0 (exp(-104) is below f32's
/// smallest subnormal), above 89 infinity; NaN stays NaN.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp16(x: __m512) -> __m512 {
    // With one NaN operand max/min give the second: NaN lanes stay NaN.
    let x = _mm512_min_ps(
        _mm512_set1_ps(89.0),
        _mm512_max_ps(_mm512_set1_ps(-104.0), x),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    // ln 2 in two parts, so that `n` times the first is exact.
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for coefficient in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(coefficient));
    }
    let one_plus_r = _mm512_add_ps(r, _mm512_set1_ps(1.0));
    let y = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), one_plus_r);
    _mm512_scalef_ps(y, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative error of `ours` against the f64 value.
    fn relative(ours: f32, exact: f64) -> f64 {
        if exact == 0.0 {
            f64::from(ours).abs()
        } else {
            (f64::from(ours) - exact).abs() / exact.abs()
        }
    }

    /// The build this CPU dispatches to, and the plain Rust one.
    type Exp = fn(&mut [f32], f32) -> f32;
    const EXPS: [Exp; 2] = [exp_shifted, exp_shifted_portable];

    #[test]
    fn exp_is_within_2_ulp_over_its_range_and_at_its_edges() {
        for exp_shifted in EXPS {
            // A fine grid from underflow to overflow, 16 lanes plus a ragged tail.
            let mut values: Vec<f32> = (0..40_003).map(|i| -103.0 + i as f32 * 0.0047).collect();
            values.extend([0.0, -0.0, 1e-30, -1e-30, 88.7]);
            let exact: Vec<f64> = values.iter().map(|v| f64::from(*v).exp()).collect();
            exp_shifted(&mut values, 0.0);
            let mut worst = 0f64;
            for (ours, exact) in values.iter().zip(&exact) {
                if *exact >= f64::from(f32::MIN_POSITIVE) {
                    worst = worst.max(relative(*ours, *exact));
                } else {
                    // Subnormal results hold fewer digits: within two of their steps.
                    assert!(
                        (f64::from(*ours) - exact).abs() <= 3e-45,
                        "{ours} vs {exact}"
                    );
                }
            }
            assert!(worst < 2.4e-7, "worst relative error {worst}");
            let mut shifted: Vec<f32> = (0..37).map(|i| i as f32 * 0.5 - 9.0).collect();
            let expected: f64 = shifted.iter().map(|v| (f64::from(*v) - 3.0).exp()).sum();
            let sum = exp_shifted(&mut shifted, 3.0);
            assert!(relative(sum, expected) < 1e-6, "sum {sum} vs {expected}");

            let mut edges = [f32::NEG_INFINITY, -200.0, 100.0, f32::INFINITY, f32::NAN];
            exp_shifted(&mut edges, 0.0);
            assert_eq!(&edges[..4], &[0.0, 0.0, f32::INFINITY, f32::INFINITY]);
            assert!(edges[4].is_nan());
        }
    }

    #[test]
    fn scaling_finds_the_maximum_of_ragged_rows() {
        type ScaleAndMax = fn(&mut [f32], f32, f32) -> f32;
        for scale_and_max in [scale_and_max as ScaleAndMax, scale_and_max_portable] {
            for len in [1, 15, 16, 17, 40] {
                let mut values: Vec<f32> = (0..len).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
                let expected = values.iter().map(|v| v * 0.5).fold(f32::MIN, f32::max);
                assert_eq!(scale_and_max(&mut values, 0.5, f32::NEG_INFINITY), expected);
                assert_eq!(values[len - 1], (((len - 1) * 7) % 11) as f32 * 0.5 - 2.5);
                assert_eq!(scale_and_max(&mut values, 1.0, 100.0), 100.0);
            }
        }
    }

    #[test]
    fn squares_and_scaled_silu_match_their_formulas_on_ragged_rows() {
        type AddSquares = fn(&mut [f32], &[f32]);
        type ScaleSilu = fn(&mut [f32], &[f32], &[f32], f32, bool);
        let builds: [(AddSquares, ScaleSilu); 2] = [
            (add_squares, scale_silu),
            (add_squares_portable, scale_silu_portable),
        ];
        for (add_squares, scale_silu) in builds {
            for len in [1, 16, 37] {
                let values: Vec<f32> = (0..len).map(|i| i as f32 * 0.9 - 15.0).collect();
                let factors: Vec<f32> = (0..len).map(|i| 0.5 + (i % 3) as f32).collect();
                for silu in [false, true] {
                    let mut squares = vec![1.0; len];
                    add_squares(&mut squares, &values);
                    for (square, value) in squares.iter().zip(&values) {
                        let exact = f64::from(*value).powi(2) + 1.0;
                        assert!((f64::from(*square) - exact).abs() <= 1e-6 * exact);
                    }
                    let mut ours = vec![f32::NAN; len];
                    scale_silu(&mut ours, &values, &factors, 1.5, silu);
                    for ((ours, value), factor) in ours.iter().zip(&values).zip(&factors) {
                        let v = f64::from(*value) * f64::from(*factor) * 1.5;
                        let exact = if silu { v / (1.0 + (-v).exp()) } else { v };
                        assert!(
                            (f64::from(*ours) - exact).abs() <= 1e-6 * exact.abs().max(1.0),
                            "{v}: {ours} vs {exact}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn gelu_matches_its_tanh_form() {
        type BiasGelu = fn(&mut [f32], &[f32]);
        for bias_gelu in [bias_gelu as BiasGelu, bias_gelu_portable] {
            let row: Vec<f32> = (0..37).map(|i| i as f32 * 0.61 - 11.0).collect();
            let bias: Vec<f32> = (0..37).map(|i| (i % 5) as f32 * 0.1).collect();
            let mut ours = row.clone();
            bias_gelu(&mut ours, &bias);
            for ((ours, v), b) in ours.iter().zip(&row).zip(&bias) {
                let v = f64::from(v + b);
                let u = f64::from(GELU_SCALE) * (v + f64::from(GELU_CUBIC) * v * v * v);
                let exact = 0.5 * v * (1.0 + u.tanh());
                assert!(
                    (f64::from(*ours) - exact).abs() <= 1e-6 * exact.abs().max(1.0),
                    "{v}: {ours} vs {exact}"
                );
            }
        }
    }
}
