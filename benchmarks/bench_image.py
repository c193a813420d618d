"""Image preprocessing: ours against transformers' Qwen2VLImageProcessor (its PIL path), same inputs, one process.

    .venv/bin/python benchmarks/bench_image.py [--reps 5] [--write benchmarks/results/processing.md]

Inputs are decoded PIL RGB images at photo sizes (4:3, 1 / 2 / 12 MP) with the official limits (min 3136,
max 12845056 px, so nothing is downscaled). Timings alternate reference and ours and take medians; outputs are
checked equal. "Floor" is PIL's bicubic resize alone on one core: the part neither side can avoid.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import numpy as np
import torch
from PIL import Image

from qwen25vl.processing.image import process_image, process_images, smart_resize

SIZES = {"1 MP": (1152, 864), "2 MP": (1632, 1224), "12 MP": (4000, 3000)}  # (width, height)
BATCH = {"1 MP": 8, "2 MP": 8, "12 MP": 4}
# 4032 x 3024 (a phone's 12 MP) is already a multiple of 28 and would skip the resize: 4000 x 3000 does not
OFFICIAL = {"min_pixels": 3136, "max_pixels": 12845056}


def photo(width: int, height: int, seed: int) -> Image.Image:
    """Smooth structure plus sensor-like noise (resize cost does not depend on content, the check does)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (height // 64 + 2, width // 64 + 2, 3), dtype=np.uint8))
    base = np.asarray(small.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    noise = rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def timed(fn, *args, **kw) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t, out


def bandwidth_gbs() -> float:
    """The machine's copy bandwidth right now (read + write), measured on a 256 MB buffer."""
    a = np.ones(64 << 20, np.float32)
    b = np.empty_like(a)
    best = min(timed(np.copyto, b, a)[0] for _ in range(3))
    return 2 * a.nbytes / best / 1e9


def first_touch_ms_per_mb() -> tuple[float, float]:
    """Writing 256 MB of freshly mapped memory vs the same memory again: this VM's page-fault cost, which every
    new output array pays once (both sides)."""
    t_first, a = timed(lambda: np.ones(64 << 20, np.float32))
    t_again = timed(a.fill, 2.0)[0]
    return t_first * 1e3 / 256, t_again * 1e3 / 256


def thread_scaling(images: list[Image.Image]) -> float:
    """PIL's resize (it releases the GIL) over the batch on 2 threads vs 1: the parallel speed-up this shared
    machine actually offers right now; the batch ratio can only use what this allows."""
    from concurrent.futures import ThreadPoolExecutor

    def resize(image: Image.Image) -> Image.Image:
        return image.resize((image.width // 2, image.height // 2), Image.Resampling.BICUBIC)

    with ThreadPoolExecutor(2) as pool:
        serial = min(timed(lambda: list(map(resize, images)))[0] for _ in range(2))
        parallel = min(timed(lambda: list(pool.map(resize, images)))[0] for _ in range(2))
    return serial / parallel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--write", default=None, help="append the markdown table to this file")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from transformers import Qwen2VLImageProcessor

    ref = Qwen2VLImageProcessor(**OFFICIAL)
    fresh, warm = first_touch_ms_per_mb()
    lines = [
        f"torch threads {torch.get_num_threads()}, os.cpu_count() {os.cpu_count()}, pool workers 2; "
        f"copy bandwidth now {bandwidth_gbs():.1f} GB/s; writing fresh memory {fresh:.2f} ms/MB "
        f"(already mapped: {warm:.2f} ms/MB); load average {os.getloadavg()[0]:.1f}",
        "",
        "| input | mode | transformers (s) | ours (s) | ratio | PIL resize floor, 1 core (s) | 2-thread scaling now | equal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, (w, h) in SIZES.items():
        images = [photo(w, h, seed) for seed in range(BATCH[label])]
        # single image: ours uses one core (no pool), like the reference
        r_times, o_times, floor = [], [], []
        for _ in range(args.reps):
            tr, r = timed(ref, images=images[:1], return_tensors="np")
            to, o = timed(process_image, images[0], **OFFICIAL)
            rh, rw = smart_resize(h, w, 28, **OFFICIAL)
            floor.append(timed(images[0].resize, (rw, rh), Image.Resampling.BICUBIC)[0])
            r_times.append(tr)
            o_times.append(to)
        equal = np.array_equal(o.pixel_values.numpy(), r["pixel_values"]) and list(o.grid_thw) == list(r["image_grid_thw"][0])
        rt, ot = statistics.median(r_times), statistics.median(o_times)
        lines.append(f"| {label} {w}x{h} | 1 image | {rt:.3f} | {ot:.3f} | **{rt / ot:.2f}x** | "
                     f"{statistics.median(floor):.3f} | - | {equal} |")
        print(lines[-1], flush=True)
        # batch: ours on a 2-thread pool over images
        scaling = thread_scaling(images)
        r_times, o_times = [], []
        for _ in range(max(2, args.reps // 2)):
            tr, r = timed(ref, images=images, return_tensors="np")
            to, o = timed(process_images, images, max_workers=2, **OFFICIAL)
            r_times.append(tr)
            o_times.append(to)
        got = torch.cat([p.pixel_values for p in o]).numpy()
        equal = np.array_equal(got, r["pixel_values"])
        rt, ot = statistics.median(r_times), statistics.median(o_times)
        lines.append(f"| {label} {w}x{h} | batch of {len(images)} | {rt:.3f} | {ot:.3f} | **{rt / ot:.2f}x** | "
                     f"{statistics.median(floor) * len(images):.3f} | {scaling:.2f}x | {equal} |")
        print(lines[-1], flush=True)
        del r, o, got
    text = "\n".join(lines)
    print(text)
    if args.write:
        with open(args.write, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
