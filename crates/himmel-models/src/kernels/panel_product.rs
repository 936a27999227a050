//! f32 matrix products whose left operand is packed once and used many times (the Winograd
//! convolution's transformed weights): the weights as panels of `MR` rows stored depth step by
//! depth step, so that each step's `MR` values lie together; the right operand as rows of a
//! plain row-major matrix whose columns are a whole number of `NR`-wide tiles. With AVX-512 a
//! tile of `MR x NR` sums stays in 24 vector registers over the whole depth; other CPUs run the
//! same tile as `4 x 16` pieces that their compilers vectorise.

/// Rows of a packed weight panel (and of a product tile).
pub(super) const MR: usize = 12;

/// Columns of a product tile: two 16-lane vectors.
pub(super) const NR: usize = 32;

/// The packed rows of a matrix: `[rows / MR][depth][MR]`, rows past the matrix's zero.
pub(super) fn packed_len(rows: usize, depth: usize) -> usize {
    rows.div_ceil(MR) * MR * depth
}

/// Where row `row`, depth step `step` of a matrix `depth` deep lies in its packed form.
pub(super) fn packed_index(row: usize, step: usize, depth: usize) -> usize {
    (row / MR * depth + step) * MR + row % MR
}

/// A kernel that sums one `MR x NR` tile over the whole depth: `(depth, panel, (x, x
/// stride), (out, out stride))`.
type Tile = unsafe fn(usize, *const f32, (*const f32, usize), (*mut f32, usize));

/// `out[r][c] = Σ_k weights[r][k] x[k][c]` for the `rows.div_ceil(MR) * MR` rows of `weights`
/// (packed, [`packed_len`]) and `columns` columns (a multiple of `NR`) of `x` (`depth` rows,
/// `x_stride` apart); `out`'s rows `out_stride` apart, padding rows included. Runs on the
/// calling thread with the fastest tile kernel this CPU has.
///
/// # Panics
/// When `columns` is not a multiple of `NR` or an operand is too short for the sizes.
pub(super) fn product(
    weights: (&[f32], usize, usize),
    x: (&[f32], usize, usize),
    out: (&mut [f32], usize),
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return product_with(tile_avx512, weights, x, out);
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return product_with(tile_avx2, weights, x, out);
        }
    }
    product_with(tile_portable, weights, x, out)
}

/// [`product`] with the tile kernel `tile`.
fn product_with(
    tile: Tile,
    (weights, rows, depth): (&[f32], usize, usize),
    (x, x_stride, columns): (&[f32], usize, usize),
    (out, out_stride): (&mut [f32], usize),
) {
    let panels = rows.div_ceil(MR);
    assert_eq!(
        columns % NR,
        0,
        "columns {columns} are not whole tiles of {NR}"
    );
    assert!(
        weights.len() >= panels * MR * depth,
        "packed weights too short"
    );
    assert!(
        depth == 0 || x.len() >= (depth - 1) * x_stride + columns,
        "right operand too short"
    );
    assert!(
        columns == 0 || out.len() >= (panels * MR - 1) * out_stride + columns,
        "output too short"
    );
    for panel in 0..panels {
        for column in (0..columns).step_by(NR) {
            // SAFETY: the asserts above keep the panel's `depth x MR` values, the `depth` rows
            // of `NR` columns from `column` and the `MR` output rows inside their slices.
            unsafe {
                tile(
                    depth,
                    weights.as_ptr().add(panel * MR * depth),
                    (x.as_ptr().add(column), x_stride),
                    (
                        out.as_mut_ptr().add(panel * MR * out_stride + column),
                        out_stride,
                    ),
                );
            }
        }
    }
}

/// One `MR x NR` tile of [`product`] in 24 AVX-512 registers.
///
/// # Safety
/// The CPU has AVX-512F; `panel` holds `depth x MR` floats, `x` `depth` rows of `NR` floats
/// `x_stride` apart, `out` `MR` rows of `NR` floats `out_stride` apart, which no other thread
/// touches.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512(
    depth: usize,
    panel: *const f32,
    (x, x_stride): (*const f32, usize),
    (out, out_stride): (*mut f32, usize),
) {
    use std::arch::x86_64::*;
    let mut sums = [[_mm512_setzero_ps(); 2]; MR];
    // SAFETY: every read and write stays inside the operands (caller's promise).
    unsafe {
        for step in 0..depth {
            let row = x.add(step * x_stride);
            let columns = [_mm512_loadu_ps(row), _mm512_loadu_ps(row.add(16))];
            let weights = panel.add(step * MR);
            for (r, sum) in sums.iter_mut().enumerate() {
                let weight = _mm512_set1_ps(*weights.add(r));
                sum[0] = _mm512_fmadd_ps(weight, columns[0], sum[0]);
                sum[1] = _mm512_fmadd_ps(weight, columns[1], sum[1]);
            }
        }
        for (r, sum) in sums.iter().enumerate() {
            let row = out.add(r * out_stride);
            _mm512_storeu_ps(row, sum[0]);
            _mm512_storeu_ps(row.add(16), sum[1]);
        }
    }
}

