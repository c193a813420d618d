"""`qwen25vl quantize SRC OUT`: the int8 folder it writes loads quantised and generates what in-memory quantisation
generates; lm_head can stay floating point; bad folders exit 2 with one readable line and write nothing."""

import json

import pytest
import torch

import qwen25vl
from qwen25vl.cli import main
from qwen25vl.model.quant import Int8Linear, quantize_model
from qwen25vl.testing.checkpoint import make_tiny_checkpoint
from qwen25vl.weights import load_model

PROMPT = "describe the weather"


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("src"), seed=2, generation={"eos_token_id": []})


def _greedy(vlm):
    return vlm.chat(PROMPT, max_new_tokens=12, temperature=0)


def _weights(folder):
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def test_the_quantised_folder_generates_what_load_int8_generates(src, tmp_path, capsys):
    out = tmp_path / "q8"
    assert main(["quantize", str(src), str(out)]) == 0
    line = capsys.readouterr().out.strip()
    spec = json.loads((out / "quantization.json").read_text())
    assert "lm_head" in spec["modules"]
    assert f"{len(spec['modules'])} linear modules" in line and "lm_head int8" in line
    assert f"{_weights(src):,} -> {_weights(out):,} bytes" in line and _weights(out) < _weights(src)
    assert (out / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    saved, direct = qwen25vl.load(out, threads=None), qwen25vl.load(src, dtype="int8", threads=None)
    assert isinstance(saved.model.lm_head, Int8Linear)
    text = _greedy(saved)
    assert text and text == _greedy(direct)


def test_float_lm_head_keeps_lm_head_floating_point(src, tmp_path, capsys):
    out = tmp_path / "q8f"
    assert main(["quantize", str(src), str(out), "--float-lm-head"]) == 0
    line = capsys.readouterr().out.strip()
    spec = json.loads((out / "quantization.json").read_text())
    assert "lm_head" not in spec["modules"] and "lm_head fp32" in line
    back = load_model(out, progress=False)
    assert not isinstance(back.lm_head, Int8Linear) and back.lm_head.weight.dtype == torch.float32
    assert isinstance(back.model.layers[0].mlp.down_proj, Int8Linear)
    model = load_model(src, dtype=torch.float32, progress=False)
    quantize_model(model, include_lm_head=False)
    mine, theirs = back.state_dict(), model.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert _greedy(qwen25vl.load(out, threads=None))  # the API loads it and generates


def test_bad_folders_exit_2_with_one_line(src, tmp_path, capsys):
    def fails(argv, words):
        assert main(["quantize", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("qwen25vl: error:") and len(err.splitlines()) == 1 and words in err, err

    fails([str(tmp_path / "nowhere"), str(tmp_path / "a")], "not found")
    fails([str(src), str(src)], "source folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    fails([str(empty), str(tmp_path / "b")], "no config.json")
    (empty / "config.json").write_text((src / "config.json").read_text())
    fails([str(empty), str(tmp_path / "c")], "safetensors")  # a config and no weights: not a checkpoint
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    fails([str(src), str(busy)], "--overwrite")
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
    assert not any((tmp_path / name).exists() for name in "abc")
    assert main(["quantize", str(src), str(busy), "--overwrite"]) == 0
    assert (busy / "quantization.json").is_file() and (busy / "notes.txt").is_file()
