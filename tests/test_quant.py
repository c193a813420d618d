"""Weight-only int8 (model/quant.py): the quantiser's arithmetic, both product paths, the quantised folder round trip
and the embedded tiny model's greedy outputs against fp32."""

import argparse
import json

import pytest
import torch
from torch import nn

import qwen25vl
from qwen25vl.errors import CheckpointError, InputError
from qwen25vl.generation.paths import EMBEDDED_MODEL_DIR
from qwen25vl.model import quant
from qwen25vl.model.quant import Int8Linear, quantize_model, quantize_weight
from qwen25vl.model.vlm import Qwen25VL
from qwen25vl.testing.checkpoint import make_tiny_checkpoint

HAS_PACK = hasattr(torch, "_weight_int8pack_mm")


def test_quantize_weight_is_symmetric_per_output_channel():
    w = torch.randn(6, 40) * torch.tensor([1e-3, 1, 10, 0.5, 2, 0])[:, None]
    q, s = quantize_weight(w)
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and s.shape == (6,)
    assert q[:5].abs().amax(1).tolist() == [127] * 5  # each row's largest value maps to +-127
    assert torch.equal(s[:5], w[:5].abs().amax(1) / 127)
    assert s[5] == 1 and not q[5].any()  # an all-zero row: scale 1, not a division by zero
    assert (q.float() * s[:, None] - w).abs().le(s[:, None] / 2 + 1e-7).all()  # round to nearest
    assert torch.equal(quantize_weight(w.bfloat16())[0], quantize_weight(w.bfloat16().float())[0])


def _pair(out=48, inp=32, bias=True):
    lin = nn.Linear(inp, out, bias=bias)
    return lin, Int8Linear.from_linear(lin)


def test_dequantised_path_equals_the_float_product_of_the_dequantised_weight():
    lin, q8 = _pair()
    x = torch.randn(3, 40, 32)  # 120 rows: above the packed kernel's row limit
    ref = torch.nn.functional.linear(x, q8.dequantized(), lin.bias)
    torch.testing.assert_close(q8(x), ref, rtol=1e-5, atol=1e-5)
    assert (q8(x) - lin(x)).abs().max() < 0.05  # and near the float layer it came from


@pytest.mark.skipif(not HAS_PACK, reason="this torch has no _weight_int8pack_mm")
def test_few_rows_take_the_packed_kernel_and_agree_with_dequantised(monkeypatch):
    """Without the native kernel (tests/test_native.py covers it), few rows go to torch's packed int8 kernel."""
    monkeypatch.setattr(quant.native, "matvec", lambda: None)
    lin, q8 = _pair(bias=False)
    calls = []
    real = torch._weight_int8pack_mm
    monkeypatch.setattr(torch, "_weight_int8pack_mm", lambda *a: calls.append(a[0].shape) or real(*a))
    x = torch.randn(1, 2, 32)
    with torch.no_grad():
        y = q8(x)
        q8(torch.randn(64, 32))  # prefill-sized: dequantise then GEMM
    assert calls == [(2, 32)]
    assert y.dtype == torch.float32 and y.shape == (1, 2, 48)
    ref = torch.nn.functional.linear(x, q8.dequantized())
    torch.testing.assert_close(y, ref, rtol=2e-2, atol=2e-2)  # bf16 activations in the kernel


def _tiny(tmp_path, **kw):
    return make_tiny_checkpoint(tmp_path / "ckpt", seed=3, **kw)


def test_quantize_model_swaps_every_llm_linear_and_unties_lm_head(tmp_path):
    model = Qwen25VL.from_pretrained(_tiny(tmp_path), progress=False)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    embed = model.model.embed_tokens.weight.clone()
    names = quantize_model(model)
    layers = model.config.text.num_hidden_layers
    assert len(names) == 7 * layers + 1
    assert all(isinstance(model.get_submodule(n), Int8Linear) for n in names)
    assert torch.equal(model.model.embed_tokens.weight, embed) and embed.dtype == torch.float32
    assert not any(isinstance(m, Int8Linear) for m in model.visual.modules())  # the tower stays float
    assert model.lm_head.weight.dtype == torch.int8


@pytest.mark.parametrize("rest", [torch.float32, torch.bfloat16])
def test_quantise_save_load_round_trip_is_bit_equal(tmp_path, rest):
    model = Qwen25VL.from_pretrained(_tiny(tmp_path), dtype=rest, progress=False)
    quantize_model(model)
    out = model.save_pretrained(tmp_path / "q8")
    assert json.loads((out / "quantization.json").read_text())["modules"] == model.quantization["modules"]
    back = Qwen25VL.from_pretrained(out, progress=False)  # no dtype given: the stored one
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert back.model.layers[0].mlp.up_proj.weight_scale.dtype == torch.float32
    ids = torch.randint(0, 500, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, back(ids).logits)


