"""The tiny recipe's data side: engine options and seeds, dataset and tokenizer folders, splits, replayed dense
targets, the shuffled-gap packs and the answer tokens the losses single out (`recipes/tiny.py` runs the stages)."""

from __future__ import annotations

import json
from pathlib import Path

from qwen25vl.config import Qwen25VLConfig
from qwen25vl.data.packing import collate_pack
from qwen25vl.recipes.bootstrap import DenseTargets, dense_targets, scene_of

DATA_OPTIONS = {"size": 224, "max_objects": 4, "count_query": "most"}
# stage 3's scenes: new ones (engine seed 1), three records per image (a present and an absent category on the same
# picture, then count / refer / point in turn), the question before the image as the official grounding cookbook
# writes it (measured: with the image first the presence decision stayed at chance, p([]) 0.45 either way)
PRESENCE_OPTIONS = {**DATA_OPTIONS, "mix": "presence", "text_first": True}
PRESENCE_SEED = 1
REFINE_SEED = 2  # stage 4's fresh scenes
# stage 5's skills beside a grounding replay: large upright Latin words to read (the tiny tokenizer holds Latin
# merges only) and 112 px videos of one object whose span or disappearance is asked in seconds, sampled at 1, 2 or
# 4 fps (so the answer must come from the frames' absolute-time positions, not from counting frames)
SKILL_OPTIONS = {
    "ocr": {"size": 224, "tasks": "word", "rotate": False, "scripts": "latin", "min_px": 22, "max_px": 40},
    "video": {"size": 112, "tasks": "span,disappear", "sample_fps": "1,2,4", "max_objects": 1, "max_seconds": 8},
}
SKILLS_SEED = 5  # stage 5's engine seed (fresh grounding scenes too)
SKILL_COUNTS = {"grounding": 3000, "ocr": 12000, "video": 6000}  # train records (grounding: scenes, 3 records each)
GAP_RECORDS = 96  # held-out records whose packs measure the shuffled-image gap


# --- 1. data and tokenizer ---------------------------------------------------------------------------------------

def make_data(root: Path, train: int, heldout: int, seed: int = 0, options: dict | None = None,
              kind: str = "grounding") -> Path:
    from qwen25vl.data.synth import write_dataset

    if not (root / "manifest.json").is_file():
        write_dataset(kind, root, train=train, heldout=heldout, seed=seed, progress=False,
                      **(DATA_OPTIONS if options is None else options))
    return root


def make_base(data: Path, base: Path, config: Qwen25VLConfig) -> Path:
    """Tokenizer, preprocessor and generation files (the model folder without weights)."""
    from qwen25vl.data.synth.tokenizer import train_from_datasets
    from qwen25vl.testing.tokenizer import write_preprocessor_config

    if not (base / "tokenizer.json").is_file():
        train_from_datasets([data], base)
    write_preprocessor_config(base)
    (base / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    generation = {"bos_token_id": config.bos_token_id, "pad_token_id": config.bos_token_id,
                  "eos_token_id": [config.eos_token_id, config.bos_token_id], "do_sample": False}
    (base / "generation_config.json").write_text(json.dumps(generation, indent=2))
    return base


def data_options(data: Path) -> dict:
    """The engine options the dataset was written with (the replayed scenes need them)."""
    return json.loads((data / "manifest.json").read_text())["options"]


def read_split(data: Path, split: str):
    from qwen25vl.data.records import read_records

    records = list(read_records(data / f"{split}.jsonl"))
    metas = [json.loads(line) for line in (data / f"{split}.meta.jsonl").read_text().splitlines()]
    return records, metas


class Targets:
    """Dense targets per sample seed, replayed from the engine once and kept."""

    def __init__(self, options: dict):
        self.options, self.cache = options, {}

    def __call__(self, seed: int) -> DenseTargets:
        if seed not in self.cache:
            image, things = scene_of(seed, self.options)
            self.cache[seed] = dense_targets(things, image.size)
        return self.cache[seed]


_IMAGE_PATHS: dict = {}


def _image_path(data: Path, meta: dict) -> str:
    """The image of a meta line (the record with the same id in the same folder)."""
    key = str(data)
    paths = _IMAGE_PATHS.get(key)
    if paths is None:
        paths = {}
        for split in ("train", "heldout"):
            records, metas = read_split(data, split)
            for r, m in zip(records, metas):
                image = next((part["image"] for part in r.messages[0]["content"] if "image" in part), None)
                if image is not None:  # the question may come first (text_first); a clip has no image
                    paths[m["id"]] = image
        _IMAGE_PATHS[key] = paths
    if meta["id"] not in paths:
        raise KeyError(f"{data}: no record with id {meta['id']!r}")
    return paths[meta["id"]]


def gap_packs(encoder, records, metas, count: int, per_pack: int = 8) -> list:
    """Packs of held-out samples sharing one image grid (so images can be rolled across a pack)."""
    by_size: dict = {}
    for r, m in list(zip(records, metas))[:count]:
        by_size.setdefault(tuple(m["truth"]["size"]), []).append(r)
    packs = []
    for group in by_size.values():
        for i in range(0, len(group) - 1, per_pack):
            chunk = group[i:i + per_pack]
            if len(chunk) > 1:
                packs.append(collate_pack([encoder(r) for r in chunk]))
    return packs


# byte-level spellings of the answer pieces where a grounding answer decides
EMPTY, OPEN, CLOSE, ENTRY = "[]\u010a", "[\u010a", "]\u010a", "\u0109"  # '[]\\n', '[\\n', ']\\n', '\\t'


def _single_tokens(base: Path) -> dict[str, int]:
    """Which of those pieces the tokenizer in `base` holds as one token, and their ids."""
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(base / "tokenizer.json")).get_vocab()
    return {t: vocab[t] for t in (EMPTY, OPEN, CLOSE, ENTRY) if t in vocab}


def decision_token_ids(base: Path) -> tuple[int, ...]:
    """The tokens where a grounding answer decides: an empty list or not ('[]\\n' vs '[\\n'), one more entry or
    the end ('\\t' vs ']\\n'). Pieces the tokenizer does not hold as one token are left out."""
    return tuple(sorted(_single_tokens(base).values()))


def count_probe_ids(base: Path) -> tuple[tuple[int, ...], int]:
    """(the tokens that open a JSON list answer, the tab that opens each entry) for the entry-count probe."""
    ids = _single_tokens(base)
    missing = [t for t in (EMPTY, OPEN, ENTRY) if t not in ids]
    if missing:
        raise ValueError(f"the entry-count probe needs single tokens for {missing} in {base / 'tokenizer.json'}")
    return (ids[EMPTY], ids[OPEN]), ids[ENTRY]
