use candle_core::{Device, Tensor};
use himmel_models::kernels::video::conv3d;
use std::time::Instant;
fn main() -> candle_core::Result<()> {
    let d = Device::Cpu;
    let only: Option<usize> = std::env::args().nth(1).map(|a| a.parse().unwrap());
    let reps: usize = std::env::args()
        .nth(2)
        .map(|a| a.parse().unwrap())
        .unwrap_or(3);
    for (i, (c, o, h, w, t)) in [
        (384, 384, 32, 32, 3),
        (384, 384, 64, 64, 3),
        (192, 192, 128, 128, 3),
        (96, 96, 256, 256, 3),
        (384, 384, 16, 16, 3),
        (96, 96, 256, 256, 6),
        (192, 192, 128, 128, 6),
    ]
    .into_iter()
    .enumerate()
    {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let x = Tensor::randn(0f32, 1.0, (1, c, t, h, w), &d)?;
        let wt = Tensor::randn(0f32, 1.0, (o, c, 3, 3, 3), &d)?;
        let b = Tensor::zeros(o, candle_core::DType::F32, &d)?;
        conv3d(&x, &wt, &b, 1, 1)?;
        let mut best = f64::MAX;
        for _ in 0..reps {
            let s = Instant::now();
            conv3d(&x, &wt, &b, 1, 1)?;
            best = best.min(s.elapsed().as_secs_f64());
        }
        let flops = 2.0 * (o * c * 27 * h * w * (t - 2)) as f64;
        println!(
            "C{c} O{o} {h}x{w}: {:.1} ms, {:.0} GFLOP/s direct-equivalent",
            best * 1e3,
            flops / best / 1e9
        );
    }
    Ok(())
}
