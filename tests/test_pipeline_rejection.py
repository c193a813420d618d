"""Rejection sampling keeps exactly the scripted candidates whose extracted answer matches; the code sandbox."""

import json
import time

import pytest

from qwen25vl.data.pipeline import Pipeline, run_pipeline
from qwen25vl.data.pipeline.rejection import check_answer, code_of
from qwen25vl.data.pipeline.sandbox import run_python
from qwen25vl.data.records import read_records

SETTINGS = {"tolerance": 0.01, "iou": 0.5, "tiou": 0.5, "timeout_s": 3.0, "memory_mb": 256}
ADD = "def add(a, b):\n    return a + b\n"
TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"

# (question, reference answer, meta, candidates with the verdict each must get)
CASES = [
    ("How many apples are on the table?", "There are 12 apples.", {"task": "number"}, [
        ("12", "correct"), ("I count 12.05 apples", "correct"), ("about 13", "wrong"), ("many", "no_answer"),
        ("一共有十二个苹果在桌子上面", "code_switch"), ("12 " + "and more words " * 400, "too_long")]),
    ("Which one is red? A. car B. bus C. tree D. sky", "B", {"task": "choice", "options": ["car", "bus", "tree",
                                                                                            "sky"]}, [
        ("The answer is (B).", "correct"), ("B", "correct"), ("C. tree", "wrong"),
        ("red red red red red red red red red red red red red red", "repetition")]),
    ("Outline the dog.", '[{"bbox_2d": [10, 10, 50, 50], "label": "dog"}]', {"task": "box"}, [
        ('[{"bbox_2d": [12, 11, 52, 49]}]', "correct"), ('[{"bbox_2d": [60, 60, 90, 90]}]', "wrong"),
        ("I see no dog.", "no_answer")]),
    ("When does the door open?", "The event happens in 10.0 - 20.0 seconds.", {"task": "span"}, [
        ("From 11.0 to 19.5 seconds.", "correct"), ("It happens in 30 - 40 seconds.", "wrong")]),
    ("Write add(a, b).", "```python\n" + ADD + "```", {"task": "code", "tests": TESTS}, [
        ("Here:\n```python\n" + ADD + "```", "correct"), ("```python\ndef add(a, b):\n    return a - b\n```", "wrong"),
        ("```python\ndef add(a, b):\n    while True:\n        pass\n```", "timeout")]),
]


class Scripted:
    """Replies to each prompt with its scripted candidates, in order (the op asks n copies of a prompt)."""

    def __init__(self):
        self.by_prompt = {q: [c for c, _ in cands] for q, _, _, cands in CASES}
        self.sampling = []

    def __call__(self, conversations, sampling):
        self.sampling.append(sampling)
        return [self.by_prompt[c[-1]["content"][-1]["text"]].pop(0) for c in conversations]


def _record(question, answer, meta):
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": question}]},
                         {"role": "assistant", "content": answer}], "meta": meta}


def test_rejection_keeps_exactly_the_matching_candidates(tmp_path):
    n = max(len(c) for *_, c in CASES)
    padded = [(q, a, m, c + [("", "no_answer")] * (n - len(c))) for q, a, m, c in CASES]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(_record(q, a, m)) + "\n" for q, a, m, _ in padded))
    answerer = Scripted()
    for q, _, _, cands in padded:
        answerer.by_prompt[q] = [c for c, _ in cands]
    pipeline = Pipeline([{"op": "rejection_sample", "n": n, "answerer": answerer, "timeout_s": 2,
                          "sampling": {"temperature": 0.7, "seed": 3}},
                         {"op": "threshold", "stat": "rs_correct", "min": 1, "reason": "no_correct"}])
    summary = run_pipeline(pipeline, path, tmp_path / "out", progress=False)
    stats = [json.loads(line)["stats"] for line in (tmp_path / "out" / "stats.jsonl").open()]
    for (_, _, _, cands), s in zip(padded, stats):
        assert [c["verdict"] for c in s["candidates"]] == [v for _, v in cands]
        assert s["rs_correct"] == sum(v == "correct" for _, v in cands)
    assert answerer.sampling[0]["temperature"] == 0.7 and answerer.sampling[0]["seed"] == 3
    sft = [r.messages for r in read_records(tmp_path / "out" / "sft.jsonl")]
    want = [(q, c) for q, _, _, cands in padded for c, v in cands if v == "correct"]
    assert [(m[0]["content"][0]["text"], m[-1]["content"]) for m in sft] == want
    assert summary["sft_records"] == len(want) == 7
    pairs = list(read_records(tmp_path / "out" / "dpo.jsonl"))
    assert all(p.chosen[-1]["content"] in {c for _, c in want} for p in pairs)
    assert all(p.rejected[-1]["content"] not in {c for _, c in want} for p in pairs)
    assert summary["dpo_pairs"] == len(pairs) == 7  # every row pairs its correct ones with as many wrong ones


@pytest.mark.parametrize("candidate, verdict", [("0.0", "correct"), ("1e-9", "correct"), ("0.5", "wrong")])
def test_number_tolerance_near_zero(candidate, verdict):
    assert check_answer("number", candidate, "0", {}, SETTINGS) == verdict


def test_code_of_takes_the_last_fence():
    assert code_of("a\n```python\nx = 1\n```\nthen\n```\ny = 2\n```") == "y = 2\n"
    assert code_of("x = 3") == "x = 3"


def test_sandbox_kills_an_infinite_loop_within_its_limit():
    start = time.monotonic()
    result = run_python("while True:\n    pass\n", timeout_s=1.0)
    assert result.reason == "timeout" and not result.passed
    assert time.monotonic() - start < 3.0


def test_sandbox_stops_a_memory_hog():
    result = run_python("chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 2**20))\n", memory_mb=200,
                        timeout_s=10)
    assert result.reason == "memory" and not result.passed


def test_sandbox_has_no_network_and_reports_failures():
    result = run_python("import socket\nsocket.create_connection(('127.0.0.1', 9))\n")
    assert result.reason == "failed" and "network access is disabled" in result.stderr
    assert run_python(ADD + TESTS).passed
    failed = run_python(ADD + "assert add(1, 1) == 3\n")
    assert failed.reason == "failed" and "AssertionError" in failed.stderr


def test_sandbox_network_namespace_holds_when_the_stub_is_bypassed():
    from qwen25vl.data.pipeline.sandbox import _unshare_prefix

    if not _unshare_prefix():
        pytest.skip("unprivileged network namespaces (unshare -rn) are not allowed on this machine")
    bypass = "import _socket\ns = _socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', 22))\n"
    result = run_python(bypass)
    assert result.reason == "failed" and "Network is unreachable" in result.stderr
