import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qwen25vl.recipes.stages import SFT
from qwen25vl.testing.checkpoint import tiny_config
from qwen25vl.train.plan import activation_costs, largest_pack, plan_memory, saved_bytes

ROOT = Path(__file__).resolve().parents[1]
# A text pack at a 65,536-row vocabulary on a narrow, shallow model: the head, its gradient, Adam's state and
# the loss's chunk are the big items, as in real runs.
SIZES = dict(vocab_size=65536, hidden_size=256, intermediate_size=1024, num_hidden_layers=3, mrope_section=(8, 12, 12))
TOKENS = 256

MEASURE = f"""
import json, torch
torch.set_num_threads(1)
from qwen25vl.data.packing import PackedBatch
from qwen25vl.model.vlm import Qwen25VL
from qwen25vl.recipes.stages import SFT
from qwen25vl.testing.checkpoint import tiny_config
from qwen25vl.train.forward import PackedLoss
from qwen25vl.train.optim import build_optimizer, build_scheduler, set_trainable
from qwen25vl.train.step import train_step
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
base = rss()
model = Qwen25VL(tiny_config(**{SIZES!r}))
set_trainable(model, SFT.train)
loss_fn = PackedLoss(model)
opt = build_optimizer(loss_fn, SFT.lr)
sched = build_scheduler(opt, warmup=0, total=10)
ids = torch.randint(0, 500, (1, {TOKENS}))
batch = PackedBatch(ids, ids.clone(), torch.arange({TOKENS}).expand(3, 1, -1), torch.tensor([0, {TOKENS}]).int())
for _ in range(2):
    train_step(loss_fn, opt, sched, [batch], global_targets={TOKENS})
# VmHWM, the address space's own high-water mark: ru_maxrss would keep a forking parent's size across exec
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
print(json.dumps({{"base": base, "peak": peak}}))
"""


def test_peak_prediction_within_15_percent_of_measured_rss():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", MEASURE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    plan = plan_memory(tiny_config(**SIZES), SFT, tokens=TOKENS, vision_share=0.0)
    used = measured["peak"] - measured["base"]
    assert abs(plan.total - used) <= 0.15 * used, (plan.table(), used / 2**30)


def test_saved_bytes_counts_what_autograd_keeps():
    w = torch.randn(64, 32, requires_grad=True)
    x = torch.randn(10, 64, requires_grad=True)
    # x @ w saves x (10 x 64) and w, which is excluded as a parameter; tanh saves its output (10 x 32)
    assert saved_bytes(lambda: torch.tanh(x @ w), [w]) == (10 * 64 + 10 * 32) * 4
    with torch.no_grad():
        assert saved_bytes(lambda: torch.tanh(x @ w), [w]) == 0


def test_plan_shapes():
    cfg = tiny_config(**SIZES)
    costs = activation_costs(cfg, SFT.train)
    assert costs["vision_per_patch"] == 0  # the ViT is frozen in SFT: nothing kept for it
    one = plan_memory(cfg, SFT, tokens=2048, costs=costs)
    two = plan_memory(cfg, SFT, tokens=4096, costs=costs)
    assert two.activations == pytest.approx(2 * one.activations, rel=0.01)
    sharded = plan_memory(cfg, SFT, tokens=2048, costs=costs, world_size=4)
    assert sharded.optimizer == one.optimizer // 4 and sharded.gathered > 0
    ckpt = plan_memory(cfg, SFT.replace(checkpoint_llm=True), tokens=2048, costs=costs)
    assert ckpt.activations < one.activations
    biggest = largest_pack(cfg, SFT, one.total, costs=costs)
    assert 2048 - 256 <= biggest <= 2048 + 256
    assert plan_memory(cfg, SFT, tokens=biggest + 256, costs=costs).total > one.total


def test_plan_command(capsys):
    from qwen25vl.cli import main

    assert main(["train", "plan", "--stage", "1", "--preset", "tiny", "--tokens", "1024", "--memory-gib", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "pretrain-stage1" in out and "pack of 1024 tokens" in out
    tokens = int(out.split("largest pack within 0.05 GiB per rank: ")[1].split()[0])
    assert 0 < tokens < 1 << 22


def test_step_flops_counts_trained_work_by_hand():
    from qwen25vl.data.packing import PackedBatch
    from qwen25vl.train.plan import step_flops

    cfg = tiny_config()
    tc = cfg.text
    ids = torch.zeros(1, 10, dtype=torch.long)
    labels = torch.full((1, 10), -100)
    labels[0, :4] = 1
    batch = PackedBatch(ids, labels, torch.zeros(3, 1, 10, dtype=torch.long), torch.tensor([0, 10]).int())
    layer = tc.hidden_size * tc.head_dim * (2 * tc.num_attention_heads + 2 * tc.num_key_value_heads) \
        + 3 * tc.hidden_size * tc.intermediate_size
    text_only = 6 * tc.num_hidden_layers * layer * 10 + 6 * tc.vocab_size * tc.hidden_size * 4
    assert step_flops(cfg, {"vision": True, "merger": True, "llm": True}, [batch]) == text_only
    frozen = step_flops(cfg, {"vision": True, "merger": True, "llm": False}, [batch])
    assert frozen == text_only * 4 / 6  # no weight gradients in a frozen LLM
