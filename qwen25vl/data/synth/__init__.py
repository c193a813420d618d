"""Synthetic data engines: grounding, OCR, charts, documents, video and agent scenes with exact answers, written
in the training records format (`qwen25vl.data.records`), deterministic by seed (see `docs/synth.md`).

    write_dataset("grounding", "data/grounding", train=1000, heldout=100, seed=0, size=448)

writes `train.jsonl` / `heldout.jsonl` (records), `*.meta.jsonl` (per record: task and ground truth), the media
under `media/` and `manifest.json`. The tokenizer of the tiny model is trained on the engines' text
(`qwen25vl.data.synth.tokenizer`).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from qwen25vl.data.synth.common import FORMAT_VERSION, check_options, write_split
from qwen25vl.errors import InputError

ENGINES = ("grounding", "ocr", "charts", "documents", "video", "agent")


def engine(kind: str):
    """The engine module of `kind`."""
    if kind not in ENGINES:
        raise InputError(f"synthetic data kind must be one of {', '.join(ENGINES)}, got {kind!r}")
    return importlib.import_module(f"qwen25vl.data.synth.{kind}")


def write_dataset(kind: str, out: str | Path, *, train: int = 0, heldout: int = 0, seed: int = 0,
                  progress: bool = True, **options) -> dict:
    """Write both splits of one engine's dataset under `out` and its `manifest.json`; returns the manifest."""
    module = engine(kind)
    options = check_options(kind, module.DEFAULTS, options)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, count in (("train", train), ("heldout", heldout)):
        if count:
            splits[split] = write_split(kind, module, root, split, count, seed, options, progress)
    manifest = {"engine": kind, "format_version": FORMAT_VERSION, "seed": seed, "options": options,
                "splits": splits}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest
