"""Running pipelines: resuming from per-shard markers, the process pool equal to one process, the CLI."""

import json

import pytest

from qwen25vl.cli import main
from qwen25vl.data.pipeline import Pipeline, StatsOp, register, run_pipeline
from qwen25vl.data.pipeline.synthetic import make_records

VISITS: list[str] = []


@register("test_visits")
class Visits(StatsOp):
    """Records which rows it computed on (tests only; runs in-process)."""

    def compute(self, rows):
        VISITS.extend(r["id"] for r in rows)
        return [{"visited": True} for _ in rows]


SPECS = [{"op": "answer_text"}, {"op": "media_hash"}, {"op": "flag", "stat": "answer_empty"},
         {"op": "exact_dup", "stat": "media_hash"}, {"op": "minhash"}, {"op": "near_dup", "threshold": 0.9}]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    records = make_records(30, folder, images=20)  # records 20-29 reuse the images of records 0-9
    records[4]["messages"][-1]["content"] = " "
    path = folder / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder, path


class Killed(Exception):
    pass


def _outputs(out):
    summary = json.loads((out / "summary.json").read_text())
    return (out / "kept.jsonl").read_text(), summary["operators"], summary["dropped"]


def test_a_killed_run_resumes_without_redoing_finished_shards(data, tmp_path):
    folder, path = data
    pipeline = Pipeline([{"op": "test_visits"}] + SPECS)
    finished = []

    def kill_after_two(stage, shard):
        finished.append(shard)
        if len(finished) == 2:
            raise Killed

    VISITS.clear()
    with pytest.raises(Killed):
        run_pipeline(pipeline, path, tmp_path / "out", shard_size=7, progress=False, on_shard=kill_after_two)
    assert len(VISITS) == 14
    torn = tmp_path / "out" / "work" / "stage0" / "shard-00002.jsonl"
    torn.write_text('{"half": ')  # killed while writing: rows without a marker are redone
    VISITS.clear()
    summary = run_pipeline(pipeline, path, tmp_path / "out", shard_size=7, progress=False)
    assert VISITS == [f"in.jsonl:{i}" for i in range(15, 31)]  # shards 0 and 1 (lines 1-14) were not redone
    assert summary["shards"] == 5
    VISITS.clear()
    run_pipeline(pipeline, path, tmp_path / "fresh", shard_size=7, progress=False)
    assert len(VISITS) == 30
    assert _outputs(tmp_path / "out") == _outputs(tmp_path / "fresh")
    VISITS.clear()
    run_pipeline(pipeline, path, tmp_path / "out", shard_size=7, progress=False)
    assert VISITS == []  # everything finished: nothing recomputed


def test_markers_of_another_pipeline_are_not_reused(data, tmp_path):
    _, path = data
    VISITS.clear()
    run_pipeline(Pipeline([{"op": "test_visits"}, "answer_text"]), path, tmp_path / "out", shard_size=10,
                 progress=False)
    VISITS.clear()
    summary = run_pipeline(Pipeline([{"op": "test_visits"}, "repetition"]), path, tmp_path / "out", shard_size=10,
                           progress=False)
    assert len(VISITS) == 30 and "ngram_repeat" in summary["histograms"]


def test_process_pool_equals_one_process(data, tmp_path):
    _, path = data
    one = run_pipeline(Pipeline(SPECS), path, tmp_path / "one", shard_size=8, progress=False)
    pool = run_pipeline(Pipeline(SPECS), path, tmp_path / "pool", shard_size=8, workers=2, progress=False)
    assert _outputs(tmp_path / "one") == _outputs(tmp_path / "pool")
    # record 24 reuses record 4's image, but record 4 was dropped (empty answer) before dedup: 9 duplicates
    assert one["dropped"] == {"answer_empty": 1, "duplicate_media_hash": 9} == pool["dropped"]


def test_cli_run_and_stats(data, tmp_path, capsys):
    _, path = data
    spec = tmp_path / "p.yaml"
    spec.write_text("operators:\n" + "".join(f"  - {json.dumps(s)}\n" for s in SPECS))
    out = tmp_path / "out"
    assert main(["data", "run", str(spec), "--in", str(path), "--out", str(out), "--shard-size", "10",
                 "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "exact_dup" in table and "duplicate_media_hash=9" in table and "total: 30 in, 20 kept" in table
    assert main(["data", "stats", str(out), "--stat", "answer_chars"]) == 0
    shown = capsys.readouterr().out
    assert "answer_chars (min" in shown and shown.count("#") >= 1
    assert main(["data", "stats", str(out), "--stat", "nope"]) == 2
    assert main(["data", "run", str(spec), "--in", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


KILLER = '''
import os, signal, sys
from pathlib import Path
from qwen25vl.data.pipeline import StatsOp, register
from qwen25vl.cli import main

@register("kill_once")
class KillOnce(StatsOp):
    """Logs the rows it sees; the first run (no flag file yet) kills its own process at row `at`."""
    def __init__(self, at, flag, log):
        super().__init__(at=at, flag=flag, log=log)
        self.at, self.flag, self.log = at, Path(flag), Path(log)
    def compute(self, rows):
        with self.log.open("a") as f:
            f.write("".join(r["id"] + "\\n" for r in rows))
        if any(r["id"] == self.at for r in rows) and not self.flag.exists():
            self.flag.write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)
        return [{} for _ in rows]

sys.exit(main(sys.argv[1:]))
'''


def test_kill_9_mid_run_then_resume(data, tmp_path):
    import subprocess
    import sys

    _, path = data
    log, flag = tmp_path / "seen.log", tmp_path / "flag"
    spec = tmp_path / "p.json"
    spec.write_text(json.dumps([{"op": "kill_once", "at": "in.jsonl:17", "flag": str(flag), "log": str(log)}]
                               + SPECS))
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    command = [sys.executable, str(script), "data", "run", str(spec), "--in", str(path), "--out", str(tmp_path / "out"),
               "--shard-size", "8", "--quiet"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert first.returncode == -9 and flag.exists()
    assert log.read_text().split() == [f"in.jsonl:{i}" for i in range(1, 25)]  # died in shard 2 (lines 17-24)
    log.unlink()
    second = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert log.read_text().split() == [f"in.jsonl:{i}" for i in range(17, 31)]  # shards 0 and 1 were not redone
    assert "total: 30 in, 20 kept" in second.stdout
