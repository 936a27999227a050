"""Parity fixture for Himmel's Wan transformer: a tiny random WanTransformer3DModel and one
forward pass, saved under tests/fixtures/wan/.

Reference: diffusers 0.42.1, torch 2.15 (CPU, float32). Seed 0. Every parameter is perturbed so
that no weight is zero or one and every branch of the block contributes.

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch diffusers safetensors
    /tmp/ref/bin/python tools/reference/wan_transformer.py
"""

from pathlib import Path

import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "wan"

torch.manual_seed(0)
model = WanTransformer3DModel(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=4,
    out_channels=4,
    text_dim=16,
    freq_dim=32,
    ffn_dim=40,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=32,
).eval()
with torch.no_grad():
    for parameter in model.parameters():
        parameter.add_(0.2 * torch.randn_like(parameter))

latents = torch.randn(2, 4, 3, 4, 6)
timestep = torch.tensor([999, 421])
text = torch.randn(2, 7, 16)
with torch.no_grad():
    output = model(latents, timestep, text, return_dict=False)[0]

model.save_pretrained(OUT / "transformer_tiny", safe_serialization=True)
save_file(
    {
        "latents": latents.contiguous(),
        "timestep": timestep.float().contiguous(),
        "text": text.contiguous(),
        "output": output.contiguous(),
    },
    OUT / "transformer_tiny_io.safetensors",
)
print("output", tuple(output.shape), float(output.abs().mean()))
