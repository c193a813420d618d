"""The block renderers of the documents engine. Each draws one block at the top of a scratch canvas of its column's
width and returns a `Drawn`: the pieces it drew (each with the rows it occupies, so its ink box can be measured) and
the HTML of the block given the pieces' boxes. A renderer returns None when the block would not fit."""

from __future__ import annotations

import html
import random
from dataclasses import dataclass
from typing import Callable

from PIL import ImageDraw

from qwen25vl.data.synth.draw import COLOURS, font
from qwen25vl.data.synth.words import number_token, phrase, sentence, word

GAP = 12  # rows of paper between pieces: boxes measured from ink never touch a neighbour


@dataclass
class Piece:
    type: str
    text: str
    top: int
    bottom: int  # exclusive
    extra: dict | None = None  # table rows, the figure's alt text


@dataclass
class Drawn:
    pieces: list[Piece]
    html: Callable[[list[str]], str]  # the pieces' data-bbox strings -> the block's HTML
    bottom: int


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def wrap(text: str, font_obj, width: int) -> list[str]:
    lines, line = [], ""
    for w in text.split():
        candidate = f"{line} {w}".strip()
        if line and font_obj.getlength(candidate) > width:
            lines.append(line)
            line = w
        else:
            line = candidate
    return lines + ([line] if line else [])


def _text_lines(draw, lines, font_obj, x: int, y: int, ink, leading: int) -> int:
    """Draw lines from row `y` down; returns the row below the last line's descenders."""
    ascent, descent = font_obj.getmetrics()
    step = ascent + descent + leading
    for i, line in enumerate(lines):
        draw.text((x, y + i * step), line, font=font_obj, fill=ink)
    return y + len(lines) * step - leading


def heading(rng: random.Random, draw: ImageDraw.ImageDraw, width: int, style: dict) -> Drawn | None:
    level = rng.choice((1, 2, 2, 3))
    f = font(style["bold"], style["px"] + (10, 6, 3)[level - 1])
    text = phrase(rng, 2, 5, "latin").title()
    lines = wrap(text, f, width)
    bottom = _text_lines(draw, lines, f, 0, 0, style["heading_ink"], 4)
    tag = f"h{level}"
    return Drawn([Piece("heading", " ".join(lines), 0, bottom)],
                 lambda b: f'<{tag} data-bbox="{b[0]}">{_e(" ".join(lines))}</{tag}>', bottom)


def paragraph(rng: random.Random, draw, width: int, style: dict) -> Drawn | None:
    f = font(style["body"], style["px"])
    text = " ".join(sentence(rng, 4, 12) for _ in range(rng.randint(1, 4)))
    lines = wrap(text, f, width)
    bottom = _text_lines(draw, lines, f, 0, 0, style["ink"], style["leading"])
    joined = " ".join(lines)
    return Drawn([Piece("paragraph", joined, 0, bottom)], lambda b: f'<p data-bbox="{b[0]}">{_e(joined)}</p>', bottom)


def bullet_list(rng: random.Random, draw, width: int, style: dict) -> Drawn | None:
    f = font(style["body"], style["px"])
    ordered = rng.random() < 0.4
    pieces, y, items = [], 0, []
    for i in range(rng.randint(2, 4)):
        marker = f"{i + 1}." if ordered else "•"
        indent = int(f.getlength("00. ")) + 4
        lines = wrap(phrase(rng, 2, 8, "latin"), f, width - indent)
        draw.text((4, y), marker, font=f, fill=style["ink"])
        bottom = _text_lines(draw, lines, f, indent, y, style["ink"], style["leading"])
        items.append(" ".join(lines))
        pieces.append(Piece("list_item", items[-1], y, bottom))
        y = bottom + GAP
    tag = "ol" if ordered else "ul"

    def to_html(boxes):
        body = "\n".join(f'<li data-bbox="{b}">{_e(t)}</li>' for b, t in zip(boxes, items))
        return f"<{tag}>\n{body}\n</{tag}>"

    return Drawn(pieces, to_html, y - GAP)


def _cell_text(rng: random.Random, column: int) -> str:
    return word(rng, "latin") if column == 0 or rng.random() < 0.3 else number_token(rng)


