"""DPO with LoRA adapters under FSDP2 on 2 CPU ranks (gloo): the reference table, the per-step losses and margins,
and the exported adapter equal one process's; the 2-rank adapter-only checkpoint resumes in one process."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_dpo import _write_pairs

from qwen25vl.cli import main
from qwen25vl.testing.checkpoint import make_tiny_checkpoint
from qwen25vl.train.lora import WEIGHTS_NAME

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny-model training: see conftest.one_thread

ROOT = Path(__file__).resolve().parents[1]
# 2 packs per rank and step (accumulated); rate high enough that the adapters move the loss visibly in 4 steps
ARGS = ["--steps", "4", "--packs-per-step", "4", "--budget", "768", "--lr", "3e-3", "--warmup", "0",
        "--save-every", "2", "--beta", "0.5", "--lora-rank", "4", "--lora-targets", "llm"]
# Measured (largest over the 4 steps, relative): loss 1.8e-5, margin 3.5e-6, log-probs 7e-8, grad norm 1.2e-5. The
# reduce-scatter sums the gradient in another order; an answer's log-prob is a sum of ~300 terms near -400, where
# one fp32 ulp is 3e-5, so the loss differs in its 5th digit from step 2 on. The accuracies are equal.
TOL = dict(rel=1e-4, abs=1e-5)


def _log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def test_two_rank_lora_dpo_equals_one_process_and_its_checkpoint_resumes_on_one(tmp_path):
    base = make_tiny_checkpoint(tmp_path / "base", seed=5)
    data = _write_pairs(tmp_path / "data", 12)
    common = ["train", "dpo", "--model", str(base), "--data", str(data), *ARGS]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "qwen25vl", *common, "--out", str(tmp_path / "two")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-6000:]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    two, one = _log(tmp_path / "two"), _log(tmp_path / "one")

    assert [e["step"] for e in two] == [e["step"] for e in one] == [1, 2, 3, 4]
    assert one[0]["loss"] == pytest.approx(0.693147, abs=1e-5)  # B = 0: the policy starts as the reference
    assert one[-1]["loss"] < 0.1 and one[-1]["margin"] > 1  # the adapters learn
    for a, b in zip(two, one):
        assert a["accuracy"] == b["accuracy"] and a["pairs"] == b["pairs"]
        for key in ("loss", "margin", "chosen_logps", "rejected_logps", "grad_norm"):
            assert a[key] == pytest.approx(b[key], **TOL), (key, a, b)
    # the reference pass: each rank takes every other pack, the table is summed over ranks
    table2, table1 = (torch.load(tmp_path / run / "reference.pt")["logps"] for run in ("two", "one"))
    assert torch.allclose(table2, table1, rtol=1e-6, atol=1e-5)
    # the adapter export gathers the sharded A and B
    a2, a1 = (load_file(str(tmp_path / run / "adapter" / WEIGHTS_NAME)) for run in ("two", "one"))
    assert a2.keys() == a1.keys() and len(a1) == 2 * 2 * 7
    for key in a1:
        assert torch.allclose(a2[key], a1[key], rtol=1e-4, atol=1e-6), key

    # the 2-rank checkpoint of step 2 (adapters only, sharded) resumes in one process with the same next steps
    resume = tmp_path / "resume"
    shutil.copytree(tmp_path / "two" / "checkpoints" / "step-00000002", resume / "checkpoints" / "step-00000002")
    shutil.copy(tmp_path / "two" / "reference.pt", resume / "reference.pt")
    assert (resume / "checkpoints" / "step-00000002" / "base.json").is_file()
    assert main([*common, "--out", str(resume)]) == 0
    resumed = _log(resume)
    assert [e["step"] for e in resumed] == [3, 4]
    for a, b in zip(resumed, one[2:]):
        assert a["loss"] == pytest.approx(b["loss"], **TOL), (a, b)
