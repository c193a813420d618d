"""Object shapes as masks (drawn, optionally rotated) and their fills: flat colours or textured cut-outs with a
sticker border, pasted onto a scene through a binary mask so each object's box is exactly its pixels."""

from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "ellipse", "square", "rectangle", "triangle", "diamond", "pentagon", "hexagon", "octagon",
          "star", "cross", "heart", "ring", "arrow", "moon", "trapezoid")
TEXTURES = ("plain", "striped", "dotted", "speckled")


def _polygon(n: int, s: int, phase: float = -math.pi / 2, radius: float = 0.48) -> list[tuple[float, float]]:
    c = s / 2
    return [(c + radius * s * math.cos(phase + 2 * math.pi * i / n), c + radius * s * math.sin(phase + 2 * math.pi * i / n))
            for i in range(n)]


def _star(s: int) -> list[tuple[float, float]]:
    outer, inner = _polygon(5, s), _polygon(5, s, -math.pi / 2 + math.pi / 5, 0.2)
    return [p for pair in zip(outer, inner) for p in pair]


def _heart(s: int) -> list[tuple[float, float]]:
    points = []
    for i in range(60):
        t = 2 * math.pi * i / 60
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        points.append((s / 2 + x * s / 34, s / 2 - y * s / 34 - s * 0.03))
    return points


def _draw(kind: str, w: int, h: int) -> Image.Image:
    mask = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(mask)
    s = min(w, h)
    full = (0, 0, w - 1, h - 1)
    if kind in ("circle", "ellipse"):
        d.ellipse(full, fill=255)
    elif kind in ("square", "rectangle"):
        d.rectangle(full, fill=255)
    elif kind == "ring":
        d.ellipse(full, fill=255)
        d.ellipse((s * 0.28, s * 0.28, s * 0.72, s * 0.72), fill=0)
    elif kind == "moon":
        d.ellipse(full, fill=255)
        d.ellipse((s * 0.3, -s * 0.05, s * 1.15, s * 0.8), fill=0)
    elif kind == "cross":
        d.rectangle((s * 0.34, 0, s * 0.66, s - 1), fill=255)
        d.rectangle((0, s * 0.34, s - 1, s * 0.66), fill=255)
    elif kind == "arrow":
        d.polygon([(0, s * 0.36), (s * 0.55, s * 0.36), (s * 0.55, s * 0.12), (s - 1, s * 0.5), (s * 0.55, s * 0.88),
                   (s * 0.55, s * 0.64), (0, s * 0.64)], fill=255)
    elif kind == "trapezoid":
        d.polygon([(s * 0.22, s * 0.15), (s * 0.78, s * 0.15), (s - 1, s * 0.85), (0, s * 0.85)], fill=255)
    else:
        points = {"triangle": lambda: _polygon(3, s, radius=0.5), "diamond": lambda: _polygon(4, s, radius=0.5),
                  "pentagon": lambda: _polygon(5, s), "hexagon": lambda: _polygon(6, s, 0.0),
                  "octagon": lambda: _polygon(8, s, math.pi / 8), "star": lambda: _star(s),
                  "heart": lambda: _heart(s)}[kind]()
        d.polygon(points, fill=255)
    return mask


def shape_mask(rng: random.Random, kind: str, size: int) -> Image.Image:
    """A binary mask (L, 0/255) of `kind` about `size` px across, rotated by a random angle where it shows."""
    w = h = size
    if kind == "rectangle":
        h = max(8, int(size * rng.uniform(0.45, 0.7)))
    elif kind == "ellipse":
        h = max(8, int(size * rng.uniform(0.5, 0.75)))
    mask = _draw(kind, w, h)
    if kind not in ("circle", "ring") and rng.random() < 0.6:
        mask = mask.rotate(rng.uniform(-40, 40), resample=Image.Resampling.BILINEAR, expand=True)
    return mask.point(lambda v: 255 if v >= 128 else 0)


def fill(rng: random.Random, colour, mask: Image.Image, texture: str) -> tuple[Image.Image, Image.Image]:
    """(RGB image, mask) of an object of `colour` with `texture`; textured cut-outs get a white sticker border
    (the border belongs to the object, so the returned mask grows to include it)."""
    w, h = mask.size
    base = np.empty((h, w, 3), np.float32)
    base[:] = colour
    if texture != "plain":
        y, x = np.mgrid[0:h, 0:w]
        if texture == "striped":
            shade = ((x + y) // max(3, w // 8)) % 2
        elif texture == "dotted":
            step = max(5, w // 6)
            shade = (((x % step) - step / 2) ** 2 + ((y % step) - step / 2) ** 2 < (step / 4) ** 2)
        else:
            shade = np.random.default_rng(rng.getrandbits(32)).random((h, w)) < 0.2
        base = base * (1 - 0.35 * shade[..., None])
    image = Image.fromarray(base.round().astype(np.uint8))
    if texture == "plain":
        return image, mask
    pad = 3
    grown = Image.new("L", (w + 2 * pad, h + 2 * pad), 0)
    grown.paste(mask, (pad, pad))
    border = grown.filter(ImageFilter.MaxFilter(2 * pad - 1)).point(lambda v: 255 if v >= 128 else 0)
    sticker = Image.new("RGB", border.size, (250, 250, 250))
    sticker.paste(image, (pad, pad), mask)
    return sticker, border


def interior_point(mask: Image.Image, offset=(0, 0)) -> tuple[int, int]:
    """A pixel of the object: the one nearest the centroid among those at least 2 px inside its outline."""
    core = mask.filter(ImageFilter.MinFilter(5))
    array = np.asarray(core if core.getbbox() else mask) >= 128
    ys, xs = np.nonzero(array)
    cy, cx = ys.mean(), xs.mean()
    i = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    return int(xs[i]) + offset[0], int(ys[i]) + offset[1]
