"""OpenAI chat messages -> the processor's messages, with every media source loaded safely and every limit applied.

The processor itself can fetch URLs, but without the server's address checks, so it never sees a URL from a request:
images arrive as decoded PIL images (a broken image is a 400 here, naming the message and part), videos as bytes or
a checked local path, frame lists as PIL images. Per-item pixel and frame options are checked against the server's
limits and passed on; where a client omits `max_pixels`, the server's limit becomes the item's.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch

from qwen25vl.errors import InputError
from qwen25vl.processing.media import load_image
from qwen25vl.processing.video import VIDEO_MIN_PIXELS
from qwen25vl.serve.fetch import MediaFetcher
from qwen25vl.serve.schemas import (
    ChatMessage, ImagePart, ImageURL, ImageURLPart, TextPart, VideoPart, VideoURL, VideoURLPart, VisionOptions,
)
from qwen25vl.serve.settings import Limits

_OPTION_NAMES = tuple(VisionOptions.model_fields)


class LimitError(InputError):
    """A request over one of the server's limits (a 400 that names the limit)."""


def _options(*holders: Any) -> dict[str, Any]:
    """Vision options set on the part or on its url object (the url object's win)."""
    found: dict[str, Any] = {}
    for holder in holders:
        if isinstance(holder, VisionOptions):
            found.update({k: v for k in _OPTION_NAMES if (v := getattr(holder, k)) is not None})
    return found


def _check_pixels(options: dict[str, Any], limits: Limits, what: str) -> dict[str, Any]:
    for name in ("min_pixels", "max_pixels"):
        value = options.get(name)
        if value is not None and value > limits.max_image_pixels:
            raise LimitError(f"{what}: {name}={value} is over the server limit max_image_pixels="
                             f"{limits.max_image_pixels}")
    if options.get("min_pixels") and options.get("max_pixels") and options["min_pixels"] > options["max_pixels"]:
        raise InputError(f"{what}: min_pixels={options['min_pixels']} is larger than max_pixels="
                         f"{options['max_pixels']}")
    out = {"max_pixels": options.get("max_pixels", limits.max_image_pixels)}
    if options.get("min_pixels"):
        out["min_pixels"] = min(options["min_pixels"], out["max_pixels"])
    return out


def _image(source: str, options: dict, fetcher: MediaFetcher, limits: Limits, what: str) -> dict[str, Any]:
    pixels = _check_pixels(options, limits, what)  # before any fetching: a refused request costs nothing
    return {"type": "image", "image": _decode(fetcher.load(source, what), limits, what), **pixels}


def _decode(data, limits: Limits, what: str):
    try:
        return load_image(data, max_image_pixels=limits.max_decoded_pixels)
    except InputError as err:
        raise InputError(f"{what}: {err}") from None


def _video(source: Union[str, list[str]], options: dict, fetcher: MediaFetcher, limits: Limits,
           what: str) -> dict[str, Any]:
    part: dict[str, Any] = {"type": "video", **_check_pixels(options, limits, what)}
    max_frames = options.get("max_frames")
    if max_frames is not None and max_frames > limits.max_frames:
        raise LimitError(f"{what}: max_frames={max_frames} is over the server limit max_frames={limits.max_frames}")
    if isinstance(source, list):
        if len(source) > limits.max_frames:
            raise LimitError(f"{what}: {len(source)} frames is over the server limit max_frames={limits.max_frames}")
        if not source:
            raise InputError(f"{what}: the frame list is empty")
        part["video"] = [_decode(fetcher.load(frame, f"{what} frame {i}"), limits, f"{what} frame {i}")
                         for i, frame in enumerate(source)]
    else:
        part["video"] = fetcher.load(source, what)
    if "min_pixels" not in part:  # the video default (128 tokens a frame) may sit above the server's per-frame cap
        part["min_pixels"] = min(VIDEO_MIN_PIXELS, part["max_pixels"])
    if not isinstance(source, list):
        part["max_frames"] = max_frames or limits.max_frames
    for name in ("fps", "min_frames", "total_pixels", "video_start", "video_end"):
        if options.get(name) is not None:
            part[name] = options[name]
    if "total_pixels" in part and part["total_pixels"] > limits.max_request_pixels:
        raise LimitError(f"{what}: total_pixels={part['total_pixels']} is over the server limit "
                         f"max_request_pixels={limits.max_request_pixels}")
    return part


