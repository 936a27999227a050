//! [`VaeTiling`]: decoding large frames in overlapping spatial tiles, as diffusers'
//! `AutoencoderKLWan.enable_tiling` does. Each tile of latents is decoded on its own through all
//! its frames, so the decoder's memory is bounded by the tile whatever the frame size; where
//! neighbouring tiles overlap, the lower (right) one is blended linearly into the upper (left)
//! one, and each tile keeps one stride of its pixels.

use candle_core::{Result, Tensor, bail};

use super::WanVae;

/// Tile and stride sizes in pixels (each a multiple of the VAE's spatial factor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VaeTiling {
    /// `(height, width)` of a tile; latents no larger than one tile decode untiled.
    pub tile: (usize, usize),
    /// `(height, width)` between the starts of neighbouring tiles; `tile - stride` pixels
    /// overlap and are blended.
    pub stride: (usize, usize),
}

impl Default for VaeTiling {
    /// diffusers' defaults: tiles of 256 pixels every 192 (64 blended).
    fn default() -> Self {
        Self {
            tile: (256, 256),
            stride: (192, 192),
        }
    }
}

impl VaeTiling {
    /// An error unless both sizes are positive multiples of `factor` and the stride is at most
    /// the tile.
    fn check(&self, factor: usize) -> Result<()> {
        let sizes = [self.tile.0, self.tile.1, self.stride.0, self.stride.1];
        if sizes
            .iter()
            .any(|&size| size == 0 || !size.is_multiple_of(factor))
        {
            bail!(
                "VAE tiling: tile {:?} and stride {:?} must be positive multiples of {factor} pixels",
                self.tile,
                self.stride
            );
        }
        if self.stride.0 > self.tile.0 || self.stride.1 > self.tile.1 {
            bail!(
                "VAE tiling: stride {:?} exceeds tile {:?}",
                self.stride,
                self.tile
            );
        }
        Ok(())
    }
}

impl WanVae {
    /// [`WanVae::decode`] of latents `[B, z, F, h, w]` in tiles of `tiling` (untiled where one
    /// tile holds them), in -1..=1.
    pub fn decode_tiled(&self, latents: &Tensor, tiling: &VaeTiling) -> Result<Tensor> {
        let factor = self.config().spatial_factor();
        tiling.check(factor)?;
        let (_, _, _, height, width) = latents.dims5()?;
        let tile = (tiling.tile.0 / factor, tiling.tile.1 / factor);
        if height <= tile.0 && width <= tile.1 {
            return self.decode(latents);
        }
        let stride = (tiling.stride.0 / factor, tiling.stride.1 / factor);
        let blend = (
            tiling.tile.0 - tiling.stride.0,
            tiling.tile.1 - tiling.stride.1,
        );
        let mut above: Vec<Tensor> = Vec::new();
        let mut bands = Vec::new();
        for top in (0..height).step_by(stride.0) {
            let mut row: Vec<Tensor> = Vec::new();
            for (column, left) in (0..width).step_by(stride.1).enumerate() {
                let part = latents.narrow(3, top, tile.0.min(height - top))?.narrow(
                    4,
                    left,
                    tile.1.min(width - left),
                )?;
                let mut decoded = self.decode_unclamped(&part)?;
                if let Some(upper) = above.get(column) {
                    decoded = blended(upper, &decoded, 3, blend.0)?;
                }
                if let Some(previous) = row.last() {
                    decoded = blended(previous, &decoded, 4, blend.1)?;
                }
                row.push(decoded);
            }
            let kept = row
                .iter()
                .map(|tile| keep_first(tile, tiling.stride))
                .collect::<Result<Vec<_>>>()?;
            bands.push(Tensor::cat(&kept, 4)?);
            above = row;
        }
        let video = Tensor::cat(&bands, 3)?;
        video
            .narrow(3, 0, height * factor)?
            .narrow(4, 0, width * factor)?
            .clamp(-1f32, 1f32)
    }
}

/// `tile` `[B, C, T, H, W]` cut to its first `stride` pixels (fewer where it has fewer).
fn keep_first(tile: &Tensor, stride: (usize, usize)) -> Result<Tensor> {
    let (_, _, _, height, width) = tile.dims5()?;
    tile.narrow(3, 0, stride.0.min(height))?
        .narrow(4, 0, stride.1.min(width))
}

/// `next` with its first `extent` pixels along `dim` (3: rows, 4: columns) blended from
/// `previous`'s last ones: pixel `y` weighs `next` by `y / extent` and `previous` by the rest
/// (the extent shrinks to the shorter tile).
fn blended(previous: &Tensor, next: &Tensor, dim: usize, extent: usize) -> Result<Tensor> {
    let extent = extent.min(previous.dim(dim)?).min(next.dim(dim)?);
    if extent == 0 {
        return Ok(next.clone());
    }
    let mut shape = [1usize; 5];
    shape[dim] = extent;
    let weights: Vec<f32> = (0..extent)
        .map(|y| (y as f64 / extent as f64) as f32)
        .collect();
    let weight =
        Tensor::from_vec(weights, shape.as_slice(), next.device())?.to_dtype(next.dtype())?;
    let tail = previous.narrow(dim, previous.dim(dim)? - extent, extent)?;
    let head = next.narrow(dim, 0, extent)?;
    let mixed = (tail.broadcast_mul(&(1.0 - &weight)?)? + head.broadcast_mul(&weight)?)?;
    let length = next.dim(dim)?;
    if extent == length {
        return Ok(mixed);
    }
    Tensor::cat(&[mixed, next.narrow(dim, extent, length - extent)?], dim)
}
