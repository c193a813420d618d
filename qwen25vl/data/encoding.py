"""A record -> token ids, next-token labels, vision inputs and its own M-RoPE ids (a `Sample`).

Positions are computed here, once per sample in the data loader, by `qwen25vl.positions.mrope_position_ids` on the
sample alone; packing only concatenates them, so every packed sample keeps exactly its own ids (restarting at 0).
Labels are shifted inside the sample (`labels[i]` = the token at i + 1 where the loss mask trains on it, else
-100), so the last token of one sample never learns to predict the first of the next in a pack.

Grounding: answers in records hold absolute pixel coordinates of the original image (`"bbox_2d": [x1, y1, x2, y2]`,
`"point_2d": [x, y]`). The model answers in the frame it sees, so when the item's pixel budget resizes the image the
coordinates of answers after it are rescaled to the resized frame (the report's convention; rounded, clamped like
the official `process_bbox`). A coordinate outside the original image makes the record bad.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from qwen25vl.data.records import Record
from qwen25vl.errors import InputError
from qwen25vl.positions import mrope_position_ids

IGNORE = -100
_COORDS = re.compile(r'("(bbox_2d|point_2d)"\s*:\s*\[)([^\[\]]*)(\])')
_VIDEO_ARGS = {"fps": "fps", "min_pixels": "min_pixels", "max_pixels": "max_pixels", "total_pixels": "total_pixels",
               "min_frames": "min_frames", "max_frames": "max_frames", "video_start": "start", "video_end": "end"}


@dataclass
class Sample:
    """One encoded record. Shapes: input_ids, labels (T,); position_ids (3, T); pixel_values (N, 1176) with
    image_grid_thw (K, 3); pixel_values_videos with video_grid_thw (V, 3) and second_per_grid_ts (V,)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None
    second_per_grid_ts: torch.Tensor | None = None
    where: str = "sample"
    vision_end: int = 0  # tokens up to and including the last <|vision_end|>: a cut must not fall before it

    @property
    def length(self) -> int:
        return int(self.input_ids.numel())

    @property
    def num_targets(self) -> int:
        return int((self.labels != IGNORE).sum())


class Encoder:
    """Records -> Samples with one tokenizer, model config (token ids, merge size, tokens per second) and the
    processor's image settings; `min_pixels` / `max_pixels` / `video_options` are defaults a record part overrides."""

    def __init__(self, tokenizer, config, image_config=None, *, min_pixels: int | None = None,
                 max_pixels: int | None = None, video_options: dict | None = None):
        from qwen25vl.processing.image import ImageProcessorConfig

        self.tokenizer = tokenizer
        self.config = config
        self.image_config = image_config or ImageProcessorConfig()
        self.defaults = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
        self.video_options = dict(video_options or {})

    @classmethod
    def from_pretrained(cls, folder: str | Path, config=None, **kwargs) -> Encoder:
        from qwen25vl.config import Qwen25VLConfig
        from qwen25vl.processing.image import ImageProcessorConfig
        from qwen25vl.processing.tokenizer import Tokenizer

        config = config or Qwen25VLConfig.from_pretrained(folder)
        return cls(Tokenizer.from_pretrained(folder), config, ImageProcessorConfig.from_pretrained(folder), **kwargs)

    def __call__(self, record: Record) -> Sample:
        messages = record.messages + (record.chosen or [])
        return self.encode_messages(messages, record.root, record.where)

    def encode_messages(self, messages: list[dict], root: Path | str = ".", where: str = "record") -> Sample:
        from qwen25vl.processing.chat_template import render

        messages = copy.deepcopy(messages)
        images, videos = self._process_media(messages, Path(root), where)
        _rescale_answers(messages, [im.resize for im in images], where)
        try:
            rendered = render(messages, tokenizer=self.tokenizer,
                              image_token_counts=[im.num_tokens for im in images] or None,
                              video_token_counts=[vd.num_tokens for vd in videos] or None)
        except InputError as err:
            raise InputError(f"{where}: {err}") from None
        ids = torch.tensor(rendered.input_ids, dtype=torch.long)
        mask = torch.tensor(rendered.loss_mask, dtype=torch.bool)
        labels = torch.full_like(ids, IGNORE)
        labels[:-1] = torch.where(mask[1:], ids[1:], IGNORE)  # position i predicts token i + 1
        if not bool((labels != IGNORE).any()):
            raise InputError(f"{where}: no supervised tokens (empty answers)")
        sample = Sample(ids, labels, torch.zeros(3, ids.numel(), dtype=torch.long), where=where)
        if images:
            sample.pixel_values = torch.cat([im.pixel_values for im in images])
            sample.image_grid_thw = torch.tensor([im.grid_thw for im in images], dtype=torch.long)
        if videos:
            sample.pixel_values_videos = torch.cat([vd.pixel_values for vd in videos])
            sample.video_grid_thw = torch.tensor([vd.grid_thw for vd in videos], dtype=torch.long)
            sample.second_per_grid_ts = torch.tensor([vd.second_per_grid_t for vd in videos], dtype=torch.float32)
        sample.position_ids = self.position_ids(sample)
        pads = torch.nonzero((ids == self.config.image_token_id) | (ids == self.config.video_token_id))
        sample.vision_end = int(pads[-1]) + 2 if pads.numel() else 0
        return sample

    def position_ids(self, sample: Sample) -> torch.Tensor:
        """(3, T) M-RoPE ids of the sample on its own (the original release's rule)."""
        cfg = self.config
        pos, _ = mrope_position_ids(
            sample.input_ids[None], image_grid_thw=sample.image_grid_thw, video_grid_thw=sample.video_grid_thw,
            second_per_grid_ts=sample.second_per_grid_ts, image_token_id=cfg.image_token_id,
            video_token_id=cfg.video_token_id, vision_start_token_id=cfg.vision_start_token_id,
            spatial_merge_size=cfg.vision.spatial_merge_size, tokens_per_second=cfg.vision.tokens_per_second)
        return pos[:, 0]  # (3, 1, T) -> (3, T)

    def _process_media(self, messages, root: Path, where: str):
        from qwen25vl.processing.image import process_image
        from qwen25vl.processing.video import process_video

        images, videos = [], []
        for m, message in enumerate(messages):
            if not isinstance(message.get("content"), list):
                continue
            for p, part in enumerate(message["content"]):
                kind = part.get("type")
                if kind not in ("image", "video"):
                    continue
                source = _resolve(part[kind], root)
                try:
                    if kind == "image":
                        limits = {**self.defaults, **{k: part[k] for k in ("min_pixels", "max_pixels") if k in part}}
                        images.append(process_image(source, config=self.image_config, **limits))
                    else:
                        options = {**self.defaults, **self.video_options}
                        options.update({_VIDEO_ARGS[k]: v for k, v in part.items() if k in _VIDEO_ARGS})
                        videos.append(process_video(source, config=self.image_config, **options))
                except (InputError, OSError) as err:
                    raise InputError(f"{where}: messages[{m}].content[{p}] ({kind}): {err}") from None
        return images, videos


