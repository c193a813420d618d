"""`qwen25vl data synth KIND` is reachable from the main command line and writes the records it says."""

import json


def test_data_synth_from_the_main_cli(tmp_path, capsys):
    from qwen25vl.cli import main

    out = tmp_path / "g"
    assert main(["data", "synth", "grounding", "--out", str(out), "--train", "3", "--heldout", "2", "--seed", "4",
                 "--no-progress"]) == 0
    assert len((out / "train.jsonl").read_text().splitlines()) == 3
    assert len((out / "heldout.jsonl").read_text().splitlines()) == 2
    assert json.loads((out / "manifest.json").read_text())
    captured = capsys.readouterr()
    assert "wrote 5 samples" in captured.out + captured.err
