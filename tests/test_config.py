"""Config: both on-disk layouts, released defaults, presets, and clear errors for unsupported values."""

import json

import pytest

from qwen25vl.config import Qwen25VLConfig, TextConfig, VisionConfig
from qwen25vl.errors import CheckpointError, ConfigError

# The official 7B config.json as re-uploaded (slim vision block: the reader must supply the released defaults).
OFFICIAL_7B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
    "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656, "hidden_act": "silu",
    "hidden_size": 3584, "initializer_range": 0.02, "intermediate_size": 18944, "max_position_embeddings": 128000,
    "max_window_layers": 28, "model_type": "qwen2_5_vl", "num_attention_heads": 28, "num_hidden_layers": 28,
    "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.41.2", "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                      "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14,
                      "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                      "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2},
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "vocab_size": 152064,
}
SLIM_VISION = {"hidden_size": 1280, "in_chans": 3, "model_type": "qwen2_5_vl", "spatial_patch_size": 14,
               "tokens_per_second": 2}


def test_official_flat_layout():
    cfg = Qwen25VLConfig.from_dict(OFFICIAL_7B)
    assert cfg == Qwen25VLConfig.preset("7b")
    assert cfg.text.head_dim == 128 and cfg.text.mrope_section == (16, 24, 24)
    assert cfg.vision == Qwen25VLConfig.preset("7b").vision
    assert cfg.image_token_id == 151655 and cfg.torch_dtype == "bfloat16"


def test_slim_vision_block_gets_released_defaults():
    cfg = Qwen25VLConfig.from_dict({**OFFICIAL_7B, "vision_config": SLIM_VISION})
    v = cfg.vision
    assert (v.depth, v.hidden_size, v.intermediate_size, v.num_heads, v.window_size) == (32, 1280, 3420, 16, 112)
    assert v.fullatt_block_indexes == (7, 15, 23, 31) and v.tokens_per_second == 2 and v.out_hidden_size == 3584


def test_nested_layout_of_newer_transformers():
    text = {k: OFFICIAL_7B[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                        "num_hidden_layers", "num_key_value_heads", "vocab_size", "rms_norm_eps")}
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 5e5, "mrope_section": [16, 24, 24]}
    vision = {**OFFICIAL_7B["vision_config"], "in_channels": 3}
    del vision["in_chans"]
    nested = {"model_type": "qwen2_5_vl", "text_config": text, "vision_config": vision, "tie_word_embeddings": True,
              "image_token_id": 151655, "dtype": "float16"}
    cfg = Qwen25VLConfig.from_dict(nested)
    assert cfg.text.rope_theta == 5e5 and cfg.text.tie_word_embeddings and cfg.torch_dtype == "float16"
    assert cfg.vision.in_chans == 3 and cfg.text.hidden_size == 3584


def test_round_trip_through_dict_and_file(tmp_path):
    for name in ("3b", "7b", "72b", "tiny"):
        cfg = Qwen25VLConfig.preset(name)
        assert Qwen25VLConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    cfg = Qwen25VLConfig.preset("tiny")
    cfg.save(tmp_path)
    assert Qwen25VLConfig.from_pretrained(tmp_path) == cfg
    assert cfg.to_dict()["rope_scaling"] == {"type": "mrope", "mrope_section": [2, 3, 3]}


def test_presets_published_values():
    b3, b7, b72 = (Qwen25VLConfig.preset(n) for n in ("3b", "7b", "72b"))
    assert (b3.text.hidden_size, b3.text.num_hidden_layers, b3.text.num_key_value_heads) == (2048, 36, 2)
    assert b3.text.tie_word_embeddings and b3.text.vocab_size == 151936 and b3.vision.out_hidden_size == 2048
    assert (b7.text.intermediate_size, b7.text.num_attention_heads, b7.text.vocab_size) == (18944, 28, 152064)
    assert (b72.text.hidden_size, b72.text.num_hidden_layers, b72.text.num_attention_heads) == (8192, 80, 64)
    assert b72.vision.intermediate_size == 3456 and b7.vision.intermediate_size == 3420
    for cfg in (b3, b7, b72):
        assert cfg.text.head_dim == 128 and cfg.text.rms_norm_eps == 1e-6 and cfg.vision.tokens_per_second == 2
    tiny = Qwen25VLConfig.preset("tiny")
    assert (tiny.text.vocab_size, tiny.bos_token_id, tiny.eos_token_id) == (544, 512, 514)
    assert (tiny.image_token_id, tiny.video_token_id, tiny.vision_start_token_id, tiny.vision_end_token_id) == (
        524, 525, 521, 522)


def test_dataclass_defaults_are_released_values():
    v, t = VisionConfig(), TextConfig()
    assert (v.hidden_size, v.tokens_per_second, v.depth, v.out_hidden_size) == (1280, 2, 32, 3584)
    assert t.rms_norm_eps == 1e-6 and t.rope_theta == 1e6 and t.max_position_embeddings == 128000


@pytest.mark.parametrize("change,message", [
    ({"rope_scaling": {"type": "yarn", "factor": 4.0, "mrope_section": [16, 24, 24]}}, "rope type 'yarn'"),
    ({"rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 16]}}, r"mrope_section \[16, 24, 16\]"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"num_key_value_heads": 5}, "num_key_value_heads 5"),
    ({"model_type": "qwen2_vl"}, "model_type 'qwen2_vl'"),
    ({"image_token_id": 999999}, "image_token_id 999999"),
])
def test_unsupported_values(change, message):
    with pytest.raises(ConfigError, match=message):
        Qwen25VLConfig.from_dict({**OFFICIAL_7B, **change})


def test_vision_errors_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="out_hidden_size 2048"):
        Qwen25VLConfig.from_dict({**OFFICIAL_7B, "vision_config": {**SLIM_VISION, "out_hidden_size": 2048}})
    with pytest.raises(ConfigError, match="Qwen2-VL"):
        Qwen25VLConfig.from_dict({**OFFICIAL_7B, "vision_config": {"embed_dim": 1280, "depth": 32}})
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        Qwen25VLConfig.preset("huge")
    with pytest.raises(CheckpointError, match="config file not found"):
        Qwen25VLConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize("name,total,vision", [
    ("3b", 3_754_622_976, 668_684_288),  # 3.75B (tied head); vision 668.7M (REFERENCE 1.4)
    ("7b", 8_292_166_656, 676_550_144),  # 8.29B on the model card; vision 676.6M
    ("72b", 73_410_777_344, 704_573_696),  # 73.4B on the model card (vision MLP 3456)
])
def test_preset_parameter_counts_match_published(name, total, vision):
    import torch

    from qwen25vl.model.vlm import Qwen25VL

    with torch.device("meta"):  # shapes only, no memory
        model = Qwen25VL(Qwen25VLConfig.preset(name))
    assert sum(p.numel() for p in model.parameters()) == total
    assert sum(p.numel() for p in model.visual.parameters()) == vision
