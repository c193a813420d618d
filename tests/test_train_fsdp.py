import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qwen25vl.data.encoding import Encoder
from qwen25vl.data.loader import PackLoader
from qwen25vl.data.records import iter_records
from qwen25vl.data.toy import WORDS, toy_records
from qwen25vl.testing.checkpoint import make_tiny_checkpoint
from qwen25vl.recipes.run import train
from qwen25vl.recipes.stages import SFT


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny-model training: see conftest.one_thread

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--steps", "4", "--packs-per-step", "4", "--budget", "400", "--save-every", "2", "--warmup", "1",
        "--lr", "1e-3", "--lr-merger", "1e-3"]
RECIPE = SFT.replace(steps=4, packs_per_step=4, budget=400, save_every=2, warmup=1,
                     lr={"merger": 1e-3, "llm": 1e-3})


def _dataset(folder: Path) -> Path:
    """The toy mix plus long text-only answers that fill a pack alone: some micro-batch of one rank has no image or
    video while the other rank's has some (the case that hangs FSDP without the ViT dummy). Two micro-batches per
    rank and step: gradient accumulation with the reduce-scatter held back until the last one."""
    rng = random.Random(5)
    records = toy_records(folder, 12) + [
        {"messages": [{"role": "user", "content": "tell"},
                      {"role": "assistant", "content": " ".join(rng.choice(WORDS) for _ in range(120))}]}
        for _ in range(4)]
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    encoder = Encoder.from_pretrained(make_tiny_checkpoint(folder / "ckpt"))
    loader = PackLoader(list(iter_records(path)), encoder, budget=RECIPE.budget, packs_per_step=4, world_size=2)
    media = [any(isinstance(m["content"], list) and any(p["type"] != "text" for p in m["content"])
                 for m in loader.records[i].messages) for i in range(len(loader.records))]
    per_epoch, mixed = loader.steps_per_epoch(), []
    for step in range(RECIPE.steps):  # micro-batch j of both ranks: one with media, one without?
        packs = loader.packs(step // per_epoch)[4 * (step % per_epoch):4 * (step % per_epoch) + 4]
        ranks = loader.deal(packs)
        mixed += [step for j in range(2) if len({any(media[i] for i in r[j]) for r in ranks}) == 2]
    assert mixed, "the data must give one rank a text-only micro-batch opposite another's images in some step"
    return path


def test_two_process_fsdp_equals_one_process_and_resumes_on_one(tmp_path):
    (tmp_path / "toy").mkdir()
    data = _dataset(tmp_path / "toy")
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "qwen25vl", "train", "sft", "--preset", "tiny",
           "--data", str(data), "--out", str(tmp_path / "two"), *ARGS]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    two = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]

    one = train(RECIPE, data=[str(data)], out=str(tmp_path / "one"), preset="tiny", quiet=True)
    assert len(two) == len(one) == 4 and one[0]["loss"] - one[-1]["loss"] > 0.1  # it learns
    assert [e["epoch"] for e in one] == [0, 0, 1, 1]
    for a, b in zip(two, one):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-4), (a, b)
    w2, w1 = load_file(tmp_path / "two" / "hf" / "model.safetensors"), load_file(tmp_path / "one" / "hf" /
                                                                               "model.safetensors")
    assert w2.keys() == w1.keys()
    for key in w1:
        if "k_proj.bias" in key:
            # softmax ignores a shift shared by all keys: the key bias's exact gradient is 0, so what it gets is
            # rounding noise, which Adam scales up to steps of size lr. No two summation orders agree on noise.
            continue
        assert torch.allclose(w2[key], w1[key], rtol=1e-4, atol=1e-5), key

    # the 2-process checkpoint of step 2 resumes in one process with the uninterrupted run's next losses
    (tmp_path / "resume" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "two" / "checkpoints" / "step-00000002",
                    tmp_path / "resume" / "checkpoints" / "step-00000002")
    resumed = train(RECIPE, data=[str(data)], out=str(tmp_path / "resume"), preset="tiny", quiet=True)
    assert [e["step"] for e in resumed] == [3, 4]
    for a, b in zip(resumed, one[2:]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-4)
