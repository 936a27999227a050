"""diffusers' side of a whole Wan 2.1 1.3B generation on this machine, for BENCHMARKS.md: the
folder `make_wan_random.py` wrote (random weights, real sizes) loaded as the model card shows
it (text encoder and transformer in bf16, VAE in f32), one prompt with a negative prompt and
guidance at 256x256x17 for a few steps. Prints the time and the process's peak memory, to set
beside `/usr/bin/time -v himmel generate --model FOLDER` with the same settings.

    /tmp/ref/bin/pip install accelerate   # diffusers loads bf16 models with it
    /tmp/ref/bin/python tools/reference/bench_pipeline.py /tmp/wan-random [--steps 2]
"""

import argparse
import resource
import time

import torch
from diffusers import AutoencoderKLWan, WanPipeline

parser = argparse.ArgumentParser()
parser.add_argument("folder")
parser.add_argument("--steps", type=int, default=2)
args = parser.parse_args()

start = time.perf_counter()
vae = AutoencoderKLWan.from_pretrained(args.folder, subfolder="vae", torch_dtype=torch.float32)
pipeline = WanPipeline.from_pretrained(args.folder, vae=vae, torch_dtype=torch.bfloat16)
print(f"load {time.perf_counter() - start:.1f}s", flush=True)
start = time.perf_counter()
with torch.no_grad():
    pipeline(
        "a red ball bounces on the grass",
        negative_prompt="",
        height=256,
        width=256,
        num_frames=17,
        num_inference_steps=args.steps,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
print(f"generate {time.perf_counter() - start:.1f}s", flush=True)
print(f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024:.2f} GiB")
