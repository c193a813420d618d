"""The fuzz generator's raw material: valid images and videos encoded once per process (PIL, PyAV), and headers
rewritten to declare huge sizes over a tiny payload (decompression bombs). `fuzz.py` builds the malformed cases from
these."""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
from PIL import Image

IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP")
VIDEO_FORMATS = ("mp4", "matroska", "mov")
EXT = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp",
        "mp4": ".mp4", "matroska": ".mkv", "mov": ".mov"}


# ---------------------------------------------------------------- valid templates (built once per process)

def pattern(w: int, h: int, channels: int = 3) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    planes = [(x * 7 + y * 3) % 256, (x * y) % 256, (x ^ y) % 256, (x + y) % 256][:channels]
    return np.stack(planes, axis=-1).astype(np.uint8)


def encode_image(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


@functools.lru_cache(maxsize=None)
def image_template(fmt: str) -> bytes:
    """A valid 96 x 64 image in `fmt` with texture (so cuts land in the pixel data, not in padding)."""
    image = Image.fromarray(pattern(96, 64))
    if fmt == "GIF":
        image = image.convert("P")
    return encode_image(image, fmt, **({"quality": 90} if fmt == "JPEG" else {}))


@functools.lru_cache(maxsize=None)
def mode_templates() -> tuple[tuple[str, bytes], ...]:
    """The same picture in the PIL modes and formats real files carry."""
    rgb = Image.fromarray(pattern(70, 50))
    rgba = Image.fromarray(pattern(70, 50, 4))
    a16 = (pattern(70, 50, 1)[..., 0].astype(np.uint16) * 257)
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
    return tuple((name, encode_image(image, fmt)) for name, image, fmt in items)


@functools.lru_cache(maxsize=None)
def animated_templates() -> tuple[tuple[str, bytes], ...]:
    frames = [Image.fromarray(np.roll(pattern(60, 40), 5 * i, axis=1)) for i in range(6)]
    out = []
    for fmt in ("GIF", "WEBP", "PNG"):
        out.append((fmt, encode_image(frames[0], fmt, save_all=True, append_images=frames[1:], duration=40, loop=0)))
    return tuple(out)


def _encode_video(fmt: str, n: int, w: int, h: int, fps: int = 4) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": "4"}
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.roll(pattern(w, h), 3 * i, axis=1), format="rgb24")
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
    raw = bytearray(encode_image(Image.fromarray(pattern(32, 32)), "WEBP", lossless=True))
    at = raw.find(b"VP8L") + 9  # fourcc, chunk size, signature byte 0x2f
    bits = struct.unpack("<I", raw[at:at + 4])[0] & ~((1 << 28) - 1)
    raw[at:at + 4] = struct.pack("<I", bits | (width - 1) | ((height - 1) << 14))
    return bytes(raw)


def tiff_bomb(width: int, height: int) -> bytes:
    raw = bytearray(encode_image(Image.fromarray(pattern(16, 16)), "TIFF"))
    ifd = struct.unpack("<I", raw[4:8])[0]
    for k in range(struct.unpack("<H", raw[ifd:ifd + 2])[0]):
        at = ifd + 2 + 12 * k
        tag = struct.unpack("<H", raw[at:at + 2])[0]
        if tag in (256, 257):
            raw[at + 2:at + 12] = struct.pack("<HII", 4, 1, width if tag == 256 else height)
    return bytes(raw)


BOMBS = {"PNG": png_bomb, "JPEG": jpeg_bomb, "GIF": gif_bomb, "WEBP": webp_bomb, "TIFF": tiff_bomb}
HEADER_LIMITS = {"PNG": 2**31 - 1, "JPEG": 65535, "GIF": 65535, "WEBP": 16384, "TIFF": 2**31 - 1}
