//! The video convolutions with 3x3 spatial kernels by Winograd's minimal filtering F(4x4, 3x3)
//! (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016; interpolation
//! points 0, ±1, ±2 and infinity, as cuDNN and oneDNN use): each 4x4 block of outputs comes
//! from a 6x6 tile of input through 36 products per channel pair instead of 144, so a 3x3 tap
//! set costs 2.25 multiplications per output where the direct form costs 9. The tiles' 36
//! transformed positions are 36 matrix products, outputs x (kt x channels) by (kt x channels)
//! x tiles: the time taps fold into the products' depth.

use rayon::prelude::*;

use super::panel_product::{self, MR, NR};
use super::video::{Clip, Conv};
use super::{SendPtr, Unfilled};

/// Outputs per tile side.
const OUT: usize = 4;

/// Inputs per tile side: `OUT + 2` for a 3-wide kernel.
const TILE: usize = OUT + 2;

/// Transformed tile positions (6x6).
const POSITIONS: usize = TILE * TILE;

/// Floats in a cache line.
const LINE: usize = 16;

/// Floats of one task's transformed input and accumulated products together, for transformed
/// weights of `weights` floats: a quarter of those, but 4 to 16 MiB. Each task reads all the
/// weights again (the products are thin: a block's tiles are their columns), so large weights
/// want many tiles per block; small ones run faster with the block's input nearer the core
/// (measured on the Wan VAE's layers: 96 and 192 channels best at 4 MiB, 384 at 16 MiB).
fn block_floats(weights: usize) -> usize {
    (weights / 4).clamp(1 << 20, 1 << 22)
}

/// One thread's working buffers for the tasks of [`conv`]: the transformed input, the products,
/// scratch for the transforms, and a row of zeros.
#[derive(Default)]
struct TaskBuffers {
    input: Vec<f32>,
    products: Vec<f32>,
    scratch: Vec<f32>,
    zeros: Vec<f32>,
}

