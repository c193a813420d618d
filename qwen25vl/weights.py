"""Reading and writing HF-format checkpoint folders: config.json plus one or many safetensors shards.

The only code that knows on-disk key names. Two layouts are read: the official one (`visual.*`, `model.*`,
`lm_head.*`, which is also what transformers' save_pretrained writes) and the in-memory names of newer transformers
(`model.visual.*`, `model.language_model.*`). The model is built on the meta device and the loaded tensors become its
parameters (`load_state_dict(assign=True)`), so a load never holds two copies of the weights.

Tensors are read with plain file reads straight into their final storage rather than through a memory map: mapped
file pages count in the process's resident memory, which would double the peak for a load.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from tqdm.auto import tqdm

from qwen25vl.config import Qwen25VLConfig
from qwen25vl.errors import CheckpointError, InputError

INDEX_NAME = "model.safetensors.index.json"
QUANT_NAME = "quantization.json"  # present in a folder saved from an int8-quantised model (model/quant.py)
SINGLE_NAME = "model.safetensors"
_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_DTYPE_NAMES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32, "float16": torch.float16,
    "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "rotary_pos_emb.inv_freq")  # buffers some old exports carry


def internal_key(key: str) -> str:
    """A file key in either layout -> our module path (the official name)."""
    if key.startswith("model.visual."):
        return "visual." + key[len("model.visual."):]
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model."):]
    return key


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    try:
        return _DTYPE_NAMES[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise InputError(f"dtype {dtype!r} is not supported; use one of {sorted(_DTYPE_NAMES)}") from None


# --- safetensors, read without a memory map --------------------------------------------------------------------------

def read_header(path: Path) -> tuple[dict, int]:
    """(tensor entries, byte offset of the data section) of one safetensors file."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
    except (OSError, struct.error, ValueError) as exc:
        raise CheckpointError(f"cannot read safetensors header of {path}: {exc}") from exc
    header.pop("__metadata__", None)
    return header, 8 + size


def _read_tensor(f, data_start: int, entry: dict, path: Path, name: str) -> torch.Tensor:
    dtype = _ST_DTYPES.get(entry["dtype"])
    if dtype is None:
        raise CheckpointError(f"{path.name}: tensor {name} has unsupported dtype {entry['dtype']}")
    begin, end = entry["data_offsets"]
    out = torch.empty(entry["shape"], dtype=dtype)
    if out.numel() * out.element_size() != end - begin:
        raise CheckpointError(f"{path.name}: tensor {name} holds {end - begin} bytes, shape {entry['shape']} "
                              f"{entry['dtype']} needs {out.numel() * out.element_size()}")
    if out.numel():
        f.seek(data_start + begin)
        view = memoryview(out.reshape(-1).view(torch.uint8).numpy())
        if f.readinto(view) != end - begin:
            raise CheckpointError(f"{path.name}: file ends inside tensor {name}")
    return out


def checkpoint_files(folder: Path) -> list[Path]:
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"cannot read the shard index {index}: {exc}") from exc
        files = [folder / name for name in dict.fromkeys(weight_map.values())]
    elif (folder / SINGLE_NAME).is_file():
        files = [folder / SINGLE_NAME]
    else:
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"no {SINGLE_NAME}, {INDEX_NAME} or *.safetensors file in {folder}")
    missing = [str(p.name) for p in files if not p.is_file()]
    if missing:
        raise CheckpointError(f"shard files listed in {INDEX_NAME} are missing from {folder}: {missing}")
    return files


# --- loading --------------------------------------------------------------------------------------------------------

def load_model(path: str | Path, dtype: torch.dtype | str | None = None, device: torch.device | str | None = None,
               progress: bool = True):
    from qwen25vl.model.vlm import Qwen25VL

    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    config = Qwen25VLConfig.from_pretrained(folder)
    dtype = resolve_dtype(dtype)
    files = checkpoint_files(folder)
    with torch.device("meta"):
        model = Qwen25VL(config)
    spec = read_quant_spec(folder)
    if spec is not None:
        from qwen25vl.model.quant import prepare_quantized

        prepare_quantized(model, spec)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tied = config.text.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    if tied:
        expected.pop("lm_head.weight", None)
    plan = _plan_reads(files, expected, tied)

    state: dict[str, torch.Tensor] = {}
    for file in tqdm(files, desc="loading shards", unit="shard", disable=not progress or len(files) < 2):
        header, data_start = plan[file]
        with open(file, "rb") as f:
            for key, (name, entry) in header.items():
                tensor = _read_tensor(f, data_start, entry, file, name)
                if dtype is None and tensor.is_floating_point() and not key.endswith(".weight_scale"):
                    dtype = tensor.dtype
                if (dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype
                        and not key.endswith(".weight_scale")):  # int8 scales stay fp32
                    tensor = tensor.to(dtype)
                state[key] = tensor.to(device) if device is not None else tensor
    if tied:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if tied:
        model.tie_weights()
    if dtype is not None:
        model.config = _with_dtype(config, dtype)
    return model.eval()