def table(rng: random.Random, draw, width: int, style: dict) -> Drawn | None:
    f, fb = font(style["body"], style["px"] - 1), font(style["bold"], style["px"] - 1)
    cols = rng.randint(2, 4)
    rows = [[word(rng, "latin").capitalize() for _ in range(cols)]]
    rows += [[_cell_text(rng, c) for c in range(cols)] for _ in range(rng.randint(2, 5))]
    widths = [max(fb.getlength(r[c]) for r in rows) + 10 for c in range(cols)]
    while sum(widths) > width and len(widths) > 2:  # a narrow column: drop columns from the right
        rows, widths = [r[:-1] for r in rows], widths[:-1]
    if sum(widths) > width:
        return None
    row_h = f.size + 10
    xs = [0]
    for w in widths:
        xs.append(xs[-1] + int(w))
    line = style["rule"]
    for r, cells in enumerate(rows):
        y = r * row_h
        for c, text in enumerate(cells):
            draw.text((xs[c] + 5, y + 5), text, font=fb if r == 0 else f, fill=style["ink"])
        draw.line((0, y, xs[-1], y), fill=line)
    bottom = len(rows) * row_h
    draw.line((0, bottom, xs[-1], bottom), fill=line)
    for x in xs:
        draw.line((x, 0, x, bottom), fill=line)

    def to_html(boxes):
        head = "".join(f"<th>{_e(t)}</th>" for t in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{_e(t)}</td>" for t in r) + "</tr>" for r in rows[1:])
        return f'<table data-bbox="{boxes[0]}"><tr>{head}</tr>{body}</table>'

    return Drawn([Piece("table", "", 0, bottom + 1, {"rows": rows})], to_html, bottom + 1)


_SUPERSCRIPTS = str.maketrans("0123456789n", "⁰¹²³⁴⁵⁶⁷⁸⁹ⁿ")


def _formula_text(rng: random.Random) -> tuple[str, str]:
    """(LaTeX, the Unicode text drawn for it)."""
    a, b, c = rng.sample("abcdefghkmnpqrstuvwxyz", 3)
    n, k = rng.randint(2, 9), rng.randint(2, 99)
    kind = rng.randrange(5)
    if kind == 0:
        return f"{a}^{{{n}}} + {b}^{{{n}}} = {c}^{{{n}}}", f"{a}{str(n).translate(_SUPERSCRIPTS)} + " \
            f"{b}{str(n).translate(_SUPERSCRIPTS)} = {c}{str(n).translate(_SUPERSCRIPTS)}"
    if kind == 1:
        return f"\\frac{{{a}}}{{{b}}} = {k}", f"{a} / {b} = {k}"
    if kind == 2:
        return f"\\sum_{{i=1}}^{{{n}}} {a}_{{i}} = {k}", f"Σ {a}ᵢ (i = 1…{n}) = {k}"
    if kind == 3:
        return f"\\sqrt{{{a}}} \\cdot {b} = {k}", f"√{a} · {b} = {k}"
    return f"\\alpha {a} + \\beta {b} = {k}", f"α{a} + β{b} = {k}"


def formula(rng: random.Random, draw, width: int, style: dict) -> Drawn | None:
    f = font(style["body"], style["px"] + 4)
    latex, shown = _formula_text(rng)
    w = f.getlength(shown)
    if w > width:
        return None
    draw.text(((width - w) // 2, 0), shown, font=f, fill=style["ink"])
    bottom = sum(f.getmetrics())
    return Drawn([Piece("formula", latex, 0, bottom)],
                 lambda b: f'<div class="formula" data-bbox="{b[0]}">{_e(latex)}</div>', bottom)


def figure(rng: random.Random, draw, width: int, style: dict) -> Drawn | None:
    """A framed drawing (bars or discs) and its caption below it: one captioned-image block of two parts."""
    fw, fh = int(width * rng.uniform(0.6, 1.0)), rng.randint(60, 120)
    x0 = (width - fw) // 2
    draw.rectangle((x0, 0, x0 + fw - 1, fh - 1), outline=style["rule"], width=2)
    colours = [COLOURS[n] for n in ("red", "blue", "green", "orange", "purple")]
    bars = rng.random() < 0.5
    for i in range(rng.randint(3, 6)):
        colour = rng.choice(colours)
        if bars:
            bw = max(4, fw // 14)
            bx = x0 + 10 + i * (bw + 8)
            if bx + bw < x0 + fw - 6:
                draw.rectangle((bx, rng.randint(10, fh - 20), bx + bw, fh - 8), fill=colour)
        else:
            cx, cy, r = rng.randint(x0 + 16, x0 + fw - 16), rng.randint(16, fh - 16), rng.randint(5, 12)
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    alt = "a bar chart" if bars else "coloured discs"
    f = font(style["italic"], style["px"] - 1)
    caption = wrap(f"Figure {rng.randint(1, 12)}: {sentence(rng, 3, 8)}", f, width)
    top = fh + GAP
    bottom = _text_lines(draw, caption, f, 0, top, style["ink"], style["leading"])
    text = " ".join(caption)

    def to_html(boxes):
        union = _union(boxes)
        return (f'<div class="image caption" data-bbox="{union}"><img data-bbox="{boxes[0]}" alt="{alt}"/>'
                f'<p data-bbox="{boxes[1]}">{_e(text)}</p></div>')

    return Drawn([Piece("image", alt, 0, fh), Piece("caption", text, top, bottom)], to_html, bottom)


def _union(boxes: list[str]) -> str:
    values = [[int(v) for v in b.split()] for b in boxes]
    return " ".join(str(f(v[i] for v in values)) for i, f in enumerate((min, min, max, max)))


RENDERERS = {"heading": heading, "paragraph": paragraph, "list": bullet_list, "table": table, "formula": formula,
             "figure": figure}
WEIGHTS = {"heading": 2, "paragraph": 4, "list": 2, "table": 2, "formula": 2, "figure": 2}
