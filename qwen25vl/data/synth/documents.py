"""Document pages: headings, paragraphs, lists, tables, formulas and captioned figures in one or two columns, drawn
with PIL on uniform paper, answered in QwenVL HTML whose `data-bbox` boxes are measured from the drawn ink (each
block is drawn alone on a scratch canvas first, so its box is exactly its pixels). Blocks are separated by at least
`doc_blocks.GAP` rows of paper; the reading order is column by column."""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from qwen25vl.data.synth.common import Example, image_part, single_turn
from qwen25vl.data.synth.doc_blocks import GAP, RENDERERS, WEIGHTS, Drawn
from qwen25vl.data.synth.draw import GRID, ink_box
from qwen25vl.tasks.documents import DOCUMENT_PROMPT, DOCUMENT_SYSTEM_PROMPT

DEFAULTS = {"size": 672, "max_blocks": 14}
COLUMN_GAP = 20
INK_TOLERANCE = 40


def page_style(rng: random.Random) -> dict:
    serif = rng.random() < 0.5
    grey = rng.randint(10, 60)
    return {"body": "serif" if serif else "sans", "bold": "serif-bold" if serif else "sans-bold",
            "italic": "serif-italic" if serif else "sans-oblique", "px": rng.randint(11, 15),
            "leading": rng.randint(3, 6), "ink": (grey, grey, grey + rng.randint(0, 40)),
            "heading_ink": rng.choice(((20, 20, 20), (20, 40, 110), (110, 20, 20))),
            "rule": (rng.randint(90, 140),) * 3, "paper": tuple(rng.randint(238, 255) for _ in range(3))}


def _boxes(scratch: Image.Image, drawn: Drawn, paper, at) -> list | None:
    """Each piece's inclusive ink box in page pixels, or None when a piece drew nothing."""
    out = []
    for piece in drawn.pieces:
        box = ink_box(scratch, paper, INK_TOLERANCE, (0, piece.top, scratch.width - 1, piece.bottom - 1))
        if box is None:
            return None
        out.append((box[0] + at[0], box[1] + at[1], box[2] + at[0], box[3] + at[1]))
    return out


def _place(rng, page, kind, x0, width, y, style, limit) -> tuple[Drawn, list] | None:
    """Draw one block of `kind` at (x0, y) if it fits above row `limit`."""
    if limit - y < 24:
        return None
    scratch = Image.new("RGB", (width, limit - y), style["paper"])
    drawn = RENDERERS[kind](rng, ImageDraw.Draw(scratch), width, style)
    if drawn is None or drawn.bottom > scratch.height:
        return None
    boxes = _boxes(scratch, drawn, style["paper"], (x0, y))
    if boxes is None:
        return None
    page.paste(scratch.crop((0, 0, width, drawn.bottom)), (x0, y))
    return drawn, boxes


def layout(rng: random.Random, size: int, max_blocks: int):
    """(page image, [(Drawn, piece boxes)] in reading order)."""
    width = max(2 * GRID, int(size * 0.75) // GRID * GRID)
    style = page_style(rng)
    page = Image.new("RGB", (width, size), style["paper"])
    margin = rng.randint(14, 28)
    placed, y_top = [], margin
    two = width >= 336 and rng.random() < 0.5
    if two:  # a title across both columns
        title = _place(rng, page, "heading", margin, width - 2 * margin, y_top, style, size - margin)
        if title:
            placed.append(title)
            y_top = title[1][-1][3] + 1 + GAP + 4
    inner = width - 2 * margin
    columns = [(margin, inner)] if not two else [(margin, (inner - COLUMN_GAP) // 2),
                                                 (margin + (inner + COLUMN_GAP) // 2, (inner - COLUMN_GAP) // 2)]
    kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
    for x0, col_width in columns:
        y, misses = y_top, 0
        while len(placed) < max_blocks and misses < 3:
            got = _place(rng, page, rng.choices(kinds, weights)[0], x0, col_width, y, style, size - margin)
            if got is None:
                misses += 1
                continue
            placed.append(got)
            y = max(box[3] for box in got[1]) + 1 + GAP + rng.randint(0, 10)
    return page, placed


def _bbox(box) -> str:
    return " ".join(str(v) for v in box)


def _truth(drawn: Drawn, boxes: list) -> list[dict]:
    """The blocks `tasks.documents.parse_qwenvl_html` reads from this block's HTML."""
    pieces = [{"type": p.type, "text": p.text, "bbox_2d": list(b), **(p.extra or {})}
              for p, b in zip(drawn.pieces, boxes)]
    if pieces[0]["type"] != "image":
        return pieces
    union = [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]
    return [{"type": "image", "text": pieces[1]["text"], "bbox_2d": union, "parts": pieces}]


def make_sample(rng: random.Random, media, options: dict) -> list[Example]:
    page, placed = layout(rng, options["size"], options["max_blocks"])
    body = "\n".join(drawn.html([_bbox(b) for b in boxes]) for drawn, boxes in placed)
    answer = f"```html\n<html><body>\n{body}\n</body></html>\n```"
    objects = [block for drawn, boxes in placed for block in _truth(drawn, boxes)]
    path = media.image(page)
    truth = {"objects": objects, "size": list(page.size), "paper": list(page.getpixel((0, 0)))}
    messages = single_turn(image_part(path, page.size), DOCUMENT_PROMPT, answer, system=DOCUMENT_SYSTEM_PROMPT)
    return [Example(messages, "parse", truth)]