/// One `MR x NR` tile of [`product`] with AVX2 and FMA, as four `6 x 16` pieces, each summed
/// over the whole depth in 12 of the 16 vector registers (two loads of `x` and six broadcast
/// weights per twelve multiply-adds).
///
/// # Safety
/// The CPU has AVX2 and FMA; the rest as [`tile_avx512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(
    depth: usize,
    panel: *const f32,
    (x, x_stride): (*const f32, usize),
    (out, out_stride): (*mut f32, usize),
) {
    use std::arch::x86_64::*;
    const ROWS: usize = 6;
    // SAFETY: every read and write stays inside the operands (caller's promise).
    unsafe {
        for c0 in (0..NR).step_by(16) {
            for r0 in (0..MR).step_by(ROWS) {
                let mut sums = [[_mm256_setzero_ps(); 2]; ROWS];
                for step in 0..depth {
                    let row = x.add(step * x_stride + c0);
                    let columns = [_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(8))];
                    let weights = panel.add(step * MR + r0);
                    for (r, sum) in sums.iter_mut().enumerate() {
                        let weight = _mm256_broadcast_ss(&*weights.add(r));
                        sum[0] = _mm256_fmadd_ps(weight, columns[0], sum[0]);
                        sum[1] = _mm256_fmadd_ps(weight, columns[1], sum[1]);
                    }
                }
                for (r, sum) in sums.iter().enumerate() {
                    let row = out.add((r0 + r) * out_stride + c0);
                    _mm256_storeu_ps(row, sum[0]);
                    _mm256_storeu_ps(row.add(8), sum[1]);
                }
            }
        }
    }
}

/// Rows and columns of the pieces [`tile_portable`] sums in registers.
const PIECE: (usize, usize) = (4, 16);

/// One tile of [`product`] as `4 x 16` pieces, each summed over the whole depth.
///
/// # Safety
/// As [`tile_avx512`], on any CPU.
unsafe fn tile_portable(
    depth: usize,
    panel: *const f32,
    (x, x_stride): (*const f32, usize),
    (out, out_stride): (*mut f32, usize),
) {
    let (piece_rows, piece_columns) = PIECE;
    for r0 in (0..MR).step_by(piece_rows) {
        for c0 in (0..NR).step_by(piece_columns) {
            let mut sums = [[0f32; PIECE.1]; PIECE.0];
            for step in 0..depth {
                // SAFETY: inside the operands (caller's promise).
                let (columns, weights) = unsafe {
                    (
                        &*x.add(step * x_stride + c0).cast::<[f32; PIECE.1]>(),
                        &*panel.add(step * MR + r0).cast::<[f32; PIECE.0]>(),
                    )
                };
                for (sum, &weight) in sums.iter_mut().zip(weights) {
                    for (value, &column) in sum.iter_mut().zip(columns) {
                        *value = weight.mul_add(column, *value);
                    }
                }
            }
            for (r, sum) in sums.iter().enumerate() {
                // SAFETY: the output row's piece lies inside `out` (caller's promise).
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        sum.as_ptr(),
                        out.add((r0 + r) * out_stride + c0),
                        piece_columns,
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A product with ragged rows (not a multiple of `MR`) and depth, checked in f64, on every
    /// tile kernel this CPU runs.
    #[test]
    fn tiles_match_f64_sums() {
        let (rows, depth, columns) = (2 * MR + 5, 37, 3 * NR);
        let value = |i: usize| ((i * 7919) % 1013) as f32 / 1013.0 - 0.5;
        let weights: Vec<f32> = (0..rows * depth).map(value).collect();
        let x: Vec<f32> = (0..depth * (columns + 3)).map(|i| value(i + 17)).collect();
        let x_stride = columns + 3;
        let mut packed = vec![0f32; packed_len(rows, depth)];
        for r in 0..rows {
            for k in 0..depth {
                packed[packed_index(r, k, depth)] = weights[r * depth + k];
            }
        }
        let mut tiles: Vec<(&str, Tile)> = vec![("portable", tile_portable)];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                tiles.push(("avx512", tile_avx512));
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                tiles.push(("avx2", tile_avx2));
            }
        }
        let padded_rows = rows.div_ceil(MR) * MR;
        for (name, tile) in tiles {
            let mut out = vec![f32::NAN; padded_rows * columns];
            product_with(
                tile,
                (&packed, rows, depth),
                (&x, x_stride, columns),
                (&mut out, columns),
            );
            for r in 0..padded_rows {
                for c in 0..columns {
                    let exact: f64 = (0..depth)
                        .filter(|_| r < rows)
                        .map(|k| weights[r * depth + k] as f64 * x[k * x_stride + c] as f64)
                        .sum();
                    let ours = out[r * columns + c] as f64;
                    assert!(
                        (ours - exact).abs() < 1e-5,
                        "{name} [{r}][{c}]: {ours} vs {exact}"
                    );
                }
            }
        }
    }
}
