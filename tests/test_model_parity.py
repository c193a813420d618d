"""Our model against transformers 5.24's Qwen2_5_VLForConditionalGeneration on the same random weights.

The reference is saved with its own save_pretrained and loaded into ours through our loader, so the loader, the
config reader, the vision tower, M-RoPE and the decoder are all checked together. Each case is also shown sensitive:
the same weights with plain 1-D positions give visibly different logits, so the M-RoPE ids really matter.

transformers 5.24 builds 3-D ids only when given `mm_token_type_ids` (passed here for every case). For videos it
places the text that follows at start + max(h, w) / 2 rather than at max id + 1 (the original release's rule, which we
implement), so video cases feed it our ids, built by the original rule, as explicit `position_ids`; the long-video
case also shows that its own ids differ there.
"""

from __future__ import annotations

import pytest
import torch

import transformers  # noqa: F401

from model_helpers import (  # noqa: E402
    build_prompt, hf_forward, left_pad_batch, make_hf_model, mm_token_type_ids, save_hf_model,
)

from qwen25vl.model.vlm import Qwen25VL  # noqa: E402
from qwen25vl.positions import text_position_ids  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    hf = make_hf_model(tie=False, seed=1)
    return hf, save_hf_model(hf, tmp_path_factory.mktemp("hf_tiny"))


@pytest.fixture(scope="module")
def models(saved):
    hf, folder = saved
    return hf, Qwen25VL.from_pretrained(folder, dtype=torch.float32).eval()


def _ours(model, inputs, **kw):
    with torch.no_grad():
        return model(**inputs, **kw)


def _valid(inputs):
    mask = inputs.get("attention_mask")
    return torch.ones_like(inputs["input_ids"], dtype=torch.bool) if mask is None else mask.bool()


def _check(models, inputs, feed_positions=False):
    """Parity with the reference on valid positions, and sensitivity to the M-RoPE ids."""
    hf, ours = models
    out = _ours(ours, inputs)
    ref = hf_forward(hf, inputs, position_ids=out.position_ids if feed_positions else None)
    valid = _valid(inputs)
    diff = (out.logits - ref)[valid].abs().max().item()
    assert diff <= TOL, f"max |logit difference| {diff:.2e} > {TOL}"
    flat = _ours(ours, inputs, position_ids=text_position_ids(valid))
    moved = (flat.logits - out.logits)[valid].abs().max().item()
    assert moved > 1e-2, f"1-D positions barely change the logits ({moved:.2e}): the case tests nothing"
    return out, ref


def test_text_only(models):
    hf, ours = models
    inputs = build_prompt([23], seed=2)
    out = _ours(ours, inputs)
    ref = hf_forward(hf, inputs)
    assert (out.logits - ref).abs().max().item() <= TOL
    # Text alone is 1-D RoPE, so sensitivity here means: positions matter at all (all-zero ids change the logits).
    zeros = torch.zeros_like(out.position_ids)
    assert (_ours(ours, inputs, position_ids=zeros).logits - out.logits).abs().max().item() > 1e-2
    assert out.rope_deltas.tolist() == [0]


def test_one_image_with_partial_windows(models):
    # 252 x 364 px -> 18 x 26 patches -> 9 x 13 merge units: windows of 4 x 4 units leave partial edge windows.
    inputs = build_prompt([6, ("image", (1, 18, 26)), 5], seed=3)
    out, _ = _check(models, inputs)
    hf, _ = models
    ref_ids, ref_deltas = hf.model.get_rope_index(
        inputs["input_ids"], mm_token_type_ids(inputs["input_ids"]), image_grid_thw=inputs["image_grid_thw"])
    assert torch.equal(out.position_ids, ref_ids)
    assert out.rope_deltas.tolist() == ref_deltas.flatten().tolist()


def test_several_images_of_different_sizes(models):
    inputs = build_prompt([4, ("image", (1, 4, 6)), 3, ("image", (1, 8, 8)), ("image", (1, 6, 10)), 4], seed=4)
    _check(models, inputs)


@pytest.mark.parametrize("seconds", [0.5, 4.0], ids=["4fps", "0.5fps"])
def test_video_fps(models, seconds):
    inputs = build_prompt([5, ("video", (4, 6, 8), seconds), 6], seed=5)
    out, _ = _check(models, inputs, feed_positions=True)
    start = 6  # 5 text tokens + <vision_start>
    step = int(seconds * 2)  # temporal ids advance by second_per_grid_t x tokens_per_second per frame group
    temporal = out.position_ids[0, 0, start : start + 4 * 12 : 12] - start
    assert temporal.tolist() == [0, step, 2 * step, 3 * step]


def test_image_and_video_in_one_prompt(models):
    inputs = build_prompt([3, ("image", (1, 6, 8)), 4, ("video", (2, 4, 6), 1.0), 3], seed=6)
    _check(models, inputs, feed_positions=True)


def test_left_padded_batch_of_two(models):
    a = build_prompt([3, ("image", (1, 4, 6)), 9], seed=7)
    b = build_prompt([2, ("image", (1, 8, 6)), 2], seed=8)
    inputs = left_pad_batch([a, b])
    assert inputs["attention_mask"][0, 0] == 0 or inputs["attention_mask"][1, 0] == 0
    out, _ = _check(models, inputs)
    # Each row equals that prompt run alone (padding changes nothing).
    _, ours = models
    for row, single in enumerate((a, b)):
        alone = _ours(ours, single).logits[0]
        n = alone.shape[0]
        assert (out.logits[row, -n:] - alone).abs().max().item() <= TOL


