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


def test_set_reads_false_as_false_and_rejects_other_words(tmp_path):
    """`--set rotate=false` must turn rotation off (a plain bool('false') is True), as the model card's commands
    write it; a value that is no boolean word is an error naming the option."""
    import pytest

    from qwen25vl.data.synth.cli import _options
    from qwen25vl.errors import InputError

    assert _options("ocr", ["rotate=false", "tasks=word"], 224) == {"size": 224, "rotate": False, "tasks": "word"}
    assert _options("ocr", ["rotate=True"], None) == {"rotate": True}
    assert _options("grounding", ["text_first=no"], None) == {"text_first": False}
    with pytest.raises(InputError, match="rotate must be a bool"):
        _options("ocr", ["rotate=sometimes"], None)
