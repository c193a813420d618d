"""`qwen25vl eval TASK`, `eval rescore`, `eval report`: outputs, overrides in the results, errors before loading."""

import json

import pytest
from PIL import Image

from qwen25vl.cli import main
from qwen25vl.testing.checkpoint import make_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


def _chartqa(folder):
    (folder / "png").mkdir(parents=True)
    Image.new("RGB", (84, 56)).save(folder / "png" / "c.png")
    rows = [{"imgname": "c.png", "query": f"value {i}?", "label": str(i)} for i in range(3)]
    (folder / "test_human.json").write_text(json.dumps(rows))


def test_eval_run_rescore_and_report(tiny, tmp_path, capsys):
    _chartqa(tmp_path / "data")
    out = tmp_path / "res" / "chartqa.jsonl"
    rc = main(["eval", "chartqa", "--data", str(tmp_path / "data"), "-m", str(tiny), "--out", str(out),
               "--max-new-tokens", "2", "--set", "max_pixels=6272", "--batch-size", "2", "--threads", "1"])
    assert rc == 0
    table = capsys.readouterr().out
    assert "| chartqa | relaxed_accuracy |" in table and "84.0" in table  # the report's 3B figure beside ours
    header = json.loads(out.read_text().splitlines()[0])
    assert header["profile"]["max_new_tokens"] == 2 and header["profile"]["max_pixels"] == 6272
    assert header["profile"]["name"] == "qwen25vl-official+overrides"
    summary = json.loads((tmp_path / "res" / "chartqa.summary.json").read_text())
    assert summary["samples"] == 3 and (tmp_path / "res" / "chartqa.report.md").is_file()

    assert main(["eval", "rescore", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == summary
    assert main(["eval", "report", str(out), "--out", str(tmp_path / "r.md")]) == 0
    assert "| chartqa |" in (tmp_path / "r.md").read_text()


def test_eval_errors_are_one_line_before_loading(tmp_path, capsys):
    assert main(["eval", "docvqa", "--data", str(tmp_path / "absent"), "-m", str(tmp_path / "no-model")]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["eval", "docvqa", "--data", str(tmp_path), "--set", "max_pixel=5"]) == 2
    assert "unknown profile setting 'max_pixel'" in capsys.readouterr().err
    assert main(["eval", "docvqa", "--data", str(tmp_path), "--set", "oops"]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err
    assert main(["eval", "rescore", str(tmp_path / "none.jsonl")]) == 2
