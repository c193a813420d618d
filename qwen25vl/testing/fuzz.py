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
import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP")
VIDEO_FORMATS = ("mp4", "matroska", "mov")
_EXT = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp",
        "mp4": ".mp4", "matroska": ".mkv", "mov": ".mov"}


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


# ---------------------------------------------------------------- valid templates (built once per process)

def _pattern(w: int, h: int, channels: int = 3) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    planes = [(x * 7 + y * 3) % 256, (x * y) % 256, (x ^ y) % 256, (x + y) % 256][:channels]
    return np.stack(planes, axis=-1).astype(np.uint8)


def _encode_image(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


@functools.lru_cache(maxsize=None)
def image_template(fmt: str) -> bytes:
    """A valid 96 x 64 image in `fmt` with texture (so cuts land in the pixel data, not in padding)."""
    image = Image.fromarray(_pattern(96, 64))
    if fmt == "GIF":
        image = image.convert("P")
    return _encode_image(image, fmt, **({"quality": 90} if fmt == "JPEG" else {}))


@functools.lru_cache(maxsize=None)
def mode_templates() -> tuple[tuple[str, bytes], ...]:
    """The same picture in the PIL modes and formats real files carry."""
    rgb = Image.fromarray(_pattern(70, 50))
    rgba = Image.fromarray(_pattern(70, 50, 4))
    a16 = (_pattern(70, 50, 1)[..., 0].astype(np.uint16) * 257)
    palette_alpha = rgb.convert("P")
    palette_alpha.info["transparency"] = 3
    items = [
        ("1/PNG", rgb.convert("1"), "PNG"), ("L/PNG", rgb.convert("L"), "PNG"), ("LA/PNG", rgba.convert("LA"), "PNG"),
        ("P/PNG", rgb.convert("P"), "PNG"), ("P+transparency/PNG", palette_alpha, "PNG"),
        ("RGBA/PNG", rgba, "PNG"), ("RGBA/WEBP", rgba, "WEBP"), ("CMYK/JPEG", rgb.convert("CMYK"), "JPEG"),
        ("CMYK/TIFF", rgb.convert("CMYK"), "TIFF"), ("I;16/PNG", Image.fromarray(a16), "PNG"),
        ("I/TIFF", Image.fromarray(a16.astype(np.int32)), "TIFF"),
        ("F/TIFF", Image.fromarray(a16.astype(np.float32) / 65535), "TIFF"), ("LAB/TIFF", rgb.convert("LAB"), "TIFF"),
        ("YCbCr/TIFF", rgb.convert("YCbCr"), "TIFF"), ("RGBA/TIFF", rgba, "TIFF"),
        ("LA/WEBP", rgba.convert("LA"), "WEBP"),
    ]
    return tuple((name, _encode_image(image, fmt)) for name, image, fmt in items)


@functools.lru_cache(maxsize=None)
def animated_templates() -> tuple[tuple[str, bytes], ...]:
    frames = [Image.fromarray(np.roll(_pattern(60, 40), 5 * i, axis=1)) for i in range(6)]
    out = []
    for fmt in ("GIF", "WEBP", "PNG"):
        out.append((fmt, _encode_image(frames[0], fmt, save_all=True, append_images=frames[1:], duration=40, loop=0)))
    return tuple(out)


def _encode_video(fmt: str, n: int, w: int, h: int, fps: int = 4) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": "4"}
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.roll(_pattern(w, h), 3 * i, axis=1), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


@functools.lru_cache(maxsize=None)
def video_template(fmt: str, size: tuple[int, int] = (64, 48), frames: int = 12) -> bytes:
    return _encode_video(fmt, frames, *size)


@functools.lru_cache(maxsize=None)
def audio_only_video() -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in list(stream.encode(frame)) + list(stream.encode()):
            container.mux(packet)
    return buf.getvalue()


@functools.lru_cache(maxsize=None)
def zero_frame_video(fmt: str) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream("libx264", rate=4)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    return buf.getvalue()


# ---------------------------------------------------------------- header surgery: huge declared sizes

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int, height: int, color_type: int = 0) -> bytes:
    """A valid PNG header declaring width x height over a few hundred bytes of (truncated) zero rows."""
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    rows = zlib.compress(b"\0" * min(1 << 16, 4 * (width + 1)), 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")


def jpeg_bomb(width: int, height: int) -> bytes:
    raw = bytearray(image_template("JPEG"))
    at = raw.find(b"\xff\xc0")
    raw[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(raw)


def gif_bomb(width: int, height: int) -> bytes:
    raw = bytearray(image_template("GIF"))
    raw[6:10] = struct.pack("<HH", width, height)
    return bytes(raw)


def webp_bomb(width: int, height: int) -> bytes:
    """A lossless WebP whose VP8L header declares width x height (14 bits each: at most 16384)."""
    raw = bytearray(_encode_image(Image.fromarray(_pattern(32, 32)), "WEBP", lossless=True))
    at = raw.find(b"VP8L") + 9  # fourcc, chunk size, signature byte 0x2f
    bits = struct.unpack("<I", raw[at:at + 4])[0] & ~((1 << 28) - 1)
    raw[at:at + 4] = struct.pack("<I", bits | (width - 1) | ((height - 1) << 14))
    return bytes(raw)


def tiff_bomb(width: int, height: int) -> bytes:
    raw = bytearray(_encode_image(Image.fromarray(_pattern(16, 16)), "TIFF"))
    ifd = struct.unpack("<I", raw[4:8])[0]
    for k in range(struct.unpack("<H", raw[ifd:ifd + 2])[0]):
        at = ifd + 2 + 12 * k
        tag = struct.unpack("<H", raw[at:at + 2])[0]
        if tag in (256, 257):
            raw[at + 2:at + 12] = struct.pack("<HII", 4, 1, width if tag == 256 else height)
    return bytes(raw)


_BOMBS = {"PNG": png_bomb, "JPEG": jpeg_bomb, "GIF": gif_bomb, "WEBP": webp_bomb, "TIFF": tiff_bomb}
_LIMITS = {"PNG": 2**31 - 1, "JPEG": 65535, "GIF": 65535, "WEBP": 16384, "TIFF": 2**31 - 1}


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
        return _as_file_or_bytes(Case(index, f"{kind}/{name}/{fmt}", kind, None), raw, _EXT[fmt], rng, workdir)
    return family


def _image_bomb(rng: Rng, workdir: Path, index: int) -> Case:
    fmt = tuple(_BOMBS)[int(rng.integers(len(_BOMBS)))]
    side = lambda: int(min(_LIMITS[fmt], rng.choice([2, 1000, 5000, 20000, 65535, 2**20])))  # noqa: E731
    width, height = side(), side()
    return Case(index, f"image/bomb/{fmt}", "image", _BOMBS[fmt](width, height), {"note": f"{width}x{height}"})


def _image_aspect(rng: Rng, workdir: Path, index: int) -> Case:
    long = int(rng.choice([199, 200, 201, 400, 3000, 65535]))
    short = int(rng.choice([1, 2, 3]))
    size = (long, short) if rng.random() < 0.5 else (short, long)
    raw = _encode_image(Image.new("L", size, 128), "PNG") if long * short < 10**6 else png_bomb(*size)
    return Case(index, "image/aspect-ratio", "image", raw, {"note": f"{size[0]}x{size[1]}"})


@functools.lru_cache(maxsize=None)
def at_cap_image(mode: str, side: int) -> bytes:
    """A real side x side PNG (flat, so it encodes fast and small): decoded in full, it shows what the cap costs."""
    dtype, channels = (np.uint16, 1) if mode == "I;16" else (np.uint8, len(mode))
    array = np.full((side, side, channels) if channels > 1 else (side, side), 200, dtype)
    return _encode_image(Image.fromarray(array), "PNG", compress_level=1)


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
    image = Image.fromarray(_pattern(80, 60))
    exif = Image.Exif()
    exif[0x0112] = int(rng.choice([0, 1, 3, 6, 8, 9, 65535]))  # orientation, valid and not
    exif[0x010E] = "x" * int(rng.choice([10, 30000, 60000]))  # ImageDescription: a huge EXIF block
    fmt = str(rng.choice(["JPEG", "PNG", "WEBP"]))
    try:
        raw = _encode_image(image, fmt, exif=exif.tobytes())
    except (OSError, ValueError):  # over JPEG's 64 KB segment
        raw = _encode_image(image, fmt)
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
    source = video_template("mp4") if rng.random() < 0.6 else [_pattern(64, 48)] * 6
    return Case(index, "video/options", "video", source, options)


def _frame_list(rng: Rng, workdir: Path, index: int) -> Case:
    frame = _pattern(64, 48)
    makers = {
        "empty": lambda: [], "one": lambda: [frame],
        "mixed-sizes": lambda: [frame, _pattern(48, 64)],
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
