"""Rule operators of the data pipeline: each catches its planted defect and passes clean records; counts reconcile."""

import json
import random

import pytest

from qwen25vl.data.pipeline import Pipeline, build_op, load_pipeline, run_pipeline
from qwen25vl.data.pipeline.dedup import shingles
from qwen25vl.data.pipeline.media_rules import coords_outside
from qwen25vl.data.pipeline.runner import apply_global, apply_ops
from qwen25vl.data.pipeline.synthetic import DEFECTS, EXPECTED_REASON, IMAGE_SIZE, make_records, plant
from qwen25vl.data.pipeline.text_rules import foreign_script_ratio, format_error, line_repeat, ngram_repeat
from qwen25vl.errors import ConfigError, InputError
from qwen25vl.tasks.coords import Frame

RULES = "rules"  # the packaged preset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """40 clean records, then one record per defect (near_dup / media_dup copy a clean record kept earlier)."""
    folder = tmp_path_factory.mktemp("rules")
    clean = make_records(40, folder)
    rng = random.Random(3)
    planted = [plant(clean[j], d, rng, earlier=clean[20 + j]) for j, d in enumerate(DEFECTS)]
    records = clean[len(DEFECTS):] + planted
    path = folder / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "not json\n" + '{"messages": 3}\n')
    return folder, path, len(clean) - len(DEFECTS), planted


@pytest.fixture(scope="module")
def ruled(dataset):
    folder, path, _, _ = dataset
    summary = run_pipeline(load_pipeline(RULES), path, folder / "out", shard_size=9, progress=False)
    return summary, folder / "out"


def test_each_rule_catches_its_defect_and_keeps_clean_records(dataset, ruled):
    _, _, n_clean, _ = dataset
    summary, out = ruled
    dropped = {json.loads(line)["id"]: json.loads(line)["reason"] for line in (out / "dropped.jsonl").open()}
    first_planted = n_clean + 1  # line numbers are 1-based; planted records follow the clean ones
    expected = {f"in.jsonl:{first_planted + k}": EXPECTED_REASON[d] for k, d in enumerate(DEFECTS)}
    expected.update({f"in.jsonl:{first_planted + len(DEFECTS)}": "unreadable",
                     f"in.jsonl:{first_planted + len(DEFECTS) + 1}": "no_messages"})
    assert dropped == expected
    kept = [json.loads(line) for line in (out / "kept.jsonl").open()]
    assert len(kept) == n_clean == summary["kept"]


def test_counts_reconcile_per_operator_and_overall(ruled):
    summary, _ = ruled
    ops = summary["operators"]
    assert ops[0]["in"] == summary["in"]
    for before, entry in zip(ops, ops[1:]):
        assert entry["in"] == before["kept"]
        assert entry["in"] == entry["kept"] + sum(entry["dropped"].values())
    assert ops[-1]["kept"] == summary["kept"]
    assert summary["in"] == summary["kept"] + sum(summary["dropped"].values())
    assert summary["dropped"]["near_duplicate"] == 1 and summary["dropped"]["duplicate_media_hash"] == 1


def test_histograms_and_kept_records_are_training_records(ruled):
    from qwen25vl.data.records import read_records

    summary, out = ruled
    hist = summary["histograms"]["ngram_repeat"]
    assert sum(hist["counts"]) == summary["in"] - 2  # every readable row was measured
    assert hist["max"] > 0.9 and hist["counts"][-1] == 1  # the repeated answer alone in the top bin
    records = list(read_records(out / "kept.jsonl"))
    assert records and all((r.root / r.messages[0]["content"][0]["image"]).is_file() for r in records)


@pytest.mark.parametrize("text, reason", [
    ('```json\n[{"a": 1}, {"b": [2, 3]}]\n```', None),
    ('```json\n[{"a": 1}, {"b": [2, 3]\n```', "unbalanced_json"),
    ('{"a": "}"}', None),  # a bracket inside a string
    ('[1, 2]]', "unbalanced_json"),
    ('<html><body><p data-bbox="1 1 2 2">x</p></body></html>', None),
    ('<html><body><p data-bbox="1 1 2 2">x', "broken_html"),
    ('<table data-bbox="1 1 9 9"><tr><td>a</td></tr></table><div data-bbox="1 1 9 9">cut', "broken_html"),
    ('<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>', None),
    ('<tool_call>\n{"name": "f", "arguments": {}}', "unterminated_tool_call"),
    ('<tool_call>\nnot json at all\n</tool_call>', "malformed_tool_call"),
    ("A plain answer with [brackets] in it.", None),
])
def test_format_error(text, reason):
    assert format_error(text) == reason


def test_repetition_measures():
    assert ngram_repeat("one two three four five six seven") == 0.0
    assert ngram_repeat("a b c a b c a b c a b c") == pytest.approx(1 - 3 / 10)
    assert line_repeat("x\ny\nx\nx\n\n") == pytest.approx(0.5)
    assert ngram_repeat("哈哈哈哈哈哈哈哈哈哈哈哈哈哈") > 0.9  # unspaced text counts characters


def test_code_switching_unless_asked():
    question = "What colour is the car?"
    assert foreign_script_ratio(question, "The car is red.") == 0.0
    assert foreign_script_ratio(question, "The car 是红色的") == pytest.approx(4 / 10)
    assert foreign_script_ratio("Translate 'red car' into Chinese.", "红色的车") == 0.0
    assert foreign_script_ratio("这辆车是什么颜色？", "红色 (red)") == pytest.approx(3 / 5)


