"""Are a model's moving objects drawn as streaks along their paths?

For clips of one red object on a backdrop without red (`himmel generate "a red ball rolls to
the right" ...`), finds the largest red region of every frame and prints how elongated it is
(ratio of its principal axes, as the world scorer measures it: above 1.55 it reads as a
capsule), by the frame's place among the four frames one latent frame decodes to, and, where
it moves, the angle between its long axis and its motion (45 degrees on average for axes that
ignore the motion).

    python3 tools/streaks.py CLIP.mp4 [CLIP.mp4 ...]     # needs numpy and ffmpeg
"""

import subprocess
import sys

import numpy as np


def frames(path):
    """The clip's frames as an array of (frames, height, width, 3) integers."""
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
         "stream=width,height", "-of", "csv=p=0", path],
        capture_output=True, text=True, check=True)
    width, height = (int(v) for v in probe.stdout.strip().split(","))
    raw = subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-i", path, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3).astype(int)


def largest_region(mask):
    """Rows and columns of the largest 4-connected region of `mask`."""
    seen = np.zeros_like(mask)
    best = []
    height, width = mask.shape
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        region, stack = [], [start]
        while stack:
            y, x = stack.pop()
            region.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        if len(region) > len(best):
            best = region
    return np.array(best).reshape(-1, 2)


def red_region(frame):
    """Centre, elongation and long-axis angle of the frame's largest red region, or None."""
    r, g, b = frame[..., 0], frame[..., 1], frame[..., 2]
    region = largest_region((r > 120) & (r > g + 60) & (r > b + 60))
    if len(region) < 6:
        return None
    ys, xs = region[:, 0], region[:, 1]
    cx, cy = xs.mean(), ys.mean()
    xx, yy = ((xs - cx) ** 2).mean(), ((ys - cy) ** 2).mean()
    xy = ((xs - cx) * (ys - cy)).mean()
    spread = np.sqrt((xx - yy) ** 2 / 4 + xy**2)
    major, minor = (xx + yy) / 2 + spread, max((xx + yy) / 2 - spread, 1e-3)
    return (cx, cy), np.sqrt(major / minor), 0.5 * np.arctan2(2 * xy, xx - yy)


def main(paths):
    elongations, angles, by_position = [], [], [[], [], [], []]
    for path in paths:
        regions = [red_region(frame) for frame in frames(path)]
        for index, (before, now, after) in enumerate(zip(regions, regions[1:], regions[2:])):
            if now is None:
                continue
            elongations.append(now[1])
            # Frames 1 + 4k .. 4 + 4k decode from one latent frame (4x in time).
            by_position[index % 4].append(now[1])
            if before is None or after is None:
                continue
            vx, vy = after[0][0] - before[0][0], after[0][1] - before[0][1]
            if np.hypot(vx, vy) / 2 < 0.3:  # pixels a frame: too slow to tell a direction
                continue
            off = (now[2] - np.arctan2(vy, vx) + np.pi / 2) % np.pi - np.pi / 2
            angles.append((now[1], abs(off)))
    elongations = np.array(elongations)
    print(f"{len(paths)} clips, {len(elongations)} frames with a red region: "
          f"mean elongation {elongations.mean():.2f}, "
          f"{(elongations > 1.55).mean():.2f} of them above 1.55")
    means = ", ".join(f"{np.mean(e):.2f}" for e in by_position if e)
    print(f"mean elongation by place in its latent frame's four frames: {means}")
    long = [np.degrees(off) for elongation, off in angles if elongation > 1.55]
    if long:
        print(f"{len(long)} moving frames above 1.55: long axis {np.mean(long):.1f} degrees off "
              f"the motion on average, {np.mean(np.array(long) < 30):.2f} of them within 30")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
