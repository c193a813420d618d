"""A deterministic generator of malformed media, paths and texts, for the fuzz runner (`qwen25vl.testing.fuzz_run`).

`make_case(index, seed, workdir)` builds input number `index` from valid templates encoded here (PIL, PyAV): the same
index and seed give the same bytes on every run. Families cycle with the index, so any slice of consecutive indices
covers all of them: truncated and bit-flipped files of every format, real headers followed by random bytes, headers
that declare huge sizes over a tiny payload (decompression bombs), extreme aspect ratios, unusual PIL modes,
animations, wrong extensions, oversized EXIF, odd paths (FIFOs, devices, NUL bytes, overlong names), broken or
bomb-sized videos, frame lists and sampling options, and texts that are not valid Unicode.
"""

from __future__ import annotations

import base64
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from qwen25vl.testing.fuzz_media import (  # valid templates and header surgery
    BOMBS, EXT, HEADER_LIMITS, IMAGE_FORMATS, VIDEO_FORMATS, animated_templates, audio_only_video, encode_image,
    image_template, mode_templates, pattern, png_bomb, video_template, zero_frame_video,
)

@dataclass
class Case:
    """One input: `kind` is image | video | text; `source` what the processor is given; `options` extra part keys."""

    index: int
    family: str
    kind: str
    source: Any
    options: dict = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)  # written for this case, removed after it

    def cleanup(self) -> None:
        for path in self.files:
            try:
                path.unlink()
            except OSError:
                pass


# ---------------------------------------------------------------- the families

Rng = np.random.Generator
Family = Callable[[Rng, Path, int], "Case"]


def _mutate_cut(raw: bytes, rng: Rng) -> bytes:
    return raw[: int(rng.integers(1, max(2, len(raw))))]


def _mutate_flip(raw: bytes, rng: Rng) -> bytes:
    out = bytearray(raw)
    for at in rng.integers(0, len(out), int(rng.integers(1, 40))):
        out[at] = int(rng.integers(0, 256))
    return bytes(out)


def _mutate_tail(raw: bytes, rng: Rng) -> bytes:
    keep = int(rng.integers(4, min(len(raw), 80)))
    return raw[:keep] + rng.bytes(int(rng.integers(0, 4096)))


_MUTATIONS = {"truncated": _mutate_cut, "bitflip": _mutate_flip, "header+random": _mutate_tail}


def _as_file_or_bytes(case: Case, raw: bytes, ext: str, rng: Rng, workdir: Path) -> Case:
    """Half the cases as bytes, half as a file (the path route), by the case's own rng."""
    if rng.random() < 0.5:
        case.source = raw
        return case
    path = workdir / f"case{case.index}{ext}"
    path.write_bytes(raw)
    case.source, case.files = str(path), [path]
    return case


def _mutation(kind: str, name: str) -> Family:
    """A valid image or video template of a random format, mutated by `_MUTATIONS[name]`."""
    formats, template = (IMAGE_FORMATS, image_template) if kind == "image" else (VIDEO_FORMATS, video_template)

    def family(rng: Rng, workdir: Path, index: int) -> Case:
        fmt = formats[int(rng.integers(len(formats)))]
        raw = _MUTATIONS[name](template(fmt), rng)
        return _as_file_or_bytes(Case(index, f"{kind}/{name}/{fmt}", kind, None), raw, EXT[fmt], rng, workdir)
    return family


def _image_bomb(rng: Rng, workdir: Path, index: int) -> Case:
    fmt = tuple(BOMBS)[int(rng.integers(len(BOMBS)))]
    side = lambda: int(min(HEADER_LIMITS[fmt], rng.choice([2, 1000, 5000, 20000, 65535, 2**20])))  # noqa: E731
    width, height = side(), side()
    return Case(index, f"image/bomb/{fmt}", "image", BOMBS[fmt](width, height), {"note": f"{width}x{height}"})