def test_long_low_resolution_video_then_text(models):
    # 8 frame groups at 1 fps (2 s each -> temporal step 4): ids span 0..28 in time but only 0..1 in space.
    hf, _ = models
    inputs = build_prompt([4, ("video", (8, 4, 4), 2.0), 7], seed=9)
    out, _ = _check(models, inputs, feed_positions=True)
    block_start, block_len = 5, 8 * 2 * 2
    after = out.position_ids[:, 0, block_start + block_len]  # <vision_end> right after the block
    assert after.tolist() == [block_start + 28 + 1] * 3  # max id (temporal 28) + 1: the original rule
    ref_ids, _ = hf.model.get_rope_index(
        inputs["input_ids"], mm_token_type_ids(inputs["input_ids"]), video_grid_thw=inputs["video_grid_thw"],
        second_per_grid_ts=inputs["second_per_grid_ts"])
    assert ref_ids[0, 0, block_start + block_len].item() == block_start + 2  # transformers 5.24: start + max(h,w)/2


def test_logits_to_keep_and_precomputed_features(models):
    _, ours = models
    inputs = build_prompt([4, ("image", (1, 4, 6)), 5], seed=10)
    full = _ours(ours, inputs).logits
    last = _ours(ours, inputs, logits_to_keep=1).logits
    assert last.shape[1] == 1 and torch.allclose(last[:, 0], full[:, -1], atol=1e-5)
    with torch.no_grad():
        feats = ours.encode_images(inputs["pixel_values"], inputs["image_grid_thw"])
    cached = {k: v for k, v in inputs.items() if k != "pixel_values"}
    assert torch.allclose(_ours(ours, cached, image_embeds=feats).logits, full, atol=1e-5)


def test_packed_sequences_equal_separate_runs(models):
    # Training packs samples into one row; cu_seqlens keeps attention and positions inside each sample.
    _, ours = models
    a = build_prompt([3, ("image", (1, 4, 6)), 5], seed=11)
    b = build_prompt([7], seed=12)
    c = build_prompt([2, ("video", (2, 4, 4), 0.5), 3], seed=13)
    packed = {
        "input_ids": torch.cat([a["input_ids"], b["input_ids"], c["input_ids"]], dim=1),
        "pixel_values": a["pixel_values"], "image_grid_thw": a["image_grid_thw"],
        "pixel_values_videos": c["pixel_values_videos"], "video_grid_thw": c["video_grid_thw"],
        "second_per_grid_ts": c["second_per_grid_ts"],
    }
    lengths = [p["input_ids"].shape[1] for p in (a, b, c)]
    cu = torch.tensor([0, lengths[0], lengths[0] + lengths[1], sum(lengths)], dtype=torch.int32)
    out = _ours(ours, packed, cu_seqlens=cu)
    start = 0
    for single, n in zip((a, b, c), lengths):
        alone = _ours(ours, single)
        assert (out.logits[0, start : start + n] - alone.logits[0]).abs().max().item() <= TOL
        assert torch.equal(out.position_ids[:, 0, start : start + n], alone.position_ids[:, 0])
        start += n
    # Given position ids (the training collator's) are used as they are.
    again = _ours(ours, packed, position_ids=out.position_ids, cu_seqlens=cu)
    assert torch.equal(again.logits, out.logits)
    tail = _ours(ours, packed, cu_seqlens=cu, logits_to_keep=2).logits
    assert (tail - out.logits[:, -2:]).abs().max().item() <= 1e-5


def test_token_feature_mismatch_names_both_counts(models):
    from qwen25vl.errors import InputError

    _, ours = models
    inputs = build_prompt([3, ("image", (1, 4, 6)), 2], seed=14)  # 6 image tokens
    short = dict(inputs, input_ids=torch.cat([inputs["input_ids"][:, :5], inputs["input_ids"][:, 6:]], dim=1))
    with torch.no_grad():
        feats = ours.encode_images(inputs["pixel_values"], inputs["image_grid_thw"])
    with pytest.raises(InputError, match=r"5 image tokens in input_ids, image features of shape \(6, 64\)"):
        _ours(ours, {"input_ids": short["input_ids"]}, image_embeds=feats)
    with pytest.raises(InputError, match="6 image tokens but no image features"):
        _ours(ours, {"input_ids": inputs["input_ids"]})
    with pytest.raises(InputError, match="without image_grid_thw"):
        _ours(ours, {"input_ids": inputs["input_ids"], "pixel_values": inputs["pixel_values"]})


def test_training_forward_after_inference_mode_generation(models):
    # A process that generates (inference_mode) and then trains (autograd) on the same grid shapes.
    _, ours = models
    inputs = build_prompt([3, ("image", (1, 6, 6)), 2], seed=15)
    with torch.inference_mode():
        ours(**inputs)
    loss = ours(**inputs).logits.float().logsumexp(-1).mean()
    loss.backward()
    assert ours.visual.patch_embed.proj.weight.grad is not None
    ours.zero_grad(set_to_none=True)


def test_bf16_text_equals_reference_bit_for_bit(saved):
    # Half precision rounds after every op: the same op order as the reference gives the same logits exactly.
    from transformers import Qwen2_5_VLForConditionalGeneration

    _, folder = saved
    hf16 = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(folder), dtype=torch.bfloat16).eval()
    ours16 = Qwen25VL.from_pretrained(folder, dtype=torch.bfloat16)
    inputs = build_prompt([40], seed=16)
    ref = hf_forward(hf16, inputs)
    out = _ours(ours16, inputs).logits
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref)
