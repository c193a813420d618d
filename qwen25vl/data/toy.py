"""A small synthetic dataset on disk (random images, frame-list videos, grounding answers) for tests, examples and
smoke runs of the recipes: `write_toy_dataset(folder)` -> the JSONL path. Sizes are chosen to stay a few tokens."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

WORDS = ("red", "blue", "cat", "dog", "house", "tree", "river", "sky", "green", "small", "large", "car", "boat")


def write_image(path: Path, width: int, height: int, rng: random.Random) -> str:
    array = np.random.default_rng(rng.randrange(2**31)).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path.name


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def toy_records(folder: str | Path, count: int = 12, seed: int = 0) -> list[dict]:
    """Records (dicts) cycling through text-only, one image, two images of different sizes, a grounding answer
    and videos at 4 and 0.5 fps; media files are written under `folder`."""
    folder = Path(folder)
    rng = random.Random(seed)
    records = []
    for i in range(count):
        kind = i % 6
        question = _text(rng, rng.randint(2, 6))
        answer = _text(rng, rng.randint(1, 8))
        content: list[dict] = []
        if kind in (1, 2, 3):
            sizes = [(56, 56)] if kind != 2 else [(56, 84), (112, 56)]
            for j, (w, h) in enumerate(sizes):
                name = write_image(folder / "images" / f"{i}_{j}.png", w, h, rng)
                content.append({"type": "image", "image": f"images/{name}"})
        if kind == 3:
            answer = json.dumps([{"bbox_2d": [4, 6, 40, 50], "label": rng.choice(WORDS)}])
        if kind in (4, 5):
            frames = [f"videos/{i}/{write_image(folder / 'videos' / str(i) / f'{f}.png', 56, 56, rng)}"
                      for f in range(4)]
            content.append({"type": "video", "video": frames, "fps": 4.0 if kind == 4 else 0.5})
        content.append({"type": "text", "text": question})
        messages = [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
        if rng.random() < 0.3:
            messages += [{"role": "user", "content": _text(rng, 3)}, {"role": "assistant", "content": _text(rng, 4)}]
        records.append({"messages": messages})
    return records


def write_toy_dataset(folder: str | Path, count: int = 12, seed: int = 0, name: str = "train.jsonl") -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with path.open("w") as f:
        for record in toy_records(folder, count, seed):
            f.write(json.dumps(record) + "\n")
    return path
