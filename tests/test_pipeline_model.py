"""Model-based operators: robust parsing of judge answers, batching through the engine, a tiny random checkpoint end
to end (its answers are garbage: every malformed one counted, none raised), the taxonomy file."""

import json

import pytest

from qwen25vl.data.pipeline import Pipeline, build_op, run_pipeline
from qwen25vl.data.pipeline import engine
from qwen25vl.data.pipeline.judge import INTERLEAVED, load_taxonomy, parse_domain, parse_scores
from qwen25vl.data.pipeline.synthetic import make_records
from qwen25vl.errors import ConfigError
from qwen25vl.testing.checkpoint import make_tiny_checkpoint

FIELDS = ("text_quality", "image_text_relevance")


@pytest.mark.parametrize("text, expected", [
    ('{"text_quality": 4, "image_text_relevance": 2}', {"text_quality": 4, "image_text_relevance": 2}),
    ('Sure! ```json\n{"Text Quality": "5", "image-text relevance": 3.0}\n```', {"text_quality": 5,
                                                                              "image_text_relevance": 3}),
    ("Text quality: 3/5\nImage text relevance = 1", {"text_quality": 3, "image_text_relevance": 1}),
    ('{"text_quality": 7, "image_text_relevance": 2}', None),  # out of range
    ('{"text_quality": 2.5, "image_text_relevance": 2}', None),  # not a score
    ("text_quality: 4", None),  # a field missing
    ('{"text_quality": true, "image_text_relevance": 2}', None),
    ("ɐ 3 garbage ]]{", None),
    ("", None),
    (None, None),
])
def test_parse_scores(text, expected):
    assert parse_scores(text, FIELDS) == expected


def test_taxonomy_file_and_domain_parsing(tmp_path):
    taxonomy = load_taxonomy()
    assert len(taxonomy) == 8 and sum(len(s) for s in taxonomy.values()) == 30
    assert taxonomy["coding"] == ("code_compile", "code_generate", "code_translate", "code_understand")
    assert parse_domain('{"domain": "math", "subcategory": "code_translate"}', taxonomy) == ("coding",
                                                                                              "code_translate")
    assert parse_domain("I think this is Object Detection, maybe geometry.", taxonomy) == ("grounding",
                                                                                          "object_detection")
    assert parse_domain("code_generatex", taxonomy) is None and parse_domain("coding", taxonomy) is None
    bad = tmp_path / "t.yaml"
    bad.write_text("a: [x, y]\nb: [y]\n")
    with pytest.raises(ConfigError, match="'y' is in both"):
        load_taxonomy(bad)


class Scripted:
    """An answerer replying from a list, in order; records each call's batch size."""

    def __init__(self, replies):
        self.replies, self.calls = list(replies), []

    def __call__(self, conversations, sampling):
        self.calls.append(len(conversations))
        assert all(c[0]["content"][-1]["type"] == "text" for c in conversations)
        return [self.replies.pop(0) for _ in conversations]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    path = folder / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in make_records(6, folder)))
    return path


def test_judge_batches_and_counts_malformed_answers(records, tmp_path):
    good = json.dumps(dict.fromkeys(INTERLEAVED, 4))
    low = "Text quality: 1. Image-text relevance: 2. Information complementarity: 3. Information density balance: 4"
    replies = [good, "no idea", low, good, '{"text_quality": 9}', good]
    answerer = Scripted(replies)
    pipeline = Pipeline([{"op": "interleaved_scores", "answerer": answerer, "batch_size": 4},
                         {"op": "threshold", "stat": "text_quality", "min": 2, "reason": "low_quality"}])
    summary = run_pipeline(pipeline, records, tmp_path / "out", progress=False)
    assert answerer.calls == [4, 2]
    judge, rule = summary["operators"][1:]
    assert judge["notes"] == {"interleaved_malformed": 2}
    assert rule["dropped"] == {"low_quality:low": 1, "low_quality:missing": 2}
    stats = [json.loads(line)["stats"] for line in (tmp_path / "out" / "stats.jsonl").open()]
    assert [s["text_quality"] for s in stats] == [4, None, 1, 4, None, 4]
    assert stats[2]["information_density_balance"] == 4 and stats[1]["interleaved_raw"] == "no idea"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(make_tiny_checkpoint(tmp_path_factory.mktemp("tiny")))


def test_tiny_checkpoint_end_to_end(records, tiny, tmp_path):
    loads = engine.LOADS["count"]
    common = {"model": tiny, "max_new_tokens": 6, "max_pixels": 28 * 28 * 4}
    pipeline = Pipeline([{"op": "interleaved_scores", "batch_size": 4, **common},
                         {"op": "classify_domain", "batch_size": 6, **common},
                         {"op": "query_scores", "batch_size": 6, "text_only": True, **common},
                         {"op": "threshold", "stat": "text_quality", "min": 1}])
    summary = run_pipeline(pipeline, records, tmp_path / "out", progress=False)
    assert engine.LOADS["count"] == loads + 1  # one model for the three operators of this process
    stats = [json.loads(line)["stats"] for line in (tmp_path / "out" / "stats.jsonl").open()]
    assert len(stats) == 6 == summary["in"]
    checked = [("interleaved", "text_quality"), ("domain", "subcategory"), ("query", "query_relevance")]
    for entry, (prefix, field) in zip(summary["operators"][1:4], checked):
        flagged = [s[f"{prefix}_malformed"] for s in stats]
        assert flagged == [s[field] is None for s in stats]
        assert entry["notes"] == {f"{prefix}_malformed": sum(flagged)} and entry["in"] == entry["kept"] == 6
        assert all(s[f"{prefix}_raw"] for s in stats)  # the model did answer something
    assert all(s["domain"] is None or s["subcategory"] in load_taxonomy()[s["domain"]] for s in stats)
    rule = summary["operators"][4]
    assert rule["dropped"].get("text_quality:missing", 0) == sum(s["interleaved_malformed"] for s in stats)


def test_judge_batched_equals_one_at_a_time(records, tiny):
    from qwen25vl.data.pipeline.runner import read_rows

    rows = list(read_rows([records]))[:4]
    common = {"model": tiny, "max_new_tokens": 5, "text_only": True}
    batched = build_op({"op": "answer_scores", "batch_size": 4, **common}).compute(rows)
    alone = [build_op({"op": "answer_scores", **common}).compute([r])[0] for r in rows]
    assert [s["answer_raw"] for s in batched] == [s["answer_raw"] for s in alone]
    assert len({s["answer_raw"] for s in batched}) > 1  # the prompts differ, so do the answers
