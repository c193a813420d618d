"""Processor: OpenAI-style conversations -> the model's input tensors (under transformers' names) + item metadata.

One call renders every conversation with the chat template, processes its images and videos (per-item pixel
budgets from the content parts, call-level defaults), expands each pad to the item's token count
(grid_t * grid_h * grid_w / 4) and left-pads the batch with `<|endoftext|>`. A call-level `max_length` rejects a
conversation that does not fit instead of truncating it (a cut through a vision block breaks the model's input).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qwen25vl.errors import InputError
from qwen25vl.processing.chat_template import media_parts, render
from qwen25vl.processing.media import DEFAULT_MAX_FRAME_PIXELS, DEFAULT_MAX_IMAGE_PIXELS
from qwen25vl.processing.tokenizer import Tokenizer, check_text

_IMAGE_OPTIONS = ("min_pixels", "max_pixels", "min_tokens", "max_tokens")
_VIDEO_OPTIONS = ("fps", "min_frames", "max_frames", "min_pixels", "max_pixels", "total_pixels", "start", "end")
_VIDEO_ALIASES = {"video_start": "start", "video_end": "end"}  # qwen-vl-utils' names for the cut
_SOURCE_KEYS = ("type", "url", "path")  # with "<kind>" and "<kind>_url": where a part's source may sit


@dataclass(frozen=True)
class ImageItem:
    """What became of one image: where it sits, its grid and how it was resized (for coordinate mapping)."""

    conversation: int
    grid_thw: tuple[int, int, int]
    num_tokens: int
    resize: Any  # image.ResizeInfo


@dataclass(frozen=True)
class VideoItem:
    conversation: int
    grid_thw: tuple[int, int, int]
    num_tokens: int
    resize: Any
    second_per_grid_t: float
    timestamps: list[float]  # seconds of the first frame of each frame group
    sampled_fps: float
    frame_indices: list[int] = field(repr=False)


class BatchFeature(dict):
    """A dict of tensors under the Hugging Face names, plus `.images` / `.videos` metadata (batch order)."""

    def __init__(self, data: dict, images: list[ImageItem], videos: list[VideoItem], texts: list[str]):
        super().__init__(data)
        self.images = images
        self.videos = videos
        self.texts = texts

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device=None, dtype=None) -> "BatchFeature":
        """Move tensors to `device`; `dtype` applies to the floating ones (pixels) only."""
        moved = {}
        for key, value in self.items():
            if isinstance(value, torch.Tensor):
                value = value.to(device=device, dtype=dtype if dtype is not None and value.is_floating_point() else None)
            moved[key] = value
        return BatchFeature(moved, self.images, self.videos, self.texts)


class Processor:
    """`Processor.from_pretrained(folder)(messages)` -> BatchFeature; `decode` / `batch_decode` pass through."""

    def __init__(self, tokenizer: Tokenizer, image_config=None, *, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS):
        """`max_image_pixels` / `max_frame_pixels`: the largest image / video frame decoded, checked from headers
        before decoding (they bound the memory one item costs; see processing.media)."""
        from qwen25vl.processing.image import ImageProcessorConfig

        self.tokenizer = tokenizer
        self.image_config = image_config or ImageProcessorConfig()
        self.max_image_pixels, self.max_frame_pixels = max_image_pixels, max_frame_pixels

    @classmethod
    def from_pretrained(cls, folder: str | Path, **limits) -> "Processor":
        from qwen25vl.processing.image import ImageProcessorConfig

        return cls(Tokenizer.from_pretrained(folder), ImageProcessorConfig.from_pretrained(folder), **limits)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences, skip_special_tokens: bool = False) -> list[str]:
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens)

    def __call__(
        self,
        messages,
        *,
        add_generation_prompt: bool = True,
        tools=None,
        add_vision_id: bool = False,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        video_options: dict | None = None,
        max_length: int | None = None,
        return_loss_mask: bool = False,
    ) -> BatchFeature:
        """Process one conversation (a list of messages) or a batch of them (a list of such lists).

        `min_pixels` / `max_pixels` apply to every image and video frame unless a content part sets its own
        (`{"type": "image", "image": ..., "max_pixels": ...}`); `video_options` holds call-level video settings
        (fps, min_frames, max_frames, total_pixels, ...), also overridable per part. `max_length` caps each
        conversation's tokens (vision tokens included): longer ones raise InputError, nothing is truncated.
        """
        conversations = _as_batch(messages)
        from qwen25vl.processing.image import process_images
        from qwen25vl.processing.video import process_video

        image_sources, image_options, image_owner = [], [], []
        video_parts: list[tuple[int, int, dict]] = []
        for c, conversation in enumerate(conversations):
            _check_texts(conversation, c)
            for kind, part in media_parts(conversation):
                if kind == "image":
                    image_sources.append(_source(part, "image", c))
                    image_options.append(_options(part, "image", f"conversation {c} image {len(image_sources) - 1}"))
                    image_owner.append(c)
                else:
                    video_parts.append((c, len(video_parts), part))

        call_limits = {"min_pixels": min_pixels, "max_pixels": max_pixels}
        images = []
        if image_sources:
            images = process_images(image_sources, **call_limits, options=image_options, config=self.image_config,
                                    max_image_pixels=self.max_image_pixels)
        videos = []
        call_video = _checked_options(video_options or {}, _VIDEO_OPTIONS + ("progress",), _VIDEO_ALIASES,
                                      "video_options")
        for c, v, part in video_parts:
            base = {k: v for k, v in {**call_limits, **call_video}.items() if v is not None}
            opts = {**base, **_options(part, "video", f"conversation {c} video {v}")}
            videos.append(process_video(_source(part, "video", c), config=self.image_config,
                                        max_frame_pixels=self.max_frame_pixels, **opts))

        rows, masks, texts = [], [], []
        image_i = video_i = 0
        for c, conversation in enumerate(conversations):
            n_img = sum(1 for owner in image_owner if owner == c)
            n_vid = sum(1 for owner, _, _ in video_parts if owner == c)
            rendered = render(
                conversation, tokenizer=self.tokenizer, add_generation_prompt=add_generation_prompt, tools=tools,
                add_vision_id=add_vision_id,
                image_token_counts=[im.num_tokens for im in images[image_i : image_i + n_img]] or None,
                video_token_counts=[vd.num_tokens for vd in videos[video_i : video_i + n_vid]] or None,
            )  # fmt: skip
            image_i, video_i = image_i + n_img, video_i + n_vid
            if max_length is not None and len(rendered.input_ids) > max_length:
                raise InputError(
                    f"conversation {c} is {len(rendered.input_ids)} tokens long "
                    f"({sum(im.num_tokens for im in images[image_i - n_img : image_i])} image and "
                    f"{sum(vd.num_tokens for vd in videos[video_i - n_vid : video_i])} video tokens), over "
                    f"max_length={max_length}; lower max_pixels or the video fps/frames instead of truncating"
                )
            rows.append(rendered.input_ids)
            masks.append(rendered.loss_mask)
            texts.append(rendered.text)

        data = self._pad(rows, masks if return_loss_mask else None)
        if images:
            data["pixel_values"] = torch.cat([im.pixel_values for im in images])
            data["image_grid_thw"] = torch.tensor([im.grid_thw for im in images], dtype=torch.long)
        if videos:
            data["pixel_values_videos"] = torch.cat([vd.pixel_values for vd in videos])
            data["video_grid_thw"] = torch.tensor([vd.grid_thw for vd in videos], dtype=torch.long)
            data["second_per_grid_ts"] = torch.tensor([vd.second_per_grid_t for vd in videos], dtype=torch.float32)
        image_items = [ImageItem(c, tuple(im.grid_thw), im.num_tokens, im.resize) for c, im in zip(image_owner, images)]
        video_items = [
            VideoItem(c, tuple(vd.grid_thw), vd.num_tokens, vd.resize, vd.second_per_grid_t, list(vd.timestamps),
                      vd.sampled_fps, list(vd.frame_indices))
            for (c, _, _), vd in zip(video_parts, videos)
        ]  # fmt: skip
        return BatchFeature(data, image_items, video_items, texts)

    def _pad(self, rows: list[list[int]], masks: list[list[int]] | None) -> dict:
        """Left-pad to the longest row: generation appends on the right, so every row's last token lines up."""
        special = self.tokenizer.special
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        loss = torch.zeros((len(rows), width), dtype=torch.long)
        for b, row in enumerate(rows):
            n = len(row)
            input_ids[b, width - n :] = torch.tensor(row, dtype=torch.long)
            attention[b, width - n :] = 1
            if masks is not None:
                loss[b, width - n :] = torch.tensor(masks[b], dtype=torch.long)
        token_type = torch.zeros_like(input_ids)
        token_type[input_ids == special.image_pad] = 1
        token_type[input_ids == special.video_pad] = 2
        token_type[attention == 0] = 0
        data = {"input_ids": input_ids, "attention_mask": attention, "mm_token_type_ids": token_type}
        if masks is not None:
            data["loss_mask"] = loss
        return data


