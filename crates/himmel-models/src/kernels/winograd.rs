//! The video convolutions with 3x3 spatial kernels by Winograd's minimal filtering F(2x2, 3x3)
//! (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): each 2x2 block
//! of outputs comes from a 4x4 tile of input through 16 products per channel pair instead of
//! 36, so a 3x3 tap set costs 4 multiplications per output where the direct form costs 9. The
//! tiles' 16 transformed positions are 16 matrix products (outputs x channels by channels x
//! tiles) per time tap; the transforms only add and halve, so f32 keeps its precision.

use gemm::Parallelism;
use rayon::prelude::*;

use super::SendPtr;
use super::video::Conv;

/// Transformed tile positions (4x4).
const POSITIONS: usize = 16;

/// Floats of one task's transformed input and accumulated products together (4 MiB): the
/// products are thin (a block's tiles are their columns) and each packs its transformed
/// weights again, so blocks of fewer tiles spend more on packing (1 MiB blocks measured slower
/// at 384 channels, 16 MiB no faster).
const BLOCK_FLOATS: usize = 1 << 20;

/// Whether a convolution takes this path: 3x3 in space, and enough channels on both sides
/// that the products, not the transforms, are the cost.
pub(super) fn applies(shape: &Conv) -> bool {
    let (_, kh, kw) = shape.kernel;
    kh == 3 && kw == 3 && shape.channels >= 16 && shape.outputs >= 16
}

/// `G g Gᵀ` of every 3x3 kernel: `[kt][16][outputs][channels]`.
fn transform_weights(shape: &Conv, weight: &[f32]) -> Vec<f32> {
    let (kt, _, _) = shape.kernel;
    let (outputs, channels) = (shape.outputs, shape.channels);
    let mut transformed = vec![0f32; kt * POSITIONS * outputs * channels];
    for o in 0..outputs {
        for c in 0..channels {
            for dt in 0..kt {
                let g = &weight[((o * channels + c) * kt + dt) * 9..][..9];
                // G g: 4x3.
                let mut rows = [[0f32; 3]; 4];
                for j in 0..3 {
                    let (a, b, d) = (g[j], g[3 + j], g[6 + j]);
                    rows[0][j] = a;
                    rows[1][j] = 0.5 * (a + b + d);
                    rows[2][j] = 0.5 * (a - b + d);
                    rows[3][j] = d;
                }
                // (G g) Gᵀ: 4x4.
                for (i, row) in rows.iter().enumerate() {
                    let [a, b, d] = *row;
                    let values = [a, 0.5 * (a + b + d), 0.5 * (a - b + d), d];
                    for (j, value) in values.into_iter().enumerate() {
                        let position = i * 4 + j;
                        transformed[((dt * POSITIONS + position) * outputs + o) * channels + c] =
                            value;
                    }
                }
            }
        }
    }
    transformed
}

/// `Bᵀ d B` of the 4x4 input tile `d`.
fn transform_tile(d: &[[f32; 4]; 4]) -> [f32; POSITIONS] {
    let mut rows = [[0f32; 4]; 4];
    for j in 0..4 {
        rows[0][j] = d[0][j] - d[2][j];
        rows[1][j] = d[1][j] + d[2][j];
        rows[2][j] = d[2][j] - d[1][j];
        rows[3][j] = d[1][j] - d[3][j];
    }
    let mut out = [0f32; POSITIONS];
    for (i, r) in rows.iter().enumerate() {
        out[i * 4] = r[0] - r[2];
        out[i * 4 + 1] = r[1] + r[2];
        out[i * 4 + 2] = r[2] - r[1];
        out[i * 4 + 3] = r[1] - r[3];
    }
    out
}

/// `Aᵀ m A`: the 2x2 outputs of the 4x4 products `m`.
fn untransform(m: &[f32; POSITIONS]) -> [[f32; 2]; 2] {
    let mut rows = [[0f32; 4]; 2];
    for j in 0..4 {
        rows[0][j] = m[j] + m[4 + j] + m[8 + j];
        rows[1][j] = m[4 + j] - m[8 + j] - m[12 + j];
    }
    rows.map(|r| [r[0] + r[1] + r[2], r[1] - r[2] - r[3]])
}

