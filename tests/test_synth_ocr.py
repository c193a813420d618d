"""OCR engine: answers read back by the OCR parser equal the rendered lines; every line's box holds ink; words,
lines and pages are all drawn."""

import numpy as np
import pytest
from PIL import Image

from qwen25vl.data.synth import write_dataset
from qwen25vl.data.synth.verify import load_split
from qwen25vl.tasks.ocr import OCR_PROMPT, parse_ocr


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ocr")
    write_dataset("ocr", root, train=9, seed=1, size=224, progress=False)
    return root


def test_answers_parse_back_to_the_lines(data):
    tasks = set()
    for record, meta in load_split(data):
        assert record.messages[0]["content"][1]["text"] == OCR_PROMPT
        lines = meta["truth"]["lines"]
        assert lines and parse_ocr(record.messages[-1]["content"]).lines == lines
        tasks.add(meta["task"])
        if meta["task"] == "page":
            assert len(lines) >= 2
    assert tasks == {"word", "line", "page"}


def test_line_boxes_hold_the_text_ink(data):
    """Inside each line's box the pixels vary (ink on paper); a strip of the box's height taken from a box of
    another line is not identical to it (the boxes are not all one place)."""
    for record, meta in load_split(data):
        image = np.asarray(Image.open(data / record.messages[0]["content"][0]["image"]), dtype=int)
        boxes = [o["bbox_2d"] for o in meta["truth"]["objects"]]
        for x1, y1, x2, y2 in boxes:
            crop = image[y1:y2 + 1, x1:x2 + 1]
            assert crop.size and np.ptp(crop.reshape(-1, 3), axis=0).max() > 60
        tops = [b[1] for b in boxes]
        assert tops == sorted(tops) and len(set(tops)) == len(tops)


def test_narrowed_options_draw_large_upright_words_of_one_script(tmp_path):
    """tasks=word, scripts=latin, rotate off, type 30-32 px: every answer is one word of the English list (any
    case), and its ink box is at least as tall as the smallest letters of that type (upright, not shrunk)."""
    from qwen25vl.data.synth.words import ENGLISH

    write_dataset("ocr", tmp_path, train=12, seed=3, size=224, progress=False, tasks="word", scripts="latin",
                  rotate=False, min_px=30, max_px=32)
    for record, meta in load_split(tmp_path):
        answer = record.messages[-1]["content"]
        assert meta["task"] == "word" and answer.lower() in ENGLISH, answer
        x1, y1, x2, y2 = meta["truth"]["objects"][0]["bbox_2d"]
        assert 14 <= y2 - y1 + 1 <= 48 and x2 - x1 > y2 - y1 or len(answer) <= 3  # a horizontal word


@pytest.mark.parametrize("bad", [{"tasks": "word,poem"}, {"scripts": "klingon"}, {"tasks": ""}])
def test_unknown_task_or_script_is_an_input_error_naming_it(tmp_path, bad):
    from qwen25vl.errors import InputError

    with pytest.raises(InputError, match="not among"):
        write_dataset("ocr", tmp_path, train=1, seed=0, size=224, progress=False, **bad)
