"""PyTorch's side of `himmel bench gemm`: the bf16 linear product x w^T (bf16 inputs and
weights, as `torch.nn.functional.linear` runs it in a bf16 model) on the same shapes, the best
of several runs each, on this machine's threads.

    /tmp/ref/bin/python tools/reference/bench_gemm.py [--repeat 8]
"""

import argparse
import time

import torch

# (name, rows, outputs, inputs): 2048^3, then Wan 2.1 1.3B's products at 256x256x17.
SHAPES = [
    ("square 2048^3", 2048, 2048, 2048),
    ("attention q/k/v/o", 1280, 1536, 1536),
    ("cross-attention k/v", 512, 1536, 1536),
    ("text embedding", 512, 1536, 4096),
    ("feed-forward up", 1280, 8960, 1536),
    ("feed-forward down", 1280, 1536, 8960),
]

parser = argparse.ArgumentParser()
parser.add_argument("--repeat", type=int, default=8)
args = parser.parse_args()

print(
    f"torch {torch.__version__} bf16 linear ({torch.backends.cpu.get_cpu_capability()}, "
    f"{torch.get_num_threads()} threads)"
)
with torch.no_grad():
    for name, rows, outputs, inputs in SHAPES:
        x = torch.randn(rows, inputs).bfloat16()
        w = torch.randn(outputs, inputs).bfloat16()
        torch.nn.functional.linear(x, w)
        best = float("inf")
        for _ in range(args.repeat):
            start = time.perf_counter()
            torch.nn.functional.linear(x, w)
            best = min(best, time.perf_counter() - start)
        gflops = 2 * rows * outputs * inputs / best / 1e9
        shape = f"{rows}x{outputs}x{inputs}"
        print(f"  {name:<20} {shape:>15} {best * 1e3:8.2f} ms {gflops:6.0f} GFLOP/s")
