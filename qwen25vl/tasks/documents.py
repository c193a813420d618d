"""Document parsing: QwenVL HTML into ordered layout blocks, exported to Markdown and JSON.

Asked for "QwenVL HTML", the model writes one element per layout block in reading order, each with
`data-bbox="x1 y1 x2 y2"` in the resized image's pixels: headings, paragraphs, lists, tables, `div class="image"`,
formulas (`class="formula..."`), charts, chemical formulas and music sheets. Blocks keep that order; tables stay
tables (rows of cells with spans, nested tables included); a block with no (or a broken) `data-bbox` keeps its text
with `bbox=None`.

Three shapes get their own treatment:
- An image with its caption (`<div class="image caption">` holding an `<img>` and a caption `<p>`; also
  `div class="image"` or `<figure>` holding both) is ONE block of type "image": its bbox is the div's (the union of
  its parts' boxes when the div has none), its text is the caption, and `parts` holds the image and the caption as
  sub-blocks (types "image" and "caption"), each with its own box.
- An empty `<p></p>` (with or without a box) is a "separator" block: the model writes them between columns and
  regions, so they carry reading-order information; they are kept in order (and skipped by the Markdown export).
- An answer cut off by `max_new_tokens` mid-tag (`<p data-bbox="5 6`, `</`) never leaks that markup into text: the
  partial tag is dropped, `Document.truncated` is set, and the block the cut fell in (the last one) has
  `truncated=True` (its text is what was written before the cut).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace

from qwen25vl.errors import InputError
from qwen25vl.tasks._json import strip_fences
from qwen25vl.tasks.coords import Frame, as_frame
from qwen25vl.tasks.html_tree import Node, parse_html_open

DOCUMENT_SYSTEM_PROMPT = (
    "You are an AI specialized in recognizing and extracting text from images. Your mission is to analyze the image "
    "document and generate the result in QwenVL Document Parser HTML format using specified tags while maintaining "
    "user privacy and data integrity."
)
DOCUMENT_PROMPT = "QwenVL HTML"

_BLOCK_TAGS = frozenset("h1 h2 h3 h4 h5 h6 p table li img pre address figure blockquote caption".split())
_CONTAINERS = frozenset("div section article main header footer aside nav span form body html".split())
_ATOMIC = frozenset("image formula chart chemical_formula music_sheet".split())
_CLASS_TYPES = (("formula", "formula"), ("caption", "caption"), ("chart", "chart"), ("chemical", "chemical_formula"),
                ("music", "music_sheet"), ("image", "image"), ("header", "header"), ("footer", "footer"))
_TAG_TYPES = {"p": "paragraph", "li": "list_item", "table": "table", "img": "image", "figure": "image",
              "pre": "code", "address": "address", "blockquote": "quote", "caption": "caption"}


@dataclass(frozen=True)
class Cell:
    text: str
    header: bool = False
    colspan: int = 1
    rowspan: int = 1
    tables: tuple = ()  # nested tables inside the cell, each a tuple of rows

    def to_dict(self) -> dict:
        out = {"text": self.text}
        if self.header:
            out["header"] = True
        if self.colspan != 1 or self.rowspan != 1:
            out.update(colspan=self.colspan, rowspan=self.rowspan)
        if self.tables:
            out["tables"] = [[[c.to_dict() for c in row] for row in t] for t in self.tables]
        return out


@dataclass(frozen=True)
class Block:
    """One layout block. `type`: heading, paragraph, list_item, table, formula, image, caption, chart,
    chemical_formula, music_sheet, code, address, quote, header, footer or text."""

    type: str
    text: str
    bbox: tuple[float, float, float, float] | None = None
    tag: str = ""
    level: int | None = None  # headings
    ordered: bool | None = None  # list items
    rows: tuple = ()  # tables: tuple of rows of Cell
    html: str = ""  # tables, formulas: the element without layout attributes
    attrs: dict = field(default_factory=dict)
    parts: tuple = ()  # an image with its caption: the image and the caption as Blocks with their own boxes
    truncated: bool = False  # the answer stopped inside this block (the last one)

    @property
    def caption(self) -> str | None:
        """The caption's text of an image-with-caption block, else None."""
        return next((p.text for p in self.parts if p.type == "caption"), None)

    def to_dict(self) -> dict:
        out = {"type": self.type, "text": self.text, "bbox": list(self.bbox) if self.bbox else None}
        if self.level is not None:
            out["level"] = self.level
        if self.ordered is not None:
            out["ordered"] = self.ordered
        if self.rows:
            out["rows"] = [[c.to_dict() for c in row] for row in self.rows]
        if self.html:
            out["html"] = self.html
        if self.attrs:
            out["attrs"] = self.attrs
        if self.parts:
            out["parts"] = [p.to_dict() for p in self.parts]
        if self.truncated:
            out["truncated"] = True
        return out

    def mapped(self, box_map) -> "Block":
        """The block with its box (and its parts' boxes) mapped by `box_map`."""
        return replace(self, bbox=box_map(self.bbox) if self.bbox else None,
                       parts=tuple(p.mapped(box_map) for p in self.parts))


