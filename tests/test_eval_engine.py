"""The batched engine path on the tiny random model: plumbing, logged settings, resume (answers are garbage)."""

import json

import pytest
from PIL import Image

import qwen25vl
from qwen25vl.eval.results import ResultsFile, rescore
from qwen25vl.eval.runner import EngineAnswerer, run_task
from qwen25vl.eval.task import get_task
from qwen25vl.testing.checkpoint import make_tiny_checkpoint


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    return qwen25vl.load(make_tiny_checkpoint(tmp_path_factory.mktemp("tiny")), threads=1)


class Spy(EngineAnswerer):
    def __init__(self, vlm):
        super().__init__(vlm)
        self.batches = []

    def __call__(self, conversations, sampling):
        self.batches.append(len(conversations))
        return super().__call__(conversations, sampling)


def test_docvqa_through_the_batched_engine_resumes(vlm, tmp_path):
    (tmp_path / "documents").mkdir()
    rows = []
    for i in range(5):
        Image.new("RGB", (56 + 28 * i, 84), (40 * i, 0, 0)).save(tmp_path / "documents" / f"{i}.png")
        rows.append({"questionId": i, "question": f"What is {i}?", "image": f"documents/{i}.png", "answers": ["x"]})
    (tmp_path / "val_v1.0.json").write_text(json.dumps({"data": rows}))
    task = get_task("docvqa")
    profile = task.profile.overridden({"max_new_tokens": "3", "max_pixels": str(28 * 28 * 8)})
    out = tmp_path / "out" / "docvqa.jsonl"
    spy = Spy(vlm)
    summary = run_task(task, tmp_path, spy, out, profile=profile, batch_size=2, limit=3, model="tiny")
    assert spy.batches == [2, 1] and summary["samples"] == 3 and summary["failed"] == 0
    header, records = ResultsFile(out).read()
    assert header["profile"]["max_new_tokens"] == 3 and header["model"] == "tiny"
    assert all(isinstance(r["raw"], str) and r["finish_reason"] in ("stop", "length") for r in records)
    assert records[0]["media"][0]["max_pixels"] == 28 * 28 * 8
    resumed = Spy(vlm)
    summary = run_task(task, tmp_path, resumed, out, profile=profile, batch_size=2, model="tiny")
    assert resumed.batches == [2] and summary["samples"] == 5  # only the two not yet answered
    assert rescore(out) == summary