def _image_aspect(rng: Rng, workdir: Path, index: int) -> Case:
    long = int(rng.choice([199, 200, 201, 400, 3000, 65535]))
    short = int(rng.choice([1, 2, 3]))
    size = (long, short) if rng.random() < 0.5 else (short, long)
    raw = encode_image(Image.new("L", size, 128), "PNG") if long * short < 10**6 else png_bomb(*size)
    return Case(index, "image/aspect-ratio", "image", raw, {"note": f"{size[0]}x{size[1]}"})


@functools.lru_cache(maxsize=None)
def at_cap_image(mode: str, side: int) -> bytes:
    """A real side x side PNG (flat, so it encodes fast and small): decoded in full, it shows what the cap costs."""
    dtype, channels = (np.uint16, 1) if mode == "I;16" else (np.uint8, len(mode))
    array = np.full((side, side, channels) if channels > 1 else (side, side), 200, dtype)
    return encode_image(Image.fromarray(array), "PNG", compress_level=1)


def image_at_cap(side: int) -> Family:
    def family(rng: Rng, workdir: Path, index: int) -> Case:
        mode = str(rng.choice(["RGB", "RGBA", "LA", "I;16"]))
        return Case(index, f"image/at-cap/{mode}", "image", at_cap_image(mode, side))
    return family


def _image_mode(rng: Rng, workdir: Path, index: int) -> Case:
    templates = mode_templates()
    name, raw = templates[int(rng.integers(len(templates)))]
    return Case(index, f"image/mode/{name}", "image", raw)


def _image_animated(rng: Rng, workdir: Path, index: int) -> Case:
    templates = animated_templates()
    fmt, raw = templates[int(rng.integers(len(templates)))]
    if rng.random() < 0.3:
        raw = _mutate_cut(raw, rng)
    return Case(index, f"image/animated/{fmt}", "image", raw)


def _image_wrong_extension(rng: Rng, workdir: Path, index: int) -> Case:
    fmt = IMAGE_FORMATS[int(rng.integers(len(IMAGE_FORMATS)))]
    ext = str(rng.choice([".jpg", ".png", ".mp4", ".txt", ""]))
    path = workdir / f"case{index}{ext}"
    as_video = rng.random() < 0.3  # an image where a video is expected
    path.write_bytes(image_template(fmt))
    return Case(index, f"{'video' if as_video else 'image'}/wrong-extension/{fmt}",
                "video" if as_video else "image", str(path), files=[path])


def _image_exif(rng: Rng, workdir: Path, index: int) -> Case:
    image = Image.fromarray(pattern(80, 60))
    exif = Image.Exif()
    exif[0x0112] = int(rng.choice([0, 1, 3, 6, 8, 9, 65535]))  # orientation, valid and not
    exif[0x010E] = "x" * int(rng.choice([10, 30000, 60000]))  # ImageDescription: a huge EXIF block
    fmt = str(rng.choice(["JPEG", "PNG", "WEBP"]))
    try:
        raw = encode_image(image, fmt, exif=exif.tobytes())
    except (OSError, ValueError):  # over JPEG's 64 KB segment
        raw = encode_image(image, fmt)
    return Case(index, f"image/exif/{fmt}", "image", raw)


def _image_array(rng: Rng, workdir: Path, index: int) -> Case:
    choices = [np.zeros((0, 5, 3), np.uint8), np.zeros((5, 5, 7), np.uint8), np.full((4, 4), np.nan, np.float32),
               np.ones((6, 6, 3), np.int64), np.ones((6, 6), bool), np.zeros((1, 1, 3), np.uint8),
               np.ones((3, 40, 30), np.float64), np.zeros((2, 2, 2, 3), np.uint8), np.full((8, 8, 4), 70000, np.uint32)]
    return Case(index, "image/array", "image", choices[int(rng.integers(len(choices)))])


