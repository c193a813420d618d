"""The vision tower equals transformers' Qwen2.5-VL vision model (same weights copied by key name) on odd grids."""

import pytest
import torch

from qwen25vl.config import VisionConfig
from qwen25vl.errors import ConfigError, InputError
from qwen25vl.model.vision import VisionTransformer

import transformers.models.qwen2_5_vl.modeling_qwen2_5_vl as hf
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig  # noqa: E402

# real patch, merge and window sizes (windows of 4x4 merge units), tiny width
TINY = dict(
    depth=4, hidden_size=64, intermediate_size=96, num_heads=4, fullatt_block_indexes=(1, 3), out_hidden_size=48
)


def build_pair(**overrides):
    cfg = VisionConfig(**{**TINY, **overrides})
    ref_cfg = Qwen2_5_VLVisionConfig(
        depth=cfg.depth, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_heads=cfg.num_heads, in_channels=cfg.in_chans, patch_size=cfg.patch_size,
        temporal_patch_size=cfg.temporal_patch_size, spatial_merge_size=cfg.spatial_merge_size,
        window_size=cfg.window_size, fullatt_block_indexes=list(cfg.fullatt_block_indexes),
        out_hidden_size=cfg.out_hidden_size, hidden_act=cfg.hidden_act,
    )
    ref_cfg._attn_implementation = "sdpa"
    ref = hf.Qwen2_5_VisionTransformerPretrainedModel(ref_cfg).eval()
    with torch.no_grad():  # the reference's init leaves norms at 1 and biases at 0: randomise everything
        for p in ref.parameters():
            p.normal_(0.0, 0.2)
    ours = VisionTransformer(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    return build_pair()


def pixels(grids):
    g = torch.tensor(grids)
    return torch.randn(int(g.prod(-1).sum()), 1176), g


CASES = {
    "252x364 image, partial windows": [(1, 18, 26)],
    "images of different sizes": [(1, 16, 24), (1, 10, 14), (1, 2, 2), (1, 6, 30)],
    "video t=3": [(3, 12, 20)],
    "odd grids and a video": [(1, 2, 6), (2, 10, 6), (1, 22, 2)],
}


@pytest.mark.parametrize("grids", CASES.values(), ids=CASES.keys())
def test_tower_equals_transformers(pair, grids):
    ref, ours = pair
    x, g = pixels(grids)
    with torch.no_grad():
        want = ref(x, g).pooler_output
        got = ours(x, g)
    assert got.shape == (x.shape[0] // 4, 48)
    assert (got - want).abs().max().item() <= 1e-4


def test_module_paths_are_the_official_keys(pair):
    ref, ours = pair
    keys = set(ours.state_dict())
    assert keys == set(ref.state_dict())  # no extra buffers: the tower keeps no state
    for name in ["patch_embed.proj.weight", "blocks.0.norm1.weight", "blocks.3.norm2.weight", "blocks.1.attn.qkv.bias",
                 "blocks.1.attn.proj.weight", "blocks.2.mlp.gate_proj.bias", "blocks.2.mlp.up_proj.weight",
                 "blocks.2.mlp.down_proj.bias", "merger.ln_q.weight", "merger.mlp.0.weight", "merger.mlp.2.bias"]:
        assert name in keys
    assert ours.patch_embed.proj.weight.shape == (64, 3, 2, 14, 14)


def test_patch_embed_matmul_equals_conv3d(pair):
    _, ours = pair
    x = torch.randn(10, 1176)
    conv = torch.nn.functional.conv3d(x.view(-1, 3, 2, 14, 14), ours.patch_embed.proj.weight, stride=(2, 14, 14))
    torch.testing.assert_close(ours.patch_embed(x), conv.view(10, -1), atol=1e-5, rtol=1e-5)


def test_items_in_one_call_equal_items_alone(pair):
    _, ours = pair
    grids = [(1, 10, 14), (2, 4, 6)]
    x, g = pixels(grids)
    with torch.no_grad():
        together = ours(x, g)
        first = ours(x[:140], g[:1])
        second = ours(x[140:], g[1:])
        again = ours(x, g)
    torch.testing.assert_close(together, torch.cat([first, second]), atol=1e-5, rtol=1e-5)
    assert torch.equal(together, again)  # nothing kept between calls changes the result


def test_bfloat16_runs_close_to_fp32(pair):
    _, ours = pair
    x, g = pixels([(1, 10, 14)])
    with torch.no_grad():
        want = ours(x, g)
        got = VisionTransformer(ours.config).to(torch.bfloat16)
        got.load_state_dict(ours.state_dict())
        out = got(x, g)
    assert out.dtype == torch.bfloat16
    assert (out.float() - want).abs().max() <= 0.05 * want.abs().max()


def test_gradients_flow_to_every_parameter(pair):
    _, ours = pair
    x, g = pixels([(1, 10, 14), (1, 4, 4)])
    ours.zero_grad()
    ours(x, g).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ours.parameters())
    ours.zero_grad(set_to_none=True)


def test_mistakes_raise_errors_naming_the_value(pair):
    _, ours = pair
    with pytest.raises(InputError, match="140 patch rows"):
        ours(torch.randn(140, 1176), torch.tensor([[1, 10, 16]]))
    with pytest.raises(InputError, match="1176"):
        ours(torch.randn(140, 1000), torch.tensor([[1, 10, 14]]))
    with pytest.raises(InputError, match=r"\(1, 9, 14\)"):
        ours(torch.randn(126, 1176), torch.tensor([[1, 9, 14]]))
    with pytest.raises(ConfigError, match="fullatt_block_indexes"):
        VisionTransformer(VisionConfig(**{**TINY, "fullatt_block_indexes": (4,)}))
    with pytest.raises(ConfigError, match="hidden_act"):
        VisionTransformer(VisionConfig(**{**TINY, "hidden_act": "relu6"}))


def test_shared_layers_keep_the_reference_math():
    """layers.py's fused forms (F.rms_norm in fp32, rotary without the rotated copy) equal the plain formulas."""
    from qwen25vl.model.layers import RMSNorm, apply_rotary, rotate_half

    x = torch.randn(5, 3, 16, requires_grad=True)
    cos, sin = torch.randn(5, 1, 16), torch.randn(5, 1, 16)
    got = apply_rotary(x, cos, sin)
    want = x * cos + rotate_half(x) * sin
    torch.testing.assert_close(got, want)
    g = torch.randn_like(want)
    torch.testing.assert_close(torch.autograd.grad(got, x, g)[0], torch.autograd.grad(want, x, g)[0])

    norm = RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
    for dtype in (torch.float32, torch.bfloat16):
        h = (torch.randn(4, 16) * 3).to(dtype)
        h32 = h.float()
        manual = norm.weight.to(dtype) * (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(dtype)
        norm_d = RMSNorm(16).to(dtype)
        norm_d.load_state_dict(norm.state_dict())
        torch.testing.assert_close(norm_d(h), manual)


def test_layout_cached_under_inference_mode_serves_training(pair):
    """Generation (inference_mode) then training on the same grid: the cached index tensors must allow backward."""
    _, ours = pair
    x, g = pixels([(1, 6, 22)])  # a grid no other test uses, so the first layout is made under inference mode
    with torch.inference_mode():
        want = ours(x, g)
    out = ours(x, g)
    out.square().mean().backward()
    assert ours.patch_embed.proj.weight.grad is not None
    torch.testing.assert_close(out.detach(), want)
    ours.zero_grad(set_to_none=True)
