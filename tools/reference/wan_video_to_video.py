"""Parity fixture for Himmel's Wan video to video: the tiny random pipeline of wan_pipeline.py
(tests/fixtures/wan/pipeline_tiny) run as diffusers' WanVideoToVideoPipeline from a given clip
at strength 0.5, with the noise drawn from a seeded generator and saved, so the whole path (VAE
encode, normalisation, noising, the last steps of the schedule, decode) is compared.

Reference: diffusers 0.42.1, torch 2.x (CPU, float32).

    /tmp/ref/bin/python tools/reference/wan_pipeline.py   # first, if pipeline_tiny is missing
    /tmp/ref/bin/python tools/reference/wan_video_to_video.py
"""

from pathlib import Path

import numpy as np
import torch
from diffusers import WanVideoToVideoPipeline
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "wan"
PROMPT = "a red ball bounces  on the grass &amp; sky"

torch.manual_seed(1)
pipe = WanVideoToVideoPipeline.from_pretrained(OUT / "pipeline_tiny")

height, width, frames = 32, 32, 5
# A smooth clip in [0, 1], frames x height x width x RGB.
y, x = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
clip = np.stack(
    [np.stack([x * (1 - t / 8), y, 0.5 + 0.4 * np.sin(6 * x + t)], axis=-1) for t in range(frames)]
).astype(np.float32)

cases = {"video_clip": torch.from_numpy(clip).contiguous()}

noise = torch.randn(1, 4, (frames - 1) // 4 + 1, height // 8, width // 8, generator=torch.Generator().manual_seed(7))
out = pipe(video=clip, prompt=PROMPT, negative_prompt="blurry", height=height, width=width,
           num_inference_steps=4, strength=0.5, guidance_scale=4.0, generator=torch.Generator().manual_seed(7),
           max_sequence_length=16, output_type="np", return_dict=False)[0]
cases["video_noise"] = noise
cases["video_frames"] = torch.from_numpy(out[0]).float().contiguous()

save_file(cases, OUT / "video_to_video_tiny_io.safetensors")
print({k: tuple(v.shape) for k, v in cases.items()})
