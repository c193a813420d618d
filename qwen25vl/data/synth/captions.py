"""Captioned shape scenes: image-text pairs for contrastive pretraining of the vision tower (`train clip`).

Each image holds one or a few plain shapes on a light background, at its own size on the 28 px grid (native
resolution: the ViT sees grids of several shapes); the caption names the objects left to right, e.g. "a red circle
and a blue star". The records are ordinary training records (the caption is the assistant's answer to "Describe
the image."), so the same file also serves stage 1. Deterministic by seed.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from PIL import Image

from qwen25vl.data.records import write_records
from qwen25vl.data.synth.common import image_part, single_turn
from qwen25vl.data.synth.draw import COLOURS, grid_side, jitter
from qwen25vl.data.synth.shapes import SHAPES, fill, shape_mask
from qwen25vl.errors import InputError

PROMPT = "Describe the image."


def caption_scene(rng: random.Random, *, colours, shapes, max_objects: int, size: int) -> tuple[Image.Image, str]:
    """(image, caption) of 1..max_objects objects side by side, each in its own vertical strip."""
    count = rng.randint(1, max_objects)
    width, height = grid_side(rng, max(56, size * count // 2), size * count), grid_side(rng, size // 2, size)
    paper = tuple(rng.randint(200, 250) for _ in range(3))
    canvas = Image.new("RGB", (width, height), paper)
    names = []
    strip = width // count
    for i in range(count):
        shape, colour = rng.choice(shapes), rng.choice(colours)
        side = rng.randint(max(14, min(strip, height) // 2), max(16, min(strip, height) - 6))
        image, mask = fill(rng, jitter(rng, COLOURS[colour]), shape_mask(rng, shape, side), "plain")
        x = i * strip + rng.randint(0, max(0, strip - mask.width))
        y = rng.randint(0, max(0, height - mask.height))
        canvas.paste(image, (x, y), mask)
        names.append(f"a {colour} {shape}")
    return canvas, " and ".join(names)


def write_captions(folder: str | Path, count: int, *, seed: int = 0, colours=None, shapes=None, max_objects: int = 1,
                   size: int = 112, name: str = "captions") -> Path:
    """Write `count` captioned scenes as `FOLDER/NAME.jsonl` (images under `FOLDER/NAME/`); returns the JSONL path.
    `colours` / `shapes` restrict the vocabulary (default: all of the synthetic engines' colours and shapes)."""
    colours, shapes = list(colours or COLOURS), list(shapes or SHAPES)
    bad = [c for c in colours if c not in COLOURS] + [s for s in shapes if s not in SHAPES]
    if bad:
        raise InputError(f"captions: unknown colour(s) or shape(s) {bad}; colours {list(COLOURS)}, "
                         f"shapes {list(SHAPES)}")
    if count < 1 or max_objects < 1 or size < 56:
        raise InputError(f"captions: count {count} and max_objects {max_objects} must be >= 1, size {size} >= 56")
    folder = Path(folder)
    (folder / name).mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        rng = random.Random(f"captions:{seed}:{i}")
        image, caption = caption_scene(rng, colours=colours, shapes=shapes, max_objects=max_objects, size=size)
        path = f"{name}/{i:06d}.png"
        image.save(folder / path)
        records.append({"messages": single_turn(image_part(path, image.size), PROMPT, caption)})
    out = folder / f"{name}.jsonl"
    write_records(out, records)
    return out


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m qwen25vl.data.synth.captions", description=__doc__.splitlines()[0])
    p.add_argument("out", help="folder for NAME.jsonl and NAME/*.png")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="captions")
    p.add_argument("--size", type=int, default=112, help="largest side of one object's strip (112)")
    p.add_argument("--max-objects", type=int, default=1)
    p.add_argument("--colours", help="comma-separated subset of the colours")
    p.add_argument("--shapes", help="comma-separated subset of the shapes")
    args = p.parse_args(argv)
    try:
        path = write_captions(args.out, args.count, seed=args.seed, name=args.name, size=args.size,
                              max_objects=args.max_objects, colours=args.colours and args.colours.split(","),
                              shapes=args.shapes and args.shapes.split(","))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
