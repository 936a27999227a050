//! CPU kernels for inference where candle's general ops are slow: the Wan VAE's video
//! convolutions and norms, linear layers over bf16 weights, and fused attention. Each applies to f32 (or bf16
//! weights) on the CPU without gradients; callers keep candle's ops for everything else.

pub mod attention;
pub mod bf16_linear;
pub mod video;
mod winograd;

use candle_core::{Result, Storage, bail};

/// The `count` f32 values of a CPU storage from `start` (a contiguous tensor's own part of a
/// storage it may share with others).
fn cpu_slice(storage: &Storage, start: usize, count: usize) -> Result<&[f32]> {
    match storage {
        Storage::Cpu(cpu) => Ok(&cpu.as_slice::<f32>()?[start..start + count]),
        _ => bail!("these kernels run on the CPU"),
    }
}

/// A pointer parallel tasks share, each writing its own disjoint elements.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);

impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: the tasks that share it write disjoint elements.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}