/// The convolution of [`super::video::conv3d`] for 3x3 spatial kernels: `padded` is the input
/// padded in space, `[B, C, T, padded_height, padded_width]`; the result `[B, O, T', H', W']`.
pub(super) fn conv(shape: &Conv, padded: &[f32], weight: &[f32], bias: &[f32]) -> Vec<f32> {
    let Conv {
        batch,
        channels,
        frames,
        padded_height,
        padded_width,
        outputs,
        kernel: (kt, _, _),
        time_stride,
        out_frames,
        out_height,
        out_width,
    } = *shape;
    let weights = transform_weights(shape, weight);
    let (tiles_high, tiles_wide) = (out_height.div_ceil(2), out_width.div_ceil(2));
    let tiles = tiles_high * tiles_wide;
    let per_block = (BLOCK_FLOATS / (POSITIONS * (channels + outputs))).clamp(1, tiles);
    let blocks = tiles.div_ceil(per_block);
    let frame_size = padded_height * padded_width;
    let mut out = vec![0f32; shape.output_len()];
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..batch * out_frames * blocks)
        .into_par_iter()
        .for_each(|task| {
            let (item, frame, block) = shape.task(task, blocks);
            let first = block * per_block;
            let count = per_block.min(tiles - first);
            // `[16][channels][count]` and `[16][outputs][count]`.
            let mut input = vec![0f32; POSITIONS * channels * count];
            let mut products = vec![0f32; POSITIONS * outputs * count];
            for dt in 0..kt {
                let source = (item * channels * frames + frame * time_stride + dt) * frame_size;
                for c in 0..channels {
                    let plane = &padded[source + c * frames * frame_size..][..frame_size];
                    for tile in 0..count {
                        let (ty, tx) = ((first + tile) / tiles_wide, (first + tile) % tiles_wide);
                        let mut d = [[0f32; 4]; 4];
                        for (i, row) in d.iter_mut().enumerate() {
                            let y = 2 * ty + i;
                            if y >= padded_height {
                                break;
                            }
                            for (j, value) in row.iter_mut().enumerate() {
                                let x = 2 * tx + j;
                                if x < padded_width {
                                    *value = plane[y * padded_width + x];
                                }
                            }
                        }
                        for (position, value) in transform_tile(&d).into_iter().enumerate() {
                            input[(position * channels + c) * count + tile] = value;
                        }
                    }
                }
                for position in 0..POSITIONS {
                    let lhs = &weights[(dt * POSITIONS + position) * outputs * channels..];
                    // SAFETY: `lhs` holds `outputs x channels`, the input slice
                    // `channels x count`, the products slice `outputs x count`, all row-major.
                    unsafe {
                        gemm::gemm(
                            outputs,
                            count,
                            channels,
                            products.as_mut_ptr().add(position * outputs * count),
                            1,
                            count as isize,
                            true,
                            lhs.as_ptr(),
                            1,
                            channels as isize,
                            input.as_ptr().add(position * channels * count),
                            1,
                            count as isize,
                            1.0,
                            1.0,
                            false,
                            false,
                            false,
                            Parallelism::None,
                        );
                    }
                }
            }
            for (o, &b) in bias.iter().enumerate() {
                let plane = ((item * outputs + o) * out_frames + frame) * out_height * out_width;
                for tile in 0..count {
                    let (ty, tx) = ((first + tile) / tiles_wide, (first + tile) % tiles_wide);
                    let mut m = [0f32; POSITIONS];
                    for (position, value) in m.iter_mut().enumerate() {
                        *value = products[(position * outputs + o) * count + tile];
                    }
                    for (i, row) in untransform(&m).iter().enumerate() {
                        let y = 2 * ty + i;
                        for (j, value) in row.iter().enumerate() {
                            let x = 2 * tx + j;
                            if y < out_height && x < out_width {
                                // SAFETY: tasks write disjoint tiles of `out`, inside its
                                // bounds.
                                unsafe {
                                    *out_ptr.get().add(plane + y * out_width + x) = value + b;
                                }
                            }
                        }
                    }
                }
            }
        });
    out
}