def _part(part: Any, fetcher: MediaFetcher, limits: Limits, what: str) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, ImageURLPart):
        url_obj = part.image_url
        url = url_obj.url if isinstance(url_obj, ImageURL) else url_obj
        return _image(url, _options(part, url_obj), fetcher, limits, f"{what} image_url")
    if isinstance(part, ImagePart):
        return _image(part.image, _options(part), fetcher, limits, f"{what} image")
    if isinstance(part, VideoURLPart):
        url_obj = part.video_url
        url = url_obj.url if isinstance(url_obj, VideoURL) else url_obj
        return _video(url, _options(part, url_obj), fetcher, limits, f"{what} video_url")
    if isinstance(part, VideoPart):
        return _video(part.video, _options(part), fetcher, limits, f"{what} video")
    raise InputError(f"{what}: unsupported content part {type(part).__name__}")


def to_processor_messages(messages: list[ChatMessage], fetcher: MediaFetcher, limits: Limits) -> list[dict]:
    """Runs in a worker thread of the HTTP server (fetching and decoding block)."""
    _check_counts(messages, limits)
    out = []
    for i, message in enumerate(messages):
        if message.content is None or isinstance(message.content, str):
            converted = {"role": message.role, "content": message.content or ""}
        else:
            parts = [_part(p, fetcher, limits, f"messages[{i}].content[{j}]") for j, p in enumerate(message.content)]
            if message.role != "user" and any(p["type"] != "text" for p in parts):
                raise InputError(f"messages[{i}]: images and videos are only accepted in user messages "
                                 f"(role {message.role!r})")
            converted = {"role": message.role, "content": parts}
        if message.role == "assistant" and message.tool_calls:
            converted["tool_calls"] = [{"type": "function", "function": {
                "name": c.function.name, "arguments": c.function.arguments}} for c in message.tool_calls]
        out.append(converted)
    return out


def _check_counts(messages: list[ChatMessage], limits: Limits) -> None:
    """Before anything is fetched or tokenized: the number of media items and the length of the text.

    The text bound is exact, not a guess: no token of the vocabulary is longer than `limits.max_token_chars`
    characters, so a text longer than max_prompt_tokens x that can never fit and is refused without tokenizing.
    """
    items, chars = 0, 0
    for message in messages:
        content = message.content
        if isinstance(content, str):
            chars += len(content)
            continue
        for part in content or ():
            if isinstance(part, TextPart):
                chars += len(part.text)
            else:
                items += 1
    if items > limits.max_media_items:
        raise LimitError(f"the request holds {items} images and videos, over the server limit "
                         f"max_media_items={limits.max_media_items}")
    if chars > limits.max_prompt_tokens * limits.max_token_chars:
        raise LimitError(f"the prompt text has {chars} characters: more than max_prompt_tokens="
                         f"{limits.max_prompt_tokens} tokens of at most {limits.max_token_chars} characters each "
                         f"can hold (server limit max_prompt_tokens={limits.max_prompt_tokens})")


def check_processed(inputs: dict[str, Optional[torch.Tensor]], limits: Limits, patch_size: int = 14) -> None:
    """Limits that only the processor's output can tell: prompt tokens, resized pixels, sampled frames."""
    tokens = int(inputs["input_ids"].shape[-1])
    if tokens > limits.max_prompt_tokens:
        raise LimitError(f"the prompt has {tokens} tokens (vision tokens included), over the server limit "
                         f"max_prompt_tokens={limits.max_prompt_tokens}")
    pixels = 0
    for key in ("image_grid_thw", "video_grid_thw"):
        grid = inputs.get(key)
        if grid is not None and grid.numel():
            pixels += int(grid.prod(-1).sum()) * patch_size * patch_size
    if pixels > limits.max_request_pixels:
        raise LimitError(f"the request's images and video frames hold {pixels} pixels after resizing, over the "
                         f"server limit max_request_pixels={limits.max_request_pixels}")
    grid = inputs.get("video_grid_thw")
    if grid is not None and grid.numel():
        frames = int(grid[:, 0].max()) * 2  # temporal_patch_size frames per temporal patch
        if frames > limits.max_frames + 1:  # an odd frame count is padded by one
            raise LimitError(f"a video has {frames} frames after sampling, over the server limit "
                             f"max_frames={limits.max_frames}")
