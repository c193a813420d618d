import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qwen25vl.data.toy import write_toy_dataset
from qwen25vl.recipes.run import train
from qwen25vl.recipes.stages import SFT


@pytest.fixture(autouse=True)
def _one_thread():
    # a tiny model's small ops run several times faster on one thread when the other core is busy (shared CI)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--steps", "4", "--packs-per-step", "2", "--budget", "512", "--save-every", "2", "--warmup", "1",
        "--lr", "1e-3", "--lr-merger", "1e-3"]
RECIPE = SFT.replace(steps=4, packs_per_step=2, budget=512, save_every=2, warmup=1,
                     lr={"merger": 1e-3, "llm": 1e-3})


def test_two_process_fsdp_equals_one_process_and_resumes_on_one(tmp_path):
    data = write_toy_dataset(tmp_path / "toy", 12)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "qwen25vl", "train", "sft", "--preset", "tiny",
           "--data", str(data), "--out", str(tmp_path / "two"), *ARGS]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    two = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]

    one = train(RECIPE, data=[str(data)], out=str(tmp_path / "one"), preset="tiny", quiet=True)
    assert len(two) == len(one) == 4 and one[0]["loss"] - one[-1]["loss"] > 0.1  # it learns
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
