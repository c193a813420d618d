"""Video engine: decoded frames show each object at the stated times (present from its first frame to its last,
absent just before and just after), and the answers read back by the video-time parsers equal those times."""

import av
import numpy as np
import pytest

from qwen25vl.data.synth import write_dataset
from qwen25vl.data.synth.verify import load_split
from qwen25vl.tasks.video_time import parse_event_spans, parse_timestamp


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    write_dataset("video", root, train=8, seed=11, size=112, max_seconds=5, progress=False)
    return root, load_split(root)


def _frames(path):
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24").astype(int) for f in container.decode(video=0)]


def _shows(frame, obj, at) -> bool:
    x, y = (int(round(v)) for v in at)
    return np.abs(frame[y, x] - np.asarray(obj["colour"])).max() <= 45


def test_frames_show_objects_at_the_stated_times(data):
    root, split = data
    checked = 0
    for record, meta in split:
        truth = meta["truth"]
        frames = _frames(root / record.messages[0]["content"][0]["video"])
        fps = truth["fps"]
        assert len(frames) == truth["frames"] and frames[0].shape[1::-1] == tuple(truth["video_size"])
        for obj in truth["moving"]:
            first, last = round(obj["start"] * fps), round(obj["end"] * fps) - 1
            assert first == obj["start"] * fps and _shows(frames[first], obj, obj["from"])
            assert _shows(frames[last], obj, obj["to"])
            if first > 0:
                assert not _shows(frames[first - 1], obj, obj["from"])
            if last + 1 < len(frames):
                assert not _shows(frames[last + 1], obj, obj["to"])
            checked += 1
    assert checked >= 8


def test_answers_parse_back_to_the_times(data):
    _, split = data
    tasks = set()
    for record, meta in split:
        answer, objects = record.messages[-1]["content"], meta["truth"]["moving"]
        question = record.messages[0]["content"][1]["text"]
        tasks.add(meta["task"])
        named = [o for o in objects if o["label"] in question]
        if meta["task"] == "events":
            spans = parse_event_spans(answer)
            want = [v for o in sorted(objects, key=lambda o: (o["start"], o["end"])) for v in (o["start"], o["end"])]
            assert [v for s in spans for v in (s.start, s.end)] == pytest.approx(want, abs=1e-9)
            continue
        assert len(named) == 1
        obj = named[0]
        if meta["task"] == "span":
            [span] = parse_event_spans(answer)
            assert (span.start, span.end) == pytest.approx((obj["start"], obj["end"]), abs=1e-9)
        elif meta["task"] == "appear":
            assert parse_timestamp(answer, frame_rate=25) == pytest.approx(obj["start"], abs=1e-9)
        else:
            assert parse_timestamp(answer) == pytest.approx(obj["end"], abs=1e-9)
    assert tasks == {"span", "appear", "disappear", "events"}
    assert {m["truth"]["sample_fps"] for _, m in split} <= {0.5, 1.0, 2.0, 4.0, 8.0}


def test_narrowed_options_ask_only_the_chosen_tasks_at_the_chosen_rates(tmp_path):
    write_dataset("video", tmp_path, train=6, seed=2, size=112, max_seconds=4, max_objects=1, tasks="span,disappear",
                  sample_fps="1,4", progress=False)
    split = load_split(tmp_path)
    assert [m["task"] for _, m in split] == ["span", "disappear"] * 3
    rates = {r.messages[0]["content"][0]["fps"] for r, _ in split}
    assert rates <= {1.0, 4.0} and all(len(m["truth"]["moving"]) == 1 for _, m in split)
    for record, meta in split:
        if meta["task"] == "disappear":
            assert parse_timestamp(record.messages[-1]["content"]) == meta["truth"]["moving"][0]["end"]


@pytest.mark.parametrize("bad, match", [({"sample_fps": "2,fast"}, "sample_fps"), ({"sample_fps": "0"}, "sample_fps"),
                                        ({"tasks": "span,dance"}, "not among")])
def test_bad_task_or_rate_is_an_input_error(tmp_path, bad, match):
    from qwen25vl.errors import InputError

    with pytest.raises(InputError, match=match):
        write_dataset("video", tmp_path, train=1, seed=0, size=112, progress=False, **bad)
