"""Faults at the window seams of himmel-mini's long videos, over many scenes.

The minute test (crates/himmel-cli/tests/tasks.rs) scores the seams of one minute of one prompt
at one seed. This scores the seams of a long video of each of the first N held-out prompts
(`crates/himmel-world/prompts.txt`, seed = the prompt's index) the same way: the 9 frames
around each seam through `himmel world score` against the prompt's scene (its consistency
faults), and the 9 frames around the frame 6 frames on, which hold no seam (the model's own
flicker). Videos already in the output folder are scored again, not made again.

    python3 tools/seams.py --himmel target/release/himmel --out /tmp/seams/shipped
    HIMMEL_MODELS=DIR python3 tools/seams.py --himmel ... --out ...   # DIR/himmel-mini instead

Needs only Python's standard library.
"""

import argparse
import json
import math
import os
import struct
import subprocess

# himmel-mini's windows: 17 frames, the first 5 of each later one known from the one before.
WINDOW, KNOWN = 17, 5
# Frames on from a seam that hold none (the minute test's middle offset).
AWAY = 6


def held_out_prompts(count):
    """The first `count` held-out prompts."""
    path = os.path.join(os.path.dirname(__file__), "..", "crates", "himmel-world", "prompts.txt")
    prompts = []
    for line in open(path, encoding="utf-8"):
        if line.strip() and not line.startswith("#"):
            prompts.append(line.split("=>")[0].strip())
    return prompts[:count]


def read_frames(path):
    """A raw `himmel generate` safetensors video: its f32 bytes, frame count and frame shape
    (height, width, channels)."""
    data = open(path, "rb").read()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + size])
    frames, height, width, channels = header["video"]["shape"]
    return data[8 + size:], frames, (height, width, channels)


def write_frames(path, pixels, frames, shape):
    """Writes `frames` frames of f32 `pixels` as a safetensors video at himmel-mini's 16 fps."""
    header = {
        "__metadata__": {"fps": "16"},
        "video": {"dtype": "F32", "shape": [frames, *shape], "data_offsets": [0, len(pixels)]},
    }
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(text)) + text + pixels)


def faulty(himmel, pixels, shape, centre, prompt, seed, scratch):
    """Whether the scorer finds a consistency fault in the 9 frames around `centre`."""
    frame_bytes = shape[0] * shape[1] * shape[2] * 4
    write_frames(scratch, pixels[(centre - 4) * frame_bytes:(centre + 5) * frame_bytes], 9, shape)
    report = subprocess.run(
        [himmel, "world", "score", scratch, "--prompt", prompt, "--seed", str(seed)],
        capture_output=True, text=True, check=True).stdout
    return bool(json.loads(report)["faults"])


def share(count, total):
    """A share with its 95% interval (binomial; seams of one scene are not independent, so
    the interval is a floor)."""
    p = count / total
    return f"{p:.3f} ±{1.96 * math.sqrt(p * (1 - p) / total):.3f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--himmel", required=True, help="the himmel binary")
    parser.add_argument("--out", required=True, help="folder for the videos")
    parser.add_argument("--prompts", type=int, default=12, help="how many held-out prompts")
    parser.add_argument("--seconds", type=int, default=20, help="length of each video")
    args = parser.parse_args()
    if args.seconds < 2:
        parser.error("videos shorter than 2 seconds have no seams to score")
    os.makedirs(args.out, exist_ok=True)
    scratch = os.path.join(args.out, "span.safetensors")
    seams_in_all = at_seams = away = 0
    for seed, prompt in enumerate(held_out_prompts(args.prompts)):
        video = os.path.join(args.out, f"{seed:03}.safetensors")
        if not os.path.exists(video):
            subprocess.run(
                [args.himmel, "generate", prompt, "--seed", str(seed), "--seconds",
                 str(args.seconds), "-o", video, "-q"], check=True)
        pixels, frames, shape = read_frames(video)
        seams = range(WINDOW, frames - 10, WINDOW - KNOWN)
        here = sum(faulty(args.himmel, pixels, shape, s, prompt, seed, scratch) for s in seams)
        there = sum(
            faulty(args.himmel, pixels, shape, s + AWAY, prompt, seed, scratch) for s in seams)
        print(f"{seed:3} {len(seams)} seams, faulty {here:2} at them, {there:2} {AWAY} frames "
              f"on  {prompt}", flush=True)
        seams_in_all += len(seams)
        at_seams += here
        away += there
    os.remove(scratch)
    print(f"{seams_in_all} seams: faulty at seams {share(at_seams, seams_in_all)}, "
          f"{AWAY} frames on {share(away, seams_in_all)}")


if __name__ == "__main__":
    main()