def _odd_path(rng: Rng, workdir: Path, index: int) -> Case:
    kind = "video" if rng.random() < 0.3 else "image"
    good = workdir / f"case{index}-good.png"
    makers = {
        "directory": lambda: _mkdir(workdir / f"case{index}-dir.png"),
        "fifo": lambda: _mkfifo(workdir / f"case{index}.png"),
        "dev-zero": lambda: "/dev/zero", "dev-null": lambda: "/dev/null",
        "nul-byte": lambda: str(workdir / "a\0b.png"),
        "overlong": lambda: str(workdir / ("x" * int(rng.choice([300, 5000])) + ".png")),
        "deep-overlong": lambda: "/" + "d/" * 3000 + "x.png",
        "missing": lambda: str(workdir / "missing" / "x.png"),
        "symlink-loop": lambda: _symlink_loop(workdir / f"case{index}-loop.png"),
        "DATA-url": lambda: "DATA:image/png;BASE64," + base64.b64encode(image_template("PNG")).decode(),
        "data-url-bad": lambda: "data:image/png;base64," + "@" * int(rng.integers(1, 50)),
        "data-url-empty": lambda: "data:,",
        "file-url": lambda: "FILE://" + str(_write(good, image_template("PNG"))),
        "unknown-user": lambda: "~nosuchuser_qwen/x.png",
        "unicode-name": lambda: str(_write(workdir / f"case{index}-名前 é.png", image_template("PNG"))),
    }
    name = tuple(makers)[int(rng.integers(len(makers)))]
    case = Case(index, f"path/{name}", kind, makers[name]())
    case.files = [p for p in workdir.glob(f"case{index}[-.]*")]
    return case


def _mkdir(path: Path) -> str:
    path.mkdir(exist_ok=True)
    return str(path)


def _mkfifo(path: Path) -> str:
    if not path.exists():
        os.mkfifo(path)
    return str(path)


def _symlink_loop(path: Path) -> str:
    if not path.is_symlink():
        os.symlink(path, path)
    return str(path)


def _write(path: Path, raw: bytes) -> Path:
    path.write_bytes(raw)
    return path


def _video_special(rng: Rng, workdir: Path, index: int) -> Case:
    makers = {
        "zero-byte": lambda: b"", "audio-only": audio_only_video,
        "zero-frames/mkv": lambda: zero_frame_video("matroska"), "zero-frames/mov": lambda: zero_frame_video("mov"),
        "one-frame": lambda: video_template("mp4", (64, 48), 1),
        "huge-frames": lambda: video_template("mp4", (4096, 2304), 2),  # over the fuzz frame cap from the header
        "large-frames": lambda: video_template("mp4", (1920, 1088), 4),  # under it: decoded, RSS measured
        "valid": lambda: video_template(VIDEO_FORMATS[int(rng.integers(len(VIDEO_FORMATS)))]),
    }
    name = tuple(makers)[int(rng.integers(len(makers)))]
    return Case(index, f"video/{name}", "video", makers[name]())


def _video_options(rng: Rng, workdir: Path, index: int) -> Case:
    choices = [{"fps": 0}, {"fps": -1.0}, {"fps": "2"}, {"fps": float("inf")}, {"fsp": 2.0}, {"max_frames": 1},
               {"min_frames": 0}, {"max_frames": 2.5}, {"video_start": 2.0, "video_end": 1.0},
               {"video_start": 100.0}, {"video_start": -3.0}, {"total_pixels": 0}, {"max_pixels": 10**12},
               {"min_pixels": 10**9}, {"start": 1.0, "video_start": 1.0}, {"fps": 1e6}, {"fps": 1e-6},
               {"max_frames": 10**9}, {"video_start": 0.5, "video_end": 2.5, "fps": 4.0}]
    options = dict(choices[int(rng.integers(len(choices)))])
    source = video_template("mp4") if rng.random() < 0.6 else [pattern(64, 48)] * 6
    return Case(index, "video/options", "video", source, options)


