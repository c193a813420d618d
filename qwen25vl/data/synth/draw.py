"""Drawing helpers the engines share: frame sizes on the 28 px grid, named colours, backgrounds, the DejaVu fonts
that matplotlib ships (never system fonts), and boxes measured from what was actually drawn."""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GRID = 28  # patch 14 x merge 2: sides on this grid are kept as they are by smart_resize

COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40),
    "orange": (245, 140, 30), "purple": (140, 60, 190), "pink": (245, 130, 190), "brown": (130, 80, 40),
    "black": (20, 20, 20), "white": (245, 245, 245), "grey": (128, 128, 128), "cyan": (40, 200, 220),
}

FONT_FILES = {
    "sans": "DejaVuSans.ttf", "sans-bold": "DejaVuSans-Bold.ttf", "sans-oblique": "DejaVuSans-Oblique.ttf",
    "serif": "DejaVuSerif.ttf", "serif-bold": "DejaVuSerif-Bold.ttf", "serif-italic": "DejaVuSerif-Italic.ttf",
    "mono": "DejaVuSansMono.ttf", "mono-bold": "DejaVuSansMono-Bold.ttf",
}


def grid_side(rng: random.Random, lo: int, hi: int) -> int:
    """A side length on the 28 px grid in [lo, hi] (at least 56)."""
    first, last = max(2, -(-lo // GRID)), max(2, hi // GRID)
    return rng.randint(first, max(first, last)) * GRID


def frame_size(rng: random.Random, size: int, min_ratio: float = 0.6) -> tuple[int, int]:
    """(width, height) on the grid, the longer side at most `size`, the shorter at least `min_ratio` of it."""
    return grid_side(rng, int(size * min_ratio), size), grid_side(rng, int(size * min_ratio), size)


@lru_cache(maxsize=None)
def font_path(name: str) -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / FONT_FILES[name]


@lru_cache(maxsize=256)
def font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_path(name)), size)


def distance(a, b) -> float:
    return float(sum((int(x) - int(y)) ** 2 for x, y in zip(a, b)) ** 0.5)


def contrasting(rng: random.Random, against, names=None, min_distance: float = 120.0) -> str:
    """A colour name far enough from every colour in `against` to stay readable."""
    names = [n for n in (names or COLOURS) if all(distance(COLOURS[n], c) >= min_distance for c in against)]
    return rng.choice(names or ["black"])


def jitter(rng: random.Random, colour, amount: int = 12) -> tuple[int, int, int]:
    return tuple(min(255, max(0, c + rng.randint(-amount, amount))) for c in colour)


def _light(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randint(150, 250) for _ in range(3))


def background(rng: random.Random, size: tuple[int, int]) -> tuple[Image.Image, list]:
    """A varied background (plain, gradient, noise, stripes, checks) and the colours it is made of."""
    width, height = size
    a, b = _light(rng), _light(rng)
    style = rng.choice(("plain", "gradient", "noise", "stripes", "checks"))
    if style == "plain":
        return Image.new("RGB", size, a), [a]
    gen = np.random.default_rng(rng.getrandbits(32))
    y, x = np.mgrid[0:height, 0:width]
    if style == "gradient":
        t = (x / max(1, width - 1)) if rng.random() < 0.5 else (y / max(1, height - 1))
    elif style == "noise":
        t = gen.random((height, width)) * 0.35
    elif style == "stripes":
        t = (((x + y * rng.choice((0, 1))) // rng.randint(8, 24)) % 2).astype(float) * 0.5
    else:
        cell = rng.randint(10, 30)
        t = (((x // cell) + (y // cell)) % 2).astype(float) * 0.4
    mix = np.asarray(a, float)[None, None] * (1 - t[..., None]) + np.asarray(b, float)[None, None] * t[..., None]
    return Image.fromarray(mix.round().astype(np.uint8)), [a, b]


def mask_box(mask: Image.Image, offset=(0, 0)) -> tuple[int, int, int, int] | None:
    """Inclusive pixel box (x1, y1, x2, y2) of a mask's set pixels, shifted by `offset`; None when empty."""
    box = mask.point(lambda v: 255 if v >= 128 else 0).getbbox()
    if box is None:
        return None
    dx, dy = offset
    return box[0] + dx, box[1] + dy, box[2] - 1 + dx, box[3] - 1 + dy


def ink_box(image: Image.Image, paper, tolerance: int = 40, region=None) -> tuple[int, int, int, int] | None:
    """Inclusive box of the pixels that differ from the colour `paper` by more than `tolerance` (per channel),
    within `region` (x1, y1, x2, y2 inclusive) when given."""
    array = np.asarray(image.convert("RGB"), dtype=np.int16)
    x0 = y0 = 0
    if region is not None:
        x0, y0 = max(0, region[0]), max(0, region[1])
        array = array[y0:region[3] + 1, x0:region[2] + 1]
    ink = (np.abs(array - np.asarray(paper, np.int16)).max(axis=2) > tolerance)
    if not ink.any():
        return None
    ys, xs = np.nonzero(ink)
    return int(xs.min()) + x0, int(ys.min()) + y0, int(xs.max()) + x0, int(ys.max()) + y0


def text_mask(text: str, font_obj, anchor_size=None) -> Image.Image:
    """The text drawn white on black at (0, 0) in its own image (L mode), as large as its bounding box needs."""
    left, top, right, bottom = font_obj.getbbox(text)
    size = anchor_size or (max(1, right + 2), max(1, bottom + 2))
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).text((0, 0), text, font=font_obj, fill=255)
    return mask


def inside(point, box) -> bool:
    x, y = point
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]
