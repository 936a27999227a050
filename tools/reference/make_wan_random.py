"""A Wan 2.1 T2V 1.3B diffusers folder with random weights at the real sizes (UMT5-XXL text
encoder and transformer in bf16, VAE in f32, about 15 GB), for measuring whole generations
(`bench_pipeline.py` and `himmel generate --model`) without the real download. The tokenizer
is the tiny fixture's: token ids only pick embedding rows, so its size does not change the work.

    /tmp/ref/bin/python tools/reference/make_wan_random.py /tmp/wan-random
"""

import argparse
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline
from diffusers import WanTransformer3DModel
from transformers import UMT5Config, UMT5EncoderModel
from wan_sizes import UMT5_XXL, WAN_1_3B

parser = argparse.ArgumentParser()
parser.add_argument("out", type=Path)
args = parser.parse_args()

torch.manual_seed(0)
fixture = Path(__file__).resolve().parents[2] / "tests/fixtures/wan/pipeline_tiny"
# Built in bf16 directly: the f32 text encoder alone would need 23 GB.
torch.set_default_dtype(torch.bfloat16)
text_encoder = UMT5EncoderModel(UMT5Config(**UMT5_XXL)).eval()
transformer = WanTransformer3DModel(**WAN_1_3B).eval()
torch.set_default_dtype(torch.float32)
pipeline = WanPipeline(
    tokenizer=None,
    text_encoder=text_encoder,
    transformer=transformer,
    vae=AutoencoderKLWan().eval(),
    scheduler=UniPCMultistepScheduler.from_pretrained(fixture / "scheduler"),
)
pipeline.save_pretrained(args.out)
shutil.copytree(fixture / "tokenizer", args.out / "tokenizer", dirs_exist_ok=True)
# model_index.json names the tokenizer class the fixture's folder holds.
index = (fixture / "model_index.json").read_text()
(args.out / "model_index.json").write_text(index)
print(f"wrote {args.out}")
