"""Grounding scenes: shapes of many kinds, colours, sizes and textures (textured ones as pasted sticker cut-outs)
on varied backgrounds. Tasks: detection of a category, referring expressions, pointing, counting, and absent
categories answered with `[]`. Coordinates are integers in the rendered frame, which is the frame the model sees
(sides on the 28 px grid, the item's pixel budget equal to its area)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from PIL import Image

from qwen25vl.data.synth.common import Example, image_part, single_turn
from qwen25vl.data.synth.draw import COLOURS, background, contrasting, frame_size, jitter, mask_box
from qwen25vl.data.synth.shapes import SHAPES, TEXTURES, fill, interior_point, shape_mask
from qwen25vl.errors import InputError
from qwen25vl.tasks.grounding import grounding_prompt

DEFAULTS = {"size": 448, "max_objects": 8, "questions": 1, "count_query": "any", "mix": "cycle", "text_first": False}
TASKS = ("detect", "refer", "point", "count", "absent")
COUNT_QUERIES = ("any", "most")  # a count question names any present category, or the most frequent one
# "cycle": `questions` records per image, the tasks in turn across images. "presence": three records per image, a
# present category (detect) and an absent one on the same picture, so only the image tells the two apart, and one
# of count / refer / point in turn.
MIXES = ("cycle", "presence")
# text_first: the question before the image in the user turn, as the official spatial-understanding cookbook asks
# (so the image tokens come after the query and can be read against it)
PRESENCE_THIRD = ("count", "refer", "point")


@dataclass(frozen=True)
class Thing:
    shape: str
    colour: str
    texture: str
    box: tuple[int, int, int, int]
    point: tuple[int, int]

    @property
    def label(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def area(self) -> int:
        return (self.box[2] - self.box[0] + 1) * (self.box[3] - self.box[1] + 1)


def _overlaps(box, boxes, margin: int = 4) -> bool:
    return any(box[0] <= b[2] + margin and b[0] <= box[2] + margin and box[1] <= b[3] + margin
               and b[1] <= box[3] + margin for b in boxes)


def _place(rng: random.Random, canvas: Image.Image, category, taken: list, texture: str) -> Thing | None:
    shape, colour = category
    w, h = canvas.size
    side = rng.randint(max(14, min(w, h) // 10), max(16, min(w, h) // 3))
    image, mask = fill(rng, jitter(rng, COLOURS[colour]), shape_mask(rng, shape, side), texture)
    mw, mh = mask.size
    if mw >= w or mh >= h:
        return None
    for _ in range(30):
        x, y = rng.randint(0, w - mw), rng.randint(0, h - mh)
        box = mask_box(mask, (x, y))
        if box is not None and not _overlaps(box, [t.box for t in taken]):
            canvas.paste(image, (x, y), mask)
            return Thing(shape, colour, texture, box, interior_point(mask, (x, y)))
    return None


def make_scene(rng: random.Random, size: tuple[int, int], max_objects: int) -> tuple[Image.Image, list[Thing]]:
    """A background and 1..max_objects objects drawn from a pool of a few categories (so some repeat)."""
    canvas, paper = background(rng, size)
    pool = [(rng.choice(SHAPES), contrasting(rng, paper)) for _ in range(rng.randint(1, 4))]
    things: list[Thing] = []
    for _ in range(rng.randint(1, max_objects)):
        texture = rng.choice(TEXTURES) if rng.random() < 0.35 else "plain"
        thing = _place(rng, canvas, rng.choice(pool), things, texture)
        if thing is not None:
            things.append(thing)
    return canvas, things


def _expressions(target: Thing, things: list[Thing]) -> list[str]:
    """Phrases that single out `target` among `things`."""
    same = [t for t in things if t.label == target.label]
    if len(same) == 1:
        return [target.label]
    others = [t for t in same if t is not target]
    out = []
    if all(target.box[2] < t.box[0] for t in others):
        out.append(f"leftmost {target.label}")
    if all(target.box[0] > t.box[2] for t in others):
        out.append(f"rightmost {target.label}")
    if all(target.box[3] < t.box[1] for t in others):
        out.append(f"topmost {target.label}")
    if all(target.box[1] > t.box[3] for t in others):
        out.append(f"bottom {target.label}")
    if all(target.area >= 2 * t.area for t in others):
        out.append(f"largest {target.label}")
    if target.texture != "plain" and all(t.texture != target.texture for t in others):
        out.append(f"{target.texture} {target.label}")
    return out


def _absent_category(rng: random.Random, things: list[Thing]) -> str:
    present = {t.label for t in things}
    if things and rng.random() < 0.5:  # a hard negative: a colour seen, on a shape not seen in it
        colour = rng.choice(sorted({t.colour for t in things}))
        candidates = [f"{colour} {s}" for s in SHAPES if f"{colour} {s}" not in present]
    else:
        candidates = [f"{c} {s}" for c in COLOURS for s in SHAPES if f"{c} {s}" not in present]
    return rng.choice(candidates)


def format_answer(entries: list[dict]) -> str:
    """A ```json list with one object per line, as the released models write it (fewer tokens than an indented
    dump; `tasks.grounding.parse_grounding` reads both)."""
    if not entries:
        return "```json\n[]\n```"
    lines = ",\n".join("\t" + json.dumps(e, ensure_ascii=False) for e in entries)
    return f"```json\n[\n{lines}\n]\n```"


def _entry(thing: Thing, label: str, point: bool = False) -> dict:
    if point:
        return {"point_2d": list(thing.point), "label": label}
    return {"bbox_2d": list(thing.box), "label": label}


def question(rng: random.Random, task: str, things: list[Thing],
             count_query: str = "any") -> tuple[str, str, dict] | None:
    """(prompt, answer, truth) for one task on a scene, or None when the scene cannot pose it. `count_query` "most"
    asks count questions about the most frequent category (ties broken at random), which spreads the counts."""
    ordered = sorted(things, key=lambda t: (t.box[1], t.box[0]))
    if task == "absent":
        query = _absent_category(rng, things)
        return grounding_prompt(query, "detect"), format_answer([]), {"query": query, "objects": []}
    if task in ("refer", "point"):
        options = [(t, e) for t in ordered for e in _expressions(t, things)]
        if not options:
            return None
        target, query = rng.choice(options)
        entries = [_entry(target, query, point=task == "point")]
        return grounding_prompt(query, task), format_answer(entries), {"query": query, "objects": entries}
    labels = sorted({t.label for t in things})
    if task == "count" and count_query == "most":
        most = max(sum(t.label == label for t in things) for label in labels)
        labels = [label for label in labels if sum(t.label == label for t in things) == most]
    query = rng.choice(labels)
    entries = [_entry(t, query) for t in ordered if t.label == query]
    answer = format_answer(entries)
    if task == "count":
        answer += f"\nTotal number: {len(entries)}."
    truth = {"query": query, "objects": entries, "count": len(entries)}
    return grounding_prompt(query, "count" if task == "count" else "detect"), answer, truth


def make_sample(rng: random.Random, media, options: dict) -> list[Example]:
    if options["count_query"] not in COUNT_QUERIES:
        raise InputError(f"synth grounding: option count_query must be one of {COUNT_QUERIES}, "
                         f"got {options['count_query']!r}")
    if options["mix"] not in MIXES:
        raise InputError(f"synth grounding: option mix must be one of {MIXES}, got {options['mix']!r}")
    size = frame_size(rng, options["size"])
    image, things = make_scene(rng, size, options["max_objects"])
    path = media.image(image)
    examples = []
    if options["mix"] == "presence":
        tasks = ["detect", "absent", PRESENCE_THIRD[media.index % len(PRESENCE_THIRD)]]
    else:
        tasks = [TASKS[(media.index + j) % len(TASKS)] for j in range(options["questions"])]
    for task in tasks:
        posed = question(rng, task, things, options["count_query"]) if things else None
        if posed is None:  # no object can be singled out (or none was placed): ask for a category instead
            task, posed = ("absent", question(rng, "absent", things)) if not things else \
                ("detect", question(rng, "detect", things))
        prompt, answer, truth = posed
        truth.update(size=list(size), task=task, present=sorted({t.label for t in things}))
        examples.append(Example(single_turn(image_part(path, size), prompt, answer,
                                            media_first=not options["text_first"]), task, truth))
    return examples
