"""diffusers' side of `himmel bench wan`: one Wan 2.1 1.3B transformer forward (random weights,
bf16 and f32, or as --dtype asks) and the VAE decode (f32) at 256x256x17 on this machine, for
BENCHMARKS.md. `--dtype int8` is PyTorch's dynamic int8 quantisation (weights per output channel,
activations per batch as they run, fbgemm) of the blocks' linear layers, as `himmel bench wan
--int8` quantises them.

    /tmp/ref/bin/python tools/reference/bench_wan.py
    /tmp/ref/bin/python tools/reference/bench_wan.py --vae-only   # its time and peak memory alone
    /tmp/ref/bin/python tools/reference/bench_wan.py --no-vae     # the transformer alone
    /tmp/ref/bin/python tools/reference/bench_wan.py --no-vae --prompt-tokens 24  # a padded prompt
    /tmp/ref/bin/python tools/reference/bench_wan.py --no-vae --dtype f32 --dtype int8
"""

import argparse
import copy
import resource
import time

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from wan_sizes import WAN_1_3B

parser = argparse.ArgumentParser()
parser.add_argument("--vae-only", action="store_true", help="skip the transformer")
parser.add_argument("--no-vae", action="store_true", help="skip the VAE decode")
parser.add_argument(
    "--prompt-tokens",
    type=int,
    default=512,
    help="rows of the 512 text rows that hold a prompt (random); the rest zeros, as the pipeline pads",
)
parser.add_argument(
    "--dtype",
    action="append",
    choices=["bf16", "f32", "int8"],
    help="the transformer's precision, repeatable (default: bf16 and f32)",
)
args = parser.parse_args()

torch.manual_seed(0)
latents = torch.randn(1, 16, 5, 32, 32)
if not args.vae_only:
    prompt = torch.zeros(1, 512, 4096)
    prompt[:, : args.prompt_tokens] = torch.randn(1, args.prompt_tokens, 4096)
    timestep = torch.tensor([999])
    model = WanTransformer3DModel(**WAN_1_3B).eval()
    for name in args.dtype or ["bf16", "f32"]:
        if name == "int8":
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            dtype = torch.float32
            run = copy.deepcopy(model).to(dtype)
            run.blocks = quantize_dynamic(
                run.blocks, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8
            )
        else:
            dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[name]
            run = model.to(dtype)
        with torch.no_grad():
            start = time.perf_counter()
            run(latents.to(dtype), timestep, prompt.to(dtype), return_dict=False)
            print(f"transformer forward {name}: {time.perf_counter() - start:.2f}s", flush=True)
        del run
    del model
if not args.no_vae:
    vae = AutoencoderKLWan().eval()
    with torch.no_grad():
        start = time.perf_counter()
        vae.decode(latents, return_dict=False)
        print(f"VAE decode f32: {time.perf_counter() - start:.2f}s", flush=True)
print(f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024:.2f} GiB")
