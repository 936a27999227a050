"""How sharp must a clip be for the world scorer to read its objects as ground truth's?

Degrades world clips in known ways (a Gaussian blur of each frame at several widths; each frame
shrunk 2x or 4x by averaging and grown back bilinearly, what a latent grid that kept no detail
would give), scores every degraded copy with `himmel world score`, and prints each copy's PSNR
against the clips and the scorer's measures: the sharpness an autoencoder's round trip needs to
keep each measure near its target.

    himmel world sample --n 200 --seed 4242 --format safetensors --out clips
    python3 tools/sharpness.py clips [HIMMEL]      # needs numpy; HIMMEL defaults to `himmel`

The degraded copies are written beside CLIPS (CLIPS-blur0.5, CLIPS-down4, ...).
"""

import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np


def read(path):
    """A `world sample` safetensors clip: its header and its (frames, height, width, 3) array."""
    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
        return header, np.frombuffer(f.read(), dtype=np.float32).reshape(header["video"]["shape"])


def write(path, header, video):
    """Writes `video` under `header` (its shape and type unchanged)."""
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + video.astype(np.float32).tobytes())


def blur(video, sigma):
    """Each frame blurred by a Gaussian of `sigma` pixels (edges repeated)."""
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma * sigma))
    taps /= taps.sum()
    padded = np.pad(video, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
    height, width = video.shape[1:3]
    rows = sum(t * padded[:, i : i + height] for i, t in enumerate(taps))
    return sum(t * rows[:, :, i : i + width] for i, t in enumerate(taps))


def shrink_and_grow(video, factor):
    """Each frame averaged over `factor` x `factor` blocks, then grown back bilinearly."""
    frames, height, width, channels = video.shape
    small = video.reshape(
        frames, height // factor, factor, width // factor, factor, channels
    ).mean(axis=(2, 4))

    def grow(array, size, axis):
        places = np.clip((np.arange(size) + 0.5) / factor - 0.5, 0, array.shape[axis] - 1)
        low = np.floor(places).astype(int)
        high = np.minimum(low + 1, array.shape[axis] - 1)
        shape = [1] * array.ndim
        shape[axis] = size
        share = (places - low).reshape(shape)
        return np.take(array, low, axis) * (1 - share) + np.take(array, high, axis) * share

    return grow(grow(small, height, 1), width, 2)


DEGRADATIONS = [(f"blur{s}", lambda v, s=s: blur(v, s)) for s in (0.35, 0.5, 0.7, 1.0)] + [
    (f"down{f}", lambda v, f=f: shrink_and_grow(v, f)) for f in (2, 4)
]


MEASURES = {
    "colour": lambda r: r["scores"]["color"],
    "shape": lambda r: r["scores"]["shape"],
    "motion": lambda r: r["scores"]["motion"],
    "count": lambda r: r["scores"]["count"],
    "no faults": lambda r: r["fault_free"],
    "as asked": lambda r: r["as_asked"],
}


def score(himmel, folder):
    """`himmel world score` of every clip in `folder`: the aggregate report."""
    result = subprocess.run(
        [himmel, "world", "score", "-q", folder], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


def main():
    clips = sys.argv[1].rstrip("/")
    himmel = sys.argv[2] if len(sys.argv) > 2 else "himmel"
    names = sorted(n for n in os.listdir(clips) if n.endswith(".safetensors"))
    print(f"{'clips':<10}{'PSNR':>6}" + "".join(f"{m:>10}" for m in MEASURES) + f"{'residual':>10}")
    rendered_residual = None
    for name, degrade in [("as given", None)] + DEGRADATIONS:
        folder, errors = clips, []
        if degrade:
            folder = f"{clips}-{name}"
            os.makedirs(folder, exist_ok=True)
            for clip in names:
                header, video = read(os.path.join(clips, clip))
                degraded = np.clip(degrade(video), 0, 1)
                errors.append(((degraded - video) ** 2).mean())
                write(os.path.join(folder, clip), header, degraded)
                spec = clip.replace(".safetensors", ".json")
                shutil.copy(os.path.join(clips, spec), folder)
        report = score(himmel, folder)
        psnr = np.mean([-10 * np.log10(max(e, 1e-10)) for e in errors]) if errors else float("inf")
        values = [MEASURES[m](report) for m in MEASURES]
        # The physics residual as a multiple of the clips' own.
        rendered_residual = rendered_residual or report["physics_residual"]
        residual = report["physics_residual"] / rendered_residual
        print(f"{name:<10}{psnr:>6.1f}" + "".join(f"{v:>10.3f}" for v in values) + f"{residual:>9.2f}x")


if __name__ == "__main__":
    main()