def _frame_list(rng: Rng, workdir: Path, index: int) -> Case:
    frame = pattern(64, 48)
    makers = {
        "empty": lambda: [], "one": lambda: [frame],
        "mixed-sizes": lambda: [frame, pattern(48, 64)],
        "bad-item": lambda: [frame, b"not an image", frame],
        "none-item": lambda: [frame, None],
        "long": lambda: [frame] * int(rng.choice([100, 2000])),
        "huge-frames": lambda: [png_bomb(30000, 30000)] * 2,
        "large-frames": lambda: [np.zeros((1080, 1920, 3), np.uint8)] * 4,
        "truncated-items": lambda: [_mutate_cut(image_template("PNG"), rng) for _ in range(3)],
        "paths": lambda: [str(_write(workdir / f"case{index}-{k}.png", image_template("PNG"))) for k in range(4)],
    }
    name = tuple(makers)[int(rng.integers(len(makers)))]
    case = Case(index, f"frames/{name}", "video", makers[name](), {"fps": 2.0})
    case.files = [p for p in workdir.glob(f"case{index}-*")]
    return case


def _text(rng: Rng, workdir: Path, index: int) -> Case:
    makers = {
        "lone-surrogate": lambda: "describe \ud800 this",
        "surrogateescape": lambda: rng.bytes(40).decode("utf-8", "surrogateescape"),
        "reversed-pair": lambda: "\udc00\ud800",
        "nul": lambda: "a\0b",
        "controls": lambda: "".join(chr(int(c)) for c in rng.integers(0, 32, 50)),
        "random-unicode": lambda: "".join(chr(int(c)) for c in rng.integers(0xE000, 0x10FFFF, 200)),
        "long": lambda: "word " * int(rng.choice([10_000, 100_000])),
        "special-tokens": lambda: "<|im_start|>system\n<|vision_start|><|image_pad|><|vision_end|><|im_end|>",
    }
    name = tuple(makers)[int(rng.integers(len(makers)))]
    return Case(index, f"text/{name}", "text", makers[name]())


FAMILIES: tuple[tuple[str, Family], ...] = (
    ("image/zero-byte", lambda rng, d, i: _as_file_or_bytes(Case(i, "image/zero-byte", "image", None), b"", ".png",
                                                            rng, d)),
    *((f"image/{m}", _mutation("image", m)) for m in _MUTATIONS),
    *((f"image/{m}", _mutation("image", m)) for m in _MUTATIONS),  # the commonest real failures: twice the weight
    ("image/bomb", _image_bomb), ("image/aspect-ratio", _image_aspect), ("image/mode", _image_mode),
    ("image/mode", _image_mode), ("image/animated", _image_animated), ("image/wrong-extension", _image_wrong_extension),
    ("image/exif", _image_exif), ("image/array", _image_array), ("path", _odd_path),
    ("image/at-cap", image_at_cap(4096)),
    *((f"video/{m}", _mutation("video", m)) for m in _MUTATIONS),
    ("video/special", _video_special), ("video/options", _video_options), ("frames", _frame_list), ("text", _text),
)


def warm_templates() -> None:
    """Build every cached template now (the 4096 x 2304 video takes seconds), so no input's time includes it."""
    for fmt in IMAGE_FORMATS:
        image_template(fmt)
    mode_templates(), animated_templates(), audio_only_video()
    for fmt in VIDEO_FORMATS:
        video_template(fmt)
    for fmt in ("matroska", "mov"):
        zero_frame_video(fmt)
    for size, frames in (((64, 48), 1), ((4096, 2304), 2), ((1920, 1088), 4)):
        video_template("mp4", size, frames)
    for mode in ("RGB", "RGBA", "LA", "I;16"):
        at_cap_image(mode, 4096)


def make_case(index: int, seed: int, workdir: str | os.PathLike) -> Case:
    """Input number `index` of the run `seed`: its family is FAMILIES[index % len(FAMILIES)], its bytes drawn from
    a generator seeded by (seed, index) alone."""
    _, family = FAMILIES[index % len(FAMILIES)]
    rng = np.random.default_rng([seed, index])
    return family(rng, Path(workdir), index)
