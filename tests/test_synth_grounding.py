"""Grounding engine: records load through the processor with the rendered frame, answers parse back to the truth,
the same seed writes the same bytes, and the held-out split draws other scenes."""

import json

import numpy as np
import pytest
from PIL import Image

from qwen25vl.data.synth import write_dataset
from qwen25vl.data.synth.draw import COLOURS
from qwen25vl.data.synth.verify import load_split
from qwen25vl.errors import InputError
from qwen25vl.tasks.grounding import parse_grounding


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("grounding")
    manifest = write_dataset("grounding", root, train=10, heldout=5, seed=3, size=224, progress=False)
    return root, manifest


def test_every_task_is_posed(data):
    assert set(data[1]["splits"]["train"]["tasks"]) == {"detect", "refer", "point", "count", "absent"}


def test_answers_parse_back_to_truth(data):
    root, _ = data
    for record, meta in load_split(root):
        truth = meta["truth"]
        parsed = parse_grounding(record.messages[-1]["content"])
        want_boxes = [tuple(float(v) for v in o["bbox_2d"]) for o in truth["objects"] if "bbox_2d" in o]
        want_points = [tuple(float(v) for v in o["point_2d"]) for o in truth["objects"] if "point_2d" in o]
        assert parsed.boxes == want_boxes and parsed.points == want_points
        assert [g.label for g in parsed.items] == [o["label"] for o in truth["objects"]]
        if meta["task"] == "count":
            assert parsed.stated_count == truth["count"] == len(parsed.items) >= 1
        if meta["task"] == "absent":
            assert parsed.items == [] and truth["query"] not in truth["present"]
        if meta["task"] in ("detect", "count"):
            assert truth["query"] in truth["present"]


def _object_colours(label: str) -> list[np.ndarray]:
    """The colours an object's pixels take: its own, its texture's darker shade, a sticker's white border."""
    name = next(word for word in label.split() if word in COLOURS)
    base = np.asarray(COLOURS[name], dtype=float)
    return [base, base * 0.65, np.array([250.0, 250.0, 250.0])]


def _is_object(pixel, colours) -> bool:
    return min(np.abs(pixel - c).max() for c in colours) <= 20


def test_points_and_boxes_lie_on_the_object(data):
    """A point's pixel has its object's colour; each edge of a box touches pixels of its object's colours."""
    root, _ = data
    checked = 0
    for record, meta in load_split(root):
        image = np.asarray(Image.open(root / record.messages[0]["content"][0]["image"]), dtype=float)
        h, w, _ = image.shape
        assert [w, h] == meta["truth"]["size"] and w % 28 == 0 and h % 28 == 0
        for obj in meta["truth"]["objects"]:
            colours = _object_colours(obj["label"])
            if "point_2d" in obj:
                x, y = obj["point_2d"]
                assert _is_object(image[y, x], colours), (meta["id"], obj)
            else:
                x1, y1, x2, y2 = obj["bbox_2d"]
                edges = (image[y1, x1:x2 + 1], image[y2, x1:x2 + 1], image[y1:y2 + 1, x1], image[y1:y2 + 1, x2])
                assert all(any(_is_object(p, colours) for p in edge) for edge in edges), (meta["id"], obj)
            checked += 1
    assert checked >= 10


def test_another_seed_draws_other_scenes(data, tmp_path):
    other = write_dataset("grounding", tmp_path / "other", train=3, seed=4, size=224, progress=False)
    assert other["splits"]["train"]["media_sha256"] != data[1]["splits"]["train"]["media_sha256"]


def test_meta_lines_match_records(data):
    root, _ = data
    lines = (root / "train.meta.jsonl").read_text().splitlines()
    assert len(lines) == len((root / "train.jsonl").read_text().splitlines()) == 10
    assert json.loads(lines[0])["id"] == "train-000000-0"


@pytest.mark.parametrize("options, message", [({"sise": 224}, "sise"), ({"size": -5}, "size"),
                                              ({"size": "big"}, "size")])
def test_bad_options_name_the_option(tmp_path, options, message):
    with pytest.raises(InputError, match=message):
        write_dataset("grounding", tmp_path, train=1, progress=False, **options)


def test_unknown_kind_and_bad_seed(tmp_path):
    with pytest.raises(InputError, match="kind must be one of"):
        write_dataset("faces", tmp_path, train=1)
    with pytest.raises(InputError, match="multiple of 28"):
        write_dataset("grounding", tmp_path, train=1, size=450, progress=False)
    with pytest.raises(InputError, match="seed"):
        write_dataset("grounding", tmp_path, train=1, seed=-1, progress=False)