/// The first `len` floats of `buffer`, grown (with zeros) to hold them.
fn grown(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

/// `len` floats of `buffer` from the first cache line boundary in it, grown (with zeros) to hold
/// them: the products' and transforms' whole vectors then each lie in one cache line.
fn grown_aligned(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    let buffer = grown(buffer, len + LINE);
    let skip = buffer
        .as_ptr()
        .align_offset(LINE * size_of::<f32>())
        .min(LINE);
    &mut buffer[skip..skip + len]
}

thread_local! {
    /// Each worker's task buffers, kept from one task and call to the next: fresh ones for
    /// every task cost more in zeroing and page faults than the transforms.
    static TASK_BUFFERS: std::cell::RefCell<TaskBuffers> =
        std::cell::RefCell::new(TaskBuffers::default());

    /// The calling thread's buffer of transformed weights, kept from one convolution to the
    /// next (while it is not far larger than needed): a fresh one for every call (64 MiB at
    /// 384 channels) cost more in page faults than the transform itself.
    static TRANSFORMED_WEIGHTS: std::cell::RefCell<Vec<f32>> = const {
        std::cell::RefCell::new(Vec::new())
    };
}

/// Whether a convolution takes this path: 3x3 in space, and enough channels on both sides
/// that the products, not the transforms, are the cost.
pub(super) fn applies(shape: &Conv) -> bool {
    let (_, kh, kw) = shape.kernel;
    kh == 3 && kw == 3 && shape.channels >= 16 && shape.outputs >= 16
}

/// `G g`: a kernel's 3 taps along one axis, at the 6 interpolation points.
fn weight_1d([g0, g1, g2]: [f32; 3]) -> [f32; TILE] {
    const SIXTH: f32 = 1.0 / 6.0;
    [
        g0 * 0.25,
        -(g0 + g1 + g2) * SIXTH,
        -(g0 - g1 + g2) * SIXTH,
        (g0 * 0.25 + g1 * 0.5 + g2) * SIXTH,
        (g0 * 0.25 - g1 * 0.5 + g2) * SIXTH,
        g2,
    ]
}

/// Lanes of the weight transform: a panel's `MR` kernels and unused lanes up to a whole
/// 16-lane vector (partial vectors stored and loaded again stall).
const WEIGHT_LANES: usize = 16;

/// [`weight_1d`] of a panel's `MR` kernels at once: `g[j][r]` is tap `j` of kernel `r`.
fn weight_lanes(g: [[f32; WEIGHT_LANES]; 3]) -> [[f32; WEIGHT_LANES]; TILE] {
    let mut out = [[0f32; WEIGHT_LANES]; TILE];
    for r in 0..WEIGHT_LANES {
        for (k, value) in weight_1d(array(|j| g[j][r])).into_iter().enumerate() {
            out[k][r] = value;
        }
    }
    out
}

/// `Bᵀ d`: 6 inputs along one axis, at the interpolation points.
fn input_1d([d0, d1, d2, d3, d4, d5]: [f32; TILE]) -> [f32; TILE] {
    [
        4.0 * d0 - 5.0 * d2 + d4,
        d3 + d4 - 4.0 * (d1 + d2),
        d4 - d3 + 4.0 * (d1 - d2),
        d4 - d2 + 2.0 * (d3 - d1),
        d4 - d2 + 2.0 * (d1 - d3),
        4.0 * d1 - 5.0 * d3 + d5,
    ]
}

/// `Aᵀ m`: 4 outputs along one axis from the 6 products.
fn output_1d([m0, m1, m2, m3, m4, m5]: [f32; TILE]) -> [f32; OUT] {
    let (sum12, difference12) = (m1 + m2, m1 - m2);
    let (sum34, difference34) = (m3 + m4, m3 - m4);
    [
        m0 + sum12 + sum34,
        difference12 + 2.0 * difference34,
        sum12 + 4.0 * sum34,
        difference12 + 8.0 * difference34 + m5,
    ]
}

/// `G g Gᵀ` of every 3x3 kernel into `transformed` (resized to fit): for each of the 36
/// positions, the `outputs x (kt * channels)` matrix packed for [`panel_product`] (depth step
/// `dt * channels + c`), panels of outputs in parallel.
fn transform_weights(shape: &Conv, weight: &[f32], transformed: &mut Vec<f32>) {
    let (kt, _, _) = shape.kernel;
    let per_position = panel_product::packed_len(shape.outputs, kt * shape.channels);
    let needed = POSITIONS * per_position;
    // Kept for the next call, but not at four times the size this one needs: the large
    // layers come at small frames, so a buffer held on for them would add to the peak of the
    // large frames' layers.
    if transformed.capacity() > 4 * needed {
        *transformed = Vec::new();
    }
    let target = SendPtr(grown(transformed, needed).as_mut_ptr());
    (0..shape.outputs.div_ceil(MR))
        .into_par_iter()
        // SAFETY: each panel writes its own rows of `transformed`, which holds them all.
        .for_each(|panel| unsafe { transform_panel(shape, weight, panel, target.get()) });
}

/// [`transform_weights`] of the outputs `MR * panel..` (zeros past the last output).
///
/// # Safety
/// `target` holds the transformed weights of `shape`; no other thread writes this panel's rows.
unsafe fn transform_panel(shape: &Conv, weight: &[f32], panel: usize, target: *mut f32) {
    return_built_for!(
        [("avx512f"), ("avx2")],
        transform_panel_portable(shape: &Conv, weight: &[f32], panel: usize, target: *mut f32)
    );
    // SAFETY: as the caller promises.
    unsafe { transform_panel_portable(shape, weight, panel, target) }
}

/// [`transform_panel`] as built for any CPU of the target: the panel's kernels side by side, one
/// per lane, so that each depth step writes its `MR` values together.
///
/// # Safety
/// As [`transform_panel`].
#[inline(always)]
unsafe fn transform_panel_portable(shape: &Conv, weight: &[f32], panel: usize, target: *mut f32) {
    /// Channels whose taps are laid side by side before any is transformed: vector loads
    /// straight after the scalar stores that fill them would stall.
    const CHANNELS: usize = 16;
    let (kt, channels, outputs) = (shape.kernel.0, shape.channels, shape.outputs);
    let depth = kt * channels;
    let per_position = panel_product::packed_len(outputs, depth);
    // `taps[c * kt + dt][tap][r]`; lanes past the last output stay zero.
    let mut taps = vec![[[0f32; WEIGHT_LANES]; 9]; CHANNELS * kt];
    for c0 in (0..channels).step_by(CHANNELS) {
        let chunk = CHANNELS.min(channels - c0);
        for (r, o) in (panel * MR..outputs.min((panel + 1) * MR)).enumerate() {
            let kernels = &weight[(o * channels + c0) * kt * 9..][..chunk * kt * 9];
            for (lanes, kernel) in taps.iter_mut().zip(kernels.chunks_exact(9)) {
                for (lane, &tap) in lanes.iter_mut().zip(kernel) {
                    lane[r] = tap;
                }
            }
        }
        for (index, g) in taps[..chunk * kt].iter().enumerate() {
            let (c, dt) = (c0 + index / kt, index % kt);
            let [first, second, third] = array(|j| weight_lanes([g[j], g[3 + j], g[6 + j]]));
            let at = panel_product::packed_index(panel * MR, dt * channels + c, depth);
            let columns = first.into_iter().zip(second).zip(third);
            for (i, ((top, middle), bottom)) in columns.enumerate() {
                for (j, values) in weight_lanes([top, middle, bottom]).iter().enumerate() {
                    // SAFETY: the panel's `MR` values at this depth step lie together inside
                    // `target` (caller's promise).
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            values[..MR].as_ptr(),
                            target.add((i * TILE + j) * per_position + at),
                            MR,
                        );
                    }
                }
            }
        }
    }
}

