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
    /tmp/ref/bin/python tools/reference/bench_wan.py --vae-only --width 832 --height 480 --vae-tiling
    python3 tools/reference/bench_wan.py --device cuda --repeat 3 --dtype bf16  # on a GPU
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
parser.add_argument("--device", default="cpu", help="cpu or cuda, as `himmel --device`")
parser.add_argument("--width", type=int, default=256, help="frame width")
parser.add_argument("--height", type=int, default=256, help="frame height")
parser.add_argument("--frames", type=int, default=17, help="frames (1 + 4k)")
parser.add_argument(
    "--vae-tiling", action="store_true", help="decode in tiles (enable_tiling's defaults)"
)
parser.add_argument(
    "--repeat", type=int, default=1, help="runs of each stage; the fastest is reported"
)
args = parser.parse_args()
device = torch.device(args.device)


def timed(work):
    """The fastest of --repeat runs of `work` in seconds, and the first run's."""
    times = []
    for _ in range(max(args.repeat, 1)):
        start = time.perf_counter()
        work()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times), times[0]


torch.manual_seed(0)
latents = torch.randn(1, 16, 1 + (args.frames - 1) // 4, args.height // 8, args.width // 8).to(device)
if not args.vae_only:
    prompt = torch.zeros(1, 512, 4096)
    prompt[:, : args.prompt_tokens] = torch.randn(1, args.prompt_tokens, 4096)
    prompt = prompt.to(device)
    timestep = torch.tensor([999]).to(device)
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
            run = model.to(device, dtype)
        with torch.no_grad():
            best, first = timed(
                lambda: run(latents.to(dtype), timestep, prompt.to(dtype), return_dict=False)
            )
            print(f"transformer forward {name}: {best:.3f}s (first run {first:.3f}s)", flush=True)
        del run
    del model
if not args.no_vae:
    vae = AutoencoderKLWan().eval().to(device)
    if args.vae_tiling:
        vae.enable_tiling()
    with torch.no_grad():
        best, first = timed(lambda: vae.decode(latents, return_dict=False))
        print(f"VAE decode f32: {best:.3f}s (first run {first:.3f}s)", flush=True)
print(f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024:.2f} GiB")
if device.type == "cuda":
    print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
