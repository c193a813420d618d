"""DPO under FSDP2 on 2 CPU ranks (gloo), full-parameter and with LoRA adapters, in one torchrun launch: the
reference table, the per-step losses and margins, and the exported adapter equal one process's; the 2-rank
adapter-only checkpoint resumes in one process."""

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

from qwen25vl.recipes.dpo import DPO, train_dpo
from qwen25vl.testing.checkpoint import make_tiny_checkpoint
from qwen25vl.train.lora import WEIGHTS_NAME, LoraSpec

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny-model training: see conftest.one_thread

ROOT = Path(__file__).resolve().parents[1]
# 2 packs per rank and step (accumulated); rates at which the loss falls visibly in 4 steps, yet smoothly
FULL = DPO.replace(steps=4, packs_per_step=4, budget=768, lr={"llm": 2e-4}, warmup=0, save_every=2)
RUNS = {"full": FULL, "lora": FULL.replace(lr={"llm": 3e-3}, lora=LoraSpec(rank=4, alpha=8.0, targets=("llm",)))}
# Measured (largest over the 4 steps, relative; full / LoRA): loss 2.2e-5 / 1.8e-5, margin 2.1e-6 / 3.5e-6, log-probs
# 6e-8 / 9e-8, grad norm 2.5e-5 / 1.2e-5. The reduce-scatter sums the gradient in another order; an answer's log-prob
# is a sum of ~300 terms near -400, where one fp32 ulp is 3e-5, so the loss differs in its 5th digit from step 2 on.
# The accuracies are equal.
TOL = dict(rel=1e-4, abs=1e-5)
# Both runs in one process group: the recipe's closing of the group waits for the second run's end
DRIVER = """
import os, sys
from pathlib import Path
from qwen25vl.recipes import run
from qwen25vl.train import distributed
from test_train_lora_dist import run_all
run.close = distributed.barrier
run_all(*sys.argv[1:4])
distributed.close()
os._exit(0)  # as the CLI under torchrun: gloo's threads can abort the interpreter's exit
"""


def run_all(base: str, data: str, out: str) -> None:
    """The runs of RUNS, one output folder each under `out`."""
    for name, recipe in RUNS.items():
        train_dpo(recipe, data=[data], out=str(Path(out) / name), model=base, beta=0.5, quiet=True)


def _log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def _same_steps(two: list[dict], one: list[dict]) -> None:
    assert [e["step"] for e in two] == [e["step"] for e in one]
    for a, b in zip(two, one):
        assert a["accuracy"] == b["accuracy"] and a["pairs"] == b["pairs"]
        for key in ("loss", "margin", "chosen_logps", "rejected_logps", "grad_norm"):
            assert a[key] == pytest.approx(b[key], **TOL), (key, a, b)


def test_two_rank_dpo_full_and_lora_equal_one_process_and_the_lora_checkpoint_resumes_on_one(tmp_path):
    base = make_tiny_checkpoint(tmp_path / "base", seed=5)
    data = _write_pairs(tmp_path / "data", 12)
    (tmp_path / "driver.py").write_text(DRIVER)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", str(tmp_path / "driver.py"), str(base), str(data),
           str(tmp_path / "two")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-6000:]
    run_all(str(base), str(data), str(tmp_path / "one"))

    for name in RUNS:
        two, one = _log(tmp_path / "two" / name), _log(tmp_path / "one" / name)
        assert [e["step"] for e in one] == [1, 2, 3, 4]
        assert one[0]["loss"] == pytest.approx(0.693147, abs=1e-5)  # the policy starts as the reference
        assert one[-1]["loss"] < 0.3 and one[-1]["margin"] > 1, (name, one[-1])  # it learns
        _same_steps(two, one)
        # the reference pass: each rank takes every other pack, the table is summed over ranks
        table2, table1 = (torch.load(tmp_path / run / name / "reference.pt")["logps"] for run in ("two", "one"))
        assert torch.allclose(table2, table1, rtol=1e-6, atol=1e-5)
    # the adapter export gathers the sharded A and B
    a2, a1 = (load_file(str(tmp_path / run / "lora" / "adapter" / WEIGHTS_NAME)) for run in ("two", "one"))
    assert a2.keys() == a1.keys() and len(a1) == 2 * 2 * 7
    for key in a1:
        assert torch.allclose(a2[key], a1[key], rtol=1e-4, atol=1e-6), key

    # the 2-rank LoRA checkpoint of step 2 (adapters only, sharded) resumes in one process with the same next steps
    resume = tmp_path / "resume"
    shutil.copytree(tmp_path / "two" / "lora" / "checkpoints" / "step-00000002",
                    resume / "checkpoints" / "step-00000002")
    shutil.copy(tmp_path / "two" / "lora" / "reference.pt", resume / "reference.pt")
    assert (resume / "checkpoints" / "step-00000002" / "base.json").is_file()
    resumed = train_dpo(RUNS["lora"], data=[str(data)], out=str(resume), model=str(base), beta=0.5, quiet=True)
    assert [e["step"] for e in resumed] == [3, 4]
    _same_steps(resumed, _log(tmp_path / "one" / "lora")[2:])
