"""Checkpoint folders: both key layouts, shards, dtypes, tied embeddings, round trips with transformers, errors."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from model_helpers import build_prompt, make_hf_model, randomize_, save_hf_model

from qwen25vl.config import Qwen25VLConfig
from qwen25vl.errors import CheckpointError, ConfigError, InputError
from qwen25vl.model.vlm import Qwen25VL
from qwen25vl.weights import INDEX_NAME

PROMPT = build_prompt([3, ("image", (1, 4, 6)), 4], seed=1)


@pytest.fixture(scope="module")
def ours():
    torch.manual_seed(0)
    return randomize_(Qwen25VL(Qwen25VLConfig.preset("tiny")), seed=2).eval()


def _logits(model, inputs=PROMPT):
    with torch.no_grad():
        return model(**inputs).logits


def test_round_trip_single_file(ours, tmp_path):
    ours.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not (tmp_path / INDEX_NAME).exists()
    stored = load_file(tmp_path / "model.safetensors")
    assert "lm_head.weight" not in stored  # tied, as the 3B stores it
    assert "visual.blocks.0.attn.qkv.weight" in stored and "model.layers.1.mlp.up_proj.weight" in stored
    back = Qwen25VL.from_pretrained(tmp_path, progress=False)
    assert torch.equal(_logits(back), _logits(ours))
    assert back.lm_head.weight is back.model.embed_tokens.weight
    assert not any(p.is_meta for p in back.parameters())
    assert back.config == ours.config


def test_sharded_round_trip_with_progress_bar(ours, tmp_path, capsys):
    ours.save_pretrained(tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((tmp_path / s).is_file() for s in shards)
    assert index["metadata"]["total_size"] == sum(
        p.numel() * p.element_size() for k, p in ours.state_dict().items() if k != "lm_head.weight")
    back = Qwen25VL.from_pretrained(tmp_path, progress=True)
    assert "loading shards" in capsys.readouterr().err
    assert torch.equal(_logits(back), _logits(ours))
    Qwen25VL.from_pretrained(tmp_path, progress=False)
    assert "loading shards" not in capsys.readouterr().err


def test_newer_transformers_key_layout(ours, tmp_path):
    renamed = {}
    for key, value in ours.state_dict().items():
        if key == "lm_head.weight":
            continue
        if key.startswith("visual."):
            key = "model." + key
        elif key.startswith("model."):
            key = "model.language_model." + key[len("model."):]
        renamed[key] = value.contiguous()
    save_file(renamed, str(tmp_path / "model.safetensors"))
    ours.config.save(tmp_path)
    assert torch.equal(_logits(Qwen25VL.from_pretrained(tmp_path)), _logits(ours))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, "bf16"])
def test_dtypes(ours, tmp_path, dtype):
    ours.save_pretrained(tmp_path)
    half = Qwen25VL.from_pretrained(tmp_path, dtype=dtype)
    want = torch.float16 if dtype == torch.float16 else torch.bfloat16
    assert all(p.dtype == want for p in half.parameters())
    half.save_pretrained(tmp_path / "half")
    again = Qwen25VL.from_pretrained(tmp_path / "half")  # dtype None keeps what is stored
    assert all(p.dtype == want for p in again.parameters())
    assert json.loads((tmp_path / "half" / "config.json").read_text())["torch_dtype"] == str(want)[6:]
    logits = _logits(again)
    assert logits.dtype == want and torch.isfinite(logits).all()


def test_checkpoint_written_by_us_loads_in_transformers(tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from model_helpers import hf_forward

    hf = make_hf_model(tie=False, seed=4)
    ours = Qwen25VL.from_pretrained(save_hf_model(hf, tmp_path / "hf"))
    assert not ours.config.text.tie_word_embeddings
    ours.save_pretrained(tmp_path / "ours")
    assert "lm_head.weight" in load_file(tmp_path / "ours" / "model.safetensors")
    ref = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path / "ours"), dtype=torch.float32).eval()
    assert ref.config.vision_config.tokens_per_second == 2 and ref.config.vision_config.hidden_size == 32
    diff = (hf_forward(ref, PROMPT) - _logits(ours)).abs().max().item()
    assert diff <= 1e-4


def test_tied_checkpoint_from_transformers(tmp_path):
    hf = make_hf_model(tie=True, seed=5)
    folder = save_hf_model(hf, tmp_path)
    assert "lm_head.weight" not in load_file(folder / "model.safetensors")
    ours = Qwen25VL.from_pretrained(folder)
    assert ours.lm_head.weight is ours.model.embed_tokens.weight


def test_errors(ours, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        Qwen25VL.from_pretrained(tmp_path / "nope")
    ours.config.save(tmp_path)
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        Qwen25VL.from_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in ours.state_dict().items() if k != "lm_head.weight"}
    broken = dict(state)
    broken.pop("model.norm.weight")
    broken["model.extra.weight"] = torch.zeros(2)
    broken["model.layers.0.mlp.up_proj.weight"] = torch.zeros(3, 3)
    save_file(broken, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        Qwen25VL.from_pretrained(tmp_path)
    text = str(err.value)
    assert "missing keys (1): model.norm.weight" in text
    assert "unexpected keys (1): model.extra.weight" in text
    assert "model.layers.0.mlp.up_proj.weight: checkpoint (3, 3) vs model (128, 64)" in text
    (tmp_path / INDEX_NAME).write_text(json.dumps({"weight_map": {"model.norm.weight": "gone.safetensors"}}))
    with pytest.raises(CheckpointError, match="gone.safetensors"):
        Qwen25VL.from_pretrained(tmp_path)
    (tmp_path / INDEX_NAME).unlink()
    config = ours.config.to_dict()
    config["rope_scaling"] = {"type": "yarn", "factor": 4.0}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="yarn"):
        Qwen25VL.from_pretrained(tmp_path)
    ours.config.save(tmp_path)
    with pytest.raises(InputError, match="dtype 'int8'"):
        Qwen25VL.from_pretrained(tmp_path, dtype="int8")


def test_decode_layout_keeps_values_keys_and_saving(tmp_path):
    from qwen25vl.generation.layout import use_decode_layout

    torch.manual_seed(0)
    cfg = Qwen25VLConfig.preset("tiny")
    import dataclasses

    cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, tie_word_embeddings=False))
    model = randomize_(Qwen25VL(cfg), seed=6).eval()
    before = _logits(model)
    keys = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert use_decode_layout(model) > 0
    gate = model.model.layers[0].mlp.gate_proj.weight
    assert gate.stride() == (1, gate.shape[0])  # column-major storage, same (out, in) shape
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == keys
    assert (_logits(model) - before).abs().max().item() <= 1e-5
    model.save_pretrained(tmp_path)
    assert (_logits(Qwen25VL.from_pretrained(tmp_path)) - before).abs().max().item() <= 1e-5