/// A frame as the tiles see it.
struct Frame {
    /// Rows stored.
    height: usize,
    /// Columns stored.
    width: usize,
    /// Zeros read around the stored frame on each side.
    padding: usize,
    /// Tiles per row of the output.
    tiles_wide: usize,
}

/// `std::array::from_fn`, always inlined: called from the AVX2 copies of the transforms, the
/// standard one ran its closure as a call compiled for the baseline CPU.
#[inline(always)]
fn array<T: Copy + Default, const N: usize>(f: impl Fn(usize) -> T) -> [T; N] {
    let mut out = [T::default(); N];
    for (i, value) in out.iter_mut().enumerate() {
        *value = f(i);
    }
    out
}

/// Tiles whose row transforms run side by side, one per vector lane (and columns of the column
/// transform).
const LANES: usize = 16;

/// [`input_1d`] of `LANES` tiles at once: `d[j][l]` is input `j` of tile `l`.
fn input_lanes(d: [[f32; LANES]; TILE]) -> [[f32; LANES]; TILE] {
    let mut out = [[0f32; LANES]; TILE];
    for l in 0..LANES {
        for (k, value) in input_1d(array(|j| d[j][l])).into_iter().enumerate() {
            out[k][l] = value;
        }
    }
    out
}

/// Where [`input_runs`] reads: the inputs, and the same runs of the rows it reads next (brought
/// into the L2 cache while these are transformed, a run at a time: all in one go, the requests
/// had queued up and stalled), if any.
type Inputs = ([*const f32; TILE], Option<[*const f32; TILE]>);

/// `Bᵀ d` of `runs` runs of [`LANES`] values: input `j` of run `r` is the `LANES` floats at
/// `inputs.0[j] + LANES * r`, output `k` goes to `outputs[k] + LANES * r`.
///
/// # Safety
/// Every pointer is valid for `LANES * runs` floats; the outputs overlap no input.
unsafe fn input_runs(inputs: Inputs, outputs: [*mut f32; TILE], runs: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; the rest as the caller promises.
        return unsafe { input_runs_avx512(inputs, outputs, runs) };
    }
    return_built_for!(
        [("avx2")],
        input_runs_portable(inputs: Inputs, outputs: [*mut f32; TILE], runs: usize)
    );
    // SAFETY: as the caller promises.
    unsafe { input_runs_portable(inputs, outputs, runs) }
}

/// Asks the CPU to bring run `run` of each of `ahead` into its L2 cache (nothing where that
/// cannot be asked).
#[inline(always)]
fn prefetch_run(ahead: Option<[*const f32; TILE]>, run: usize) {
    #[cfg(target_arch = "x86_64")]
    for input in ahead.into_iter().flatten() {
        use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
        // SAFETY: a prefetch only hints; it faults on no address.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(input.wrapping_add(LANES * run).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (ahead, run);
}

/// [`input_runs`] as built for any CPU of the target.
///
/// # Safety
/// As [`input_runs`].
#[inline(always)]
unsafe fn input_runs_portable((inputs, ahead): Inputs, outputs: [*mut f32; TILE], runs: usize) {
    for r in 0..runs {
        prefetch_run(ahead, r);
        // SAFETY: run `r` lies inside every operand (caller's promise).
        unsafe {
            let d = array(|j| {
                inputs[j]
                    .add(LANES * r)
                    .cast::<[f32; LANES]>()
                    .read_unaligned()
            });
            for (k, values) in input_lanes(d).into_iter().enumerate() {
                outputs[k]
                    .add(LANES * r)
                    .cast::<[f32; LANES]>()
                    .write_unaligned(values);
            }
        }
    }
}

/// [`input_runs`] in AVX-512 registers: built from arrays, the compiler passed the transformed
/// vectors through the stack, and loading them back stalled.
///
/// # Safety
/// The CPU has AVX-512F; the rest as [`input_runs`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn input_runs_avx512((inputs, ahead): Inputs, outputs: [*mut f32; TILE], runs: usize) {
    use std::arch::x86_64::*;
    let (two, four, five) = (
        _mm512_set1_ps(2.0),
        _mm512_set1_ps(4.0),
        _mm512_set1_ps(5.0),
    );
    for r in 0..runs {
        prefetch_run(ahead, r);
        // SAFETY: run `r` lies inside every operand (caller's promise).
        unsafe {
            let [d0, d1, d2, d3, d4, d5] =
                inputs.map(|input| _mm512_loadu_ps(input.add(LANES * r)));
            // The rows of `input_1d`, each a multiply-add or two.
            let d4_minus_d2 = _mm512_sub_ps(d4, d2);
            let d3_minus_d1 = _mm512_sub_ps(d3, d1);
            let out = [
                _mm512_fnmadd_ps(five, d2, _mm512_fmadd_ps(four, d0, d4)),
                _mm512_fnmadd_ps(four, _mm512_add_ps(d1, d2), _mm512_add_ps(d3, d4)),
                _mm512_fmadd_ps(four, _mm512_sub_ps(d1, d2), _mm512_sub_ps(d4, d3)),
                _mm512_fmadd_ps(two, d3_minus_d1, d4_minus_d2),
                _mm512_fnmadd_ps(two, d3_minus_d1, d4_minus_d2),
                _mm512_fnmadd_ps(five, d3, _mm512_fmadd_ps(four, d1, d5)),
            ];
            for (output, value) in outputs.iter().zip(out) {
                _mm512_storeu_ps(output.add(LANES * r), value);
            }
        }
    }
}