def _resolve(source, root: Path):
    if isinstance(source, list):
        return [_resolve(s, root) for s in source]
    if source.startswith(("http://", "https://", "data:")) or Path(source).is_absolute():
        return source
    return str(root / source)


def _rescale_answers(messages, resizes, where: str) -> None:
    """Rewrite coordinates in assistant text to the frame of the most recent image before it, in place."""
    seen = 0
    for m, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, list):
            if message["role"] != "assistant":
                seen += sum(1 for part in content if part.get("type") == "image")
                continue
            for part in content:
                if part.get("type") == "text" and seen:
                    part["text"] = rescale_coordinates(part["text"], resizes[seen - 1], f"{where}: messages[{m}]")
        elif message["role"] == "assistant" and isinstance(content, str) and seen:
            message["content"] = rescale_coordinates(content, resizes[seen - 1], f"{where}: messages[{m}]")


def rescale_coordinates(text: str, resize, where: str = "answer") -> str:
    """`bbox_2d` / `point_2d` values of `text` from the original image's pixels to the resized image's."""
    from qwen25vl.tasks.coords import Frame

    frame = Frame(resize.original_size, resize.resized_size)
    width, height = frame.original_size

    def one(match: re.Match) -> str:
        kind = match.group(2)
        try:
            values = [float(v) for v in match.group(3).split(",")]
        except ValueError:
            raise InputError(f"{where}: {kind} holds non-numbers: [{match.group(3)}]") from None
        if len(values) != (4 if kind == "bbox_2d" else 2):
            raise InputError(f"{where}: {kind} needs {4 if kind == 'bbox_2d' else 2} numbers, got {values}")
        xs, ys = values[0::2], values[1::2]
        if min(xs + ys) < 0 or max(xs) > width or max(ys) > height:
            raise InputError(f"{where}: {kind} {values} lies outside the {width}x{height} image")
        if kind == "bbox_2d":
            new = frame.box_to_resized(values, integer=True)
        else:
            x, y = frame.to_resized(*values)
            w, h = frame.resized_size
            new = (min(max(round(x), 0), w - 1), min(max(round(y), 0), h - 1))
        return match.group(1) + ", ".join(str(v) for v in new) + match.group(4)

    return _COORDS.sub(one, text)
