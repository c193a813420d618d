"""Training checkpoints (resume) and the exported Hugging Face folder (use).

A checkpoint is a folder `step-00000042/`: model and optimizer through `torch.distributed.checkpoint` (sharded
under FSDP, one file set per rank; loadable on another world size), and `trainer.pt` (scheduler, data-loader
position, RNG states, step) written by rank 0. It is written under a temporary name and renamed when complete, so
a run killed mid-write leaves the previous checkpoint as the latest. The last `keep` are kept.

A LoRA run (the model holds `LoRALinear` layers) saves only what trains: the adapters and their optimizer state, plus
`base.json`, the frozen base's folder and a fingerprint of it (see `base_fingerprint`). Resuming checks the
fingerprint against the base the run loaded, so adapters are never continued on another base by mistake.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from qwen25vl.errors import CheckpointError
from qwen25vl.train.distributed import barrier

PREFIX = "step-"
BASE_FILE = "base.json"
_SAMPLE = 1 << 16  # bytes hashed at each end of a safetensors file's data: different weights, different bytes
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "chat_template.json",
                   "preprocessor_config.json", "generation_config.json")


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def base_fingerprint(folder: str | Path) -> dict:
    """What identifies a base model folder cheaply (a few hundred KiB read per shard): the config's hash and, per
    safetensors file, its size and a hash of its header (names, dtypes, shapes) and of its data's first and last
    64 KiB."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} is not a model folder (no config.json): LoRA checkpoints need their base")
    files = {}
    for path in sorted(folder.glob("*.safetensors")):
        size = path.stat().st_size
        digest = hashlib.sha256()
        with path.open("rb") as f:
            header = int.from_bytes(f.read(8), "little")
            digest.update(f.read(header))
            start = 8 + header
            for offset in sorted({start, max(start, size - _SAMPLE)}):
                f.seek(offset)
                digest.update(f.read(_SAMPLE))
        files[path.name] = {"bytes": size, "sha256": digest.hexdigest()}
    if not files:
        raise CheckpointError(f"{folder} holds no safetensors weights to fingerprint")
    return {"config": hashlib.sha256((folder / "config.json").read_bytes()).hexdigest(), "files": files}


def _adapter_only(model) -> bool:
    from qwen25vl.train.lora import lora_modules

    return bool(lora_modules(model))


def _state(model, optimizer, adapter_only: bool) -> dict:
    """{"model", "optim"} state dicts to save or fill; a LoRA model's hold its trainable parameters only."""
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_options(adapter_only))
    if adapter_only:  # a tied head is no parameter of its own, so ignore_frozen_params keeps it: drop it here
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        model_sd = {k: v for k, v in model_sd.items() if k in trainable}
        assert len(model_sd) == len(trainable), sorted(trainable - set(model_sd))[:3]
    return {"model": model_sd, "optim": optim_sd}


def _options(adapter_only: bool) -> StateDictOptions:
    # strict=False only lets the frozen base be absent: dcp.load still fails on a missing adapter or moment
    return StateDictOptions(ignore_frozen_params=adapter_only, strict=not adapter_only)


def save_checkpoint(folder: str | Path, step: int, model, optimizer, trainer_state: dict, *, keep: int = 2,
                    is_main: bool = True, base: str | Path | None = None) -> Path:
    """Write `step-N/` atomically; a LoRA model needs `base`, the folder of the frozen weights it adapts."""
    folder = Path(folder)
    adapter_only = _adapter_only(model)
    if adapter_only and base is None:
        raise CheckpointError("a LoRA checkpoint holds the adapters only and must name its base folder (base=)")
    final = folder / f"{PREFIX}{step:08d}"
    tmp = folder / f".tmp-{PREFIX}{step:08d}"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    with _single_process_quiet():
        dcp.save(_state(model, optimizer, adapter_only), checkpoint_id=str(tmp))
    if is_main:
        if adapter_only:
            reference = {"path": str(Path(base).resolve()), "fingerprint": base_fingerprint(base)}
            (tmp / BASE_FILE).write_text(json.dumps(reference, indent=1) + "\n")
        torch.save({**trainer_state, "step": step}, tmp / "trainer.pt")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)  # atomic on one filesystem: the checkpoint appears complete or not at all
        for old in list_checkpoints(folder)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


@contextmanager
def _single_process_quiet():
    """DCP warns that it 'assumes a single process' when no process group exists: that is what we mean."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def list_checkpoints(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
                  and (p / "trainer.pt").is_file())


def load_checkpoint(path: str | Path, model, optimizer, *, base: str | Path | None = None) -> dict:
    """Restore model and optimizer in place (any world size); returns the trainer state (scheduler, data, rng).
    A LoRA model restores its adapters only, after checking that `base` is the base they were trained on."""
    path = Path(path)
    if not (path / "trainer.pt").is_file():
        raise CheckpointError(f"{path} is not a complete training checkpoint (no trainer.pt)")
    adapter_only = _adapter_only(model)
    if adapter_only and base is None:
        raise CheckpointError("a LoRA model resumes its adapters only and must name its base folder (base=)")
    check_base(path, base if adapter_only else None)
    state = _state(model, optimizer, adapter_only)
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=_options(adapter_only))
    return torch.load(path / "trainer.pt", weights_only=False)


def check_base(path: Path, base: str | Path | None) -> None:
    """Refuse a checkpoint whose kind (adapters or full weights) or base differs from this run's (`base` None: a
    full fine-tuning run)."""
    stored = path / BASE_FILE
    if base is None:
        if stored.is_file():
            raise CheckpointError(f"{path} holds LoRA adapters only (base {json.loads(stored.read_text())['path']}); "
                                  "resume it with the same LoRA settings, or start a new --out")
        return
    if not stored.is_file():
        raise CheckpointError(f"{path} holds full weights, not LoRA adapters: resume it without LoRA, or start a "
                              "new --out")
    reference = json.loads(stored.read_text())
    mine = base_fingerprint(base)
    if mine != reference["fingerprint"]:
        theirs = reference["fingerprint"]
        what = ["config.json"] if mine["config"] != theirs["config"] else []
        what += sorted(set(mine["files"]) ^ set(theirs["files"]))
        what += sorted(n for n in set(mine["files"]) & set(theirs["files"]) if mine["files"][n] != theirs["files"][n])
        raise CheckpointError(f"{path} holds LoRA adapters trained on the base {reference['path']}, but this run's "
                              f"base {Path(base).resolve()} is a different model ({', '.join(what)} differ); resume "
                              f"with --model {reference['path']}, or start a new --out")


def export_hf(loss_fn, folder: str | Path, *, source: str | Path | None = None, is_main: bool = True) -> Path | None:
    """Write the trained model as a Hugging Face folder (official key layout) from rank 0, plus the tokenizer and
    processor files of `source` (the folder training started from)."""
    from qwen25vl.model.vlm import Qwen25VL

    full = get_model_state_dict(loss_fn, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main:
        barrier()
        return None
    state = {k.removeprefix("vlm."): v for k, v in full.items()}
    config = loss_fn.vlm.config
    with torch.device("meta"):
        model = Qwen25VL(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not (config.text.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise CheckpointError(f"export: missing {missing[:4]}, unexpected {unexpected[:4]}")
    model.tie_weights()
    folder = Path(folder)
    model.save_pretrained(folder)
    if source is not None:
        for name in TOKENIZER_FILES:
            if (Path(source) / name).is_file():
                shutil.copy(Path(source) / name, folder / name)
    if dist.is_initialized():
        barrier()
    return folder
