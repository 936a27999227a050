"""Parity fixture for Himmel's solvers: diffusers' UniPCMultistepScheduler as Wan 2.1 configures
it (flow prediction, flow sigmas, shift 3) and FlowMatchEulerDiscreteScheduler (shift 3), each
run for a few steps on a random sample with random model outputs; saved under
tests/fixtures/sample/.

Reference: diffusers 0.42.1, torch 2.15 (CPU, float32). Seed 0.

    /tmp/ref/bin/python tools/reference/schedulers.py
"""

from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "sample"
STEPS = 7

torch.manual_seed(0)
sample = torch.randn(1, 4, 2, 3, 3)
outputs = torch.randn(STEPS, 1, 4, 2, 3, 3)
tensors = {"sample": sample, "outputs": outputs}

schedulers = {
    "unipc": UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000
    ),
    "euler": FlowMatchEulerDiscreteScheduler(shift=3.0, num_train_timesteps=1000),
}
for name, scheduler in schedulers.items():
    scheduler.set_timesteps(STEPS)
    latents = sample.clone()
    trajectory = []
    for index, timestep in enumerate(scheduler.timesteps):
        latents = scheduler.step(outputs[index], timestep, latents, return_dict=False)[0]
        trajectory.append(latents)
    tensors[f"{name}_timesteps"] = scheduler.timesteps.double()
    tensors[f"{name}_sigmas"] = scheduler.sigmas.double()
    tensors[f"{name}_trajectory"] = torch.stack(trajectory)
    print(name, scheduler.timesteps.tolist())

save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / "schedulers.safetensors")
