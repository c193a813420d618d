"""`qwen25vl train merge`: fold a LoRA adapter into its base model's weights, one safetensors shard at a time.

Each shard of the base folder is read, every adapted weight W becomes W + scaling * B A (computed in fp32 or wider,
stored in the shard's dtype), and the shard is written under the same name with the same keys; the other files (config,
index, tokenizer, processor, generation defaults) are copied. At most one shard is held in memory, never the model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from tqdm.auto import tqdm

from qwen25vl.errors import CheckpointError, ConfigError
from qwen25vl.train.lora import CONFIG_NAME, read_adapter
from qwen25vl.weights import checkpoint_files, internal_key


def base_of(adapter: str | Path) -> Path:
    """The base model folder an adapter names (`base_model_name_or_path`), when it is a folder here."""
    config = read_adapter(adapter).config
    base = config.get("base_model_name_or_path")
    if not base or not Path(base).is_dir():
        raise ConfigError(f"{Path(adapter) / CONFIG_NAME} names no base model folder here ({base!r}); "
                          "give --model FOLDER")
    return Path(base)


def merge_adapter(adapter: str | Path, out: str | Path, *, base: str | Path | None = None,
                  progress: bool = True) -> Path:
    """Write base + adapter as a plain HF folder at `out`; returns it."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    base = Path(base) if base is not None else base_of(adapter)
    out = Path(out)
    if out.resolve() == base.resolve():
        raise ConfigError(f"--out {out} is the base folder: write the merged model elsewhere")
    found = read_adapter(adapter)
    files = checkpoint_files(base)
    out.mkdir(parents=True, exist_ok=True)
    pending = set(found.weights)
    for file in tqdm(files, desc="merging shards", unit="shard", disable=not progress):
        shard = {}
        with safe_open(str(file), framework="pt") as f:
            metadata = f.metadata() or {"format": "pt"}
            for key in f.keys():
                tensor = f.get_tensor(key)
                path = internal_key(key).removesuffix(".weight")
                if key.endswith(".weight") and path in found.weights:
                    tensor = _merged(tensor, *found.weights[path], found.scaling[path], key)
                    pending.discard(path)
                shard[key] = tensor
        save_file(shard, str(out / file.name), metadata=metadata)
        del shard
    if pending:
        raise CheckpointError(f"the adapter adapts modules the base model {base} does not hold: "
                              f"{sorted(pending)[:5]}")
    for item in base.iterdir():
        if item.is_file() and item.suffix != ".safetensors":
            shutil.copy(item, out / item.name)
    return out


def _merged(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float, key: str) -> torch.Tensor:
    if tuple(weight.shape) != (b.shape[0], a.shape[1]):
        raise CheckpointError(f"adapter for {key}: B A is {b.shape[0]} x {a.shape[1]}, the weight "
                              f"{tuple(weight.shape)}")
    wide = torch.promote_types(weight.dtype, torch.float32)  # fp32 at least; an fp64 base stays exact
    return (weight.to(wide) + scaling * (b.to(wide) @ a.to(wide))).to(weight.dtype)
