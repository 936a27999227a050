//! Two-dimensional FFTs of square grids (rows, then columns), with rustfft.

use std::sync::Arc;

use rustfft::num_complex::Complex32;
use rustfft::{Fft, FftPlanner};

/// Forward and inverse transforms of `size` x `size` row-major grids (unnormalised).
pub struct Fft2 {
    size: usize,
    forward: Arc<dyn Fft<f32>>,
    inverse: Arc<dyn Fft<f32>>,
}

impl Fft2 {
    /// Plans the transforms of one grid size.
    pub fn new(size: usize) -> Self {
        let mut planner = FftPlanner::new();
        Self {
            size,
            forward: planner.plan_fft_forward(size),
            inverse: planner.plan_fft_inverse(size),
        }
    }

    /// Transforms `grid` in place: `X[k] = Σ g[n] e^{-2πi k·n / size}`.
    pub fn forward(&self, grid: &mut [Complex32]) {
        self.run(grid, &self.forward);
    }

    /// Transforms `grid` in place: `g[n] = Σ X[k] e^{+2πi k·n / size}` (no `1/size²`).
    pub fn inverse(&self, grid: &mut [Complex32]) {
        self.run(grid, &self.inverse);
    }

    fn run(&self, grid: &mut [Complex32], fft: &Arc<dyn Fft<f32>>) {
        let size = self.size;
        fft.process(grid);
        let mut column = vec![Complex32::default(); size];
        for x in 0..size {
            for (y, value) in column.iter_mut().enumerate() {
                *value = grid[y * size + x];
            }
            fft.process(&mut column);
            for (y, value) in column.iter().enumerate() {
                grid[y * size + x] = *value;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_definition() {
        let size = 8;
        let grid: Vec<Complex32> = (0..size * size)
            .map(|i| Complex32::new((i as f32 * 0.37).sin(), (i as f32 * 0.11).cos()))
            .collect();
        let mut transformed = grid.clone();
        let fft = Fft2::new(size);
        fft.forward(&mut transformed);
        let (kx, ky) = (3, 5);
        let mut expected = Complex32::default();
        for y in 0..size {
            for x in 0..size {
                let angle = -std::f32::consts::TAU * (kx * x + ky * y) as f32 / size as f32;
                expected += grid[y * size + x] * Complex32::from_polar(1.0, angle);
            }
        }
        assert!((transformed[ky * size + kx] - expected).norm() < 1e-3);
        fft.inverse(&mut transformed);
        let scale = (size * size) as f32;
        for (back, original) in transformed.iter().zip(&grid) {
            assert!((back / scale - original).norm() < 1e-4);
        }
    }
}
