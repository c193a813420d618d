"""A small, tolerant HTML tree built with the standard library's `html.parser`.

Model output is often not well-formed: unclosed `<p>`, stray end tags, a document cut off mid-table. The builder
closes what is open when an ancestor closes, ignores end tags with no open match, treats void elements as leaves,
and closes everything at the end of input. No dependency beyond the stdlib.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from html.parser import HTMLParser

MAX_DEPTH = 128  # real documents nest a few levels; garbage like "<div>" * 5000 must not overflow the recursion
INLINE = frozenset("a abbr b code em font i mark s small span strong sub sup u".split())
VOID = frozenset("area base br col embed hr img input link meta source track wbr".split())
# Tags that implicitly end an open sibling of the same kind (`<li>a<li>b`, `<td>1<td>2`, `<p>x<p>y`).
_SELF_CLOSING_SIBLINGS = {"li": {"li"}, "td": {"td", "th"}, "th": {"td", "th"}, "tr": {"tr"}, "p": {"p"},
                          "option": {"option"}, "dt": {"dt", "dd"}, "dd": {"dt", "dd"}}
# An implicit close stops at these (a `<li>` inside a nested `<ul>` must not close the outer `<li>`).
_SCOPE = {"li": {"ul", "ol"}, "td": {"table", "tr"}, "th": {"table", "tr"}, "tr": {"table", "tbody", "thead"},
          "p": {"div", "td", "th", "li", "table", "body"}, "option": {"select"}, "dt": {"dl"}, "dd": {"dl"}}


@dataclass
class Node:
    tag: str
    attrs: dict = field(default_factory=dict)
    children: list = field(default_factory=list)  # Node or str
    parent: "Node | None" = field(default=None, repr=False)

    @property
    def classes(self) -> str:
        return (self.attrs.get("class") or "").strip()

    def text(self) -> str:
        """The text inside, whitespace collapsed; block-level children are separated by a space."""
        parts: list[str] = []
        self._collect(parts)
        return " ".join("".join(parts).split())

    def _collect(self, parts: list):
        for c in self.children:
            if isinstance(c, str):
                parts.append(c)
                continue
            block = c.tag not in INLINE
            if block:
                parts.append(" ")
            c._collect(parts)
            if block:
                parts.append(" ")

    def iter(self):
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.iter()

    def find_all(self, tag: str) -> list["Node"]:
        return [n for n in self.iter() if n.tag == tag and n is not self]

    def to_html(self, drop_attrs=("data-bbox", "data-polygon")) -> str:
        attrs = "".join(f' {k}="{html.escape(str(v), quote=True)}"' if v is not None else f" {k}"
                        for k, v in self.attrs.items() if k not in drop_attrs)
        if self.tag in VOID:
            return f"<{self.tag}{attrs}/>"
        inner = "".join(html.escape(c, quote=False) if isinstance(c, str) else c.to_html(drop_attrs)
                        for c in self.children)
        return f"<{self.tag}{attrs}>{inner}</{self.tag}>"


class _Builder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#document")
        self.stack = [self.root]

    def _close_to(self, index: int):
        del self.stack[index:]

    def handle_starttag(self, tag, attrs):
        siblings = _SELF_CLOSING_SIBLINGS.get(tag)
        if siblings:
            for i in range(len(self.stack) - 1, 0, -1):
                open_tag = self.stack[i].tag
                if open_tag in _SCOPE[tag]:
                    break
                if open_tag in siblings:
                    self._close_to(i)
                    break
        node = Node(tag, dict(attrs), parent=self.stack[-1])
        self.stack[-1].children.append(node)
        if tag not in VOID and len(self.stack) < MAX_DEPTH:  # deeper tags become leaves: the walks stay in stack
            self.stack.append(node)

    def handle_startendtag(self, tag, attrs):
        node = Node(tag, dict(attrs), parent=self.stack[-1])
        self.stack[-1].children.append(node)

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                self._close_to(i)
                return
        # an end tag with nothing open to close: ignore it

    def handle_data(self, data):
        if data:
            self.stack[-1].children.append(data)


def parse_html(text: str) -> Node:
    """The document tree of `text` (a `#document` root); never raises on malformed markup."""
    return parse_html_open(text)[0]


def parse_html_open(text: str) -> tuple[Node, list[Node]]:
    """(the document tree of `text`, the elements still open when the input ended, outermost first): for an answer
    cut off mid-document, the open chain ends at the element the cut fell in."""
    builder = _Builder()
    builder.feed(text)
    builder.close()
    return builder.root, builder.stack[1:]
