"""Runs: grounding scored in the original frame, resume without re-answering, rescoring, failures with reasons."""

import json
from pathlib import Path

import pytest
from PIL import Image

from qwen25vl.errors import InputError
from qwen25vl.eval.results import ResultsFile, rescore
from qwen25vl.eval.runner import prepare, run_task
from qwen25vl.eval.task import get_task
from qwen25vl.processing.image import process_image

SIZES = [(1000, 700), (333, 517), (1280, 64)]


def _refcoco(tmp_path: Path) -> list[tuple[str, list[float], Path]]:
    rows, truth = [], []
    for i, (w, h) in enumerate(SIZES):
        path = tmp_path / "train2014" / f"im{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (w, h), (i * 60, 100, 100)).save(path)
        box = [w * 0.1, h * 0.2, w * 0.6, h * 0.9]
        rows.append({"image": path.name, "sent": f"object {i}", "bbox": box})
        truth.append((f"object {i}", box, path))
    (tmp_path / "refcoco_val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return truth


def _image_part(conversation):
    return next(p for m in conversation if isinstance(m["content"], list) for p in m["content"]
                if p["type"] == "image")


def _text(conversation) -> str:
    return conversation[-1]["content"][-1]["text"]


def _oracle(truth, in_resized_frame: bool):
    """Answers with the true box, mapped into the frame the processor resized the image to."""
    def answer(conversations, sampling):
        out = []
        for conv in conversations:
            _, box, _ = next(t for t in truth if f"the {t[0]}," in _text(conv))
            part = _image_part(conv)
            resize = process_image(part["image"], min_pixels=part["min_pixels"], max_pixels=part["max_pixels"]).resize
            if in_resized_frame:
                (x1, y1), (x2, y2) = resize.to_resized(box[0], box[1]), resize.to_resized(box[2], box[3])
                box = [round(x1), round(y1), round(x2), round(y2)]
            out.append('```json\n[{"bbox_2d": %s, "label": "x"}]\n```' % json.dumps(box))
        return out
    return answer


def test_grounding_answered_in_resized_frame_scores_100(tmp_path):
    truth = _refcoco(tmp_path)
    task = get_task("refcoco")
    profile = task.profile.overridden({"max_pixels": str(200 * 28 * 28)})  # a resize far from the original
    summary = run_task(task, tmp_path, _oracle(truth, True), tmp_path / "r.jsonl", profile=profile)
    assert summary["score"] == 100.0 and summary["samples"] == 3
    # the same boxes written in original pixels land elsewhere once mapped: the mapping is what makes 100%
    naive = run_task(task, tmp_path, _oracle(truth, False), tmp_path / "naive.jsonl", profile=profile)
    assert naive["score"] < 100.0
    record = ResultsFile(tmp_path / "r.jsonl").read()[1][0]
    assert record["media"][0]["max_pixels"] == 200 * 28 * 28 and record["media"][0]["original_size"] == [1000, 700]


def test_runner_frame_equals_processor_resize(tmp_path):
    truth = _refcoco(tmp_path)
    task = get_task("refcoco")
    profile = task.profile.overridden({"max_pixels": "60000", "min_pixels": "20000"})
    for sample, (_, _, path) in zip(task.read(tmp_path), truth):
        prepared = prepare(task, sample, profile)
        resize = process_image(path, min_pixels=20000, max_pixels=60000).resize
        assert prepared.record["context"]["frame"] == {"original": list(resize.original_size),
                                                       "resized": list(resize.resized_size)}


def test_screenspot_click_in_resized_frame_scores_100(tmp_path):
    (tmp_path / "screenspot_imgs").mkdir()
    Image.new("RGB", (1917, 1083)).save(tmp_path / "screenspot_imgs" / "s.png")
    rows = [{"img_filename": "s.png", "bbox": [100 + 300 * i, 200, 40, 30], "instruction": f"button {i}"}
            for i in range(3)]
    (tmp_path / "screenspot_web.json").write_text(json.dumps(rows))
    centres = {f"button {i}": (120 + 300 * i, 215) for i in range(3)}

    def answer(conversations, sampling):
        out = []
        for conv in conversations:
            assert "The screen's resolution is" in conv[0]["content"]  # the computer_use system prompt
            part = _image_part(conv)
            resize = process_image(part["image"], min_pixels=part["min_pixels"], max_pixels=part["max_pixels"]).resize
            x, y = resize.to_resized(*centres[_text(conv).removeprefix("The user query: ")])
            call = {"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [round(x), round(y)]}}
            out.append(f"<tool_call>\n{json.dumps(call)}\n</tool_call>")
        return out

    task = get_task("screenspot")
    profile = task.profile.overridden({"max_pixels": str(400 * 28 * 28)})
    assert run_task(task, tmp_path, answer, tmp_path / "s.jsonl", profile=profile)["score"] == 100.0


def _chartqa(tmp_path: Path, n: int = 7) -> None:
    (tmp_path / "png").mkdir()
    Image.new("RGB", (60, 40)).save(tmp_path / "png" / "c.png")
    rows = [{"imgname": "c.png", "query": f"value {i}?", "label": str(10 * i)} for i in range(n)]
    rows.append({"imgname": "c.png", "label": "1"})  # malformed: no question
    rows.append({"imgname": "missing.png", "query": "value 99?", "label": "5"})  # media failure
    (tmp_path / "test_human.json").write_text(json.dumps(rows))


class Counting:
    """Answers "value i?" with 10*i for even i, else "wrong"; records what it was asked; can stop mid-run."""

    def __init__(self, stop_after_calls=None):
        self.asked, self.calls, self.stop_after_calls = [], 0, stop_after_calls

    def __call__(self, conversations, sampling):
        if self.stop_after_calls is not None and self.calls >= self.stop_after_calls:
            raise KeyboardInterrupt  # the user's Ctrl-C between batches
        self.calls += 1
        out = []
        for conv in conversations:
            question = _text(conv).split("\n")[0]
            self.asked.append(question)
            i = int(question.split()[1].rstrip("?"))
            out.append(f"{10 * i}." if i % 2 == 0 else "wrong")
        return out


def test_interrupted_run_resumes_without_reanswering(tmp_path):
    _chartqa(tmp_path)
    task, out = get_task("chartqa"), tmp_path / "c.jsonl"
    first = Counting(stop_after_calls=2)
    with pytest.raises(KeyboardInterrupt):
        run_task(task, tmp_path, first, out, batch_size=2)
    assert first.asked == ["value 0?", "value 1?", "value 2?", "value 3?"]
    second = Counting()
    summary = run_task(task, tmp_path, second, out, batch_size=2)
    assert second.asked == ["value 4?", "value 5?", "value 6?"]  # nothing answered twice
    again = Counting()
    assert run_task(task, tmp_path, again, out, batch_size=2) == summary and again.asked == []

    straight = run_task(task, tmp_path, Counting(), tmp_path / "straight.jsonl", batch_size=3)
    assert summary == {**straight, "model": summary["model"]}
    # 4 of 7 right (i = 0, 2, 4, 6); the unreadable image counts as wrong; the question-less row is skipped
    assert summary["samples"] == 8 and summary["score"] == pytest.approx(100 * 4 / 8)
    assert summary["failed"] == 1 and summary["failed_reasons"] == {"media": 1}
    assert summary["skipped"] == 1 and summary["skipped_reasons"] == {"malformed-row": 1}
    assert rescore(out) == summary


def test_rescore_reproduces_and_follows_the_metric(tmp_path, monkeypatch):
    _chartqa(tmp_path, 4)
    out = tmp_path / "c.jsonl"
    summary = run_task(get_task("chartqa"), tmp_path, Counting(), out)
    assert rescore(out) == summary
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[0]["kind"] == "header" and records[0]["profile"]["name"] == "qwen25vl-official"
    ok = [r for r in records[1:] if r.get("status") == "ok"]
    assert {r["id"]: (r["raw"], r["extracted"], r["score"]) for r in ok}["test_human:2"] == ("20.", "20", 1.0)
    assert ok[0]["prompt"] == "value 0?\nAnswer the question using a single word or phrase."
    # rescoring recomputes from the raw answers: a changed stored score does not survive it
    lines = out.read_text().splitlines()
    lines[1:] = [line.replace('"score": 1.0', '"score": 0.0') for line in lines[1:]]
    out.write_text("\n".join(lines) + "\n")
    assert rescore(out) == summary


def test_cut_off_line_is_dropped_and_profile_must_match(tmp_path):
    _chartqa(tmp_path, 3)
    task, out = get_task("chartqa"), tmp_path / "c.jsonl"
    run_task(task, tmp_path, Counting(), out, limit=2)
    with out.open("a") as f:
        f.write('{"kind": "sample", "id": "test_human:2", "sta')  # killed mid-write
    answerer = Counting()
    summary = run_task(task, tmp_path, answerer, out)
    assert answerer.asked == ["value 2?"] and summary["samples"] == 4
    changed = task.profile.overridden({"max_new_tokens": "8"})
    with pytest.raises(InputError, match="max_new_tokens=64"):
        run_task(task, tmp_path, Counting(), out, profile=changed)


def test_profile_overrides():
    profile = get_task("docvqa").profile.overridden({"max_pixels": "1000", "prompt": "Q: {question}\\nA:"})
    assert profile.max_pixels == 1000 and profile.prompt == "Q: {question}\nA:"
    assert profile.name == "qwen25vl-official+overrides"
    with pytest.raises(InputError, match="unknown profile setting 'max_pixel'"):
        profile.overridden({"max_pixel": "1"})
    with pytest.raises(InputError, match="max_new_tokens='lots'"):
        profile.overridden({"max_new_tokens": "lots"})


def test_a_refused_conversation_fails_alone(tmp_path):
    _chartqa(tmp_path, 4)
    inner = Counting()

    def answerer(conversations, sampling):
        if any(_text(c).startswith("value 1?") for c in conversations):
            raise InputError("video 0: cannot decode")  # what the processor raises for a broken item
        return inner(conversations, sampling)

    summary = run_task(get_task("chartqa"), tmp_path, answerer, tmp_path / "out" / "c.jsonl", batch_size=4)
    assert summary["failed_reasons"] == {"model-input": 1, "media": 1}
    assert inner.asked == ["value 0?", "value 2?", "value 3?"]  # the batch was retried one by one
    failed = [r for r in ResultsFile(tmp_path / "out" / "c.jsonl").read()[1] if r["status"] == "failed"]
    assert any("cannot decode" in r["reason"] and r["prompt"].startswith("value 1?") for r in failed)
