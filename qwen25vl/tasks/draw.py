"""Pictures of task results: boxes, points and labels drawn on the image, with a legend beside it.

The legend goes in a panel to the right of the image, so it never hides content and the image keeps its pixel
coordinates (x, y in the picture = x, y in the image). Colours are fixed per label (first come, first served from a
palette of saturated colours), so the same label has the same colour in every picture of a run.
"""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

PALETTE = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40), (128, 0, 0), (0, 0, 128),
)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def colour_map(labels) -> dict[str, tuple[int, int, int]]:
    """A colour for each distinct label, in order of first appearance."""
    out: dict[str, tuple[int, int, int]] = {}
    for label in labels:
        key = label or "?"
        if key not in out:
            out[key] = PALETTE[len(out) % len(PALETTE)]
    return out


def _with_legend(image: Image.Image, colours: dict, counts: dict, font) -> Image.Image:
    if not colours:
        return image
    line = font.size + 6 if hasattr(font, "size") else 16
    names = [f"{name} ({counts.get(name, 0)})" for name in colours]
    width = max(int(font.getlength(n)) for n in names) + 40
    canvas = Image.new("RGB", (image.width + width, max(image.height, line * len(names) + 10)), (255, 255, 255))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (name, colour) in enumerate(zip(names, colours.values())):
        x, y = image.width + 8, 6 + i * line
        draw.rectangle([x, y + 2, x + 14, y + line - 6], fill=colour)
        draw.text((x + 20, y), name, fill=(0, 0, 0), font=font)
    return canvas


def draw_groundings(image: Image.Image, items, *, width: int | None = None, legend: bool = True,
                    labels: bool = True) -> Image.Image:
    """A copy of `image` with each item's box (outline) and point (filled dot) drawn in its label's colour, the label
    written at the box's top-left corner, and a legend panel. Coordinates must be in `image`'s own pixels."""
    image = image.convert("RGB").copy()
    width = width or max(2, round(min(image.size) / 200))
    font = _font(max(12, min(image.size) // 40))
    colours = colour_map(g.label for g in items)
    counts: dict[str, int] = {}
    draw = ImageDraw.Draw(image)
    for g in items:
        key = g.label or "?"
        counts[key] = counts.get(key, 0) + 1
        colour = colours[key]
        if g.bbox is not None:
            x1, y1, x2, y2 = (round(v) for v in g.bbox)
            draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
            if labels and g.label:
                text_w = int(font.getlength(g.label)) + 6
                top = max(0, y1 - font.size - 4)
                draw.rectangle([x1, top, x1 + text_w, top + font.size + 4], fill=colour)
                draw.text((x1 + 3, top + 1), g.label, fill=(255, 255, 255), font=font)
        if g.point is not None:
            x, y = g.point
            r = max(3, width * 2)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour, outline=(255, 255, 255))
    return _with_legend(image, colours, counts, font) if legend else image


def draw_layout(image: Image.Image, blocks, *, width: int | None = None, legend: bool = True) -> Image.Image:
    """Layout overlay of a parsed document: each block's box outlined in the colour of its type, with a legend."""
    image = image.convert("RGB").copy()
    width = width or max(2, round(min(image.size) / 300))
    font = _font(max(12, min(image.size) // 50))
    boxed = [b for b in blocks if b.bbox is not None]
    colours = colour_map(b.type for b in boxed)
    counts: dict[str, int] = {}
    draw = ImageDraw.Draw(image)
    for b in boxed:
        counts[b.type] = counts.get(b.type, 0) + 1
        x1, y1, x2, y2 = (round(v) for v in b.bbox)
        draw.rectangle([x1, y1, x2, y2], outline=colours[b.type], width=width)
    return _with_legend(image, colours, counts, font) if legend else image


def draw_actions(image: Image.Image, actions, *, legend: bool = True) -> Image.Image:
    """Agent actions on the screenshot: a dot at each target coordinate, an arrow for drags and swipes."""
    image = image.convert("RGB").copy()
    font = _font(max(12, min(image.size) // 40))
    colours = colour_map(a.action for a in actions if a.coordinate is not None)
    counts: dict[str, int] = {}
    draw = ImageDraw.Draw(image)
    r = max(4, min(image.size) // 80)
    for a in actions:
        if a.coordinate is None:
            continue
        counts[a.action] = counts.get(a.action, 0) + 1
        colour = colours[a.action]
        x, y = a.coordinate
        draw.ellipse([x - r, y - r, x + r, y + r], outline=colour, width=max(2, r // 2))
        if a.coordinate2 is not None:
            draw.line([x, y, *a.coordinate2], fill=colour, width=max(2, r // 2))
    return _with_legend(image, colours, counts, font) if legend else image
