"""transformers' side of `himmel bench text`: one UMT5-XXL encoder forward (Wan 2.1's text
encoder, random weights, bf16) over 512 tokens on this machine, for BENCHMARKS.md.

    /tmp/ref/bin/python tools/reference/bench_text.py [--tokens 512]
"""

import argparse
import resource
import time

import torch
from transformers import UMT5Config, UMT5EncoderModel
from wan_sizes import UMT5_XXL

parser = argparse.ArgumentParser()
parser.add_argument("--tokens", type=int, default=512)
args = parser.parse_args()

torch.manual_seed(0)
config = UMT5Config(**UMT5_XXL)
start = time.perf_counter()
# Built in bf16 directly: the f32 model alone would need 23 GB.
torch.set_default_dtype(torch.bfloat16)
model = UMT5EncoderModel(config).eval()
print(f"build {time.perf_counter() - start:.1f}s", flush=True)
ids = torch.arange(args.tokens).unsqueeze(0)
mask = torch.ones_like(ids)
with torch.no_grad():
    start = time.perf_counter()
    model(input_ids=ids, attention_mask=mask)
    print(f"encode bf16: {time.perf_counter() - start:.2f}s", flush=True)
print(f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024:.2f} GiB")
