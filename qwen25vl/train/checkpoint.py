"""Training checkpoints (resume) and the exported Hugging Face folder (use).

A checkpoint is a folder `step-00000042/`: model and optimizer through `torch.distributed.checkpoint` (sharded
under FSDP, one file set per rank; loadable on another world size), and `trainer.pt` (scheduler, data-loader
position, RNG states, step) written by rank 0. It is written under a temporary name and renamed when complete, so
a run killed mid-write leaves the previous checkpoint as the latest. The last `keep` are kept.
"""

from __future__ import annotations

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


def save_checkpoint(folder: str | Path, step: int, model, optimizer, trainer_state: dict, *, keep: int = 2,
                    is_main: bool = True) -> Path:
    folder = Path(folder)
    final = folder / f"{PREFIX}{step:08d}"
    tmp = folder / f".tmp-{PREFIX}{step:08d}"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _single_process_quiet():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    if is_main:
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


def load_checkpoint(path: str | Path, model, optimizer) -> dict:
    """Restore model and optimizer in place (any world size); returns the trainer state (scheduler, data, rng)."""
    path = Path(path)
    if not (path / "trainer.pt").is_file():
        raise CheckpointError(f"{path} is not a complete training checkpoint (no trainer.pt)")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return torch.load(path / "trainer.pt", weights_only=False)


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
