import math

import pytest
import torch

from qwen25vl.data.encoding import Encoder
from qwen25vl.data.packing import collate_pack
from qwen25vl.data.records import read_records
from qwen25vl.data.toy import write_toy_dataset
from qwen25vl.errors import ConfigError
from qwen25vl.model.vlm import Qwen25VL
from qwen25vl.recipes.stages import PRETRAIN, SFT
from qwen25vl.testing.checkpoint import init_random_weights, make_tiny_checkpoint, tiny_config
from qwen25vl.train.activations import checkpoint_blocks
from qwen25vl.train.forward import PackedLoss
from qwen25vl.train.optim import build_optimizer, build_scheduler, module_of, param_groups, set_trainable, warmup_cosine
from qwen25vl.train.step import train_step


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny-model training: see conftest.one_thread


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("optim")
    encoder = Encoder.from_pretrained(make_tiny_checkpoint(folder / "ckpt"))
    return [encoder(r) for r in read_records(write_toy_dataset(folder / "toy", 4))]


def model():
    m = Qwen25VL(tiny_config())
    init_random_weights(m, 0, embed_std=1.0, gain=1.0)
    return m


def test_module_of_names():
    assert module_of("vlm.visual.blocks.0.attn.qkv.weight") == "vision"
    assert module_of("visual.patch_embed.proj.weight") == "vision"
    assert module_of("visual.merger.mlp.0.bias") == "merger"
    assert module_of("model.layers.0.mlp.up_proj.weight") == "llm" and module_of("lm_head.weight") == "llm"


def test_groups_no_decay_on_vectors_and_frozen_excluded():
    m = model()
    set_trainable(m, SFT.train)
    groups = param_groups(m, SFT.lr, weight_decay=0.1)
    assert {g["name"] for g in groups} == {"merger", "merger.no_decay", "llm", "llm.no_decay"}
    for g in groups:
        assert all((p.ndim >= 2) == (g["weight_decay"] == 0.1) for p in g["params"])
    ids = {id(p) for g in groups for p in g["params"]}
    assert not any(id(p) in ids for p in m.visual.blocks.parameters())
    assert id(m.visual.merger.ln_q.weight) in ids
    with pytest.raises(ConfigError, match="no learning rate"):
        param_groups(m, {"llm": 1e-3}, 0.0)
    set_trainable(m, {"vision": False, "merger": False, "llm": False})
    with pytest.raises(ConfigError, match="no trainable"):
        param_groups(m, SFT.lr, 0.0)


def test_stage1_freezes_llm_bit_for_bit_and_applies_group_lrs(samples):
    pack = collate_pack(samples)
    m = model()
    set_trainable(m, PRETRAIN[1].train)
    lr = {"vision": 1e-3, "merger": 3e-3}
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    loss_fn = PackedLoss(m)
    optimizer = build_optimizer(loss_fn, lr, weight_decay=0.0)
    scheduler = build_scheduler(optimizer, warmup=0, total=10)
    train_step(loss_fn, optimizer, scheduler, [pack], global_targets=pack.num_targets, max_grad_norm=None)
    state_ids = {id(p) for p in optimizer.state}
    for name, p in m.named_parameters():
        if module_of(name) == "llm":
            assert torch.equal(p, before[name]) and p.grad is None and id(p) not in state_ids, name
        else:
            # Adam's first step moves every coordinate with a gradient by about lr (m / sqrt(v) = sign(g))
            step = (p.detach() - before[name]).abs().max()
            assert math.isclose(float(step), lr[module_of(name)], rel_tol=1e-3), name
            assert id(p) in state_ids


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 4, 14) == pytest.approx(0.2)
    assert warmup_cosine(3, 4, 14) == pytest.approx(0.8)
    assert warmup_cosine(4, 4, 14) == pytest.approx(1.0)
    assert warmup_cosine(9, 4, 14, min_ratio=0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert warmup_cosine(14, 4, 14, min_ratio=0.1) == pytest.approx(0.1)
    assert warmup_cosine(20, 4, 14) == pytest.approx(0.0)


def test_accumulation_equals_one_big_step(samples):
    # train_step over two micro-batches (the pack's samples split in two, different target counts) makes the update
    # of the one-pack step: SGD with lr 1 turns the accumulated gradient into the parameter change
    pack = collate_pack(samples)
    halves = [collate_pack(samples[:2]), collate_pack(samples[2:])]
    assert halves[0].num_targets != halves[1].num_targets
    moved = []
    for micro in ([pack], halves):
        m = model()
        before = [p.detach().clone() for p in m.parameters()]
        loss_fn = PackedLoss(m)
        optimizer = torch.optim.SGD(loss_fn.parameters(), lr=1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        stats = train_step(loss_fn, optimizer, scheduler, micro, global_targets=pack.num_targets, max_grad_norm=None)
        moved.append(([p.detach() - q for p, q in zip(m.parameters(), before)], stats["loss"]))
    assert moved[0][1] == pytest.approx(moved[1][1], rel=1e-6)
    for d1, d2 in zip(moved[0][0], moved[1][0]):
        assert torch.allclose(d1, d2, rtol=1e-4, atol=1e-6)
    assert any(float(d.abs().max()) > 1e-3 for d in moved[0][0])


def test_activation_checkpointing_same_gradients(samples):
    pack = collate_pack(samples)
    a, b = model(), model()
    checkpoint_blocks(b.visual.blocks)
    checkpoint_blocks(b.model.layers)
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    PackedLoss(a)(pack).backward()
    PackedLoss(b)(pack).backward()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-5)



def test_clipping_bounds_the_update_and_reports_the_norm(samples):
    pack = collate_pack(samples)
    m = model()
    loss_fn = PackedLoss(m)
    before = [p.detach().clone() for p in m.parameters()]
    optimizer = torch.optim.SGD(loss_fn.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    stats = train_step(loss_fn, optimizer, scheduler, [pack], global_targets=pack.num_targets, max_grad_norm=1e-3)
    moved = torch.cat([(p.detach() - q).flatten() for p, q in zip(m.parameters(), before)])
    assert stats["grad_norm"] > 1e-2  # the unclipped norm is reported
    assert float(moved.norm()) == pytest.approx(1e-3, rel=1e-3)  # SGD lr 1: the update is the clipped gradient
    assert stats["lr"] == 1.0
