"""Where images and videos come from: paths, bytes, data URLs and http(s) URLs; and decoding an image to RGB.
(Decoding a video file: `video_reader.py`.)

Loading follows qwen-vl-utils (`fetch_image` / `to_rgb`): an RGBA image is pasted on a white background through its
alpha channel; other modes are converted to RGB. We go a little further where qwen-vl-utils silently drops
transparency or clips (LA / PA / P-with-transparency are composited on white like RGBA; 16-bit images are scaled to
8 bits instead of clipped) and apply the EXIF orientation, as transformers' `load_image` does. Every failure is an
`InputError` that names the item.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import socket
import stat
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from qwen25vl.errors import InputError

DEFAULT_TIMEOUT_S = 20.0
DEFAULT_MAX_IMAGE_BYTES = 64 << 20
DEFAULT_MAX_VIDEO_BYTES = 1 << 30
# PIL's own hard limit (2 x Image.MAX_IMAGE_PIXELS, which stays PIL's backstop); ours is checked from the header,
# before any decoding. Decoding an image at the cap costs at most about 12 bytes a pixel at peak (measured by the
# fuzz suite: RGB 4.6, RGBA 8.6, 16-bit 11.4; PIL keeps 4 bytes a pixel, plus the RGB copy or the white background
# under an alpha channel): about 2.1 GB at this default, 1.2 GB at the server's 1e8 (see RELIABILITY.md).
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970
# A video frame's decoded size, from the stream header (8K UHD). Decoding costs about 50 bytes a frame pixel at peak
# (the decoder's reference frames, 4 RGB frames queued ahead, the float copy the resize reads): about 1.7 GB here.
DEFAULT_MAX_FRAME_PIXELS = 7680 * 4320
MAX_ASPECT_RATIO = 200  # longest over shortest side (SPEC section 4): more is an error, before decoding
_CHUNK = 1 << 20


def describe(source: Any) -> str:
    """A short, printable name of a source for error messages."""
    if isinstance(source, (str, Path)):
        text = str(source)
        if is_data_url(text):
            return f"data URL ({text[:30]}..., {len(text)} chars)"
        return repr(text if len(text) <= 200 else text[:200] + "...")
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<PIL image {source.mode} {source.size[0]}x{source.size[1]}>"
    if isinstance(source, np.ndarray):
        return f"<array {source.dtype} {tuple(source.shape)}>"
    return f"<{type(source).__name__}>"


def is_url(source: Any) -> bool:
    """An http(s) URL (schemes are case-insensitive: `HTTPS://` too)."""
    return isinstance(source, str) and source[:8].lower().startswith(("http://", "https://"))


def is_data_url(source: Any) -> bool:
    """A `data:` URL (`DATA:` too: schemes are case-insensitive)."""
    return isinstance(source, str) and source[:5].lower() == "data:"


def fetch_url(url: str, *, what: str = "item", timeout: float = DEFAULT_TIMEOUT_S, max_bytes: int) -> bytes:
    """Download `url` with a per-read timeout, an overall deadline of the same length and a size cap."""
    deadline = time.monotonic() + timeout
    name = describe(url)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "qwen25vl"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise InputError(f"{what} {name}: {int(length)} bytes is over the download cap of {max_bytes} bytes")
            chunks, total = [], 0
            while True:
                # A server that trickles bytes never trips the socket timeout: bound the whole download too.
                if time.monotonic() > deadline:
                    raise InputError(f"{what} {name}: download took longer than {timeout:g} s")
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise InputError(f"{what} {name}: more than the download cap of {max_bytes} bytes")
                chunks.append(chunk)
    except InputError:
        raise
    except urllib.error.HTTPError as e:
        raise InputError(f"{what} {name}: HTTP {e.code} {e.reason}") from None
    except (socket.timeout, TimeoutError) as e:
        raise InputError(f"{what} {name}: timed out after {timeout:g} s ({e})") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise InputError(f"{what} {name}: cannot download ({e})") from None
    return b"".join(chunks)


def decode_data_url(url: str, *, max_bytes: int, what: str = "item", limit_name: str = "max_bytes") -> bytes:
    """`data:[<mime>][;base64],<payload>` -> bytes, at most `max_bytes` of them (RFC 2397).

    The one decoder of data URLs: the processor's and the server's (with its own cap and the cap's name for
    messages). A base64 payload is measured before it is decoded, so an oversized one costs no decoding; other
    payloads are percent-decoded and can only shrink. Whitespace inside base64 is ignored.
    """
    header, sep, payload = url.partition(",")
    if not sep:
        raise InputError(f"{what} {describe(url)}: malformed data URL (no ',' before the payload)")
    if header.rstrip().lower().endswith(";base64"):
        payload = "".join(payload.split())
        size = len(payload) * 3 // 4 - payload[-2:].count("=")
        _check_size(size, max_bytes, what, describe(url), limit_name)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as e:
            raise InputError(f"{what} {describe(url)}: not valid base64 ({e})") from None
    else:
        data = urllib.parse.unquote_to_bytes(payload)
        _check_size(len(data), max_bytes, what, describe(url), limit_name)
    if not data:
        raise InputError(f"{what} {describe(url)}: empty (zero bytes)")
    return data


def _check_size(size: int, max_bytes: int, what: str, name: str, limit_name: str) -> None:
    if size > max_bytes:
        raise InputError(f"{what} {name}: {size} bytes is over the limit {limit_name}={max_bytes}")


def check_local_file(path: str | os.PathLike, *, what: str = "item", max_bytes: int | None = None,
                     limit_name: str = "max_bytes") -> Path:
    """A path that names a non-empty regular file -> that Path; anything else is an InputError saying what it is.

    Directories, FIFOs (opening one would block), devices (`/dev/zero` never ends), sockets, NUL bytes and
    overlong names are refused from `stat` alone, before anything is opened.
    """
    text = str(check_path_text(path, what=what))
    name = describe(text)
    try:
        info = os.stat(text)
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(f"{what} {name}: does not exist (no such file)") from None
    except PermissionError:
        raise InputError(f"{what} {name}: permission denied") from None
    except (OSError, ValueError) as e:  # ENAMETOOLONG, ELOOP, EIO, ...
        raise InputError(f"{what} {name}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{what} {name}: is {_file_kind(info.st_mode)}, not a regular file")
    if info.st_size == 0:
        raise InputError(f"{what} {name}: empty file (zero bytes)")
    if max_bytes is not None:
        _check_size(info.st_size, max_bytes, what, name, limit_name)
    return Path(text)


def check_path_text(path: str | os.PathLike, *, what: str = "item") -> Path:
    """The path a string names, `~` expanded; a NUL byte (no OS path has one) is an InputError."""
    text = os.fsdecode(path)
    if "\0" in text:
        raise InputError(f"{what} {describe(text)}: the path contains a NUL byte")
    try:
        return Path(text).expanduser()
    except RuntimeError as e:  # ~user of an unknown user
        raise InputError(f"{what} {describe(text)}: {e}") from None


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((label for test, label in kinds if test(mode)), "not a file")


def file_url_path(url: str) -> str:
    """`file:///a%20b.png` -> `/a b.png`."""
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path)


def resolve_source(
    source: Any, *, what: str = "item", timeout: float = DEFAULT_TIMEOUT_S, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
) -> Path | bytes | None:
    """A path, URL, data URL or bytes -> a local `Path` (a checked regular file) or the bytes; None for in-memory
    objects (PIL, arrays). `max_bytes` caps downloads and data URLs; local files are read as streams."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise InputError(f"{what} {describe(source)}: empty (zero bytes)")
        return data
    if isinstance(source, str):
        if is_url(source):
            data = fetch_url(source, what=what, timeout=timeout, max_bytes=max_bytes)
            if not data:
                raise InputError(f"{what} {describe(source)}: empty (zero bytes)")
            return data
        if is_data_url(source):
            return decode_data_url(source, max_bytes=max_bytes, what=what)
        return check_local_file(file_url_path(source) if source[:7].lower() == "file://" else source, what=what)
    if isinstance(source, os.PathLike):
        return check_local_file(source, what=what)
    return None


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    """(H, W), (H, W, 1|3|4) or channel-first (1|3|4, H, W) arrays; uint8, uint16 or floats in [0, 1] / [0, 255]."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # (C, H, W) -> (H, W, C)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))) or 0 in a.shape:
        raise InputError(f"image {name}: expected (H, W), (H, W, 3) or (H, W, 4), got shape {tuple(array.shape)}")
    if a.dtype == np.uint16:
        a = (a.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise InputError(f"image {name}: contains NaN or infinity")
        scale = 255.0 if a.max(initial=0.0) <= 1.0 else 1.0
        a = np.clip(a * scale, 0, 255).round().astype(np.uint8)
    elif a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        raise InputError(f"image {name}: unsupported array dtype {a.dtype}")
    return Image.fromarray(np.ascontiguousarray(a))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency is composited on white (qwen-vl-utils' rule for RGBA, extended)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit greyscale: PIL's convert would clip at 255 (an almost white image); scale to 8 bits instead:
        # round(v / 257) in integers (v / 257 is never a tie: 257 is odd), 4 bytes a pixel instead of 32 in floats
        a = np.asarray(image).astype(np.int64 if image.mode == "I" else np.int32)  # 16-bit values fit in int32
        a *= 2
        a += 257
        a //= 514
        image = Image.fromarray(np.clip(a, 0, 255, out=a).astype(np.uint8))
    elif image.mode == "F":
        a = np.asarray(image, dtype=np.float64)
        scale = 255.0 if np.nanmax(a, initial=0.0) <= 1.0 else 1.0
        image = Image.fromarray(np.clip(np.nan_to_num(a) * scale, 0, 255).round().astype(np.uint8))
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")  # convert would copy an RGBA image
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def load_image(
    source: Any,
    *,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    timeout: float = DEFAULT_TIMEOUT_S,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> Image.Image:
    """A path, `file://` / http(s) / data URL, bytes, PIL image or array -> a decoded RGB PIL image (EXIF applied).

    Bounds, all checked from the header before a pixel is decoded: width * height <= `max_image_pixels`, both sides
    > 0, longest / shortest side <= MAX_ASPECT_RATIO; downloads and data URLs <= `max_bytes`. Peak memory is then
    at most about 12 bytes per pixel of the cap (see DEFAULT_MAX_IMAGE_PIXELS) plus the encoded bytes.
    """
    name = describe(source)
    if isinstance(source, np.ndarray):
        image = _from_array(source, name)
    elif isinstance(source, Image.Image):
        image = source
    else:
        resolved = resolve_source(source, what="image", timeout=timeout, max_bytes=max_bytes)
        if resolved is None:
            raise InputError(
                f"image {name}: unsupported source type {type(source).__name__} "
                "(expected a path, URL, data URL, bytes, PIL image or numpy array)"
            )
        image = _open(resolved, name, max_image_pixels)
    check_image_size(image.size, name, max_image_pixels)
    try:
        return to_rgb(_oriented(image))
    except _DECODE_ERRORS as e:
        raise InputError(f"image {name}: cannot decode ({type(e).__name__}: {e})") from None


def _oriented(image: Image.Image) -> Image.Image:
    """The image turned upright by its EXIF orientation; the image itself when it needs no turn (exif_transpose would
    return a full copy)."""
    if image.getexif().get(0x0112, 1) in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(image)
    return image


def check_image_size(size: tuple[int, int], name: str, max_image_pixels: int) -> None:
    """The limits an image's (width, height) must meet before decoding: the pixel cap and the aspect ratio."""
    width, height = size
    if width <= 0 or height <= 0:
        raise InputError(f"image {name}: empty image ({width}x{height})")
    if width * height > max_image_pixels:
        raise InputError(f"image {name}: {width}x{height} = {width * height} pixels is over the cap {max_image_pixels}")
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise InputError(
            f"image {name}: {width}x{height}: aspect ratio {ratio:.1f} is over the limit {MAX_ASPECT_RATIO}"
        )


# What PIL's decoders raise on corrupt or hostile files, beside OSError (struct.error is an Exception, not OSError)
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, KeyError, TypeError,
                  ZeroDivisionError, OverflowError)


def _open(resolved: Path | bytes, name: str, max_image_pixels: int) -> Image.Image:
    """Open, check the header's size, then decode the first frame (of an animation: the first only)."""
    with (io.BytesIO(resolved) if isinstance(resolved, bytes) else open(resolved, "rb")) as fp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(fp)
            check_image_size(image.size, name, max_image_pixels)  # the header alone: a bomb is refused undecoded
            image.load()
            return image
        except InputError:
            raise
        except Image.DecompressionBombError as e:
            raise InputError(f"image {name}: over PIL's decompression-bomb limit ({e})") from None
        except UnidentifiedImageError:
            raise InputError(f"image {name}: not an image file (unrecognised format)") from None
        except _DECODE_ERRORS as e:
            raise InputError(f"image {name}: cannot decode, file truncated or corrupt ({e})") from None