def _bbox(node: Node):
    nums = re.findall(r"-?\d+(?:\.\d+)?", node.attrs.get("data-bbox") or "")
    if len(nums) != 4:
        return None
    x1, y1, x2, y2 = (float(v) for v in nums)
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def _span(node: Node, name: str) -> int:
    try:
        return max(1, int(node.attrs.get(name) or 1))
    except ValueError:
        return 1


def _rows(table: Node) -> tuple:
    """Rows of `table`'s own cells (cells of nested tables belong to those tables)."""
    rows = []

    def walk(node: Node):
        for c in node.children:
            if not isinstance(c, Node) or c.tag == "table":
                continue
            if c.tag == "tr":
                rows.append(tuple(_cell(td) for td in c.children if isinstance(td, Node) and td.tag in ("td", "th")))
            else:
                walk(c)

    walk(table)
    return tuple(rows)


def _cell(node: Node) -> Cell:
    nested = tuple(_rows(t) for t in _own_tables(node))
    return Cell(node.text(), node.tag == "th", _span(node, "colspan"), _span(node, "rowspan"), nested)


def _own_tables(node: Node) -> list[Node]:
    out = []
    for c in node.children:
        if isinstance(c, Node):
            out.extend([c] if c.tag == "table" else _own_tables(c))
    return out


def _block_type(node: Node) -> str:
    classes = node.classes.lower()
    for needle, kind in _CLASS_TYPES:
        if needle in classes:
            return kind
    if node.tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
        return "heading"
    return _TAG_TYPES.get(node.tag, "text")


def _layout_attrs(node: Node) -> dict:
    return {k: v for k, v in node.attrs.items() if k not in ("data-bbox", "data-polygon") and v is not None}


def _block(node: Node, ordered: bool | None = None) -> Block:
    kind = _block_type(node)
    text = node.text()
    if kind == "image" and not text:
        img = node if node.tag == "img" else next(iter(node.find_all("img")), None)
        text = (img.attrs.get("alt") or "") if img else ""
    if kind == "paragraph" and not text and not node.find_all("img") and not node.find_all("table"):
        kind = "separator"  # an empty <p></p>: a column / region break in reading order
    return Block(type=kind, text=text, bbox=_bbox(node), tag=node.tag,
                 level=int(node.tag[1]) if kind == "heading" else None,
                 ordered=ordered if node.tag == "li" else None,
                 rows=_rows(node) if node.tag == "table" else (),
                 html=node.to_html() if node.tag == "table" or kind == "formula" else "", attrs=_layout_attrs(node))


def _caption_parts(node: Node) -> list:
    """The children of an image container that are not (and hold no) image but have text: its caption."""
    return [c for c in node.children if (c.strip() if isinstance(c, str) else
                                         c.tag != "img" and not c.find_all("img") and c.text())]


def _is_captioned_image(node: Node) -> bool:
    if node.tag == "img" or not node.find_all("img"):
        return False
    return (node.tag == "figure" or "image" in node.classes.lower().split()) and bool(_caption_parts(node))


def _union(a, b):
    if a is None or b is None:
        return a or b
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def _captioned_image(node: Node) -> Block:
    """One "image" block for an image and its caption: the container's box, the caption as text, both as parts."""
    image = _block(node.find_all("img")[0])
    pieces = _caption_parts(node)
    text = " ".join(" ".join(c.split()) if isinstance(c, str) else c.text() for c in pieces)
    boxed = [c for c in pieces if isinstance(c, Node) and _bbox(c)]
    first = next((c for c in pieces if isinstance(c, Node)), None)
    caption = Block(type="caption", text=text, bbox=_bbox(boxed[0]) if boxed else None,
                    tag=first.tag if first is not None else "#text", attrs=_layout_attrs(first) if first else {})
    attrs = {**image.attrs, **_layout_attrs(node)}
    return Block(type="image", text=text, bbox=_bbox(node) or _union(image.bbox, caption.bbox), tag=node.tag,
                 attrs=attrs, parts=(image, caption))


