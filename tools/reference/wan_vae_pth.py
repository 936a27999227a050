"""The tiny VAE fixture in the original Wan layout as a pickled PyTorch state dict (the form of
`Wan2.1_VAE.pth`), for the test that Himmel reads `.pth` files without running pickle code.
Input: the tiny VAE renamed to original keys by Himmel (`original_vae_name`, one residual block
per stage), written to /tmp/vae_original.safetensors.

    /tmp/ref/bin/python tools/reference/wan_vae_pth.py
"""

from pathlib import Path

import torch
from safetensors.torch import load_file

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "wan"
torch.save(load_file("/tmp/vae_original.safetensors"), OUT / "vae_tiny_original.pth")
