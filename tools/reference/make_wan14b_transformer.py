"""A Wan 2.1 T2V 14B transformer with random weights (bf16, 28 GB) written into a folder that
`make_wan_random.py` made, for measuring the 14B model's memory without the real download. The
tensors are written one at a time (the model is built on the meta device for its names and
shapes), so this needs little memory; values are N(0, 0.02), which keeps activations finite.

    /tmp/ref/bin/python tools/reference/make_wan14b_transformer.py /tmp/wan-random /tmp/wan14b-random
"""

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from diffusers import WanTransformer3DModel
from wan_sizes import WAN_14B

parser = argparse.ArgumentParser()
parser.add_argument("base", type=Path, help="a folder make_wan_random.py wrote")
parser.add_argument("out", type=Path)
args = parser.parse_args()

with torch.device("meta"):
    model = WanTransformer3DModel(**WAN_14B)
tensors = [(name, tuple(t.shape)) for name, t in model.state_dict().items()]

args.out.mkdir(parents=True, exist_ok=True)
for part in ["scheduler", "text_encoder", "tokenizer", "vae", "model_index.json"]:
    target = args.out / part
    if not target.exists():
        target.symlink_to((args.base / part).resolve())
folder = args.out / "transformer"
folder.mkdir(exist_ok=True)
config = json.loads((args.base / "transformer/config.json").read_text())
(folder / "config.json").write_text(json.dumps({**config, **WAN_14B}, indent=2))

header, offset = {}, 0
for name, dims in tensors:
    size = 2 * int(np.prod(dims))
    header[name] = {"dtype": "BF16", "shape": list(dims), "data_offsets": [offset, offset + size]}
    offset += size
encoded = json.dumps(header, separators=(",", ":")).encode()
encoded += b" " * (-len(encoded) % 8)
rng = np.random.default_rng(0)
with open(folder / "diffusion_pytorch_model.safetensors", "wb") as file:
    file.write(len(encoded).to_bytes(8, "little"))
    file.write(encoded)
    for name, dims in tensors:
        count = int(np.prod(dims))
        for start in range(0, count, 1 << 26):
            values = rng.standard_normal(min(1 << 26, count - start), dtype=np.float32) * 0.02
            # bf16 is the upper half of an f32 (truncated).
            file.write((values.view(np.uint32) >> 16).astype(np.uint16).tobytes())
print(f"wrote {folder} ({offset / 1e9:.1f} GB)")
