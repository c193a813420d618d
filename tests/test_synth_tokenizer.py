"""The tiny tokenizer trained on the engines' text: the tiny layout's special ids, digits as single tokens,
round trips of the records' text, the same bytes from the same corpus, loadable by our Tokenizer and used by the
chat template; and the synth command line."""

import json

import pytest

from qwen25vl.data.synth import write_dataset
from qwen25vl.data.synth.cli import main
from qwen25vl.data.synth.tokenizer import corpus, train_from_datasets
from qwen25vl.errors import InputError
from qwen25vl.processing.chat_template import render
from qwen25vl.processing.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for kind, size in (("grounding", 224), ("ocr", 224), ("agent", 336)):
        write_dataset(kind, root / kind, train=6, heldout=2, size=size, progress=False)
    roots = [root / k for k in ("grounding", "ocr", "agent")]
    folder = train_from_datasets(roots, root / "tok").parent
    return roots, folder, Tokenizer.from_pretrained(folder)


def test_layout_and_digits(trained):
    _, _, tok = trained
    assert [tok.token_to_id(n) for n in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                                         "<|image_pad|>", "<|video_pad|>", "<tool_call>")] == \
        [512, 513, 514, 521, 524, 525, 526]
    ids = tok.encode("point at [1234, 56]")
    digits = [i for i in ids if tok.decode([i]).strip().isdigit()]
    assert [tok.decode([i]) for i in digits] == list("123456")
    assert max(tok.encode("x" * 50 + " €£ Привет")) < 512


def test_round_trip_and_chat_template(trained):
    roots, _, tok = trained
    texts = list(corpus(roots))
    assert all(tok.decode(tok.encode(t)) == t for t in texts)
    messages = [{"role": "user", "content": "Count the stars."}, {"role": "assistant", "content": "Total number: 3."}]
    rendered = render(messages, tokenizer=tok)
    assert rendered.text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert tok.decode(rendered.input_ids) == rendered.text and sum(rendered.loss_mask) > 0


def test_same_corpus_same_bytes_and_no_heldout_text(trained, tmp_path):
    roots, folder, _ = trained
    again = train_from_datasets(roots, tmp_path / "tok").parent
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (again / name).read_bytes() == (folder / name).read_bytes()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in config["chat_template"] and config["eos_token"] == "<|im_end|>"
    held = [json.loads(l) for l in (roots[0] / "heldout.jsonl").read_text().splitlines()]
    held_answers = {r["messages"][-1]["content"] for r in held}
    assert not held_answers & set(corpus(roots))


def test_cli_writes_a_dataset_and_refuses_bad_input(tmp_path, capsys):
    assert main(["synth", "charts", "--out", str(tmp_path / "c"), "--train", "2", "--size", "224",
                 "--no-progress"]) == 0
    assert "samples/s" in capsys.readouterr().err
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["splits"]["train"]["samples"] == 2
    assert main(["synth", "charts", "--out", str(tmp_path / "d"), "--set", "colour=red"]) == 2
    assert "colour" in capsys.readouterr().err
    assert main(["synth", "tokenizer", "--out", str(tmp_path / "t"), "--data", str(tmp_path / "none")]) == 2
    with pytest.raises(InputError, match="regular_tokens"):
        train_from_datasets([tmp_path / "c"], tmp_path / "t2", regular_tokens=100)
