"""OCR scenes: single words and lines in the DejaVu fonts at several sizes, colours and rotations on varied
backgrounds, and full pages of lines read top to bottom. The answer is the text, one line per rendered line
(`tasks.ocr.parse_ocr` reads it back); the truth also keeps each line's ink box."""

from __future__ import annotations

import random

from PIL import Image

from qwen25vl.data.synth.common import Example, chosen, image_part, single_turn
from qwen25vl.data.synth.draw import (COLOURS, FONT_FILES, GRID, background, contrasting, font, jitter,
                                      mask_box, text_mask)
from qwen25vl.data.synth.words import SCRIPTS, phrase, word
from qwen25vl.tasks.ocr import OCR_PROMPT

DEFAULTS = {"size": 448, "max_lines": 10, "tasks": "word,line,page", "rotate": True, "scripts": "all",
            "min_px": 14, "max_px": 44}
TASKS = ("word", "line", "page")
_MARGIN = 8


def _up(n: int) -> int:
    return max(2 * GRID, -(-n // GRID) * GRID)


def _mask(text: str, font_name: str, px: int, angle: float) -> Image.Image:
    mask = text_mask(text, font(font_name, px))
    return mask.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True) if angle else mask


def _paper(rng: random.Random, size) -> tuple[Image.Image, tuple]:
    """A background and the ink colour that reads on it (dark paper with light ink one time in five)."""
    if rng.random() < 0.2:
        paper = tuple(rng.randint(10, 70) for _ in range(3))
        return Image.new("RGB", size, paper), jitter(rng, COLOURS[rng.choice(("white", "yellow", "cyan"))])
    image, colours = background(rng, size)
    return image, jitter(rng, COLOURS[contrasting(rng, colours, min_distance=160)], 8)


def _single(rng: random.Random, text: str, size_cap: int, rotate: bool, px_range=(14, 44)):
    """One word or line on a canvas just large enough (sides on the grid, at most `size_cap`)."""
    font_name = rng.choice(tuple(FONT_FILES))
    angle = rng.choice((0, 0, rng.uniform(-25, 25), 90, -90)) if rotate else rng.uniform(-4, 4)
    px = rng.randint(*px_range)
    mask = _mask(text, font_name, px, angle)
    while max(mask.size) + 2 * _MARGIN > size_cap:  # smaller type first, then fewer words
        if px > 12:
            px = int(px * 0.8)
        elif " " in text:
            text = text.rsplit(" ", 1)[0]
        else:
            text = text[:-1]
        mask = _mask(text, font_name, px, angle)
    size = (min(size_cap, _up(mask.width + 2 * _MARGIN + rng.randint(0, 40))),
            min(size_cap, _up(mask.height + 2 * _MARGIN + rng.randint(0, 40))))
    canvas, ink = _paper(rng, size)
    x = rng.randint(_MARGIN // 2, max(_MARGIN // 2, size[0] - mask.width - _MARGIN // 2))
    y = rng.randint(_MARGIN // 2, max(_MARGIN // 2, size[1] - mask.height - _MARGIN // 2))
    canvas.paste(Image.new("RGB", mask.size, ink), (x, y), mask)
    return canvas, [(text, mask_box(mask, (x, y)))]


def _fit(rng: random.Random, font_obj, width: int, script: str) -> str:
    """A line of words of one script as long as fits `width` pixels."""
    words = phrase(rng, 2, 9, script).split()
    while len(words) > 1 and font_obj.getlength(" ".join(words)) > width:
        words.pop()
    return " ".join(words)


def _page(rng: random.Random, size_cap: int, max_lines: int):
    """Lines stacked top to bottom at varied indents and sizes, in one font."""
    font_name = rng.choice(tuple(FONT_FILES))
    width = size_cap
    lines, y = [], _MARGIN + rng.randint(0, 20)
    script = rng.choice(("latin", "latin", "accented", "greek", "cyrillic"))
    while len(lines) < max_lines:
        px = rng.randint(12, 24) if lines else rng.randint(18, 32)
        f = font(font_name, px)
        indent = rng.randint(_MARGIN, width // 4)
        text = _fit(rng, f, width - indent - _MARGIN, script)
        mask = text_mask(text, f)
        if y + mask.height + _MARGIN > size_cap or f.getlength(text) > width - indent - _MARGIN:
            break
        lines.append((text, mask, (indent, y)))
        y += mask.height + rng.randint(4, 16)
    height = min(size_cap, _up(y + _MARGIN))
    canvas, ink = _paper(rng, (width, height))
    draw_boxes = []
    for text, mask, at in lines:
        canvas.paste(Image.new("RGB", mask.size, ink), at, mask)
        draw_boxes.append((text, mask_box(mask, at)))
    return canvas, draw_boxes


def make_sample(rng: random.Random, media, options: dict) -> list[Example]:
    """Options beyond the defaults narrow the mix (the tiny model's recipe reads large upright Latin words):
    `tasks` (comma list of word, line, page; sample i takes the (i mod n)-th), `rotate` (words may turn),
    `scripts` ('all' or a comma list of latin, accented, greek, cyrillic), `min_px` / `max_px` (type size)."""
    tasks = chosen("ocr", options["tasks"], TASKS)
    task = tasks[media.index % len(tasks)]
    scripts = None if options["scripts"] == "all" else chosen("ocr", options["scripts"], tuple(SCRIPTS))
    px_range = (min(options["min_px"], options["max_px"]), options["max_px"])
    lines = []
    if task == "page":
        image, lines = _page(rng, options["size"], options["max_lines"])
    if not lines:
        script = None if scripts is None else rng.choice(scripts) if len(scripts) > 1 else scripts[0]
        text = word(rng, script) if task == "word" else phrase(rng, 2, 6, script)
        image, lines = _single(rng, text, options["size"], rotate=task == "word" and options["rotate"],
                               px_range=px_range)
    lines = [(t, b) for t, b in lines if b is not None]
    path = media.image(image)
    answer = "\n".join(t for t, _ in lines)
    truth = {"lines": [t for t, _ in lines], "objects": [{"text": t, "bbox_2d": list(b)} for t, b in lines],
             "size": list(image.size)}
    return [Example(single_turn(image_part(path, image.size), OCR_PROMPT, answer), task, truth)]