def test_quantize_folder_writes_a_folder_the_api_loads(tmp_path, one_thread):
    from qwen25vl.weights import quantize_folder

    src = _tiny(tmp_path)
    out = quantize_folder(src, tmp_path / "q8")
    assert (out / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    assert (out / "generation_config.json").is_file() and (out / "quantization.json").is_file()
    direct, saved = qwen25vl.load(src, dtype="int8", threads=None), qwen25vl.load(out, threads=None)
    assert isinstance(saved.model.lm_head, Int8Linear)
    a, b = direct.model.state_dict(), saved.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert saved.chat("hello", max_new_tokens=6, temperature=0) == direct.chat("hello", max_new_tokens=6, temperature=0)
    with pytest.raises(InputError, match="overwrite"):
        quantize_folder(out, out)


def test_saving_a_float_model_over_a_quantised_folder_drops_the_spec(tmp_path):
    model = Qwen25VL.from_pretrained(_tiny(tmp_path), progress=False)
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    quantize_model(model)
    out = model.save_pretrained(tmp_path / "q8")
    Qwen25VL.from_pretrained(_tiny(tmp_path), progress=False).save_pretrained(out)
    assert not (out / "quantization.json").exists()
    back = Qwen25VL.from_pretrained(out, progress=False)
    assert torch.equal(back.model.layers[0].self_attn.q_proj.weight, plain["model.layers.0.self_attn.q_proj.weight"])


def test_a_bad_quantization_file_is_a_checkpoint_error(tmp_path):
    folder = _tiny(tmp_path)
    (folder / "quantization.json").write_text('{"method": "int4-awq", "modules": ["lm_head"]}')
    with pytest.raises(CheckpointError, match="int4-awq"):
        Qwen25VL.from_pretrained(folder, progress=False)
    (folder / "quantization.json").write_text('{"method": "%s", "modules": ["model.nothing"]}' % quant.METHOD)
    with pytest.raises(CheckpointError, match="model.nothing"):
        Qwen25VL.from_pretrained(folder, progress=False)
    (folder / "quantization.json").write_text('[1, 2]')
    with pytest.raises(CheckpointError, match="'modules' list"):
        Qwen25VL.from_pretrained(folder, progress=False)


def test_load_int8_through_the_api_and_the_runtime_flag(tmp_path, one_thread):
    from qwen25vl.runtime import add_runtime_args, startup_line

    parser = argparse.ArgumentParser()
    add_runtime_args(parser)
    assert parser.parse_args(["--dtype", "int8"]).dtype == "int8"
    vlm = qwen25vl.load(_tiny(tmp_path), dtype="int8", threads=None)
    assert isinstance(vlm.model.model.layers[1].mlp.down_proj, Int8Linear)
    assert "int8 LLM linears + float32" in startup_line(vlm, "ckpt")


@pytest.mark.parametrize("native", [True, False])
def test_bf16_keeps_the_decode_layout_only_where_the_cpu_computes_bf16(tmp_path, monkeypatch, native, one_thread):
    """Without the native mat-vec (tests/test_native.py: with it, bf16 takes that), bf16 decides by the CPU."""
    from qwen25vl import api
    from qwen25vl.generation.layout import RowSplitLinear

    monkeypatch.setattr(quant.native, "matvec", lambda: None)
    monkeypatch.setattr(api, "cpu_has_bf16", lambda: native)
    bf16 = qwen25vl.load(_tiny(tmp_path), dtype="bfloat16", threads=None)
    assert isinstance(bf16.model.model.layers[0].mlp.up_proj, RowSplitLinear) == native
    fp32 = qwen25vl.load(_tiny(tmp_path), dtype="float32", threads=None)
    assert isinstance(fp32.model.model.layers[0].mlp.up_proj, RowSplitLinear)


# --- the embedded tiny model against fp32 --------------------------------------------------------------------------
# Measured on the 5 held-out grounding prompts (48 new tokens, the question before the image), shipped model of
# 2026-12-03 with the native mat-vecs: int8 departs from fp32 greedy first at tokens 18, never, 12, never, 17;
# bf16 at never, 13, 19, never, 43 (coordinate digits where the tiny model's top two are close). So the stated
# agreement: the first 12 tokens of every prompt.
AGREE_TOKENS = 12


@pytest.mark.skipif(not (EMBEDDED_MODEL_DIR / "config.json").is_file(), reason="no embedded model")
@pytest.mark.parametrize("dtype", ["int8", "bfloat16"])
def test_embedded_model_greedy_equals_fp32_for_the_stated_tokens(dtype, one_thread):
    from test_tiny_model import held_out_conversations

    ref, low = qwen25vl.load(dtype="float32", threads=None), qwen25vl.load(dtype=dtype, threads=None)
    agree, total = 0, 0
    for conv in held_out_conversations(5):
        a = ref.generate(conv, max_new_tokens=24, temperature=0)[0].token_ids
        b = low.generate(conv, max_new_tokens=24, temperature=0)[0].token_ids
        assert a[:AGREE_TOKENS] == b[:AGREE_TOKENS]
        # teacher-forced on fp32's answer: the low-precision model's top-1 at every step
        inputs, _ = low.prepare(conv)
        ids = torch.cat([inputs["input_ids"], torch.tensor([a[:-1]])], dim=1)
        with torch.no_grad():
            logits = low.model(ids, pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"],
                               logits_to_keep=len(a)).logits[0]
        agree += int((logits.argmax(-1) == torch.tensor(a)).sum())
        total += len(a)
    assert agree / total >= 0.9
