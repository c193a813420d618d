"""Stats operators that look at a record's media through the processor: coordinates against the frame the model
sees, token counts with each image's real token count, pad-token mismatches, and media content hashes.

Image sizes are read from the file header (nothing is decoded) and resized with the processor's `smart_resize`
and the checkpoint's preprocessor settings, so the frame and the token counts are the ones training would see.
Video parts count one pad token each in `num_tokens` (their token count needs the stream's frame index).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from qwen25vl.data.pipeline.ops import StatsOp, media_parts, register, resolve_media
from qwen25vl.errors import Qwen25VLError

LLAVA_PLACEHOLDERS = ("<image>", "<video>")


@lru_cache(maxsize=4096)
def image_size(path: str) -> tuple[int, int]:
    """(width, height) from the image header."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def _image_config(model: str | None):
    from qwen25vl.processing.image import ImageProcessorConfig

    if model is None:
        return ImageProcessorConfig()
    from qwen25vl.generation.paths import model_path

    return ImageProcessorConfig.from_pretrained(model_path(model))


@lru_cache(maxsize=65536)
def image_frame(path: str, min_pixels: int, max_pixels: int, factor: int):
    """The `tasks.coords.Frame` (original -> resized sizes) of the image file at `path` under these limits."""
    from qwen25vl.tasks.coords import as_frame

    return as_frame(original_size=image_size(path), min_pixels=min_pixels, max_pixels=max_pixels, factor=factor)


def _frames(row: dict, config) -> list:
    """One Frame per image part, in order (OSError / Qwen25VLError for an unreadable image)."""
    return [image_frame(resolve_media(part["image"], row.get("root", ".")), part.get("min_pixels") or config.min_pixels,
                        part.get("max_pixels") or config.max_pixels, config.factor)
            for part in media_parts(row) if part.get("type") == "image" and isinstance(part.get("image"), str)]


def _answers_after_images(row: dict):
    """(answer text, number of images seen before it) for each assistant message."""
    seen = 0
    for message in list(row.get("messages") or []) + list(row.get("chosen") or []):
        content = message.get("content")
        if message.get("role") == "assistant":
            text = content if isinstance(content, str) else "\n".join(
                p.get("text", "") for p in content or [] if p.get("type") == "text")
            yield text, seen
        elif isinstance(content, list):
            seen += sum(1 for p in content if isinstance(p, dict) and p.get("type") == "image")


def coords_outside(row: dict, frames: list, frame: str = "original") -> int:
    """How many box corners and points of the answers fall outside the resized frame of the image before them
    (`frame`: the pixels the record's coordinates are in, "original" as our records hold them, or "resized")."""
    from qwen25vl.tasks.grounding import parse_grounding

    bad = 0
    for text, seen in _answers_after_images(row):
        if not seen or ("bbox_2d" not in text and "point_2d" not in text):
            continue
        f = frames[seen - 1]
        w, h = f.resized_size
        for item in parse_grounding(text).items:
            pts = []
            if item.bbox is not None:
                pts += [item.bbox[:2], item.bbox[2:]]
            if item.point is not None:
                pts.append(item.point)
            for x, y in pts:
                if frame == "original":
                    x, y = f.to_resized(x, y)
                bad += not (-0.5 <= x <= w + 0.5 and -0.5 <= y <= h + 0.5)  # half a pixel of rounding
    return bad


@register("frame_bounds")
class FrameBounds(StatsOp):
    """`coords_outside` (boxes and points outside the resized frame) and `media_error` (an unreadable image)."""

    def __init__(self, model: str | None = None, frame: str = "original"):
        if frame not in ("original", "resized"):
            raise ValueError(f"frame must be original or resized, got {frame!r}")
        super().__init__(model=model, frame=frame)
        self.model, self.frame, self._config = model, frame, None

    def compute(self, rows):
        self._config = self._config or _image_config(self.model)
        out = []
        for row in rows:
            try:
                out.append({"coords_outside": coords_outside(row, _frames(row, self._config), self.frame),
                            "media_error": None})
            except (OSError, Qwen25VLError, IndexError) as err:
                out.append({"coords_outside": None, "media_error": f"{type(err).__name__}: {err}"[:200]})
        return out


@register("tokens")
class Tokens(StatsOp):
    """`num_tokens` (the rendered record with each image's token count), `image_token_mismatch` (the text holds
    pad or vision-start tokens, or LLaVA `<image>` placeholders, that do not match the media parts) and
    `tokens_error`. `model`: the checkpoint folder whose tokenizer and preprocessor to use (None: the embedded one)."""

    def __init__(self, model: str | None = None):
        super().__init__(model=model)
        self.model, self._tok, self._config = model, None, None

    def _load(self):
        if self._tok is None:  # built on first use, in the worker or actor that runs the operator
            from qwen25vl.generation.paths import model_path
            from qwen25vl.processing.tokenizer import Tokenizer

            self._tok = Tokenizer.from_pretrained(model_path(self.model))
            self._config = _image_config(self.model)
        return self._tok

    def _counts(self, row: dict, ids: list[int], text: str, n_images: int, n_videos: int) -> dict:
        sp = self._tok.special
        found = (ids.count(sp.image_pad), ids.count(sp.video_pad), ids.count(sp.vision_start))
        placeholders = sum(text.count(p) for p in LLAVA_PLACEHOLDERS)
        image_tokens = sum(f.resized_size[0] * f.resized_size[1] // (self._config.factor ** 2)
                           for f in _frames(row, self._config))
        return {"num_tokens": len(ids) - found[0] + image_tokens, "tokens_error": None,
                "image_token_mismatch": found != (n_images, n_videos, n_images + n_videos) or placeholders > 0}

    def compute(self, rows):
        from qwen25vl.processing.chat_template import render_text

        tok = self._load()
        rendered: list = []
        for row in rows:
            try:
                rendered.append(render_text(list(row.get("messages") or []) + list(row.get("chosen") or [])))
            except Qwen25VLError as err:
                rendered.append(err)
        texts = [r[0] for r in rendered if not isinstance(r, Exception)]
        try:
            encoded = iter(tok.encode_batch(texts))  # one parallel call for the batch
        except Qwen25VLError:  # a text the tokenizer refuses: find it one by one
            encoded = None
        out = []
        for row, r in zip(rows, rendered):
            try:
                if isinstance(r, Exception):
                    raise r
                ids = next(encoded) if encoded is not None else tok.encode(r[0])
                out.append(self._counts(row, ids, r[0], r[2], r[3]))
            except (OSError, Qwen25VLError) as err:
                out.append({"num_tokens": None, "image_token_mismatch": None,
                            "tokens_error": f"{type(err).__name__}: {err}"[:200]})
        return out


@lru_cache(maxsize=8192)
def file_hash(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@register("media_hash")
class MediaHash(StatsOp):
    """`media_hash`: a content hash of the record's media, in order (None without media), and `media_error`."""

    def compute(self, rows):
        out = []
        for row in rows:
            hashes = []
            try:
                for part in media_parts(row):
                    source = part[part["type"]]
                    for s in source if isinstance(source, list) else [source]:
                        path = resolve_media(s, row.get("root", "."))
                        hashes.append(file_hash(path) if Path(path).is_file() else hashlib.sha256(
                            s.encode()).hexdigest())  # a URL: the address stands for its content
                joined = hashlib.sha256("|".join(hashes).encode()).hexdigest()[:32] if hashes else None
                out.append({"media_hash": joined, "media_error": None})
            except OSError as err:
                out.append({"media_hash": None, "media_error": f"{type(err).__name__}: {err}"[:200]})
        return out
