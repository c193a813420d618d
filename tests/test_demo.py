"""`make demo`'s core: unseen scenes, grounding JSON with boxes inside the image, the drawn file, the verdicts."""

import json
from pathlib import Path

import pytest

import qwen25vl
from qwen25vl.demo import DEMO_SEED_BASE, reliability, run_demo

ASSET = Path(qwen25vl.__file__).parent / "assets" / "tiny-model"


def test_demo_seeds_lie_outside_the_train_and_held_out_ranges():
    from qwen25vl.data.synth.common import MAX_INDEX, MAX_SEED, SPLIT_BASES

    assert DEMO_SEED_BASE >= SPLIT_BASES["heldout"] + MAX_SEED * MAX_INDEX
    assert DEMO_SEED_BASE >= SPLIT_BASES["train"] + MAX_SEED * MAX_INDEX


@pytest.mark.skipif(not (ASSET / "config.json").is_file(), reason="no embedded model")
def test_demo_answer_parses_as_grounding_json_inside_the_image(tmp_path):
    """The demo's default scenes: every answer is a fenced JSON list the grounding parser reads, what the demo
    prints holds the same boxes clamped into the frame, and at least one scene's answer locates something (the model
    misses some scenes: its grounding score is well under 100%, and the demo shows those misses as they are)."""
    from PIL import Image

    from qwen25vl.tasks.grounding import parse_grounding

    results = run_demo(out=tmp_path)
    assert len(results) == 2
    for result in results:
        assert result["answer"].startswith("```json\n[") and result["answer"].rstrip().endswith("```")
        parsed = parse_grounding(json.dumps(result["json"]))  # what the demo prints, clamped to the frame
        w, h = result["size"]
        assert len(parsed.boxes) == len(parse_grounding(result["answer"]).boxes)
        assert all(0 <= b[0] <= b[2] < w and 0 <= b[1] <= b[3] < h for b in parsed.boxes)
        assert result["inside_image"] == (result["clamped"] == 0)
        assert Image.open(result["drawn"]).size[0] >= w
        assert isinstance(result["count"], int)
    assert any(parse_grounding(r["answer"]).boxes for r in results), [r["answer"] for r in results]


def test_reliability_says_not_reliable_below_three_standard_errors(tmp_path):
    scores = {"grounding": {"score": 0.2, "se": 0.05, "baseline": 0.1, "n": 100, "reliable": False},
              "point": {"score": 0.4, "se": 0.05, "baseline": 0.05, "n": 100, "reliable": True},
              "count": {"score": 0.9, "se": 0.03, "baseline": 0.4, "n": 100, "reliable": True}}
    (tmp_path / "scores.json").write_text(json.dumps({"scores": scores}))
    lines = reliability(tmp_path)
    assert any(line.startswith("locating objects") and "NOT RELIABLE" in line for line in lines)
    assert any(line.startswith("pointing at an object: ABOVE CHANCE, UNRELIABLE") for line in lines)
    assert any(line.startswith("counting: RELIABLE") for line in lines)
    assert any(line.startswith("reading a word (OCR") and "NOT MEASURED" in line for line in lines)
    assert "unreliable" in reliability(tmp_path / "missing")[0]
    skills = {"ocr": {"score": 0.6, "se": 0.03, "baseline": 0.01, "n": 200, "reliable": True},
              "video": {"score": 1.4, "se": 0.1, "baseline": 2.2, "n": 200, "reliable": True,
                        "lower_is_better": True, "reliable_below": 1.0},
              "agent": {"score": 0.05, "se": 0.02, "baseline": 0.04, "n": 100, "reliable": False}}
    (tmp_path / "scores.json").write_text(json.dumps({"scores": scores, "skills": skills}))
    lines = reliability(tmp_path)
    assert any(line.startswith("reading a word (OCR, exact match): RELIABLE") for line in lines)
    assert any(line.startswith("video timestamps") and "ABOVE CHANCE, UNRELIABLE" in line and "1.40 s" in line
               for line in lines)  # 3+ s.e. better than the baseline, but off by more than a second
    assert any(line.startswith("screen agents") and "NOT RELIABLE" in line for line in lines)
    assert any(line.startswith("chart values, never trained on: NOT MEASURED") for line in lines)


@pytest.mark.skipif(not (ASSET / "config.json").is_file(), reason="no embedded model")
def test_demo_asks_an_ocr_and_a_video_question_on_unseen_samples(tmp_path):
    import av

    from qwen25vl.demo import run_skills
    from qwen25vl.tasks.video_time import parse_event_spans

    vlm = qwen25vl.load(ASSET, device="cpu", threads=1)
    ocr, video = run_skills(vlm, tmp_path)
    assert (ocr["kind"], video["kind"]) == ("ocr", "video")
    assert isinstance(ocr["answer"], str) and isinstance(video["answer"], str)
    assert ocr["truth"] and " " not in ocr["truth"]  # one word, as stage 5 trained
    with av.open(video["media"]) as container:  # the clip lasts past the span the truth states
        seconds = float(container.duration) / av.time_base
    (span,) = parse_event_spans(video["truth"]) if "happens" in video["truth"] else [None]
    assert span is None or 0 <= span.start < span.end <= seconds + 0.05
    again = run_skills(vlm, tmp_path / "again")
    assert [r["truth"] for r in again] == [ocr["truth"], video["truth"]]  # the same unseen samples each run
