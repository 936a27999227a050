//! Times the Wan VAE decoder's 3x3x3 convolution layers one call at a time, as its frame-by-frame
//! decode runs them (three input frames, one output frame), on random values: the fastest,
//! first-quartile and median of many calls, which shows a kernel change on a host whose speed
//! drifts. `cargo run --release -p himmel-models --example conv_layers [LAYER]` (LAYER 0-3: 96
//! channels at 256x256, 192 at 128x128, 384 at 64x64, 384 at 32x32; all by default).

use std::time::Instant;

use candle_core::{Device, Result, Tensor};
use himmel_models::kernels::video::conv3d;

/// (channels in and out, frame side, calls timed).
const LAYERS: [(usize, usize, usize); 4] =
    [(96, 256, 40), (192, 128, 40), (384, 64, 30), (384, 32, 60)];

fn main() -> Result<()> {
    let only: Option<usize> = match std::env::args().nth(1) {
        Some(layer) => Some(
            layer
                .parse()
                .map_err(|_| candle_core::Error::msg("LAYER is 0-3"))?,
        ),
        None => None,
    };
    let device = Device::Cpu;
    for (index, &(channels, side, calls)) in LAYERS.iter().enumerate() {
        if only.is_some_and(|only| only != index) {
            continue;
        }
        // One layer alone is timed five times as often.
        let calls = if only.is_some() { 5 * calls } else { calls };
        let x = Tensor::randn(0f32, 1.0, (1, channels, 3, side, side), &device)?;
        let weight = Tensor::randn(0f32, 0.05, (channels, channels, 3, 3, 3), &device)?;
        let bias = Tensor::randn(0f32, 1.0, channels, &device)?;
        let mut seconds = Vec::with_capacity(calls);
        for _ in 0..calls {
            let start = Instant::now();
            drop(conv3d(&x, &weight, &bias, 1, 1)?);
            seconds.push(start.elapsed().as_secs_f64());
        }
        seconds.sort_by(f64::total_cmp);
        let flop = 2.0 * 27.0 * (channels * channels * side * side) as f64;
        println!(
            "{channels} channels at {side}x{side}: fastest {:.2} ms, first quartile {:.2} ms, median {:.2} ms ({:.0} GFLOP/s of direct convolution at the fastest)",
            seconds[0] * 1e3,
            seconds[calls / 4] * 1e3,
            seconds[calls / 2] * 1e3,
            flop / seconds[0] / 1e9
        );
    }
    Ok(())
}
