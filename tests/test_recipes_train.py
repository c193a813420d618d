import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qwen25vl.data.toy import write_toy_dataset
from qwen25vl.model.vlm import Qwen25VL
from qwen25vl.recipes.run import train
from qwen25vl.recipes.stages import PRETRAIN, SFT
from qwen25vl.train.checkpoint import list_checkpoints


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny-model training: see conftest.one_thread

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(steps=7, packs_per_step=2, budget=512, save_every=2, warmup=2, lr={"merger": 1e-3, "llm": 1e-3})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("recipe") / "toy", 12)


def _cli(out, data, *extra):
    cmd = [sys.executable, "-m", "qwen25vl", "train", "sft", "--preset", "tiny", "--data", str(data), "--out",
           str(out), "--steps", "7", "--packs-per-step", "2", "--budget", "512", "--save-every", "2", "--warmup",
           "2", "--lr", "1e-3", "--lr-merger", "1e-3", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_kill_9_and_resume_continue_the_same_losses(tmp_path, data):
    whole = train(SFT.replace(**SMALL), data=[str(data)], out=str(tmp_path / "whole"), preset="tiny", quiet=True)
    assert len(whole) == 7 and whole[0]["loss"] != whole[-1]["loss"]
    killed = _cli(tmp_path / "run", data, "--die-after-step", "3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step-00000002"]
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logged] == [1, 2, 3]  # step 3 ran, its checkpoint never came
    resumed = train(SFT.replace(**SMALL), data=[str(data)], out=str(tmp_path / "run"), preset="tiny", quiet=True)
    assert [e["step"] for e in resumed] == [3, 4, 5, 6, 7]
    for a, b in zip(resumed, whole[2:]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["lr"] == pytest.approx(b["lr"], rel=1e-9)
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step-00000006",
                                                                                    "step-00000007"]


def test_stage1_export_loads_here_and_in_transformers(tmp_path, data):
    from transformers import Qwen2_5_VLForConditionalGeneration

    recipe = PRETRAIN[1].replace(steps=2, packs_per_step=1, budget=512, warmup=0,
                                 lr={"vision": 1e-2, "merger": 1e-2})
    log = train(recipe, data=[str(data)], out=str(tmp_path), preset="tiny", quiet=True)
    assert len(log) == 2 and all(e["packing"] > 0 for e in log)
    ours = Qwen25VL.from_pretrained(tmp_path / "hf", progress=False)
    init = Qwen25VL.from_pretrained(tmp_path / "hf", progress=False)
    from qwen25vl.testing.checkpoint import init_random_weights

    init_random_weights(init, 0, embed_std=1.0, gain=1.0)  # the recipe's random init (seed 0)
    assert torch.equal(ours.model.layers[0].mlp.up_proj.weight, init.model.layers[0].mlp.up_proj.weight)
    assert not torch.equal(ours.visual.blocks[0].attn.qkv.weight, init.visual.blocks[0].attn.qkv.weight)
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    ref = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    ids = torch.tensor([[513, 10, 20, 30, 40, 514, 300]])
    with torch.no_grad():
        diff = (ref(input_ids=ids).logits - ours(ids).logits).abs().max().item()
    assert diff <= 1e-4


def test_incomplete_checkpoint_is_ignored_and_pruning_keeps_last(tmp_path):
    from qwen25vl.errors import CheckpointError
    from qwen25vl.train.checkpoint import load_checkpoint, save_checkpoint

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, optimizer, {"scheduler": {}}, keep=2)
    (tmp_path / ".tmp-step-00000004").mkdir()  # a write cut short by a kill
    (tmp_path / "step-00000005").mkdir()  # renamed without its trainer state: never happens, still ignored
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    saved = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.zero_()
    state = load_checkpoint(tmp_path / "step-00000003", model, optimizer)
    assert state["step"] == 3 and torch.equal(model.weight.detach(), saved) and float(saved.abs().sum()) > 0
    with pytest.raises(CheckpointError, match="not a complete"):
        load_checkpoint(tmp_path / "step-00000005", model, optimizer)
