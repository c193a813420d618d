"""Images -> vision-tower input: smart_resize, bicubic resize, normalisation and the merge-aware patch layout.

Numerically this is transformers' `Qwen2VLImageProcessor` (PIL path) to the bit: PIL bicubic on the uint8 RGB image,
then `float32(float64(u) * rescale)`, then `(x - mean) / std` in float32. Every resized pixel is one of 256 uint8
values per channel, so the whole rescale + normalise is a 256-entry table per channel, applied once after the uint8
image is cut into patches (moving bytes instead of floats, and no float64 pass).
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from qwen25vl.errors import ConfigError, InputError
from qwen25vl.processing.media import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_TIMEOUT_S,
    MAX_ASPECT_RATIO,
    describe,
    load_image,
)

__all__ = [
    "ImageProcessorConfig", "ResizeInfo", "ProcessedImage", "smart_resize", "load_image", "process_image",
    "process_images", "resolve_pixel_limits", "patchify_normalize",
]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_MIN_PIXELS = 56 * 56  # the official preprocessor_config.json values (not transformers' class default max)
DEFAULT_MAX_PIXELS = 28 * 28 * 16384
# The most an image may be resized to, whatever min_pixels / max_pixels ask (65,536 tokens: 1.2 GB of pixel_values,
# 24 bytes a pixel); a min_pixels of 1e9 would otherwise upscale a thumbnail into tens of GB
MAX_RESIZED_PIXELS = 4 * DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class ImageProcessorConfig:
    """The fields of a `preprocessor_config.json` that change the numbers."""

    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    rescale_factor: float = 1 / 255

    def __post_init__(self):
        for key in ("min_pixels", "max_pixels", "patch_size", "temporal_patch_size", "merge_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"preprocessor config: {key} must be a positive integer, got {value!r}")
        if self.min_pixels > self.max_pixels:
            raise ConfigError(f"preprocessor config: min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")
        for key in ("image_mean", "image_std"):
            value = getattr(self, key)
            if len(value) != 3 or (key == "image_std" and min(value) <= 0):
                raise ConfigError(f"preprocessor config: {key} must be 3 values (std > 0), got {value!r}")

    @property
    def factor(self) -> int:
        """Side of one output token in pixels (28)."""
        return self.patch_size * self.merge_size

    @property
    def pixels_per_token(self) -> int:
        return self.factor * self.factor

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ImageProcessorConfig":
        """Read a preprocessor_config.json dict; explicit min/max_pixels win over `size` (as in transformers)."""
        kw: dict[str, Any] = {}
        size = d.get("size") or {}
        if isinstance(size, Mapping):
            if size.get("shortest_edge") is not None:
                kw["min_pixels"] = size["shortest_edge"]
            if size.get("longest_edge") is not None:
                kw["max_pixels"] = size["longest_edge"]
            for key in ("min_pixels", "max_pixels"):
                if size.get(key) is not None:
                    kw[key] = size[key]
        for key in ("min_pixels", "max_pixels", "patch_size", "temporal_patch_size", "merge_size", "rescale_factor"):
            if d.get(key) is not None:
                kw[key] = d[key]
        for key in ("image_mean", "image_std"):
            if d.get(key) is not None:
                kw[key] = tuple(float(v) for v in d[key])
        if "rescale_factor" in kw:
            kw["rescale_factor"] = float(kw["rescale_factor"])
        return cls(**kw)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "ImageProcessorConfig":
        """`folder/preprocessor_config.json`, or the official defaults when the folder has none."""
        path = Path(folder) / "preprocessor_config.json"
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: cannot read ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
        return cls.from_dict(data)

    @cached_property
    def _tables(self) -> np.ndarray:
        """(3, 256) float32: the normalised value of every uint8 level, computed exactly as transformers does."""
        levels = (np.arange(256, dtype=np.float64) * self.rescale_factor).astype(np.float32)
        mean = np.asarray(self.image_mean, dtype=np.float32)[:, None]
        std = np.asarray(self.image_std, dtype=np.float32)[:, None]
        return ((levels[None, :] - mean) / std).astype(np.float32)


DEFAULT_CONFIG = ImageProcessorConfig()
_ROWS_PER_CHUNK = 1024  # 1024 patch rows: 0.6 MB of indices, 2.4 MB of values


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[int, int]:
    """(height, width) -> the nearest (h, w), multiples of `factor`, with min_pixels <= h * w <= max_pixels.

    As transformers 5.x: sides rounded half to even (Python's round), no clamp to >= factor before the area checks
    (qwen-vl-utils clamps there, which differs for sides under 14 px), floor when over the cap, ceil when under.
    """
    if height <= 0 or width <= 0:
        raise InputError(f"image size {width}x{height}: both sides must be positive")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise InputError(f"image size {width}x{height}: aspect ratio {ratio:.1f} is over the limit {MAX_ASPECT_RATIO}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def resolve_pixel_limits(
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    min_tokens: int | None = None,
    max_tokens: int | None = None,
    *,
    default_min: int,
    default_max: int,
    pixels_per_token: int = 28 * 28,
    name: str = "image",
) -> tuple[int, int]:
    """Per-item limits in pixels, given in pixels or tokens (one token = 28 x 28 px); None -> the defaults."""
    limits = []
    for px, tok, default, label in ((min_pixels, min_tokens, default_min, "min"), (max_pixels, max_tokens, default_max, "max")):
        if px is not None and tok is not None:
            raise InputError(f"{name}: give {label}_pixels ({px}) or {label}_tokens ({tok}), not both")
        value = px if px is not None else (tok * pixels_per_token if tok is not None else default)
        # JSON may carry 1003520.0: any positive number is accepted, counted in whole pixels
        if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool) or not value > 0:
            raise InputError(f"{name}: {label}_pixels / {label}_tokens must be a positive number, got {px if px is not None else tok!r}")
        limits.append(int(value))
    if limits[0] > limits[1]:
        raise InputError(f"{name}: min_pixels {limits[0]} is over max_pixels {limits[1]}")
    return limits[0], limits[1]


@dataclass(frozen=True)
class ResizeInfo:
    """How an item was resized: sizes are (width, height); maps points between the two pixel frames."""

    original_size: tuple[int, int]
    resized_size: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """(sx, sy): resized / original."""
        return self.resized_size[0] / self.original_size[0], self.resized_size[1] / self.original_size[1]

    def to_original(self, x: float, y: float) -> tuple[float, float]:
        """A point in the resized image (what the model sees and answers in) -> the original image."""
        sx, sy = self.scale
        return x / sx, y / sy

    def to_resized(self, x: float, y: float) -> tuple[float, float]:
        sx, sy = self.scale
        return x * sx, y * sy


@dataclass(frozen=True)
class ProcessedImage:
    pixel_values: torch.Tensor  # (grid_t * grid_h * grid_w, 3 * 2 * 14 * 14) float32, merge-aware row order
    grid_thw: tuple[int, int, int]
    resize: ResizeInfo
    merge_size: int = field(default=2, repr=False)

    @property
    def num_tokens(self) -> int:
        """Placeholder tokens in the prompt: grid_t * grid_h * grid_w / merge_size^2."""
        t, h, w = self.grid_thw
        return t * h * w // (self.merge_size * self.merge_size)


def patchify_normalize(frames: np.ndarray, config: ImageProcessorConfig = DEFAULT_CONFIG) -> np.ndarray:
    """(F, H, W, 3) uint8 frames -> (F' / tp * H / p * W / p, 3 * tp * p * p) float32, rows in merge-aware order.

    F' is F padded with copies of the last frame up to a multiple of the temporal patch (tp); a single image (F = 1)
    is thereby repeated to fill it. Row order: frame group, merge-block row, merge-block col, row and col inside
    the block; column order: channel, frame in group, pixel row, pixel col (the Conv3d weight's layout).
    """
    n, height, width, channels = frames.shape
    p, m, tp = config.patch_size, config.merge_size, config.temporal_patch_size
    if channels != 3 or height % (p * m) or width % (p * m):
        raise InputError(f"frames of shape {frames.shape}: need 3 channels and sides that are multiples of {p * m}")
    gh, gw = height // p, width // p
    still = n == 1  # an image: gather once, then copy the floats into the other temporal slots
    if not still and n % tp:
        frames = np.concatenate([frames, np.repeat(frames[-1:], tp - n % tp, axis=0)])
    t_in = 1 if still else tp
    gt = 1 if still else frames.shape[0] // tp
    # (F, H, W, C) -> (gt, T, gh/m, m, p, gw/m, m, p, C)
    blocks = frames.reshape(gt, t_in, gh // m, m, p, gw // m, m, p, channels)
    # -> (gt, gh/m, gw/m, mh, mw, C, T, ph, pw), made contiguous while still uint8 (4x fewer bytes to move)
    blocks = np.ascontiguousarray(blocks.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7))
    rows = gt * gh * gw
    blocks = blocks.reshape(rows, channels, t_in * p * p)
    # np.empty: numpy asks for transparent huge pages on large buffers, which makes first writes cheap
    out = np.empty((rows, channels, tp, p * p), dtype=np.float32)
    # one lookup over all channels: index = channel * 256 + level into the (3 * 256) table; done in row chunks
    # so the uint16 indices and (for images) the values stay in cache and no large temporary is allocated
    table = config._tables.reshape(-1)
    offsets = (np.arange(channels, dtype=np.uint16) * 256)[None, :, None]
    chunk = min(rows, _ROWS_PER_CHUNK)
    index = np.empty((chunk, channels, t_in * p * p), np.uint16)
    values = np.empty((chunk, channels, p * p), np.float32) if still else None
    for r0 in range(0, rows, chunk):
        r1 = min(rows, r0 + chunk)
        k = r1 - r0
        np.add(blocks[r0:r1], offsets, out=index[:k])
        if still:
            # "wrap" skips numpy's bounds-check buffering: every index is inside the table
            np.take(table, index[:k], out=values[:k], mode="wrap")
            out[r0:r1, :, 0] = values[:k]
            out[r0:r1, :, 1:] = values[:k, :, None]  # the still image fills the other temporal slots
        else:
            np.take(table, index[:k], out=out[r0:r1].reshape(k, channels, tp * p * p), mode="wrap")
    return out.reshape(rows, channels * tp * p * p)


def _resize_and_pack(image: Image.Image, min_pixels: int, max_pixels: int, config: ImageProcessorConfig) -> ProcessedImage:
    width, height = image.size
    rh, rw = smart_resize(height, width, config.factor, min_pixels, max_pixels)
    if rh * rw > MAX_RESIZED_PIXELS:
        raise InputError(f"resized to {rw}x{rh} = {rw * rh} pixels, over the ceiling of {MAX_RESIZED_PIXELS} "
                         f"(min_pixels {min_pixels}, max_pixels {max_pixels}): lower them")
    resized = image.resize((rw, rh), Image.Resampling.BICUBIC)  # PIL releases the GIL here
    pixels = patchify_normalize(np.asarray(resized)[None], config)
    grid = (1, rh // config.patch_size, rw // config.patch_size)
    return ProcessedImage(torch.from_numpy(pixels), grid, ResizeInfo((width, height), (rw, rh)), config.merge_size)


def process_image(
    source: Any,
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    min_tokens: int | None = None,
    max_tokens: int | None = None,
    config: ImageProcessorConfig | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    timeout: float = DEFAULT_TIMEOUT_S,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> ProcessedImage:
    """One image (path, URL, data URL, bytes, PIL image or array) -> pixel_values, grid and resize metadata.

    Limits are per item, in pixels or in tokens (one token = 28 x 28 px); unset ones come from `config`.
    """
    config = config or DEFAULT_CONFIG
    name = f"image {describe(source)}"
    lo, hi = resolve_pixel_limits(
        min_pixels, max_pixels, min_tokens, max_tokens, default_min=config.min_pixels, default_max=config.max_pixels,
        pixels_per_token=config.pixels_per_token, name=name,
    )
    image = load_image(source, max_image_pixels=max_image_pixels, timeout=timeout, max_bytes=max_bytes)
    try:
        return _resize_and_pack(image, lo, hi, config)
    except InputError as e:
        raise InputError(f"{name}: {e}") from None


def process_images(
    sources: Sequence[Any],
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    min_tokens: int | None = None,
    max_tokens: int | None = None,
    total_pixels: int | None = None,
    total_tokens: int | None = None,
    options: Sequence[Mapping[str, Any] | None] | None = None,
    config: ImageProcessorConfig | None = None,
    max_workers: int | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    timeout: float = DEFAULT_TIMEOUT_S,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> list[ProcessedImage]:
    """Many images on a thread pool (PIL's resize and numpy's copies release the GIL), in input order.

    The keyword limits apply to every item; `options[i]` (a dict of min/max_pixels, min/max_tokens) overrides them
    for item i. `total_pixels` / `total_tokens` cap the whole call: when the items together would exceed it, each
    item's max is scaled down by the same factor.
    """
    config = config or DEFAULT_CONFIG
    sources = list(sources)
    if options is not None and len(options) != len(sources):
        raise InputError(f"process_images: {len(options)} options for {len(sources)} images")
    base = dict(min_pixels=min_pixels, max_pixels=max_pixels, min_tokens=min_tokens, max_tokens=max_tokens)
    limits = []
    for i, src in enumerate(sources):
        own = {k: v for k, v in dict((options or [None] * len(sources))[i] or {}).items() if v is not None}
        unknown = set(own) - set(base)
        if unknown:
            raise InputError(f"image {i} {describe(src)}: unknown options {sorted(unknown)}")
        item = dict(base)
        for bound in ("min", "max"):
            # an item's own bound, in either unit, replaces the call's bound in both units
            if f"{bound}_pixels" in own or f"{bound}_tokens" in own:
                item[f"{bound}_pixels"] = own.get(f"{bound}_pixels")
                item[f"{bound}_tokens"] = own.get(f"{bound}_tokens")
        limits.append(resolve_pixel_limits(
            **item, default_min=config.min_pixels, default_max=config.max_pixels,
            pixels_per_token=config.pixels_per_token, name=f"image {i} {describe(src)}",
        ))
    if total_pixels is not None and total_tokens is not None:
        raise InputError(f"process_images: give total_pixels ({total_pixels}) or total_tokens ({total_tokens}), not both")
    total = total_pixels if total_tokens is None else total_tokens * config.pixels_per_token
    if total is not None and total <= 0:
        raise InputError(f"process_images: the total budget must be positive, got {total}")
    workers = max(1, min(len(sources), max_workers or os.cpu_count() or 1))

    def load(i: int) -> Image.Image:
        try:
            return load_image(sources[i], max_image_pixels=max_image_pixels, timeout=timeout, max_bytes=max_bytes)
        except InputError as e:
            raise InputError(f"image {i}: {e}") from None

    def pack(i: int, image: Image.Image, lo: int, hi: int) -> ProcessedImage:
        try:
            return _resize_and_pack(image, lo, hi, config)
        except InputError as e:
            raise InputError(f"image {i} {describe(sources[i])}: {e}") from None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        images = list(pool.map(load, range(len(sources))))
        if total is not None:
            limits = _share_budget(images, limits, total, config)
        return list(pool.map(lambda i: pack(i, images[i], *limits[i]), range(len(sources))))


def _share_budget(images, limits, total: int, config: ImageProcessorConfig) -> list[tuple[int, int]]:
    areas = []
    for image, (lo, hi) in zip(images, limits):
        h, w = smart_resize(image.size[1], image.size[0], config.factor, lo, hi)
        areas.append(h * w)
    if sum(areas) <= total:
        return limits
    shrink = total / sum(areas)
    # Each item keeps its share; max_pixels floors the sides, so the items fit unless their min_pixels forbid it.
    return [(min(lo, max(config.pixels_per_token, int(a * shrink))), max(config.pixels_per_token, int(a * shrink)))
            for (lo, _), a in zip(limits, areas)]