def _as_batch(messages) -> list[list[dict]]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InputError(f"expected a conversation (list of messages) or a list of conversations, got {messages!r:.80}")
    if all(isinstance(m, dict) for m in messages):
        return [list(messages)]
    if all(isinstance(c, (list, tuple)) for c in messages):
        for c, conversation in enumerate(messages):
            if not conversation:
                raise InputError(f"conversation {c} has no messages")
        return [list(c) for c in messages]
    raise InputError("messages must be a list of dicts (one conversation) or a list of lists (a batch)")


def _check_texts(conversation: list, c: int) -> None:
    """Every text is valid Unicode (no lone surrogates), named by its message and part before rendering."""
    for m, message in enumerate(conversation):
        content = message.get("content") if isinstance(message, dict) else None
        parts = [content] if isinstance(content, str) else content if isinstance(content, list) else []
        for p, part in enumerate(parts):
            text = part if isinstance(part, str) else part.get("text") if isinstance(part, dict) else None
            if isinstance(text, str):
                where = f"conversation {c} messages[{m}].content" + ("" if isinstance(content, str) else f"[{p}]")
                check_text(text, where)


def _source(part, kind: str, conversation: int):
    """The item's source from any accepted form: {kind: src}, {kind + '_url': {'url': src}}, {'url'} or {'path'}."""
    for key in (kind, f"{kind}_url", "url", "path"):
        if key in part and part[key] is not None:
            value = part[key]
            if isinstance(value, dict):
                if "url" not in value:
                    raise InputError(f"conversation {conversation} {kind}: {key} has no 'url' (keys {sorted(value)})")
                value = value["url"]
            return value
    raise InputError(f"conversation {conversation}: a {kind} part without a source (keys {sorted(part)})")


def _options(part: dict, kind: str, where: str) -> dict:
    """A media part's options (its source keys aside), aliases renamed; an unknown key is an InputError."""
    allowed, aliases = (_IMAGE_OPTIONS, {}) if kind == "image" else (_VIDEO_OPTIONS, _VIDEO_ALIASES)
    given = {k: v for k, v in part.items() if k not in _SOURCE_KEYS and k not in (kind, f"{kind}_url")}
    return _checked_options(given, allowed, aliases, where)


def _checked_options(given: dict, allowed: tuple[str, ...], aliases: dict[str, str], where: str) -> dict:
    opts: dict = {}
    for key, value in given.items():
        name = aliases.get(key, key)
        if name not in allowed:
            accepted = ", ".join(allowed + tuple(aliases))
            raise InputError(f"{where}: unknown option {key!r} = {value!r:.40}; accepted: {accepted}")
        if name in opts:
            raise InputError(f"{where}: {name!r} is given twice (as {key!r} and under its other name)")
        if value is not None:
            opts[name] = value
    return opts
