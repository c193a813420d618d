"""Checks of a written dataset through the project's own loaders: each record through the processor (image and
video token counts equal to the items' grids, each item's resized frame equal to the rendered one) and through the
training encoder (coordinates inside the frame). `verify_split` returns the problems found, one line each."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from qwen25vl.data.records import read_records


def load_split(root: str | Path, split: str = "train") -> list[tuple]:
    """[(Record, meta line)] of one split, in order."""
    root = Path(root)
    records = list(read_records(root / f"{split}.jsonl"))
    with (root / f"{split}.meta.jsonl").open(encoding="utf-8") as f:
        metas = [json.loads(line) for line in f if line.strip()]
    if len(records) != len(metas):
        raise ValueError(f"{root}: {len(records)} records but {len(metas)} meta lines in split {split}")
    return list(zip(records, metas))


def absolute_messages(record) -> list[dict]:
    """The record's messages with media paths made absolute (the processor reads paths as given)."""
    messages = copy.deepcopy(record.messages)
    for message in messages:
        for part in message["content"] if isinstance(message.get("content"), list) else ():
            kind = part.get("type")
            if kind in ("image", "video"):
                source = part[kind]
                part[kind] = [str(record.root / s) for s in source] if isinstance(source, list) \
                    else str(record.root / source)
    return messages


def _media_parts(messages) -> list[dict]:
    return [p for m in messages if isinstance(m.get("content"), list) for p in m["content"]
            if p.get("type") in ("image", "video")]


def check_record(record, meta: dict, processor) -> list[str]:
    """Problems of one record: token counts, frames, coordinates."""
    where = f"{record.where} ({meta['id']})"
    messages = absolute_messages(record)
    features = processor(messages, add_generation_prompt=False)
    ids = features["input_ids"][0]
    problems = []
    for kind, items in (("image", features.images), ("video", features.videos)):
        pad = processor.tokenizer.token_to_id(f"<|{kind}_pad|>")
        found = int((ids == pad).sum())
        if found != sum(item.num_tokens for item in items):
            problems.append(f"{where}: {found} {kind} tokens, items need {[i.num_tokens for i in items]}")
        for item in items:
            t, h, w = item.grid_thw
            if item.num_tokens != t * h * w // 4:
                problems.append(f"{where}: {kind} grid {item.grid_thw} gives {item.num_tokens} tokens")
            if tuple(item.resize.resized_size) != tuple(item.resize.original_size):
                problems.append(f"{where}: {kind} resized from {item.resize.original_size} to "
                                f"{item.resize.resized_size}: the rendered frame is not the model's")
    size = meta["truth"].get("size")
    if size and features.images and tuple(features.images[0].resize.resized_size) != tuple(size):
        problems.append(f"{where}: the model sees {features.images[0].resize.resized_size}, truth says {size}")
    if size:
        problems += [f"{where}: {p}" for p in coordinates_outside(meta["truth"], size)]
    if len(_media_parts(messages)) != len(features.images) + len(features.videos):
        problems.append(f"{where}: media parts and processed items differ in number")
    return problems


def coordinates_outside(truth: dict, size) -> list[str]:
    """Boxes and points of the truth that are not inside a (width, height) frame (inclusive pixel coordinates)."""
    width, height = size
    out = []
    for obj in truth.get("objects", []) + truth.get("targets", []):
        box = obj.get("bbox_2d") or obj.get("bbox")
        if box and not (0 <= box[0] <= box[2] < width and 0 <= box[1] <= box[3] < height):
            out.append(f"box {box} outside {width}x{height}")
        point = obj.get("point_2d") or obj.get("coordinate")
        if point and not (0 <= point[0] < width and 0 <= point[1] < height):
            out.append(f"point {point} outside {width}x{height}")
    return out


def verify_split(root: str | Path, processor, split: str = "train", encoder=None) -> list[str]:
    """Every problem of a split's records; with `encoder` (a `qwen25vl.data.encoding.Encoder`) each record is also
    encoded as training does (coordinates outside the original image make it raise)."""
    from qwen25vl.errors import InputError

    problems = []
    for record, meta in load_split(root, split):
        problems += check_record(record, meta, processor)
        if encoder is not None:
            try:
                encoder(record)
            except InputError as err:
                problems.append(f"{record.where}: the training encoder refused it: {err}")
    return problems


def file_digests(root: str | Path) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path (two runs with one seed must give equal maps)."""
    import hashlib

    root = Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def tiny_processor(folder: str | Path):
    """(Processor, Encoder) over the tiny tokenizer layout and the official preprocessor settings, in `folder`:
    enough to check records without a model."""
    from qwen25vl.config import Qwen25VLConfig
    from qwen25vl.data.encoding import Encoder
    from qwen25vl.processing.image import ImageProcessorConfig
    from qwen25vl.processing.processor import Processor
    from qwen25vl.processing.tokenizer import Tokenizer
    from qwen25vl.testing.tokenizer import write_preprocessor_config, write_tiny_tokenizer

    write_tiny_tokenizer(folder)
    write_preprocessor_config(folder)
    processor = Processor.from_pretrained(folder)
    encoder = Encoder(Tokenizer.from_pretrained(folder), Qwen25VLConfig.preset("tiny"),
                      ImageProcessorConfig.from_pretrained(folder))
    return processor, encoder
