"""Parity fixture for Himmel's Wan VAE: a tiny random AutoencoderKLWan (Wan 2.1 layout, causal
3-D convolutions with the chunked feature cache), encoding a 9-frame clip to its latent mean and
decoding latents back to frames, and decoding larger latents in overlapping spatial tiles
(`enable_tiling`, tiles of 32 pixels every 16 rows and 24 columns); saved under
tests/fixtures/wan/.

Reference: diffusers 0.42.1, torch 2.15 (CPU, float32). Seed 0. Every parameter is perturbed.

    /tmp/ref/bin/python tools/reference/wan_vae.py
"""

from pathlib import Path

import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "wan"

torch.manual_seed(0)
vae = AutoencoderKLWan(
    base_dim=8,
    z_dim=4,
    dim_mult=[1, 2, 2, 2],
    num_res_blocks=1,
    temperal_downsample=[False, True, True],
    latents_mean=[0.1, -0.2, 0.3, -0.4],
    latents_std=[1.5, 0.8, 2.0, 1.2],
).eval()
with torch.no_grad():
    for parameter in vae.parameters():
        parameter.add_(0.1 * torch.randn_like(parameter))

video = torch.rand(1, 3, 9, 32, 24) * 2 - 1
latents = torch.randn(1, 4, 3, 4, 3)
with torch.no_grad():
    mean = vae.encode(video).latent_dist.mode()
    decoded = vae.decode(latents, return_dict=False)[0]

vae.save_pretrained(OUT / "vae_tiny", safe_serialization=True)
save_file(
    {"video": video, "mean": mean.contiguous(), "latents": latents, "decoded": decoded.contiguous()},
    OUT / "vae_tiny_io.safetensors",
)

# Tiles of 4 latent cells, every 2 rows and 3 columns: four rows of tiles, the last one cell
# (8 pixels) high, so that it blends over 8 pixels instead of 16; three columns, the last three
# cells wide.
tiled_latents = torch.randn(1, 4, 2, 7, 9)
vae.enable_tiling(
    tile_sample_min_height=32,
    tile_sample_min_width=32,
    tile_sample_stride_height=16,
    tile_sample_stride_width=24,
)
with torch.no_grad():
    tiled = vae.decode(tiled_latents, return_dict=False)[0]
save_file(
    {"latents": tiled_latents, "decoded": tiled.contiguous()},
    OUT / "vae_tiny_tiled_io.safetensors",
)
print("mean", tuple(mean.shape), "decoded", tuple(decoded.shape), "tiled", tuple(tiled.shape))
