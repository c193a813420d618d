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


def test_ray_equals_local_on_the_rule_pipeline(data, tmp_path):
    _, path = data
    pipeline = load_pipeline("rules")
    local = run_pipeline(pipeline, path, tmp_path / "local", shard_size=8, progress=False)
    on_ray = run_pipeline(pipeline, path, tmp_path / "ray", shard_size=8, engine="ray", workers=2, progress=False)
    assert _outputs(tmp_path / "local") == _outputs(tmp_path / "ray")
    assert on_ray["engine"] == "ray" and on_ray["kept"] == local["kept"] == 36 - len(DEFECTS)
    assert sum(local["dropped"].values()) == len(DEFECTS)


def test_ray_model_operator_in_an_actor_equals_local(data, tmp_path):
    folder, path = data
    tiny = str(make_tiny_checkpoint(folder / "tiny"))
    pipeline = Pipeline([{"op": "answer_text"}, {"op": "flag", "stat": "answer_empty"},
                         {"op": "answer_scores", "model": tiny, "max_new_tokens": 4, "text_only": True,
                          "batch_size": 8, "actors": 1},
                         {"op": "threshold", "stat": "answer_clarity", "min": 3}])
    run_pipeline(pipeline, path, tmp_path / "local", shard_size=16, progress=False)
    run_pipeline(pipeline, path, tmp_path / "ray", shard_size=16, engine="ray", progress=False)
    assert _outputs(tmp_path / "local") == _outputs(tmp_path / "ray")
    raw = [json.loads(line)["stats"].get("answer_raw") for line in (tmp_path / "ray" / "stats.jsonl").open()]
    assert sum(r is not None for r in raw) == 35  # every row but the empty answer went to the judge