/// `values` apart by index mod `OUT`: phase `p` (`phase_len` floats from `p * phase_len` of
/// `phases`, at least `values.len() / OUT + 1`) holds `values[OUT * m + p]` at `m`. Whole runs
/// of `OUT * LANES` values go through fixed-size arrays, which the compiler turns into vector
/// permutes: one value at a time the stores were a third of the input transform.
#[inline(always)]
fn split_phases(values: &[f32], phases: &mut [f32], phase_len: usize) {
    let (runs, rest) = values.as_chunks::<{ OUT * LANES }>();
    for (i, run) in runs.iter().enumerate() {
        let split: [[f32; LANES]; OUT] = array(|p| array(|m| run[OUT * m + p]));
        for (p, values) in split.iter().enumerate() {
            phases[p * phase_len + i * LANES..][..LANES].copy_from_slice(values);
        }
    }
    let done = runs.len() * LANES;
    for (index, &value) in rest.iter().enumerate() {
        phases[index % OUT * phase_len + done + index / OUT] = value;
    }
}

/// Floats of scratch that [`transform_block`] needs for frames `tiles_wide` tiles wide: the
/// column-transformed rows and the four phases of each.
fn transform_scratch(tiles_wide: usize) -> usize {
    TILE * (OUT * tiles_wide + 2) + TILE * OUT * (tiles_wide + LANES + 1)
}

/// `Bᵀ d B` of the input tiles `first..first + count` of `planes.0`, tile row by tile row: the
/// column transform runs along whole rows (vectorised over x), then the tiles' row transforms,
/// `LANES` tiles at a time, while the same rows of `planes.1` (the plane transformed next, if
/// any) load. A plane holds the stored part of `frame`; `scratch` at least
/// [`transform_scratch`] floats, `zeros` a row of the output's tiles (`4 * tiles_wide + 2`) of
/// zeros. Position `k` of tile `first + t` goes to `target[k * stride + t]`.
fn transform_block(
    planes: (&[f32], Option<&[f32]>),
    frame: &Frame,
    tiles: (usize, usize),
    scratch: (&mut [f32], &[f32]),
    target: &mut [f32],
    stride: usize,
) {
    return_built_for!(
        [("avx512f"), ("avx2")],
        transform_block_portable(
            planes: (&[f32], Option<&[f32]>),
            frame: &Frame,
            tiles: (usize, usize),
            scratch: (&mut [f32], &[f32]),
            target: &mut [f32],
            stride: usize,
        )
    );
    transform_block_portable(planes, frame, tiles, scratch, target, stride);
}

