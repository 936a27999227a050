"""Parity fixture for Himmel's UMT5 encoder: a tiny random UMT5EncoderModel (per-layer relative
position bias, gated-GELU feed-forward) run on padded token ids with an attention mask; saved
under tests/fixtures/umt5/.

Reference: transformers as installed beside diffusers 0.42.1, torch 2.15 (CPU, float32). Seed 0.
Every parameter is perturbed so that no norm weight is exactly one.

    /tmp/ref/bin/python tools/reference/umt5.py
"""

from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import UMT5Config, UMT5EncoderModel

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "umt5"

torch.manual_seed(0)
config = UMT5Config(
    vocab_size=64,
    d_model=16,
    d_kv=4,
    d_ff=24,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6,
    dropout_rate=0.0,
)
model = UMT5EncoderModel(config).eval()
with torch.no_grad():
    for parameter in model.parameters():
        parameter.add_(0.2 * torch.randn_like(parameter))

# Two prompts of 9 and 5 tokens (ending in </s> = 1), padded with <pad> = 0 to 40 positions so
# that relative distances reach the logarithmic buckets.
ids = torch.zeros(2, 40, dtype=torch.long)
ids[0, :9] = torch.tensor([5, 17, 33, 8, 61, 2, 44, 12, 1])
ids[1, :5] = torch.tensor([9, 9, 50, 3, 1])
mask = (ids != 0).long()
with torch.no_grad():
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state

model.save_pretrained(OUT / "encoder_tiny", safe_serialization=True)
save_file(
    {"input_ids": ids.to(torch.int64), "attention_mask": mask.to(torch.int64), "hidden": hidden.contiguous()},
    OUT / "encoder_tiny_io.safetensors",
)
print("hidden", tuple(hidden.shape), float(hidden.abs().mean()))
