"""Markdown export of parsed document blocks.

Separator blocks (empty `<p></p>` between columns) have no Markdown form and are skipped; an image with a caption
is the image followed by its caption in italics.

Simple tables become pipe tables; a table with merged cells or a nested table cannot be a pipe table without losing
structure, so it is kept as HTML (which Markdown allows inline) rather than flattened.
"""

from __future__ import annotations


def _escape_cell(text: str) -> str:
    return text.replace("|", "\\|") or " "


def _is_simple(rows) -> bool:
    return bool(rows) and all(c.colspan == 1 and c.rowspan == 1 and not c.tables for row in rows for c in row)


def table_to_markdown(rows) -> str:
    """A pipe table from rows of cells (the first row is the header; short rows are padded)."""
    width = max(len(r) for r in rows)
    cells = [[_escape_cell(c.text) for c in r] + [" "] * (width - len(r)) for r in rows]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * width]
    lines += ["| " + " | ".join(r) + " |" for r in cells[1:]]
    return "\n".join(lines)


def _formula(text: str) -> str:
    text = text.strip()
    if text.startswith("$") or text.startswith("\\[") or text.startswith("\\("):
        return text
    return f"$$\n{text}\n$$"


def _image(block) -> str:
    """`![alt](src)`; an image with a caption part also gets the caption, in italics, below it."""
    if block.caption is None:
        return f"![{block.text or 'image'}]({block.attrs.get('src', '')})"
    alt = next((p.text for p in block.parts if p.type == "image"), "") or "image"
    return f"![{alt}]({block.attrs.get('src', '')})" + (f"\n\n*{block.caption}*" if block.caption else "")


def block_to_markdown(block, number: int = 1) -> str:
    kind, text = block.type, block.text
    if kind == "heading":
        return "#" * min(max(block.level or 1, 1), 6) + " " + text
    if kind == "list_item":
        return (f"{number}. " if block.ordered else "- ") + text
    if kind == "table":
        return table_to_markdown(block.rows) if _is_simple(block.rows) else block.html
    if kind == "formula":
        return _formula(text) if text else block.html
    if kind == "image":
        return _image(block)
    if kind in ("chart", "chemical_formula", "music_sheet"):
        return f"*[{kind.replace('_', ' ')}]* {text}".rstrip()
    if kind == "code":
        return f"```\n{text}\n```"
    if kind == "quote":
        return "> " + text
    return text


def blocks_to_markdown(blocks) -> str:
    """Blocks in order, separated by blank lines; consecutive list items stay together and ordered ones count up."""
    out: list[str] = []
    number, previous = 0, None
    for block in blocks:
        in_list = block.type == "list_item"
        number = number + 1 if in_list and previous == "list_item" else 1
        piece = block_to_markdown(block, number)
        if not piece:
            continue
        sep = "\n" if in_list and previous == "list_item" else "\n\n"
        out.append((sep if out else "") + piece)
        previous = block.type
    return "".join(out) + ("\n" if out else "")