/// [`transform_block`] as built for any CPU of the target.
#[inline(always)]
fn transform_block_portable(
    (plane, next): (&[f32], Option<&[f32]>),
    frame: &Frame,
    (first, count): (usize, usize),
    (scratch, zeros): (&mut [f32], &[f32]),
    target: &mut [f32],
    stride: usize,
) {
    let Frame {
        height,
        width,
        padding,
        tiles_wide,
    } = *frame;
    let mut tile = first;
    while tile < first + count {
        let (ty, tx) = (tile / tiles_wide, tile % tiles_wide);
        let tiles = (tiles_wide - tx).min(first + count - tile);
        let (top, left, span) = (OUT * ty, OUT * tx, OUT * tiles + 2);
        // The columns of `left..left + span` (padded) that the stored frame covers.
        let (start, end) = (
            left.clamp(padding, padding + width),
            (left + span).clamp(padding, padding + width),
        );
        // Where row `i` of the tiles starts in a plane, if stored (zeros if not).
        let stored_at = |i: usize| {
            let y = top + i;
            (padding..padding + height)
                .contains(&y)
                .then(|| (y - padding) * width + start - padding)
        };
        let stored = end - start;
        let rows: [&[f32]; TILE] =
            array(|i| stored_at(i).map_or(&zeros[..stored], |at| &plane[at..][..stored]));
        let ahead =
            next.map(|next| array(|i| stored_at(i).map_or(rows[i], |at| &next[at..][..stored])));
        // Row `i` of the column transform is `columns[i * span..][..span]`. Rows and positions
        // are indexed, not held as arrays of slices built by `std::array::from_fn` (see [`array`]).
        let (columns, phases) = scratch.split_at_mut(TILE * span);
        let whole = stored / LANES * LANES;
        for column in columns.chunks_exact_mut(span) {
            column[..start - left].fill(0.0);
            column[end - left..].fill(0.0);
        }
        let columns_at = |i: usize, x: usize| i * span + start - left + x;
        assert!(columns_at(TILE - 1, whole) <= columns.len());
        // SAFETY: each row holds `stored` floats, each row of `columns` from `columns_at(i, 0)`
        // as many (the assert above); `rows` are not `columns`.
        unsafe {
            let base = columns.as_mut_ptr();
            let outputs = std::array::from_fn(|i| base.add(columns_at(i, 0)));
            let ahead = ahead.map(|ahead| ahead.map(<[f32]>::as_ptr));
            input_runs((rows.map(<[f32]>::as_ptr), ahead), outputs, whole / LANES);
        }
        for x in whole..stored {
            let transformed = input_1d(array(|i| rows[i][x]));
            for (i, value) in transformed.into_iter().enumerate() {
                columns[columns_at(i, x)] = value;
            }
        }
        // Each transformed row apart by x mod 4 (`phases[p][m]` is x = 4m + p): input `j` of
        // tiles `t..` is then the run from `m = t + j / 4` of phase `j % 4`.
        // All rows are split before any is read back, so that the split's stores have left the
        // store buffer when the row transforms load them at other offsets.
        let phase_len = tiles + LANES + 1;
        let phases = &mut phases[..TILE * OUT * phase_len];
        for (column, phases) in columns
            .chunks_exact(span)
            .zip(phases.chunks_exact_mut(OUT * phase_len))
        {
            split_phases(column, phases, phase_len);
        }
        let offset = tile - first;
        let whole_tiles = tiles / LANES * LANES;
        assert!((POSITIONS - 1) * stride + offset + tiles <= target.len());
        for (i, phases) in phases.chunks_exact(OUT * phase_len).enumerate() {
            let target_at = |j: usize, t: usize| (i * TILE + j) * stride + offset + t;
            let phase_at = |j: usize, t: usize| (j % OUT) * phase_len + t + j / OUT;
            // SAFETY: each phase holds `tiles + 1` floats from `phase_at(j, 0)`, each
            // position's row `tiles` from `target_at(j, 0)` (the assert above); they are apart.
            unsafe {
                let base = target.as_mut_ptr();
                let outputs = std::array::from_fn(|j| base.add(target_at(j, 0)));
                let inputs = std::array::from_fn(|j| phases[phase_at(j, 0)..].as_ptr());
                input_runs((inputs, None), outputs, tiles / LANES);
            }
            if whole_tiles < tiles {
                // The last tiles: lanes past them read what an earlier tile row left; they are
                // not stored.
                let t = whole_tiles;
                let d = array(|j| phases[phase_at(j, t)..][..LANES].try_into().unwrap());
                for (j, values) in input_lanes(d).iter().enumerate() {
                    target[target_at(j, t)..][..tiles - t].copy_from_slice(&values[..tiles - t]);
                }
            }
        }
        tile += tiles;
    }
}

/// `Aᵀ m A` of the tiles `first..first + count`, plus `bias`, into `plane` (one output frame of
/// `frame.height x frame.width`), tile row by tile row: each tile's row transform, then the
/// column transform along whole rows. Position `k` of tile `first + t` is `products[k * stride
/// + t]`.
///
/// # Safety
/// `plane` points to the frame's `height x width` floats, which no other thread writes inside
/// these tiles meanwhile.
unsafe fn untransform_block(
    products: &[f32],
    stride: usize,
    tiles: (usize, usize),
    frame: &Frame,
    bias: f32,
    scratch: &mut [f32],
    plane: *mut f32,
) {
    return_built_for!(
        [("avx512f"), ("avx2")],
        untransform_block_portable(
            products: &[f32],
            stride: usize,
            tiles: (usize, usize),
            frame: &Frame,
            bias: f32,
            scratch: &mut [f32],
            plane: *mut f32,
        )
    );
    // SAFETY: as the caller promises.
    unsafe { untransform_block_portable(products, stride, tiles, frame, bias, scratch, plane) }
}

