"""Synthetic records with planted defects, for the pipeline's tests and benchmark.

`make_records(n, folder, seed)` writes `n // 4` small distinct PNGs under `folder/images` and returns clean
records (grounding, QA with JSON, documents in QwenVL HTML, tool calls), each with distinct random words so
that clean records are not near-duplicates of each other. `plant(record, defect, ...)` returns a copy with one
defect from `DEFECTS`, which the rule operators named in `EXPECTED_REASON` must catch.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

WORDS = ("apple river stone cloud green table window orange silver bridge garden paper mountain violet pencil "
         "candle forest yellow rocket marble lantern harbor meadow copper falcon velvet island pepper").split()
IMAGE_SIZE = (112, 84)  # width, height: small enough to hash and read fast, resized to 112 x 84 by smart_resize

DEFECTS = ("repetition", "unbalanced_json", "broken_html", "unterminated_tool_call", "box_outside",
           "image_token", "over_long", "empty_answer", "code_switch", "near_dup", "media_dup")
EXPECTED_REASON = {
    "repetition": "repetition:high", "unbalanced_json": "malformed_answer:unbalanced_json",
    "broken_html": "malformed_answer:broken_html", "unterminated_tool_call": "malformed_answer:unterminated_tool_call",
    "box_outside": "outside_frame:high", "image_token": "image_token_mismatch", "over_long": "too_long:high",
    "empty_answer": "empty_answer", "code_switch": "code_switch:high", "near_dup": "near_duplicate",
    "media_dup": "duplicate_media_hash"}


def write_images(folder: Path, count: int, seed: int = 0) -> list[str]:
    """`count` distinct small PNGs; returns their paths relative to `folder`'s parent."""
    from PIL import Image

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        image = Image.new("RGB", IMAGE_SIZE, tuple(rng.randrange(256) for _ in range(3)))
        image.putpixel((i % IMAGE_SIZE[0], (i // IMAGE_SIZE[0]) % IMAGE_SIZE[1]), (i % 256, i // 256 % 256, 7))
        image.save(folder / f"{i:06d}.png")
        names.append(f"{folder.name}/{i:06d}.png")
    return names


def _phrase(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) + str(rng.randrange(1000)) for _ in range(n))


def clean_record(i: int, image: str, rng: random.Random) -> dict:
    """One clean record of four kinds, chosen by `i`."""
    w, h = IMAGE_SIZE
    kind = i % 4
    if kind == 0:
        x1, y1 = rng.randrange(w // 2), rng.randrange(h // 2)
        answer = json.dumps([{"bbox_2d": [x1, y1, x1 + w // 4, y1 + h // 4], "label": _phrase(rng, 1)}])
        question = f"Outline the {_phrase(rng, 2)} in the picture."
    elif kind == 1:
        answer = f"```json\n{json.dumps({'name': _phrase(rng, 2), 'count': rng.randrange(9)})}\n```"
        question = f"Give the {_phrase(rng, 3)} as JSON."
    elif kind == 2:
        answer = (f'<html><body><h1 data-bbox="1 1 50 10">{_phrase(rng, 2)}</h1>'
                  f'<p data-bbox="1 12 100 40">{_phrase(rng, 6)}</p></body></html>')
        question = f"Parse the {_phrase(rng, 2)} document into QwenVL HTML."
    else:
        call = {"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [rng.randrange(w),
                                                                                             rng.randrange(h)]}}
        answer = f"I will press {_phrase(rng, 2)}.\n<tool_call>\n{json.dumps(call)}\n</tool_call>"
        question = f"Open the {_phrase(rng, 2)} menu."
    return {"messages": [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]},
        {"role": "assistant", "content": answer}]}


def _set_answer(record: dict, text: str) -> dict:
    record["messages"][-1]["content"] = text
    return record


def plant(record: dict, defect: str, rng: random.Random, earlier: dict | None = None) -> dict:
    """A copy of `record` with `defect` (near_dup and media_dup copy from `earlier`)."""
    r = copy.deepcopy(record)
    answer = r["messages"][-1]["content"]
    if defect == "repetition":
        return _set_answer(r, "the same words again " * 30)
    if defect == "unbalanced_json":
        return _set_answer(r, '```json\n{"name": "x", "items": [1, 2, 3\n```')
    if defect == "broken_html":
        return _set_answer(r, '<html><body><p data-bbox="1 1 20 20">cut off here')
    if defect == "unterminated_tool_call":
        return _set_answer(r, '<tool_call>\n{"name": "computer_use", "arguments": {"action": "left_click"')
    if defect == "box_outside":
        return _set_answer(r, json.dumps([{"bbox_2d": [10, 10, IMAGE_SIZE[0] + 60, 40], "label": "thing"}]))
    if defect == "image_token":
        r["messages"][0]["content"][1]["text"] += " <|image_pad|>"
        return r
    if defect == "over_long":
        return _set_answer(r, answer + " " + _phrase(rng, 900))
    if defect == "empty_answer":
        return _set_answer(r, "   \n ")
    if defect == "code_switch":
        return _set_answer(r, "答案是这个物体位于图片的左上角区域并且颜色很鲜艳 " + answer[:10])
    if defect == "near_dup":  # the earlier record's text, one word changed, with this record's own image
        image = r["messages"][0]["content"][0]["image"]
        r = copy.deepcopy(earlier)
        r["messages"][0]["content"][0]["image"] = image
        words = r["messages"][-1]["content"].split(" ")
        words[-1] = words[-1] + "x"
        return _set_answer(r, " ".join(words))
    if defect == "media_dup":
        r["messages"][0]["content"][0]["image"] = earlier["messages"][0]["content"][0]["image"]
        return r
    raise ValueError(f"unknown defect {defect!r}; known: {DEFECTS}")


def make_records(n: int, folder: Path, seed: int = 0, images: int | None = None) -> list[dict]:
    """`n` clean records whose images live under `folder/images` (written here, `images` of them, default n)."""
    rng = random.Random(seed)
    names = write_images(Path(folder) / "images", images or n, seed)
    return [clean_record(i, names[i % len(names)], rng) for i in range(n)]
