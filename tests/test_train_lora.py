"""LoRA adapters: a fresh adapter changes nothing, only adapters train, the recipes train them (and resume), the saved
adapter loads in PEFT onto transformers' model, and on-the-fly == merged, here and through transformers."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from model_helpers import IMAGE, PATCH_DIM, V_END, V_START, mm_token_type_ids

from qwen25vl.data.toy import write_toy_dataset
from qwen25vl.errors import CheckpointError, ConfigError, InputError
from qwen25vl.model.vlm import Qwen25VL
from qwen25vl.recipes.run import train
from qwen25vl.recipes.stages import PRETRAIN, SFT
from qwen25vl.testing.checkpoint import make_tiny_checkpoint
from qwen25vl.train.lora import (
    CONFIG_NAME, WEIGHTS_NAME, LoraSpec, LoRALinear, add_lora, load_adapter, lora_modules, save_adapter,
    select_targets,
)
from qwen25vl.train.merge import merge_adapter

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny-model training: see conftest.one_thread

ROOT = Path(__file__).resolve().parents[1]
SPEC = LoraSpec(rank=4, alpha=8.0, targets=("llm", "merger"))
SMALL = dict(steps=5, packs_per_step=2, budget=512, save_every=2, warmup=1,
             lr={"vision": 1e-2, "merger": 1e-2, "llm": 1e-2}, lora=SPEC)


def _inputs():
    """A prompt with one 4x4-patch image (4 image tokens) and some text: every adapted module is on the path."""
    gen = torch.Generator().manual_seed(7)
    ids = torch.tensor([[12, 40, V_START] + [IMAGE] * 4 + [V_END] + [int(t) for t in torch.randint(0, 500, (9,),
                                                                                                     generator=gen)]])
    return {"input_ids": ids, "pixel_values": torch.randn(16, PATCH_DIM, generator=gen),
            "image_grid_thw": torch.tensor([[1, 4, 4]])}


def _logits(model, inputs=None):
    with torch.no_grad():
        return model(**(inputs or _inputs())).logits


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("lora") / "base", seed=3)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("lora-data") / "toy", 12)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, base, data):
    """An SFT run with adapters on the LLM and merger: (output folder, its log)."""
    out = tmp_path_factory.mktemp("lora-sft")
    log = train(SFT.replace(**SMALL), data=[str(data)], out=str(out), model=str(base), quiet=True)
    return out, log


def _load(folder, dtype=torch.float32):
    return Qwen25VL.from_pretrained(folder, dtype=dtype, progress=False)


def test_fresh_adapters_give_the_base_logits_exactly_and_keep_the_keys(base):
    model = _load(base)
    before, keys = _logits(model), set(model.state_dict())
    paths = add_lora(model, LoraSpec(rank=4, alpha=8.0, dropout=0.1, targets=("llm", "merger", "vision")))
    assert len(paths) == 2 * 7 + 2 + 2 * 5  # 7 projections per LLM layer, the merger's 2, 5 per ViT block
    assert torch.equal(_logits(model.train()), before)  # B = 0: dropout on the adapter's input changes nothing
    new = set(model.state_dict()) - keys
    assert keys <= set(model.state_dict())  # ...q_proj.weight stays where it was
    assert new == {f"{p}.lora_{h}.weight" for p in paths for h in "AB"}
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


def test_targets_by_preset_name_and_glob_and_bad_ones(base):
    model = _load(base)
    assert select_targets(model, ["q_proj"]) == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    assert select_targets(model, ["model.layers.1.mlp.*"]) == [f"model.layers.1.mlp.{n}_proj"
                                                               for n in ("gate", "up", "down")]
    assert select_targets(model, ["merger"]) == ["visual.merger.mlp.0", "visual.merger.mlp.2"]
    assert select_targets(model, ["attn"]) == select_targets(model, ["q_proj", "k_proj", "v_proj", "o_proj"])
    with pytest.raises(ConfigError, match="'nope' names no Linear"):
        select_targets(model, ["q_proj", "nope"])
    with pytest.raises(ConfigError, match="lm_head"):
        select_targets(model, ["lm_head"])
    for bad in (dict(rank=0), dict(alpha=0.0), dict(dropout=1.0), dict(targets="llm")):
        with pytest.raises(ConfigError):
            LoraSpec(**bad)


def test_lora_flags_without_a_rank_are_refused(tmp_path, data, capsys):
    from qwen25vl.cli import main

    args = ["train", "sft", "--preset", "tiny", "--data", str(data), "--out", str(tmp_path)]
    assert main(args + ["--lora-targets", "vision"]) == 2
    assert "need --lora-rank" in capsys.readouterr().err
    assert main(args + ["--lora-rank", "0"]) == 2
    assert "rank must be a positive integer" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before anything is written


def test_only_adapters_get_gradients_and_optimizer_state(base, data):
    from qwen25vl.data.encoding import Encoder
    from qwen25vl.data.loader import PackLoader
    from qwen25vl.data.records import iter_records
    from qwen25vl.train.forward import PackedLoss
    from qwen25vl.train.optim import build_optimizer, build_scheduler
    from qwen25vl.train.step import train_step

    model = _load(base).train()
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    add_lora(model, SPEC)
    loss_fn = PackedLoss(model)
    optimizer = build_optimizer(loss_fn, {"llm": 1e-2, "merger": 1e-2}, weight_decay=0.1)
    scheduler = build_scheduler(optimizer, warmup=0, total=2)
    loader = PackLoader(list(iter_records(data)), Encoder.from_pretrained(base, config=model.config), budget=512)
    work = next(iter(loader))
    loss = loss_fn(work.micro_batches[0]) / work.global_targets
    loss.backward()
    grads = {n for n, p in loss_fn.named_parameters() if p.grad is not None}
    assert grads == {n for n, _ in loss_fn.named_parameters() if ".lora_" in n}  # A and B of every adapted layer
    optimizer.zero_grad(set_to_none=True)
    train_step(loss_fn, optimizer, scheduler, work.micro_batches, global_targets=work.global_targets)
    stated = {id(p) for p in optimizer.state}
    names = {n for n, p in loss_fn.named_parameters() if id(p) in stated}
    assert names and names == {n for n, _ in loss_fn.named_parameters() if ".lora_" in n}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in frozen.items())  # the base never moved
    assert any(m.lora_B.weight.abs().sum() > 0 for m in lora_modules(model).values())


def test_trained_adapter_on_the_fly_equals_merged_and_writes_peft_files(tmp_path, base, trained):
    out, log = trained
    assert [e["step"] for e in log] == [1, 2, 3, 4, 5] and log[-1]["loss"] < log[0]["loss"]
    adapter = out / "adapter"
    assert not (out / "hf").exists()
    config = json.loads((adapter / CONFIG_NAME).read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 4, 8.0)
    assert Path(config["base_model_name_or_path"]) == Path(base).resolve()
    assert "model.language_model.layers.0.self_attn.q_proj" in config["target_modules"]
    from safetensors.torch import load_file

    keys = set(load_file(str(adapter / WEIGHTS_NAME)))
    assert "base_model.model.model.language_model.layers.1.mlp.down_proj.lora_B.weight" in keys
    assert "base_model.model.model.visual.merger.mlp.2.lora_A.weight" in keys and len(keys) == 2 * (14 + 2)
    model = _load(base)
    base_logits = _logits(model)
    load_adapter(model, adapter)
    on_the_fly = _logits(model)
    assert (on_the_fly - base_logits).abs().max() > 1e-2  # the adapter was trained: it moves the logits
    merged = merge_adapter(adapter, tmp_path / "merged", progress=False)
    assert {p.name for p in merged.iterdir()} == {p.name for p in Path(base).iterdir()}
    # fp32: the merged weights' rounding alone moves these large logits (up to |12|) by ~1e-5
    scale = on_the_fly.abs().max()
    assert (_logits(_load(merged)) - on_the_fly).abs().max() <= 1e-5 * scale
    # fp64 (a base stored in fp64 is merged in fp64): the merge is the adapter, to rounding
    wide = _load(base, torch.float64).save_pretrained(tmp_path / "base64")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (wide / name).write_bytes((Path(base) / name).read_bytes())
    exact = _with(wide, adapter)
    inputs = {**_inputs(), "pixel_values": _inputs()["pixel_values"].double()}
    merged64 = _load(merge_adapter(adapter, tmp_path / "merged64", base=wide, progress=False), torch.float64)
    assert (_logits(merged64, inputs) - _logits(exact, inputs)).abs().max() <= 1e-10
    from transformers import Qwen2_5_VLForConditionalGeneration

    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(merged), dtype=torch.float32).eval()
    inputs = _inputs()
    # transformers and ours differ by this much on the base model too (vision attention, rotary order)
    assert (_logits(hf, {**inputs, "mm_token_type_ids": mm_token_type_ids(inputs["input_ids"])})
            - on_the_fly).abs().max() <= 3e-5 * scale


def test_saved_adapter_loads_in_peft_with_equal_logits(base, trained):
    from peft import PeftModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    adapter = trained[0] / "adapter"
    model = _load(base)
    load_adapter(model, adapter)
    ours = _logits(model)
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(base), dtype=torch.float32).eval()
    inputs = _inputs()
    inputs["mm_token_type_ids"] = mm_token_type_ids(inputs["input_ids"])
    plain = _logits(hf, inputs)
    peft = PeftModel.from_pretrained(hf, str(adapter)).eval()
    adapted = _logits(peft, inputs)
    assert (adapted - plain).abs().max() > 1e-2  # PEFT applied the weights, it did not skip them
    assert (adapted - ours).abs().max() <= 3e-5 * ours.abs().max()  # the base models' own agreement


def test_kill_9_and_resume_continue_the_same_losses(tmp_path, base, data, trained):
    whole = trained[1]
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "qwen25vl", "train", "sft", "--model", str(base), "--data", str(data), "--out",
           str(run), "--steps", "5", "--packs-per-step", "2", "--budget", "512", "--save-every", "2", "--warmup", "1",
           "--lr", "1e-2", "--lr-merger", "1e-2", "--lora-rank", "4", "--lora-targets", "llm,merger",
           "--die-after-step", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    killed = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (run / "adapter").exists()
    saved = _checkpoint_keys(run / "checkpoints" / "step-00000002")
    assert saved["model"] and all(".lora_" in k for k in saved["model"])  # no frozen base weight, no tied head
    assert saved["optim"] == {k for k in saved["model"]}  # Adam's moments of the adapters, nothing else
    reference = json.loads((run / "checkpoints" / "step-00000002" / "base.json").read_text())
    assert Path(reference["path"]) == Path(base).resolve()
    other = make_tiny_checkpoint(tmp_path / "other", seed=4)  # the same config and shapes, other weights
    with pytest.raises(CheckpointError, match="trained on the base .* is a different model .model.safetensors"):
        train(SFT.replace(**SMALL), data=[str(data)], out=str(run), model=str(other), quiet=True)
    with pytest.raises(CheckpointError, match="holds LoRA adapters only"):
        train(SFT.replace(**{**SMALL, "lora": None}), data=[str(data)], out=str(run), model=str(base), quiet=True)
    resumed = train(SFT.replace(**SMALL), data=[str(data)], out=str(run), model=str(base), quiet=True)
    assert [e["step"] for e in resumed] == [3, 4, 5]
    for a, b in zip(resumed, whole[2:]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["lr"] == pytest.approx(b["lr"], rel=1e-9)
    from safetensors.torch import load_file

    again, first = load_file(str(run / "adapter" / WEIGHTS_NAME)), load_file(str(trained[0] / "adapter" / WEIGHTS_NAME))
    assert all(torch.allclose(again[k], first[k], atol=1e-6) for k in first)


def test_base_fingerprint_equal_for_a_copy_and_changed_by_the_weights_or_the_config(tmp_path, base):
    import shutil

    from qwen25vl.train.checkpoint import base_fingerprint

    copy = shutil.copytree(base, tmp_path / "copy")
    assert base_fingerprint(copy) == base_fingerprint(base)
    weights = copy / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # the last weight's last byte
    assert base_fingerprint(copy)["files"] != base_fingerprint(base)["files"]
    weights.write_bytes(original)
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("\n", "\n ", 1))
    assert base_fingerprint(copy)["config"] != base_fingerprint(base)["config"]
    with pytest.raises(CheckpointError, match="no config.json"):
        base_fingerprint(tmp_path / "nothing")


def _checkpoint_keys(folder) -> dict:
    """The parameter names a DCP checkpoint holds: model weights, and those with optimizer moments."""
    import torch.distributed.checkpoint as dcp

    keys = dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    model = {k.removeprefix("model.") for k in keys if k.startswith("model.")}
    optim = {k.removeprefix("optim.state.").rsplit(".", 1)[0] for k in keys if k.startswith("optim.state.")}
    return {"model": model, "optim": optim}


def test_pretrain_stage1_trains_vision_adapters_from_a_random_init(tmp_path, data):
    spec = LoraSpec(rank=2, alpha=4.0, targets=("vision", "merger"))
    recipe = PRETRAIN[1].replace(steps=2, packs_per_step=1, budget=512, warmup=0, lr={"vision": 5e-2, "merger": 5e-2},
                                 lora=spec)
    train(recipe, data=[str(data)], out=str(tmp_path), preset="tiny", quiet=True)
    init = _load(tmp_path / "init")  # the random base is written where the adapter's config points
    before = _logits(init)
    paths = load_adapter(init, tmp_path / "adapter")
    assert all(p.startswith("visual.") for p in paths) and len(paths) == 12
    after = _logits(init)
    assert (after - before).abs().max() > 1e-3
    ids = {"input_ids": _inputs()["input_ids"][:, 8:]}  # text only: vision adapters cannot touch it
    assert torch.equal(_logits(init, ids), _logits(_load(tmp_path / "init"), ids))


def test_dpo_trains_llm_adapters_from_log_2_and_rejects_vision_targets(tmp_path, base):
    from test_train_dpo import _write_pairs

    from qwen25vl.recipes.dpo import DPO, train_dpo

    pairs = _write_pairs(tmp_path / "pairs", 8)
    recipe = DPO.replace(steps=3, packs_per_step=2, budget=1024, lr={"llm": 2e-2}, warmup=0,
                         lora=LoraSpec(rank=4, alpha=8.0, targets=("llm",)))
    log = train_dpo(recipe, data=[str(pairs)], out=str(tmp_path / "dpo"), model=str(base), beta=0.5, quiet=True)
    assert log[0]["loss"] == pytest.approx(0.6931472, abs=1e-5)  # B = 0: the policy is the reference at first
    assert log[-1]["margin"] > log[0]["margin"] + 1e-3
    assert len(lora_modules(_with(base, tmp_path / "dpo" / "adapter"))) == 14
    with pytest.raises(ConfigError, match="vision tower frozen"):
        train_dpo(recipe.replace(lora=SPEC), data=[str(pairs)], out=str(tmp_path / "bad"), model=str(base),
                  quiet=True)


def _with(base, adapter):
    model = _load(base, torch.float64 if "64" in Path(base).name else torch.float32)
    load_adapter(model, adapter)
    return model


def test_api_and_serve_run_the_adapter_unmerged(monkeypatch, tmp_path, base, trained):
    import qwen25vl
    from qwen25vl.cli import main

    adapter = trained[0] / "adapter"
    vlm = qwen25vl.load(base, adapter=adapter, threads=1)
    assert lora_modules(vlm.model) and not vlm.model.training
    reference = _with(base, adapter)
    assert torch.equal(_logits(vlm.model), _logits(reference))
    assert main(["train", "merge", "--adapter", str(adapter), "--out", str(tmp_path / "merged")]) == 0
    merged = qwen25vl.load(tmp_path / "merged", threads=1)  # the base named in adapter_config.json
    prompt = "Describe the picture."
    assert vlm.chat(prompt, max_new_tokens=8, temperature=0) == merged.chat(prompt, max_new_tokens=8, temperature=0)
    served = {}
    monkeypatch.setattr("qwen25vl.serve.app.create_app", lambda v, settings: served.setdefault("vlm", v))
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: None)
    assert main(["serve", "--model", str(base), "--adapter", str(adapter), "--threads", "1"]) == 0
    assert torch.equal(_logits(served["vlm"].model), _logits(reference))
    with pytest.raises(InputError, match="not int8"):
        qwen25vl.load(base, adapter=adapter, dtype="int8")


def test_bad_adapters_are_checkpoint_errors(tmp_path, base, trained):
    model = _load(base)
    with pytest.raises(CheckpointError, match="not a LoRA adapter folder"):
        load_adapter(model, tmp_path)
    adapter = tmp_path / "dora"
    adapter.mkdir()
    source = trained[0] / "adapter"
    config = json.loads((source / CONFIG_NAME).read_text())
    (adapter / CONFIG_NAME).write_text(json.dumps({**config, "use_dora": True}))
    (adapter / WEIGHTS_NAME).write_bytes((source / WEIGHTS_NAME).read_bytes())
    with pytest.raises(CheckpointError, match="use_dora"):
        load_adapter(model, adapter)
    other = make_tiny_checkpoint(tmp_path / "narrow", seed=1, intermediate_size=96)
    with pytest.raises(CheckpointError, match="down_proj maps 128 -> 64 but the model.s is 96 -> 64"):
        load_adapter(_load(other), source)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    with pytest.raises(ConfigError, match="no LoRA adapters"):
        save_adapter(model, tmp_path / "none")


def test_merge_of_a_sharded_base_writes_each_shard_alone(monkeypatch, tmp_path, base, trained):
    import safetensors.torch as st

    from qwen25vl.weights import INDEX_NAME, read_header

    adapter = trained[0] / "adapter"
    sharded = _load(base).save_pretrained(tmp_path / "sharded", max_shard_size="200KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (sharded / name).write_bytes((Path(base) / name).read_bytes())
    shards = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(shards) >= 3
    writes, save_file = [], st.save_file
    monkeypatch.setattr(st, "save_file", lambda tensors, path, **kw: (writes.append(set(tensors)),
                                                                     save_file(tensors, path, **kw)))
    merged = merge_adapter(adapter, tmp_path / "merged", base=sharded, progress=False)
    assert writes == [set(read_header(sharded / name)[0]) for name in shards]  # one shard per write, same keys
    assert (merged / INDEX_NAME).read_text() == (sharded / INDEX_NAME).read_text()
    on_the_fly = _logits(_with(base, adapter))
    assert (_logits(_load(merged)) - on_the_fly).abs().max() <= 1e-5 * on_the_fly.abs().max()


def test_a_preset_lora_run_resumes_on_its_saved_base_and_refuses_another_seed(tmp_path, data):
    """A --preset run's random base is drawn from its seed and written to OUT/init (the adapters name it): a run
    killed and resumed loads that base (the same losses as a run never stopped), a resume with another --seed is
    refused before anything is overwritten, and a fresh start (no resume) with a new seed replaces the base."""
    recipe = SFT.replace(**{**SMALL, "steps": 4, "lora": LoraSpec(rank=2, alpha=4.0, targets=("llm",))})
    whole = train(recipe, data=[str(data)], out=str(tmp_path / "whole"), preset="tiny", quiet=True)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "qwen25vl", "train", "sft", "--preset", "tiny", "--data", str(data), "--out",
           str(run), "--steps", "4", "--packs-per-step", "2", "--budget", "512", "--save-every", "2", "--warmup", "1",
           "--lr", "1e-2", "--lr-merger", "1e-2", "--lora-rank", "2", "--lora-alpha", "4", "--lora-targets", "llm",
           "--die-after-step", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    killed = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert json.loads((run / "init" / "init.json").read_text()) == {"preset": "tiny", "seed": recipe.seed}
    saved = (run / "init" / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match=f"--seed {recipe.seed}\\), not on --preset tiny --seed {recipe.seed + 1}"):
        train(recipe.replace(seed=recipe.seed + 1), data=[str(data)], out=str(run), preset="tiny", quiet=True)
    assert (run / "init" / "model.safetensors").read_bytes() == saved  # nothing overwritten
    resumed = train(recipe, data=[str(data)], out=str(run), preset="tiny", quiet=True)
    assert [e["step"] for e in resumed] == [3, 4]
    for a, b in zip(resumed, whole[2:]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    train(recipe.replace(seed=recipe.seed + 1, steps=1), data=[str(data)], out=str(run), preset="tiny",
          resume=False, quiet=True)
    assert (run / "init" / "model.safetensors").read_bytes() != saved  # the new seed's base
    assert json.loads((run / "init" / "init.json").read_text())["seed"] == recipe.seed + 1
