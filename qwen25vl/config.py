"""Model configuration: frozen dataclasses whose field names equal `config.json`'s.

Two on-disk layouts exist and both are read: the official flat file (text fields at the top level, a `vision_config`
block, `rope_scaling`) and the nested one newer transformers writes (`text_config` / `vision_config`,
`rope_parameters`, `in_channels`). Defaults are the released checkpoints' values, never transformers' class defaults
(those differ: vision hidden_size 3584, tokens_per_second 4, rms_norm_eps 1e-5), because slim hub configs omit
fields and rely on whatever defaults the reader applies.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwen25vl.errors import CheckpointError, ConfigError

_SUPPORTED_ROPE_TYPES = ("mrope", "default")
_SUPPORTED_ACTS = ("silu",)


@dataclass(frozen=True)
class VisionConfig:
    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    in_chans: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    out_hidden_size: int = 3584
    tokens_per_second: float = 2
    hidden_act: str = "silu"


@dataclass(frozen=True)
class TextConfig:
    # Defaults are the 7B's (the middle size); every hub config states these fields anyway.
    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    mrope_section: tuple[int, ...] = (16, 24, 24)
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 128000
    hidden_act: str = "silu"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class Qwen25VLConfig:
    text: TextConfig = field(default_factory=TextConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    bos_token_id: int = 151643
    eos_token_id: int = 151645
    torch_dtype: str | None = "bfloat16"  # the dtype the weights are stored in; informative, loading reads tensors

    def __post_init__(self):
        validate(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Qwen25VLConfig:
        return _from_dict(data)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> Qwen25VLConfig:
        path = Path(folder)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise CheckpointError(f"config file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read config {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config {path} must hold a JSON object, got {type(data).__name__}")
        return _from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / "config.json"
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @staticmethod
    def preset(name: str) -> Qwen25VLConfig:
        try:
            return _PRESETS[name.lower()]()
        except KeyError:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(_PRESETS)}") from None


def validate(config: Qwen25VLConfig) -> None:
    """Raise ConfigError for values the model cannot run correctly (not for unknown extra keys)."""
    t, v = config.text, config.vision
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads"):
        if int(getattr(t, name)) <= 0:
            raise ConfigError(f"text {name} must be positive, got {getattr(t, name)!r}")
    if t.hidden_size % t.num_attention_heads:
        raise ConfigError(
            f"text hidden_size {t.hidden_size} is not divisible by num_attention_heads {t.num_attention_heads}")
    if t.num_attention_heads % t.num_key_value_heads:
        raise ConfigError(f"text num_attention_heads {t.num_attention_heads} is not a multiple of "
                          f"num_key_value_heads {t.num_key_value_heads}")
    if t.head_dim % 2:
        raise ConfigError(f"text head_dim {t.head_dim} must be even for rotary embeddings")
    if sum(t.mrope_section) != t.head_dim // 2 or len(t.mrope_section) != 3:
        raise ConfigError(f"mrope_section {list(t.mrope_section)} must have 3 parts summing to head_dim / 2 = "
                          f"{t.head_dim // 2}")
    if t.hidden_act not in _SUPPORTED_ACTS:
        raise ConfigError(f"text hidden_act {t.hidden_act!r} is not supported (only {list(_SUPPORTED_ACTS)})")
    if v.hidden_act not in _SUPPORTED_ACTS:
        raise ConfigError(f"vision hidden_act {v.hidden_act!r} is not supported (only {list(_SUPPORTED_ACTS)})")
    if v.out_hidden_size != t.hidden_size:
        raise ConfigError(f"vision out_hidden_size {v.out_hidden_size} must equal the text hidden_size "
                          f"{t.hidden_size} (the merger feeds the language model)")
    if v.in_chans != 3:
        raise ConfigError(f"vision in_chans {v.in_chans} is not supported (images are RGB: 3)")
    if v.tokens_per_second <= 0:
        raise ConfigError(f"vision tokens_per_second must be positive, got {v.tokens_per_second!r}")
    for name in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        value = getattr(config, name)
        if not 0 <= value < t.vocab_size:
            raise ConfigError(f"{name} {value} is outside the vocabulary (vocab_size {t.vocab_size})")


# --- reading ------------------------------------------------------------------------------------------------------

_TEXT_FIELDS = {f.name for f in dataclasses.fields(TextConfig)} - {"rope_theta", "mrope_section"}
_VISION_FIELDS = {f.name for f in dataclasses.fields(VisionConfig)}


def _from_dict(data: dict[str, Any]) -> Qwen25VLConfig:
    model_type = data.get("model_type", "qwen2_5_vl")
    if model_type != "qwen2_5_vl":
        raise ConfigError(f"config model_type {model_type!r} is not supported (expected 'qwen2_5_vl'; Qwen2-VL and "
                          "Qwen3-VL differ in their vision tower and rotary layout)")
    nested = data.get("text_config")
    if nested is not None and not isinstance(nested, dict):
        raise ConfigError(f"text_config must be an object, got {type(nested).__name__}")
    # The nested layout may still keep a few text-ish fields (tie_word_embeddings) at the root: inner wins.
    text_src = {**data, **(nested or {})}
    text = _text_from(text_src)
    vision_src = data.get("vision_config") or {}
    if not isinstance(vision_src, dict):
        raise ConfigError(f"vision_config must be an object, got {type(vision_src).__name__}")
    vision = _vision_from(vision_src, text.hidden_size)
    top = {}
    for name in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
                 "bos_token_id", "eos_token_id"):
        value = data.get(name, text_src.get(name))
        if isinstance(value, list):  # eos may be a list in some generation-oriented configs; keep the first
            value = value[0] if value else None
        if value is not None:
            top[name] = int(value)
    dtype = data.get("torch_dtype", data.get("dtype", text_src.get("torch_dtype", text_src.get("dtype"))))
    return Qwen25VLConfig(text=text, vision=vision, torch_dtype=dtype, **top)


def _text_from(src: dict[str, Any]) -> TextConfig:
    if src.get("use_sliding_window"):
        raise ConfigError("use_sliding_window true is not supported (the released checkpoints never use it)")
    rope = src.get("rope_parameters") or src.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise ConfigError(f"rope_scaling / rope_parameters must be an object, got {rope!r}")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in _SUPPORTED_ROPE_TYPES:
        raise ConfigError(f"rope type {rope_type!r} is not supported (only {list(_SUPPORTED_ROPE_TYPES)}; "
                          "YaRN / dynamic scaling are not implemented)")
    for key in ("factor", "original_max_position_embeddings"):
        if rope.get(key) not in (None, 1, 1.0):
            raise ConfigError(f"rope {key} {rope[key]!r} is not supported (no rope scaling)")
    kwargs = {k: src[k] for k in _TEXT_FIELDS if src.get(k) is not None}
    if "mrope_section" in rope:
        kwargs["mrope_section"] = tuple(int(x) for x in rope["mrope_section"])
    theta = rope.get("rope_theta", src.get("rope_theta"))
    if theta is not None:
        kwargs["rope_theta"] = float(theta)
    if "num_key_value_heads" not in kwargs and "num_attention_heads" in kwargs:
        kwargs["num_key_value_heads"] = kwargs["num_attention_heads"]
    if "head_dim" in src and src["head_dim"] is not None and "hidden_size" in kwargs:
        heads = kwargs.get("num_attention_heads", TextConfig.num_attention_heads)
        if int(src["head_dim"]) * heads != kwargs["hidden_size"]:
            raise ConfigError(f"text head_dim {src['head_dim']} x num_attention_heads {heads} must equal "
                              f"hidden_size {kwargs['hidden_size']}")
    return TextConfig(**kwargs)


def _vision_from(src: dict[str, Any], text_hidden: int) -> VisionConfig:
    src = dict(src)
    if "embed_dim" in src and "out_hidden_size" not in src:
        raise ConfigError("vision_config has embed_dim but no out_hidden_size: this is a Qwen2-VL config, "
                          "not Qwen2.5-VL")
    if "in_channels" in src and "in_chans" not in src:
        src["in_chans"] = src["in_channels"]
    if "patch_size" not in src and "spatial_patch_size" in src:
        src["patch_size"] = src["spatial_patch_size"]
    kwargs = {k: src[k] for k in _VISION_FIELDS if src.get(k) is not None}
    for name in ("patch_size", "temporal_patch_size"):
        if isinstance(kwargs.get(name), (list, tuple)):
            values = set(kwargs[name])
            if len(values) != 1:
                raise ConfigError(f"vision {name} {kwargs[name]!r}: only square patches are supported")
            kwargs[name] = values.pop()
    if "fullatt_block_indexes" in kwargs:
        kwargs["fullatt_block_indexes"] = tuple(int(i) for i in kwargs["fullatt_block_indexes"])
    # Slim hub configs (the 7B's) omit out_hidden_size and rely on it equalling the LLM width.
    kwargs.setdefault("out_hidden_size", text_hidden)
    return VisionConfig(**kwargs)


# --- writing ------------------------------------------------------------------------------------------------------

def _to_dict(config: Qwen25VLConfig) -> dict[str, Any]:
    """The official flat layout, which transformers (4.x and 5.x) reads too."""
    t, v = config.text, config.vision
    out: dict[str, Any] = {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl"}
    for f in dataclasses.fields(TextConfig):
        if f.name not in ("rope_theta", "mrope_section"):
            out[f.name] = getattr(t, f.name)
    out.update(
        rope_theta=t.rope_theta,
        rope_scaling={"type": "mrope", "mrope_section": list(t.mrope_section)},
        use_sliding_window=False,
        sliding_window=t.max_position_embeddings,
        max_window_layers=t.num_hidden_layers,
        attention_dropout=0.0,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        image_token_id=config.image_token_id,
        video_token_id=config.video_token_id,
        vision_start_token_id=config.vision_start_token_id,
        vision_end_token_id=config.vision_end_token_id,
    )
    if config.torch_dtype is not None:
        out["torch_dtype"] = config.torch_dtype
    vision = {f.name: getattr(v, f.name) for f in dataclasses.fields(VisionConfig)}
    vision["fullatt_block_indexes"] = list(v.fullatt_block_indexes)
    vision["in_channels"] = v.in_chans  # transformers reads in_channels and ignores the hub's in_chans
    vision["spatial_patch_size"] = v.patch_size
    out["vision_config"] = vision
    return out


# --- presets ------------------------------------------------------------------------------------------------------

def _sized(hidden, layers, heads, kv_heads, mlp, vocab, tie, vision_mlp=3420) -> Qwen25VLConfig:
    text = TextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, tie_word_embeddings=tie)
    return Qwen25VLConfig(text=text, vision=VisionConfig(out_hidden_size=hidden, intermediate_size=vision_mlp))


def tiny() -> Qwen25VLConfig:
    """A random-weight test model: real patch / merge / window geometry, tiny widths, the tiny tokenizer's ids."""
    text = TextConfig(vocab_size=544, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, mrope_section=(2, 3, 3),
                      tie_word_embeddings=True, max_position_embeddings=32768)
    vision = VisionConfig(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, fullatt_block_indexes=(1,),
                          out_hidden_size=64)
    return Qwen25VLConfig(text=text, vision=vision, image_token_id=524, video_token_id=525,
                          vision_start_token_id=521, vision_end_token_id=522, bos_token_id=512, eos_token_id=514,
                          torch_dtype="float32")


_PRESETS = {
    "3b": lambda: _sized(2048, 36, 16, 2, 11008, 151936, True),
    "7b": lambda: _sized(3584, 28, 28, 4, 18944, 152064, False),
    # The 72B's vision MLP is 3456 wide (its config and the report), unlike the smaller sizes' 3420.
    "72b": lambda: _sized(8192, 80, 64, 8, 29568, 152064, False, vision_mlp=3456),
    "tiny": tiny,
}