def _has_blocks(node: Node) -> bool:
    return any(n is not node and ("data-bbox" in n.attrs or n.tag in _BLOCK_TAGS) for n in node.iter())


def _has_boxed(node: Node) -> bool:
    return any(n is not node and "data-bbox" in n.attrs for n in node.iter())


def _list_items(c: Node, out: list):
    items = [li for li in c.children if isinstance(li, Node) and li.tag == "li"]
    if items:
        out.extend((_block(li, ordered=c.tag == "ol"), li) for li in items)
    elif c.text():
        out.append((_block(c), c))


def _collect(node: Node, out: list):
    """Append (block, the node it came from) for each layout block under `node`, in reading order; a loose text's
    node is its parent when the text is the parent's last child (else None)."""
    for c in node.children:
        if isinstance(c, str):
            if c.strip() and node.tag not in ("#document", "html", "head"):
                anchor = node if c is node.children[-1] else None
                out.append((Block(type="text", text=" ".join(c.split()), tag="#text"), anchor))
        elif c.tag in ("head", "script", "style", "title"):
            continue
        elif c.tag in ("ol", "ul"):
            _list_items(c, out)
        elif _is_captioned_image(c):
            out.append((_captioned_image(c), c))
        elif c.tag in _CONTAINERS and _block_type(c) not in _ATOMIC and _has_boxed(c):
            _collect(c, out)  # a boxed section whose parts carry their own boxes: the parts are the blocks
        elif "data-bbox" in c.attrs or c.tag in _BLOCK_TAGS or not _has_blocks(c):
            block = _block(c)
            if block.text or block.bbox or block.type in ("image", "table", "formula", "separator"):
                out.append((block, c))
        else:  # a container without its own box (html, body, a plain div): its children are the blocks
            _collect(c, out)


@dataclass
class Document:
    """Parsed QwenVL HTML. `frame`: "resized" as parsed, "original" after `to_original`. `truncated`: the answer
    stopped before `</html>` (the last block may be incomplete)."""

    blocks: list[Block]
    raw: str = ""
    truncated: bool = False
    frame: str = "resized"
    frame_map: Frame | None = field(default=None, repr=False)  # set by `to_original`: resized <-> original sizes

    def to_original(self, frame: Frame) -> "Document":
        """The same document with every box mapped from the resized frame to the original image."""
        frame = as_frame(frame)  # a Frame or the processor's ResizeInfo
        if self.frame != "resized":
            raise InputError(f"document is already in the {self.frame!r} frame")
        blocks = [b.mapped(frame.box_to_original) for b in self.blocks]
        return replace(self, blocks=blocks, frame="original", frame_map=frame)

    def to_json(self) -> dict:
        return {"frame": self.frame, "truncated": self.truncated, "blocks": [b.to_dict() for b in self.blocks]}

    def to_markdown(self) -> str:
        from qwen25vl.tasks.markdown import blocks_to_markdown

        return blocks_to_markdown(self.blocks)

    def to_html(self) -> str:
        """The answer's HTML, fence removed (layout attributes kept)."""
        return strip_fences(self.raw, "html")[0].strip()


# A tag the answer stopped inside: "<", "</", "<p", "<p data-bbox=\"5 6", "<!-- ..." at the very end of the text.
_PARTIAL_TAG = re.compile(r"<(?:[/!?]|/?[A-Za-z][^<>]*|!--.*)?\Z", re.DOTALL)


def parse_qwenvl_html(text: str) -> Document:
    """Parse a QwenVL HTML answer (fenced or bare, possibly cut off) into ordered blocks; never raises on markup."""
    if not isinstance(text, str):
        raise InputError(f"model answer must be a string, got {type(text).__name__}")
    body, _, fence_open = strip_fences(text, "html")
    partial = _PARTIAL_TAG.search(body)
    if partial:
        body = body[: partial.start()]
    root, still_open = parse_html_open(body)
    pairs: list = []
    _collect(root, pairs)
    blocks = [b for b, _ in pairs]
    truncated = bool(partial) or fence_open or ("<html" in body.lower() and "</html>" not in body.lower())
    if truncated and pairs and any(n is pairs[-1][1] for n in still_open):
        blocks[-1] = replace(blocks[-1], truncated=True)
    return Document(blocks=blocks, raw=text, truncated=truncated)


def document_json(doc: Document) -> str:
    return json.dumps(doc.to_json(), ensure_ascii=False, indent=2)