/// [`untransform_block`] as built for any CPU of the target.
///
/// # Safety
/// As [`untransform_block`].
#[inline(always)]
unsafe fn untransform_block_portable(
    products: &[f32],
    stride: usize,
    (first, count): (usize, usize),
    frame: &Frame,
    bias: f32,
    scratch: &mut [f32],
    plane: *mut f32,
) {
    let mut tile = first;
    while tile < first + count {
        let (ty, tx) = (tile / frame.tiles_wide, tile % frame.tiles_wide);
        let row_tiles = (frame.tiles_wide - tx).min(first + count - tile);
        let segment = tile - first;
        tile += row_tiles;
        // Whole runs of tiles inside the frame's width in vector registers where the CPU can;
        // the rest below.
        let inside = (frame.width / OUT).saturating_sub(tx).min(row_tiles);
        let top = OUT * ty;
        let rows_inside = frame.height.saturating_sub(top).min(OUT);
        // SAFETY: the products hold `inside` tiles from `segment` at every position; rows
        // `top..top + rows_inside` of the plane hold the tiles' `OUT * inside` columns from
        // `OUT * tx` (as the caller promises).
        let done = unsafe {
            output_runs(
                (products.as_ptr().add(segment), stride),
                bias,
                (plane.add(top * frame.width + OUT * tx), frame.width),
                rows_inside,
                inside / LANES,
            )
        };
        let (tx, tiles) = (tx + done, row_tiles - done);
        if tiles == 0 {
            continue;
        }
        let (left, span) = (OUT * tx, OUT * tiles);
        let offset = segment + done;
        let (rows, columns) = scratch.split_at_mut(TILE * span);
        for (i, row) in rows.chunks_exact_mut(span).enumerate() {
            let m: [&[f32]; TILE] =
                array(|j| &products[(i * TILE + j) * stride + offset..][..tiles]);
            for (t, outputs) in row.chunks_exact_mut(OUT).enumerate() {
                outputs.copy_from_slice(&output_1d(array(|j| m[j][t])));
            }
        }
        let rows: [&[f32]; TILE] = array(|i| &rows[i * span..][..span]);
        for x in 0..span {
            let transformed = output_1d(array(|i| rows[i][x]));
            for (k, value) in transformed.into_iter().enumerate() {
                columns[k * span + x] = value + bias;
            }
        }
        let width = (frame.width - left).min(span);
        for (k, values) in columns.chunks_exact(span).take(OUT).enumerate() {
            let y = top + k;
            if y < frame.height {
                // SAFETY: row `y` from column `left`, `width` floats, lies inside the frame.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        values.as_ptr(),
                        plane.add(y * frame.width + left),
                        width,
                    );
                }
            }
        }
    }
}

/// `Aᵀ m A` plus `bias` of `runs` runs of [`LANES`] tiles side by side, where the CPU has
/// AVX-512: position `k` of tile `t` is `products.0[k * products.1 + t]`; output row `y` of the
/// tiles (`OUT * LANES` values a run) goes to `plane.0[y * plane.1..]`, for the first `rows`
/// rows. Gives the number of tiles done: all, or none on other CPUs.
///
/// # Safety
/// `products` holds `LANES * runs` tiles at all [`POSITIONS`]; `plane` `rows` rows of
/// `OUT * LANES * runs` floats, which no other thread touches and `products` does not overlap.
unsafe fn output_runs(
    products: (*const f32, usize),
    bias: f32,
    plane: (*mut f32, usize),
    rows: usize,
    runs: usize,
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        for run in 0..runs {
            // SAFETY: the CPU has AVX-512F; the run lies inside the operands (caller's
            // promise).
            unsafe {
                output_run_avx512(
                    (products.0.add(LANES * run), products.1),
                    bias,
                    (plane.0.add(OUT * LANES * run), plane.1),
                    rows,
                );
            }
        }
        return LANES * runs;
    }
    let _ = (products, bias, plane, rows, runs);
    0
}

/// One run of [`output_runs`]: the column transform (along y) of each of the six position
/// columns, then the row transform of each output row, its four outputs per tile interleaved
/// into place, all in registers.
///
/// # Safety
/// The CPU has AVX-512F; the rest as [`output_runs`] for one run.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn output_run_avx512(
    (products, stride): (*const f32, usize),
    bias: f32,
    (plane, width): (*mut f32, usize),
    rows: usize,
) {
    use std::arch::x86_64::*;
    /// `Aᵀ m` of six vectors.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn output(m: [__m512; TILE]) -> [__m512; OUT] {
        let (two, four, eight) = (
            _mm512_set1_ps(2.0),
            _mm512_set1_ps(4.0),
            _mm512_set1_ps(8.0),
        );
        let (sum12, difference12) = (_mm512_add_ps(m[1], m[2]), _mm512_sub_ps(m[1], m[2]));
        let (sum34, difference34) = (_mm512_add_ps(m[3], m[4]), _mm512_sub_ps(m[3], m[4]));
        [
            _mm512_add_ps(_mm512_add_ps(m[0], sum12), sum34),
            _mm512_fmadd_ps(two, difference34, difference12),
            _mm512_fmadd_ps(four, sum34, sum12),
            _mm512_add_ps(_mm512_fmadd_ps(eight, difference34, difference12), m[5]),
        ]
    }
    // Arrays filled by loops, not `std::array::from_fn`, whose closures may run as calls.
    // `across[k][j]`: output row `k` of position column `j`, tiles in the lanes.
    let mut across = [[_mm512_setzero_ps(); TILE]; OUT];
    for j in 0..TILE {
        let mut m = [_mm512_setzero_ps(); TILE];
        for (i, m) in m.iter_mut().enumerate() {
            // SAFETY: position `i * TILE + j` of the run lies inside `products` (caller's
            // promise).
            *m = unsafe { _mm512_loadu_ps(products.add((i * TILE + j) * stride)) };
        }
        for (row, value) in across.iter_mut().zip(output(m)) {
            row[j] = value;
        }
    }
    // Lanes `0, 16, 1, 17, ..` of two vectors, then of their upper halves; and 64-bit pairs
    // likewise, four at a time.
    let pairs_low = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    let pairs_high = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    let quads = [
        _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0),
        _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4),
    ];
    let bias = _mm512_set1_ps(bias);
    for (y, m) in across.into_iter().enumerate().take(rows) {
        let [o0, o1, o2, o3] = output(m);
        let (o0, o1) = (_mm512_add_ps(o0, bias), _mm512_add_ps(o1, bias));
        let (o2, o3) = (_mm512_add_ps(o2, bias), _mm512_add_ps(o3, bias));
        let halves = [
            (
                _mm512_permutex2var_ps(o0, pairs_low, o1),
                _mm512_permutex2var_ps(o2, pairs_low, o3),
            ),
            (
                _mm512_permutex2var_ps(o0, pairs_high, o1),
                _mm512_permutex2var_ps(o2, pairs_high, o3),
            ),
        ];
        for (h, (front, back)) in halves.into_iter().enumerate() {
            for (q, &quad) in quads.iter().enumerate() {
                let values = _mm512_castpd_ps(_mm512_permutex2var_pd(
                    _mm512_castps_pd(front),
                    quad,
                    _mm512_castps_pd(back),
                ));
                // SAFETY: row `y` holds the run's `OUT * LANES` outputs (caller's promise).
                unsafe { _mm512_storeu_ps(plane.add(y * width + LANES * (2 * h + q)), values) };
            }
        }
    }
}

