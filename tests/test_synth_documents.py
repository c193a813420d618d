"""Documents engine: the QwenVL HTML answer parses to the engine's blocks (types, texts, boxes, table cells,
captioned figures), and every block's box matches the ink measured from the page image within 2 px."""

import numpy as np
import pytest
from PIL import Image

from qwen25vl.data.synth import write_dataset
from qwen25vl.data.synth.verify import load_split
from qwen25vl.tasks.documents import DOCUMENT_PROMPT, parse_qwenvl_html


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("documents")
    write_dataset("documents", root, train=6, seed=8, size=448, progress=False)
    return root, load_split(root)


def _measured(page: np.ndarray, paper, box, pad: int = 5):
    """Ink bbox (inclusive) of pixels far from the paper colour in the box grown by `pad` px."""
    x1, y1 = max(0, box[0] - pad), max(0, box[1] - pad)
    crop = page[y1:box[3] + pad + 1, x1:box[2] + pad + 1]
    ink = np.abs(crop - np.asarray(paper)).max(axis=2) > 60
    ys, xs = np.nonzero(ink)
    return xs.min() + x1, ys.min() + y1, xs.max() + x1, ys.max() + y1


def test_html_parses_to_the_blocks(data):
    _, split = data
    kinds = set()
    for record, meta in split:
        assert record.messages[1]["content"][1]["text"] == DOCUMENT_PROMPT
        doc = parse_qwenvl_html(record.messages[-1]["content"])
        truth = meta["truth"]["objects"]
        assert not doc.truncated and len(doc.blocks) == len(truth) >= 3
        for block, want in zip(doc.blocks, truth):
            kinds.add(want["type"])
            assert (block.type, list(block.bbox)) == (want["type"], want["bbox_2d"])
            if want["type"] == "table":
                assert [[c.text for c in row] for row in block.rows] == want["rows"]
                assert all(c.header for c in block.rows[0])
            else:
                assert block.text == want["text"]
            if want["type"] == "image":
                assert [(p.type, list(p.bbox)) for p in block.parts] == [(p["type"], p["bbox_2d"])
                                                                          for p in want["parts"]]
    assert {"heading", "paragraph", "list_item", "table", "formula", "image"} <= kinds


def test_boxes_match_the_rendered_ink(data):
    root, split = data
    checked = 0
    for record, meta in split:
        page = np.asarray(Image.open(root / record.messages[1]["content"][0]["image"]), dtype=int)
        paper = meta["truth"]["paper"]
        boxes = [b["bbox_2d"] for b in meta["truth"]["objects"]]
        boxes += [p["bbox_2d"] for b in meta["truth"]["objects"] for p in b.get("parts", ())]
        for box in boxes:
            measured = _measured(page, paper, box)
            assert max(abs(a - b) for a, b in zip(measured, box)) <= 2, (meta["id"], box, measured)
            checked += 1
        # the ink outside every box is none: nothing drawn escapes the answer
        covered = np.zeros(page.shape[:2], bool)
        for x1, y1, x2, y2 in boxes:
            covered[y1:y2 + 1, x1:x2 + 1] = True
        stray = (np.abs(page - np.asarray(paper)).max(axis=2) > 60) & ~covered
        assert not stray.any(), meta["id"]
    assert checked >= 20
