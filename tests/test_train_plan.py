import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qwen25vl.recipes.stages import SFT
from qwen25vl.testing.checkpoint import tiny_config
from qwen25vl.train.lora import LoraSpec
from qwen25vl.train.plan import activation_costs, largest_pack, plan_memory, saved_bytes

ROOT = Path(__file__).resolve().parents[1]
# A text pack at a 65,536-row vocabulary on a narrow, shallow model: the head, its gradient, Adam's state and
# the loss's chunk are the big items, as in real runs.
SIZES = dict(vocab_size=65536, hidden_size=256, intermediate_size=1024, num_hidden_layers=3, mrope_section=(8, 12, 12))
TOKENS = 256

MEASURE = """
import json, torch
torch.set_num_threads(1)
from qwen25vl.data.packing import PackedBatch
from qwen25vl.model.vlm import Qwen25VL
from qwen25vl.recipes.stages import SFT
from qwen25vl.testing.checkpoint import tiny_config
from qwen25vl.train.forward import PackedLoss
from qwen25vl.train.lora import LoraSpec, add_lora
from qwen25vl.train.optim import build_optimizer, build_scheduler, set_trainable
from qwen25vl.train.step import train_step
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
base = rss()
model = Qwen25VL(tiny_config(**SIZES))
set_trainable(model, SFT.train)
if LORA:
    add_lora(model, LoraSpec(**LORA))
loss_fn = PackedLoss(model)
opt = build_optimizer(loss_fn, SFT.lr)
sched = build_scheduler(opt, warmup=0, total=10)
ids = torch.randint(0, 500, (1, TOKENS))
batch = PackedBatch(ids, ids.clone(), torch.arange(TOKENS).expand(3, 1, -1), torch.tensor([0, TOKENS]).int())
for _ in range(2):
    train_step(loss_fn, opt, sched, [batch], global_targets=TOKENS)
# VmHWM, the address space's own high-water mark: ru_maxrss would keep a forking parent's size across exec
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
print(json.dumps({"base": base, "peak": peak}))
"""


def _measured_peak(lora: dict | None = None) -> int:
    """Bytes a fresh process's peak RSS grows by over building the model and two SFT steps on one pack."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    script = f"SIZES, TOKENS, LORA = {SIZES!r}, {TOKENS}, {lora!r}\n" + MEASURE
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    return measured["peak"] - measured["base"]


def test_peak_prediction_within_15_percent_of_measured_rss():
    plan = plan_memory(tiny_config(**SIZES), SFT, tokens=TOKENS, vision_share=0.0)
    used = _measured_peak()
    assert abs(plan.total - used) <= 0.15 * used, (plan.table(), used / 2**30)


def test_lora_peak_prediction_within_15_percent_of_measured_rss():
    """Under LoRA the full plan's gradients, Adam moments and head gradient are not there: planning the run as full
    fine-tuning would overshoot its peak by far more than the tolerance."""
    lora = dict(rank=8, alpha=16.0, targets=("llm",))
    plan = plan_memory(tiny_config(**SIZES), SFT.replace(lora=LoraSpec(**lora)), tokens=TOKENS, vision_share=0.0)
    used = _measured_peak(lora)
    assert abs(plan.total - used) <= 0.15 * used, (plan.table(), used / 2**30)
    full = plan_memory(tiny_config(**SIZES), SFT, tokens=TOKENS, vision_share=0.0)
    assert full.total > 1.5 * used


def test_lora_plan_counts_adapters_by_hand():
    cfg = tiny_config(**SIZES)
    tc, vc, r = cfg.text, cfg.vision, 8
    q, kv = tc.num_attention_heads * tc.head_dim, tc.num_key_value_heads * tc.head_dim
    h, i = tc.hidden_size, tc.intermediate_size
    per_layer = r * ((h + q) + 2 * (h + kv) + (q + h) + 3 * (h + i))  # q, k, v, o; gate, up, down
    merged = vc.hidden_size * vc.spatial_merge_size ** 2
    merger = r * (merged + merged) + r * (merged + vc.out_hidden_size)
    recipe = SFT.replace(lora=LoraSpec(rank=r, targets=("llm", "merger")))
    costs = activation_costs(cfg, recipe.train, lora=recipe.lora)
    plan = plan_memory(cfg, recipe, tokens=TOKENS, vision_share=0.0, costs=costs)
    adapters = tc.num_hidden_layers * per_layer + merger
    assert plan.gradients == 4 * adapters and plan.optimizer == 8 * adapters  # fp32 gradient, Adam's two moments
    full = plan_memory(cfg, SFT, tokens=TOKENS, vision_share=0.0, costs=costs)
    assert plan.parameters - full.parameters == 4 * adapters  # the base stays, in full; the adapters add to it
    assert full.loss - plan.loss == tc.vocab_size * h * 4  # the frozen, tied head gets no gradient
    sharded = plan_memory(cfg, recipe, tokens=TOKENS, vision_share=0.0, costs=costs, world_size=2)
    assert sharded.optimizer == 8 * adapters // 2


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

def test_plan_command_with_lora(tmp_path, capsys):
    from qwen25vl.cli import main

    tiny_config(**SIZES).save(tmp_path)
    rows = {}
    for extra in ([], ["--lora-rank", "8", "--lora-targets", "llm,merger"]):
        assert main(["train", "plan", "--model", str(tmp_path), "--tokens", "256", *extra]) == 0
        out = capsys.readouterr().out
        rows[bool(extra)] = {line.split()[0]: float(line.split()[1]) for line in out.splitlines()[2:]}
    assert "sft, LoRA rank 8 on llm,merger" in out
    # 19.8M parameters: Adam's moments 0.15 GiB in full, the adapters' (0.2M) 0.00; the base stays
    assert rows[False]["optimizer"] == 0.15 and rows[True]["optimizer"] == 0.0 and rows[True]["gradients"] == 0.0
    assert rows[True]["parameters"] == rows[False]["parameters"] and rows[True]["total"] < rows[False]["total"] / 2


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