def read_quant_spec(folder: Path) -> dict | None:
    """The folder's quantization.json (method and quantised module names), or None for a float checkpoint."""
    path = Path(folder) / QUANT_NAME
    if not path.is_file():
        return None
    try:
        spec = json.loads(path.read_text())
    except ValueError as err:
        raise CheckpointError(f"cannot parse {path}: {err}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("modules"), list):
        raise CheckpointError(f"{path} must hold an object with a 'modules' list, got {spec!r:.80}")
    return spec


def _plan_reads(files: list[Path], expected: dict[str, tuple], tied: bool) -> dict[Path, tuple[dict, int]]:
    """Check every header against the model before reading any data: names, duplicates, shapes, completeness."""
    plan, seen, unexpected, mismatched = {}, set(), [], []
    for file in files:
        header, data_start = read_header(file)
        wanted = {}
        for name, entry in header.items():
            key = internal_key(name)
            if name.endswith(_IGNORED_SUFFIXES) or (tied and key == "lm_head.weight"):
                continue
            if key not in expected:
                unexpected.append(name)
                continue
            if key in seen:
                raise CheckpointError(f"tensor {key} is stored twice (again as {name} in {file.name})")
            if tuple(entry["shape"]) != expected[key]:
                mismatched.append(f"{name}: checkpoint {tuple(entry['shape'])} vs model {expected[key]}")
            seen.add(key)
            wanted[key] = (name, entry)
        plan[file] = (wanted, data_start)
    missing = sorted(set(expected) - seen)
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {_listing(mismatched)}")
    if problems:
        raise CheckpointError(f"checkpoint in {files[0].parent} does not match its config: " + "; ".join(problems))
    return plan


def _listing(items: list[str], limit: int = 20) -> str:
    more = f", ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _with_dtype(config: Qwen25VLConfig, dtype: torch.dtype) -> Qwen25VLConfig:
    import dataclasses

    return dataclasses.replace(config, torch_dtype=str(dtype).removeprefix("torch."))


# --- saving ---------------------------------------------------------------------------------------------------------

def parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    text = str(size).strip().upper()
    for unit, factor in (("GIB", 2**30), ("MIB", 2**20), ("KIB", 2**10), ("GB", 10**9), ("MB", 10**6),
                         ("KB", 10**3), ("B", 1)):
        if text.endswith(unit):
            try:
                return int(float(text[: -len(unit)]) * factor)
            except ValueError:
                break
    raise InputError(f"max_shard_size {size!r} is not a size like 5GB, 500MB or a number of bytes")


def save_model(model, path: str | Path, max_shard_size: int | str = "5GB") -> Path:
    """Write config.json and the weights (official key layout) to `path`; shards with an index above the size."""
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    limit = parse_size(max_shard_size)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    if model.config.text.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight:
        state.pop("lm_head.weight", None)  # an int8 lm_head is its own tensor even in a tied model
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    _with_dtype(model.config, dtype).save(folder)
    quant = folder / QUANT_NAME
    if getattr(model, "quantization", None):
        quant.write_text(json.dumps(model.quantization, indent=2) + "\n")
    elif quant.exists():
        quant.unlink()  # a stale spec would make the loader expect int8 weights
    if len(shards) == 1:
        names = [SINGLE_NAME]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        # contiguous CPU copies per shard only: weights laid out for decode may be transposed views
        save_file({k: v.contiguous().cpu() for k, v in shard.items()}, str(folder / name), metadata={"format": "pt"})
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
            "weight_map": {key: name for name, shard in zip(names, shards) for key in shard},
        }
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    elif (folder / INDEX_NAME).exists():
        (folder / INDEX_NAME).unlink()  # a stale index would point the loader at old shards
    return folder


_NOT_COPIED = {"config.json", INDEX_NAME, QUANT_NAME}


def quantize_folder(src: str | Path, dst: str | Path, max_shard_size: int | str = "5GB",
                    include_lm_head: bool = True, progress: bool = True) -> Path:
    """Quantise a checkpoint folder's language model to int8 (`model/quant.py`; lm_head too unless
    include_lm_head=False) and write a folder that `qwen25vl.load` reads as is: the weights, quantization.json, and
    the source's tokenizer, processor and generation files (every other .json / .jinja / .txt file, copied
    unchanged)."""
    import shutil

    from qwen25vl.model.quant import quantize_model

    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise InputError(f"quantize_folder would overwrite its source {src}: give another output folder")
    model = load_model(src, dtype=torch.float32, progress=progress)
    quantize_model(model, include_lm_head=include_lm_head)
    save_model(model, dst, max_shard_size=max_shard_size)
    for path in sorted(src.iterdir()):
        if path.is_file() and path.suffix in (".json", ".jinja", ".txt") and path.name not in _NOT_COPIED:
            shutil.copyfile(path, dst / path.name)
    return dst
