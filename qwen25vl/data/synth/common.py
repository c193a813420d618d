"""What every engine shares: per-sample seeds, the media writer, record and manifest writing, the progress bar.

An engine is a module with `DEFAULTS` (its options and their default values) and
`make_sample(rng, media, options) -> list[Example]`: it draws one scene from `rng`, writes its media through
`media` and returns one or more examples (messages plus the structured ground truth).

Seeds: sample `index` of a split draws from `sample_seed(split, seed, index)`; the train split's seeds lie in
[0, 2**40) and the held-out split's in [2**40, 2**41), so the two never share a scene whatever the counts.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from qwen25vl.errors import InputError

SPLIT_BASES = {"train": 0, "heldout": 1 << 40}
MAX_SEED = 1 << 20
MAX_INDEX = 1_000_000
MIN_IMAGE_PIXELS = 56 * 56
FORMAT_VERSION = 1


def sample_seed(split: str, seed: int, index: int) -> int:
    """The seed of one sample: disjoint ranges per split, one integer per (seed, index)."""
    if split not in SPLIT_BASES:
        raise InputError(f"split must be one of {sorted(SPLIT_BASES)}, got {split!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise InputError(f"seed must be an integer in [0, {MAX_SEED}), got {seed!r}")
    if not 0 <= index < MAX_INDEX:
        raise InputError(f"sample index must be in [0, {MAX_INDEX}), got {index!r}")
    return SPLIT_BASES[split] + seed * MAX_INDEX + index


def seed_range(split: str, seed: int, count: int) -> list[int]:
    """[first, last + 1) of the sample seeds a split of `count` samples uses."""
    first = sample_seed(split, seed, 0)
    return [first, first + count]


@dataclass
class Example:
    """One training record's messages, its task name and the ground truth the answer encodes (for evaluation)."""

    messages: list[dict]
    task: str
    truth: dict = field(default_factory=dict)


class Media:
    """Writes one sample's media files under `root/media/<split>/<index // 1000>/`; returns root-relative paths."""

    def __init__(self, root: Path, split: str, index: int):
        self.root, self.split, self.index = Path(root), split, index
        self.written: list[str] = []

    def path(self, name: str) -> tuple[Path, str]:
        """(absolute path, relative path) for a file `name` of this sample; parent folders are created."""
        relative = f"media/{self.split}/{self.index // 1000:03d}/{self.index:06d}-{name}"
        full = self.root / relative
        full.parent.mkdir(parents=True, exist_ok=True)
        self.written.append(relative)
        return full, relative

    def image(self, image: Image.Image, name: str = "image.png") -> str:
        full, relative = self.path(name)
        image.convert("RGB").save(full, format="PNG")
        return relative


def image_part(path: str, size: tuple[int, int]) -> dict:
    """An image part whose pixel budget keeps the rendered size (w, h multiples of 28) as the frame the model sees."""
    width, height = size
    return {"type": "image", "image": path, "min_pixels": MIN_IMAGE_PIXELS, "max_pixels": width * height}


def video_part(path, size: tuple[int, int], fps: float) -> dict:
    """A video part sampled at `fps` whose frames keep their rendered size (w, h multiples of 28)."""
    width, height = size
    return {"type": "video", "video": path, "fps": fps, "min_pixels": width * height, "max_pixels": width * height}


def single_turn(media_part: dict, question: str, answer: str, system: str | None = None,
                media_first: bool = True) -> list[dict]:
    """[system?] user (media and question) -> assistant (answer)."""
    text = {"type": "text", "text": question}
    content = [media_part, text] if media_first else [text, media_part]
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]


def check_options(kind: str, defaults: dict, given: dict) -> dict:
    """Defaults updated by `given`; an unknown option or a value of the wrong type is an InputError naming it."""
    unknown = set(given) - set(defaults)
    if unknown:
        raise InputError(f"synth {kind}: unknown option(s) {sorted(unknown)} (known: {sorted(defaults)})")
    options = dict(defaults)
    for key, value in given.items():
        want = type(defaults[key])
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or isinstance(value, bool) != (want is bool):
            raise InputError(f"synth {kind}: option {key} must be {want.__name__}, got {value!r}")
        if want in (int, float) and value <= 0:
            raise InputError(f"synth {kind}: option {key} must be positive, got {value!r}")
        if key == "size" and (value % 28 or value < 112):
            raise InputError(f"synth {kind}: option size must be a multiple of 28 (the frame grid) and at least "
                             f"112, got {value}")
        options[key] = value
    return options


def chosen(kind: str, value: str, known: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated option's names, each one of `known` (an InputError names the bad one)."""
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise InputError(f"synth {kind}: option values {bad or [value]} are not among {list(known)}")
    return names


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_split(kind: str, engine, root: Path, split: str, count: int, seed: int, options: dict,
                progress: bool = True) -> dict:
    """Generate `count` samples of one split: `<split>.jsonl` (records), `<split>.meta.jsonl` (one line per record:
    id, task, seed, ground truth) and the media; returns the split's manifest entry."""
    from tqdm import tqdm

    from qwen25vl.data.records import parse_record

    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_INDEX:
        raise InputError(f"synth {kind}: {split} count must be an integer in [0, {MAX_INDEX}], got {count!r}")
    tasks: dict[str, int] = {}
    media_hash = hashlib.sha256()
    with (root / f"{split}.jsonl").open("w", encoding="utf-8") as rec, \
            (root / f"{split}.meta.jsonl").open("w", encoding="utf-8") as meta:
        for index in tqdm(range(count), desc=f"synth {kind} {split}", unit="sample", disable=not progress):
            number = sample_seed(split, seed, index)
            media = Media(root, split, index)
            for j, example in enumerate(engine.make_sample(random.Random(number), media, options)):
                record = {"messages": example.messages}
                parse_record(record, where=f"synth {kind} {split} sample {index}")  # the loader's own validation
                rec.write(json.dumps(record, ensure_ascii=False) + "\n")
                line = {"id": f"{split}-{index:06d}-{j}", "task": example.task, "seed": number, "truth": example.truth}
                meta.write(json.dumps(line, ensure_ascii=False) + "\n")
                tasks[example.task] = tasks.get(example.task, 0) + 1
            for relative in media.written:
                media_hash.update(relative.encode() + b"\0" + _sha256(root / relative).encode())
    return {"samples": count, "records": sum(tasks.values()), "tasks": dict(sorted(tasks.items())),
            "seed_range": seed_range(split, seed, count), "records_file": f"{split}.jsonl",
            "meta_file": f"{split}.meta.jsonl", "records_sha256": _sha256(root / f"{split}.jsonl"),
            "media_sha256": media_hash.hexdigest()}