/// The convolution of [`super::video::conv3d`] for 3x3 spatial kernels: `x` is the input
/// `[B, C, T, H, W]` (its first frames perhaps apart), read as if `padding` zeros surrounded each frame; the result
/// `[B, O, T', H', W']`.
pub(super) fn conv(
    shape: &Conv,
    x: &Clip,
    padding: usize,
    weight: &[f32],
    bias: &[f32],
) -> Vec<f32> {
    let Conv {
        batch,
        channels,
        frames: _,
        padded_height,
        padded_width,
        outputs,
        kernel: (kt, _, _),
        time_stride,
        out_frames,
        out_height,
        out_width,
    } = *shape;
    let mut weights = TRANSFORMED_WEIGHTS.take();
    transform_weights(shape, weight, &mut weights);
    let (tiles_high, tiles_wide) = (out_height.div_ceil(OUT), out_width.div_ceil(OUT));
    let tiles = tiles_high * tiles_wide;
    let frames_total = batch * out_frames;
    let blocks_for_threads = rayon::current_num_threads().div_ceil(frames_total);
    let depth = kt * channels;
    let padded_outputs = outputs.div_ceil(MR) * MR;
    let per_position = panel_product::packed_len(outputs, depth);
    let per_block = (block_floats(POSITIONS * per_position)
        / (POSITIONS * (depth + padded_outputs)))
        .min(tiles.div_ceil(blocks_for_threads))
        .clamp(1, tiles);
    // Whole product tiles, but for the last block.
    let per_block = if per_block > NR {
        per_block / NR * NR
    } else {
        per_block
    };
    let columns = per_block.div_ceil(NR) * NR;
    let blocks = tiles.div_ceil(per_block);
    let input_frame = Frame {
        height: padded_height - 2 * padding,
        width: padded_width - 2 * padding,
        padding,
        tiles_wide,
    };
    let input_stride = depth * columns;
    let products_stride = padded_outputs * columns;
    let mut out = Unfilled::new(shape.output_len());
    let out_ptr = out.target();
    (0..frames_total * blocks).into_par_iter().for_each(|task| {
        TASK_BUFFERS.with_borrow_mut(|buffers| {
            let input = grown_aligned(&mut buffers.input, POSITIONS * input_stride);
            let products = grown_aligned(&mut buffers.products, POSITIONS * products_stride);
            let scratch_len = transform_scratch(tiles_wide).max(2 * TILE * OUT * tiles_wide);
            let scratch = grown(&mut buffers.scratch, scratch_len);
            let zeros = grown(&mut buffers.zeros, OUT * tiles_wide + 2);
            let (item, frame, block) = shape.task(task, blocks);
            let first = block * per_block;
            let count = per_block.min(tiles - first);
            // `[36][kt * channels][columns]` (time tap major) and `[36][outputs][columns]`,
            // tile `first + t` in column `t`; columns past `count` hold what an earlier block
            // left there, and their products are never read.
            for dt in 0..kt {
                for c in 0..channels {
                    let plane = x.plane(item, c, frame * time_stride + dt);
                    let next = if c + 1 < channels {
                        Some((c + 1, dt))
                    } else {
                        (dt + 1 < kt).then_some((0, dt + 1))
                    };
                    let next = next.map(|(c, dt)| x.plane(item, c, frame * time_stride + dt));
                    transform_block(
                        (plane, next),
                        &input_frame,
                        (first, count),
                        (scratch, zeros),
                        &mut input[(dt * channels + c) * columns..],
                        input_stride,
                    );
                }
            }
            let used = count.div_ceil(NR) * NR;
            for position in 0..POSITIONS {
                panel_product::product(
                    (&weights[position * per_position..], outputs, depth),
                    (&input[position * input_stride..], columns, used),
                    (&mut products[position * products_stride..], columns),
                );
            }
            let output_frame = Frame {
                height: out_height,
                width: out_width,
                padding: 0,
                tiles_wide,
            };
            for (o, &b) in bias.iter().enumerate() {
                let plane = ((item * outputs + o) * out_frames + frame) * out_height * out_width;
                // SAFETY: tasks write disjoint tiles of `out`, and `plane` starts one output
                // channel's frame inside it.
                unsafe {
                    untransform_block(
                        &products[o * columns..],
                        products_stride,
                        (first, count),
                        &output_frame,
                        b,
                        scratch,
                        out_ptr.get().add(plane),
                    );
                }
            }
        })
    });
    TRANSFORMED_WEIGHTS.set(weights);
    // SAFETY: the tasks' tiles cover every output frame of every channel.
    unsafe { out.filled() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector input transform, dispatched and as built for any CPU, with and without rows
    /// to bring into cache, gives `input_1d` of every lane of every run.
    #[test]
    fn input_runs_transform_every_lane() {
        let runs = 3;
        let value = |i: usize| ((i * 7919) % 1013) as f32 / 101.3 - 5.0;
        let inputs: Vec<Vec<f32>> = (0..TILE)
            .map(|j| (0..LANES * runs).map(|i| value(i + 97 * j)).collect())
            .collect();
        let mut dispatched = vec![vec![f32::NAN; LANES * runs]; TILE];
        let mut portable = dispatched.clone();
        let input_pointers = std::array::from_fn(|j| inputs[j].as_ptr());
        type Runs = unsafe fn(Inputs, [*mut f32; TILE], usize);
        let kernels: [(&mut Vec<Vec<f32>>, Runs); 2] = [
            (&mut dispatched, input_runs),
            (&mut portable, input_runs_portable),
        ];
        for ((outputs, kernel), ahead) in kernels.into_iter().zip([None, Some(input_pointers)]) {
            let output_pointers = std::array::from_fn(|k| outputs[k].as_mut_ptr());
            // SAFETY: every input and output holds `LANES * runs` floats, apart.
            unsafe { kernel((input_pointers, ahead), output_pointers, runs) };
        }
        for i in 0..LANES * runs {
            let expected = input_1d(std::array::from_fn(|j| inputs[j][i]));
            for (k, &expected) in expected.iter().enumerate() {
                for ours in [dispatched[k][i], portable[k][i]] {
                    assert!((ours - expected).abs() <= 1e-5 * expected.abs().max(1.0));
                }
            }
        }
    }

    /// The vector output transform gives the scalar one's outputs plus the bias, for whole and
    /// partial tile rows, and writes nothing else.
    #[test]
    fn output_runs_match_the_scalar_transform() {
        let (runs, bias) = (2, 0.5);
        let stride = LANES * runs + 3;
        let width = OUT * LANES * runs + 5;
        let value = |i: usize| ((i * 7919) % 1013) as f32 / 101.3 - 5.0;
        let products: Vec<f32> = (0..POSITIONS * stride).map(value).collect();
        for rows in [OUT, 2] {
            let mut plane = vec![f32::NAN; OUT * width];
            // SAFETY: the products hold `LANES * runs` tiles at every position, the plane `OUT`
            // rows of `width` floats.
            let done = unsafe {
                output_runs(
                    (products.as_ptr(), stride),
                    bias,
                    (plane.as_mut_ptr(), width),
                    rows,
                    runs,
                )
            };
            if done == 0 {
                continue; // No AVX-512 on this CPU: the scalar transform does all.
            }
            assert_eq!(done, LANES * runs);
            for t in 0..done {
                let m = |i: usize, j: usize| products[(i * TILE + j) * stride + t];
                let across: [[f32; OUT]; TILE] =
                    std::array::from_fn(|i| output_1d(std::array::from_fn(|j| m(i, j))));
                for c in 0..OUT {
                    let expected = output_1d(std::array::from_fn(|i| across[i][c]));
                    for (y, &expected) in expected.iter().enumerate() {
                        let ours = plane[y * width + OUT * t + c];
                        if y < rows {
                            let error = (ours - (expected + bias)).abs();
                            assert!(error <= 1e-4 * expected.abs().max(1.0), "{ours} {expected}");
                        } else {
                            assert!(ours.is_nan(), "row {y} written");
                        }
                    }
                }
            }
            assert!(
                plane
                    .chunks(width)
                    .all(|row| row[OUT * done..].iter().all(|v| v.is_nan()))
            );
        }
    }
}