def test_coordinates_against_the_resized_frame():
    frame = Frame((1000, 500), (500, 250))
    row = {"messages": [{"role": "user", "content": [{"type": "image", "image": "x.png"}]},
                        {"role": "assistant", "content": '[{"bbox_2d": [10, 10, 990, 490]}, {"point_2d": [1200, 3]}]'}]}
    assert coords_outside(row, [frame]) == 1  # the point is outside; the box maps inside
    assert coords_outside(row, [frame], frame="resized") == 2  # as resized pixels: the far corner and the point


def test_tokens_count_images_and_catch_pad_tokens(dataset):
    folder, _, _, _ = dataset
    op = build_op("tokens")
    clean = make_records(1, folder / "one")[0]
    clean_row = {**clean, "root": str(folder / "one")}
    bad = json.loads(json.dumps(clean_row))
    bad["messages"][0]["content"][1]["text"] += " <image>"
    stats = op.compute([clean_row, bad])
    assert [s["image_token_mismatch"] for s in stats] == [False, True]
    w, h = IMAGE_SIZE
    no_image = json.loads(json.dumps(clean_row))
    del no_image["messages"][0]["content"][0]
    assert stats[0]["num_tokens"] - op.compute([no_image])[0]["num_tokens"] == (w // 28) * (h // 28) + 2


def test_record_check_and_unreadable_media(dataset):
    folder, _, _, _ = dataset
    clean = {**make_records(1, folder / "two")[0], "root": str(folder / "two")}
    typo = json.loads(json.dumps(clean))
    typo["messages"][0]["content"][0]["max_pixel"] = 1000
    missing = json.loads(json.dumps(clean))
    missing["messages"][0]["content"][0]["image"] = "images/none.png"
    checked = build_op("record_check").compute([clean, typo])
    assert checked[0] == {"record_error": None} and "max_pixel" in checked[1]["record_error"]
    bounds = build_op("frame_bounds").compute([clean, missing])
    assert bounds[0] == {"coords_outside": 0, "media_error": None}
    assert bounds[1]["coords_outside"] is None and "none.png" in bounds[1]["media_error"]


def _row(i, stats):
    return {"id": f"r{i}", "idx": i, "stats": dict(stats), "dropped": None}


def test_filters_decide_from_stats_alone():
    threshold = build_op({"op": "threshold", "stat": "x", "min": 1, "max": 3, "reason": "x_range"})
    assert [threshold.decide({"x": v}) for v in (0, 1, 3, 4, None)] == [
        "x_range:low", None, None, "x_range:high", "x_range:missing"]
    flag = build_op({"op": "flag", "stat": "err", "when": {"domain": "coding"}})
    assert flag.decide({"err": "bad", "domain": "coding"}) == "err:bad"
    assert flag.decide({"err": "bad", "domain": "math"}) is None
    keep = build_op({"op": "keep_values", "stat": "domain", "values": ["coding"]})
    assert [keep.decide({"domain": d}) for d in ("coding", "math")] == [None, "domain:other"]
    with pytest.raises(InputError, match="no stat 'x'"):
        threshold.decide({"y": 1})


def test_rows_dropped_earlier_skip_later_operators():
    rows = [_row(i, {"x": i}) for i in range(4)]
    ops = Pipeline([{"op": "threshold", "stat": "x", "max": 1}, {"op": "answer_text"}]).ops
    for r in rows:
        r["messages"] = [{"role": "assistant", "content": "hi"}]
    apply_ops(ops, 0, rows)
    assert [r["dropped"] for r in rows[2:]] == [{"op": 0, "reason": "x:high"}] * 2
    assert ["answer_chars" in r["stats"] for r in rows] == [True, True, False, False]


def test_dedup_keeps_the_first_in_input_order():
    exact = build_op({"op": "exact_dup", "stat": "h"})
    rows = [_row(i, {"h": h}) for i, h in enumerate(["a", None, "b", "a", None, "b"])]
    apply_global(exact, 5, list(reversed(rows)))  # handed over in any order: decided in idx order
    assert [r["dropped"] and r["dropped"]["reason"] for r in rows] == [None, None, None, "duplicate_h", None,
                                                                       "duplicate_h"]
    sig = build_op({"op": "minhash", "num_perm": 64})
    text = "the quick brown fox jumps over the lazy dog near the river bank today"
    rows = [_row(i, {"minhash": sig.signature(t)}) for i, t in
            enumerate([text, "a completely different sentence about apples and pears", text + " again"])]
    apply_global(build_op({"op": "near_dup", "threshold": 0.7}), 0, rows)
    assert [r["dropped"] is None for r in rows] == [True, True, False]
    assert shingles("One two", 3) == [b"one two"]


def test_pipeline_files_and_errors(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"op": "answer_text"}, {"op": "flag", "stat": "answer_empty"}]))
    assert [op.label for op in load_pipeline(path).ops] == ["answer_text", "flag:answer_empty"]
    with pytest.raises(ConfigError, match="unknown operator 'nope'"):
        Pipeline([{"op": "nope"}])
    with pytest.raises(ConfigError, match="bad settings"):
        Pipeline([{"op": "answer_text", "typo": 1}])
    with pytest.raises(ConfigError, match="give min, max or both"):
        Pipeline([{"op": "threshold", "stat": "x"}])
    (tmp_path / "bad.yaml").write_text("operators: [unclosed")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_pipeline(tmp_path / "bad.yaml")
    assert Pipeline(["answer_text", {"op": "exact_dup"}, "minhash", {"op": "near_dup"}]).stages() == [
        ("rows", 0, 1), ("global", 1, 2), ("rows", 2, 3), ("global", 3, 4)]


def test_presets_by_name():
    assert load_pipeline("rules").ops[-1].op_name == "near_dup"
    with pytest.raises(ConfigError, match=r"does not exist \(presets: rules\)"):
        load_pipeline("nope")
