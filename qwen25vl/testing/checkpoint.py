"""A complete random tiny checkpoint folder, as a released model's folder looks (for tests, examples, benchmarks).

`make_tiny_checkpoint(folder)` writes config.json + model.safetensors (through our model's `save_pretrained`), the
tiny tokenizer, preprocessor_config.json and generation_config.json. Weights are drawn from a seeded generator, with
the embedding at std `embed_std` (1.0 by default) and layers at a gain of 2 (see `init_random_weights`): a default
0.02 init makes near-uniform logits, so greedy parity tests would compare near-ties and constant sequences.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch

from qwen25vl.errors import ConfigError

def tiny_config(**overrides: Any):
    """The tiny preset with overrides: text fields by name (`num_hidden_layers=3`), vision fields prefixed
    `vision_` (`vision_depth=4`), top-level ids by name (`image_token_id=...`)."""
    from qwen25vl.config import Qwen25VLConfig

    config = Qwen25VLConfig.preset("tiny")
    text_names = {f.name for f in dataclasses.fields(config.text)}
    vision_names = {f.name for f in dataclasses.fields(config.vision)}
    top_names = {f.name for f in dataclasses.fields(config)} - {"text", "vision"}
    text, vision, top = {}, {}, {}
    for key, value in overrides.items():
        if key.startswith("vision_") and key[len("vision_"):] in vision_names:
            vision[key[len("vision_"):]] = value
        elif key in text_names:
            text[key] = value
        elif key in top_names:
            top[key] = value
        else:
            raise ConfigError(f"unknown tiny config override {key}={value!r}")
    if "hidden_size" in text and "out_hidden_size" not in vision:
        vision["out_hidden_size"] = text["hidden_size"]  # the merger feeds the LLM
    text_config = dataclasses.replace(config.text, **text)
    vision_config = dataclasses.replace(config.vision, **vision)
    return dataclasses.replace(config, text=text_config, vision=vision_config, **top)


@torch.no_grad()
def init_random_weights(model: torch.nn.Module, seed: int = 0, embed_std: float = 1.0, gain: float = 2.0) -> None:
    """Seeded init: Linear/Conv weights N(0, (gain^2)/fan_in), biases N(0, 0.02^2), norms 1 + N(0, 0.1^2).

    With a tied head, the residual stream must move away from the input token's embedding, or greedy decoding
    predicts the current token again forever; a gain of 2 makes the layers' contributions dominate (measured: 12-20
    distinct tokens in 20 greedy steps, top-2 logit margins >= 3e-3)."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in sorted(model.named_parameters()):
        shape = param.shape
        if name.endswith("embed_tokens.weight"):
            std = embed_std
        elif name.endswith("lm_head.weight"):
            std = embed_std / math.sqrt(shape[1])  # untied head: logits of about embed_std scale
        elif param.ndim >= 2:
            std = gain / math.sqrt(math.prod(shape[1:]))
        elif "norm" in name or "ln_q" in name:
            param.copy_(1 + 0.1 * torch.randn(shape, generator=gen))
            continue
        else:
            std = 0.02
        param.copy_((std * torch.randn(shape, generator=gen)).to(param.dtype))


def make_tiny_checkpoint(
    folder: str | Path,
    seed: int = 0,
    *,
    embed_std: float = 1.0,
    preprocessor: dict[str, Any] | None = None,
    generation: dict[str, Any] | None = None,
    **config_overrides: Any,
) -> Path:
    """Write a random tiny model folder and return its path. `preprocessor` / `generation` update those files."""
    from qwen25vl.model.vlm import Qwen25VL
    from qwen25vl.testing.tokenizer import write_preprocessor_config, write_tiny_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = tiny_config(**config_overrides)
    model = Qwen25VL(config)
    if any(p.is_meta for p in model.parameters()):
        model = model.to_empty(device="cpu")
    init_random_weights(model, seed, embed_std)
    model.save_pretrained(folder)
    write_tiny_tokenizer(folder)
    write_preprocessor_config(folder, **(preprocessor or {}))
    gen_config = {
        "bos_token_id": config.bos_token_id,
        "pad_token_id": config.bos_token_id,  # <|endoftext|>, as the official file
        "eos_token_id": [config.eos_token_id, config.bos_token_id],
        "do_sample": True,
        "temperature": 0.1,
        "top_k": 1,
        "top_p": 0.001,
        "repetition_penalty": 1.05,
        **(generation or {}),
    }
    (folder / "generation_config.json").write_text(json.dumps(gen_config, indent=2))
    return folder
