"""Which parameters train, and how: modules (vision, merger, LLM) with their own freeze switch and learning rate,
no weight decay on norms and biases, AdamW, and a warm-up + cosine schedule.

A frozen module's parameters get `requires_grad=False` and are left out of the optimizer, so they receive no
gradient and hold no optimizer state (Adam's two moments cost 2x the parameters' memory).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from qwen25vl.errors import ConfigError

MODULES = ("vision", "merger", "llm")


def module_of(name: str) -> str:
    """'vision', 'merger' or 'llm' for a parameter name (wrapper prefixes such as `vlm.` are ignored)."""
    parts = name.split(".")
    if "visual" in parts:
        return "merger" if parts[parts.index("visual") + 1] == "merger" else "vision"
    return "llm"


def set_trainable(model: nn.Module, train: dict[str, bool]) -> dict[str, int]:
    """Switch requires_grad by module; returns the trainable parameter count of each module."""
    unknown = set(train) - set(MODULES)
    if unknown:
        raise ConfigError(f"unknown module(s) {sorted(unknown)}; choose among {list(MODULES)}")
    counts = dict.fromkeys(MODULES, 0)
    for name, param in model.named_parameters():
        module = module_of(name)
        param.requires_grad_(bool(train.get(module, True)))
        if param.requires_grad:
            counts[module] += param.numel()
    return counts


def param_groups(model: nn.Module, lr: dict[str, float], weight_decay: float) -> list[dict]:
    """One group per (module, decay) with trainable parameters; matrices decay, vectors (norms, biases) do not."""
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((module_of(name), param.ndim >= 2), []).append(param)
    out = []
    for (module, decay), params in sorted(groups.items()):
        if module not in lr:
            raise ConfigError(f"no learning rate given for the trainable module {module!r}")
        out.append({"params": params, "lr": lr[module], "weight_decay": weight_decay if decay else 0.0,
                    "name": f"{module}{'' if decay else '.no_decay'}"})
    if not out:
        raise ConfigError("no trainable parameters: every module is frozen")
    return out


def build_optimizer(model: nn.Module, lr: dict[str, float], *, weight_decay: float = 0.0,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, lr, weight_decay), betas=betas, eps=eps)


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """LR factor at `step` (0-based): linear from 1/(warmup+1) up to 1 over `warmup` steps, then a cosine down to
    `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, *, warmup: int, total: int, min_ratio: float = 0.0):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total, min_ratio))
