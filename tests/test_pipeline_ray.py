"""The Ray Data path gives the same kept records and counts as the local path (one Ray session for the module)."""

import json
import random

import pytest

from qwen25vl.data.pipeline import Pipeline, load_pipeline, run_pipeline
from qwen25vl.data.pipeline.synthetic import DEFECTS, make_records, plant
from qwen25vl.testing.checkpoint import make_tiny_checkpoint

ray = pytest.importorskip("ray", reason="the Ray path needs the data extra (ray[data])")


@pytest.fixture(scope="module", autouse=True)
def session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray")
    clean = make_records(36, folder)
    rng = random.Random(5)
    records = clean[len(DEFECTS):] + [plant(clean[j], d, rng, earlier=clean[20 + j]) for j, d in enumerate(DEFECTS)]
    path = folder / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder, path


def _outputs(out):
    summary = json.loads((out / "summary.json").read_text())
    return (out / "kept.jsonl").read_text(), summary["operators"], summary["histograms"]


def test_ray_equals_local_rules_dedup_and_a_model_operator_in_an_actor(data, tmp_path, monkeypatch):
    folder, path = data
    tiny = str(make_tiny_checkpoint(folder / "tiny"))
    rules = load_pipeline("rules").specs
    judge = {"op": "answer_scores", "model": tiny, "max_new_tokens": 4, "text_only": True, "batch_size": 8,
             "actors": 1}
    pipeline = Pipeline(rules[:-2] + [judge] + rules[-2:])  # the judge's stats, then the global dedup on Ray too
    local = run_pipeline(pipeline, path, tmp_path / "local", shard_size=8, progress=False)
    on_ray = run_pipeline(pipeline, path, tmp_path / "ray", shard_size=8, engine="ray", workers=2, progress=False)
    assert _outputs(tmp_path / "local") == _outputs(tmp_path / "ray")
    assert on_ray["engine"] == "ray" and on_ray["in"] == local["in"] == 36
    judged = [json.loads(line)["stats"].get("answer_raw") for line in (tmp_path / "ray" / "stats.jsonl").open()]
    dups = {"near_duplicate": 1, "duplicate_media_hash": 1}
    rule_drops = sum(v for k, v in local["dropped"].items() if k not in dups)
    assert rule_drops == len(DEFECTS) - 2 and all(local["dropped"][k] == v for k, v in dups.items())
    assert sum(r is not None for r in judged) == 36 - rule_drops  # the judge saw exactly the rows the rules kept
    assert on_ray["kept"] == 36 - len(DEFECTS)
    from qwen25vl.data.pipeline import ray_exec

    def no_work(*args):
        raise AssertionError("a finished Ray run must not run a stage again")

    monkeypatch.setattr(ray_exec, "run_rows_stage", no_work)
    again = run_pipeline(pipeline, path, tmp_path / "ray", shard_size=8, engine="ray", progress=False)
    assert again["operators"] == on_ray["operators"]  # resumed from the Ray run's markers
