//! CPU kernels where candle's general ops are slow: the Wan VAE's video convolutions and norms,
//! linear layers over bf16 weights, and fused attention, for inference (f32, or bf16 weights,
//! on the CPU without gradients); and the video convolution with its backward pass for
//! training in f32 on the CPU. Callers keep candle's ops for everything else.

/// `$kernel::<R>(args)` with `R` the constant for `$rows`, the rows (1 to 6) of a strip that a
/// microkernel of the blocked products sums.
#[cfg(target_arch = "x86_64")]
macro_rules! with_strip_rows {
    ($rows:expr, $kernel:ident($($arg:expr),* $(,)?)) => {
        match $rows {
            6 => $kernel::<6>($($arg),*),
            5 => $kernel::<5>($($arg),*),
            4 => $kernel::<4>($($arg),*),
            3 => $kernel::<3>($($arg),*),
            2 => $kernel::<2>($($arg),*),
            _ => $kernel::<1>($($arg),*),
        }
    };
}

/// Returns `$portable(args)` compiled for the first group of CPU features (such as `("avx2",
/// "fma")`) this CPU has all of: the portable function is plain Rust that the compiler
/// vectorises for what it may use. Falls through where the CPU has none. Used only where the
/// portable function's contract is the caller's: the features are checked here.
macro_rules! return_built_for {
    ([], $($rest:tt)*) => {};
    (
        [($($feature:tt),+) $(, $more:tt)*],
        $portable:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?
    ) => {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature($(enable = $feature),+)]
            #[allow(unused_unsafe)]
            unsafe fn build($($arg: $ty),*) $(-> $ret)? {
                // SAFETY: the caller of the dispatching function keeps the portable one's
                // contract.
                unsafe { $portable($($arg),*) }
            }
            if $(std::arch::is_x86_feature_detected!($feature))&&+ {
                // SAFETY: the CPU has the features; the rest as above.
                return unsafe { build($($arg),*) };
            }
        }
        return_built_for!([$($more),*], $portable($($arg: $ty),*) $(-> $ret)?);
    };
}

pub mod attention;
#[cfg(target_arch = "x86_64")]
pub mod bf16_gemm;
pub mod bf16_linear;
mod elementwise;
mod few_outputs;
#[cfg(target_arch = "x86_64")]
pub mod int8_gemm;
pub mod modulation;
mod panel_product;
pub mod video;
pub mod video_training;
mod winograd;

use std::ops::Range;

use candle_core::{Result, Storage, bail};

/// Whether this CPU runs the int8 products (`int8_gemm`: x86-64 with AVX-512 VNNI or AVX2).
pub fn int8_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return int8_gemm::is_available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `dst[i] = src[i]` rounded to bf16 (to nearest, ties to even), with AVX-512 BF16 where the
/// CPU has it.
fn narrow(src: &[f32], dst: &mut [half::bf16]) {
    #[cfg(target_arch = "x86_64")]
    bf16_gemm::narrow(src, dst);
    #[cfg(not(target_arch = "x86_64"))]
    for (dst, src) in dst.iter_mut().zip(src) {
        *dst = half::bf16::from_f32(*src);
    }
}

/// The `count` f32 values of a CPU storage from `start` (a contiguous tensor's own part of a
/// storage it may share with others).
fn cpu_slice(storage: &Storage, start: usize, count: usize) -> Result<&[f32]> {
    match storage {
        Storage::Cpu(cpu) => Ok(&cpu.as_slice::<f32>()?[start..start + count]),
        _ => bail!("these kernels run on the CPU"),
    }
}

/// `dst = scale * lhs rhs`, or `dst += scale * lhs rhs` with `accumulate`, on the calling
/// thread (callers run many at once): `lhs` is `m x k`, `rhs` `k x n`, `dst` `m x n` with rows
/// `dst_rows` apart and adjacent columns; each operand is `(pointer, row stride, column
/// stride)`, in elements.
///
/// # Safety
/// Every element the sizes and strides reach lies inside its operand's allocation, and `dst`
/// overlaps neither operand.
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rows): (*mut f32, usize),
    (lhs, lhs_rows, lhs_columns): (*const f32, usize, usize),
    (rhs, rhs_rows, rhs_columns): (*const f32, usize, usize),
    accumulate: bool,
    scale: f32,
) {
    // SAFETY: as the caller promises.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rows as isize,
            accumulate,
            lhs,
            lhs_columns as isize,
            lhs_rows as isize,
            rhs,
            rhs_columns as isize,
            rhs_rows as isize,
            1.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// The blocked product that the bf16 and int8 kernels share, on rayon's pool: each task takes
/// one `mc x nc` tile of the `m x n` output (rows varying fastest between tasks), sums it over
/// `depth` steps, `kc` at a time (so that a block of the weight stays in L2), with
/// `sweep(rows, columns, steps, sums, accumulate)` into a per-thread buffer of `mc` rows `nc`
/// apart (storing on the first block, adding after), then hands it to
/// `finish(rows, columns, sums)`.
#[cfg(target_arch = "x86_64")]
fn blocked_product<S: Copy + Default + Send>(
    (m, n, depth): (usize, usize, usize),
    (mc, nc, kc): (usize, usize, usize),
    sweep: impl Fn(Range<usize>, Range<usize>, Range<usize>, &mut [S], bool) + Sync,
    finish: impl Fn(Range<usize>, Range<usize>, &mut [S]) + Sync,
) {
    use rayon::prelude::*;
    let row_tiles = m.div_ceil(mc);
    (0..row_tiles * n.div_ceil(nc))
        .into_par_iter()
        .for_each_init(
            || vec![S::default(); mc * nc],
            |sums, task| {
                let (row, column) = (task % row_tiles, task / row_tiles);
                let rows = row * mc..m.min((row + 1) * mc);
                let columns = column * nc..n.min((column + 1) * nc);
                if depth == 0 {
                    sums.fill(S::default());
                }
                for k0 in (0..depth).step_by(kc) {
                    let steps = k0..depth.min(k0 + kc);
                    sweep(rows.clone(), columns.clone(), steps, sums, k0 > 0);
                }
                finish(rows, columns, sums);
            },
        );
}

/// A pointer parallel tasks share, each writing its own disjoint elements.
struct SendPtr<T>(*mut T);

impl<T> SendPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SendPtr<T> {}

// SAFETY: the tasks that share it write disjoint elements.
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SendPtr<T> {}

/// An output of `len` floats that parallel tasks fill, allocated without zeroing: zeroing a
/// large output ran on the calling thread while the other cores waited.
struct Unfilled {
    values: Vec<f32>,
    len: usize,
}

impl Unfilled {
    /// Room for `len` floats, none written yet.
    fn new(len: usize) -> Self {
        Self {
            values: Vec::with_capacity(len),
            len,
        }
    }

    /// Where the tasks write the floats `0..len`.
    fn target(&mut self) -> SendPtr<f32> {
        SendPtr(self.values.as_mut_ptr())
    }

    /// The floats `0..len`, to write in place.
    fn slots(&mut self) -> &mut [std::mem::MaybeUninit<f32>] {
        &mut self.values.spare_capacity_mut()[..self.len]
    }

    /// The floats.
    ///
    /// # Safety
    /// Every one of the `len` floats has been written, through [`Unfilled::target`] or
    /// [`Unfilled::slots`].
    unsafe fn filled(mut self) -> Vec<f32> {
        // SAFETY: the capacity holds `len` floats, all written (caller's promise).
        unsafe { self.values.set_len(self.len) };
        self.values
    }
}
