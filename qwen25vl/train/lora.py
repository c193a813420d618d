"""LoRA adapters on any set of the model's Linear layers, applied from outside the model, saved in PEFT's format.

`add_lora(model, LoraSpec(rank=8, alpha=16, targets=("llm",)))` swaps each chosen `nn.Linear` for a `LoRALinear`
that keeps the same weight and bias Parameters under the same names, so `model.layers.0.self_attn.q_proj.weight`
stays the checkpoint's key and the adapter adds `...q_proj.lora_A.weight` (rank x in) and `...lora_B.weight`
(out x rank). The output is `base(x) + scaling * B(A(dropout(x)))` with `scaling = alpha / rank`; B starts at zero,
so a fresh adapter leaves the logits exactly as they were. Every base parameter is frozen: only adapters train.

Targets are module paths matched by any of: a preset name (`llm`, `attn`, `mlp`, `merger`, `vision`), a name's tail
(`q_proj` as PEFT reads it: the path or its last dotted parts), or a glob over the whole path
(`model.layers.1*.mlp.*`). lm_head is never a target: the chunked loss reads its weight directly.

On disk (PEFT's layout, loadable by `PeftModel.from_pretrained` onto transformers' model): `adapter_config.json` and
`adapter_model.safetensors` with keys `base_model.model.<transformers module path>.lora_A.weight`, where the path is
the in-memory one of transformers 5 (`model.language_model.layers.0...`, `model.visual.blocks.0...`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from qwen25vl.errors import CheckpointError, ConfigError
from qwen25vl.weights import internal_key

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
DEFAULT_LR = 2e-4  # adapters start at zero and are few: they take a far larger rate than full fine-tuning
_LLM_ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
_LLM_MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
PRESETS = {
    "attn": tuple(f"model.layers.*.{n}" for n in _LLM_ATTN),
    "mlp": tuple(f"model.layers.*.{n}" for n in _LLM_MLP),
    "llm": tuple(f"model.layers.*.{n}" for n in _LLM_ATTN + _LLM_MLP),
    "merger": ("visual.merger.mlp.*",),
    "vision": tuple(f"visual.blocks.*.{n}" for n in ("attn.qkv", "attn.proj", "mlp.gate_proj", "mlp.up_proj",
                                                        "mlp.down_proj")),
}


@dataclass(frozen=True)
class LoraSpec:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("llm",)

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise ConfigError(f"LoRA alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.targets, str) or not self.targets:
            raise ConfigError(f"LoRA targets must be a non-empty list of patterns, got {self.targets!r}")


class LoRALinear(nn.Module):
    """A Linear layer (the same weight and bias Parameters, same keys) plus a low-rank update B A."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0, *, rslora: bool = False):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, **kw)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, **kw)
        if base.weight.device.type != "meta":
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # PEFT's default, like nn.Linear's own
            nn.init.zeros_(self.lora_B.weight)
        self.lora_dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.rank, self.alpha, self.dropout, self.rslora = rank, float(alpha), float(dropout), rslora
        self.scaling = alpha / (math.sqrt(rank) if rslora else rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.lora_B(self.lora_A(self.lora_dropout(x)))
        return F.linear(x, self.weight, self.bias) + update * self.scaling

    def delta(self) -> torch.Tensor:
        """scaling * B A in fp32, (out, in): what merging adds to the weight."""
        return self.scaling * (self.lora_B.weight.float() @ self.lora_A.weight.float())

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, alpha={self.alpha:g}"


# --- choosing and wrapping modules ---------------------------------------------------------------------------------

def _matches(path: str, pattern: str) -> bool:
    return path == pattern or path.endswith("." + pattern) or fnmatchcase(path, pattern)


def select_targets(model: nn.Module, targets) -> list[str]:
    """Paths of the Linear layers the patterns name, in model order; a pattern that names none is an error."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name != "lm_head"
               and not name.endswith((".lora_A", ".lora_B"))]
    chosen: dict[str, None] = {}
    for target in targets:
        if target in ("lm_head", "embed_tokens", "model.embed_tokens"):
            raise ConfigError(f"LoRA target {target!r} is not supported: the loss reads the head's (tied) weight "
                              "directly; choose among projections of the LLM, the merger and the vision blocks")
        patterns = PRESETS.get(target, (target,))
        hits = [name for name in linears if any(_matches(name, p) for p in patterns)]
        if not hits:
            raise ConfigError(f"LoRA target {target!r} names no Linear layer of the model; use a preset "
                              f"({', '.join(PRESETS)}), a name such as q_proj, or a glob such as "
                              "'model.layers.*.mlp.*'")
        chosen.update(dict.fromkeys(hits))
    return [name for name in linears if name in chosen]


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def add_lora(model: nn.Module, spec: LoraSpec, *, rslora: bool = False,
             ranks: dict[str, int] | None = None) -> list[str]:
    """Freeze every parameter, wrap the spec's targets in LoRALinear (adapters trainable); the wrapped paths.
    `ranks` gives a module its own rank (an adapter read from disk)."""
    for param in model.parameters():
        param.requires_grad_(False)
    paths = select_targets(model, spec.targets)
    for path in paths:
        base = model.get_submodule(path)
        rank = (ranks or {}).get(path, spec.rank)
        _replace(model, path, LoRALinear(base, rank, spec.alpha, spec.dropout, rslora=rslora))
    return paths


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """path -> LoRALinear, with wrapper prefixes (`vlm.`) removed: the model's own paths."""
    return {name.removeprefix("vlm."): m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def trainable_counts(model: nn.Module) -> dict[str, int]:
    """Trainable parameters by module (vision, merger, llm), as `set_trainable` reports them."""
    from qwen25vl.train.optim import MODULES, module_of

    counts = dict.fromkeys(MODULES, 0)
    for name, param in model.named_parameters():
        if param.requires_grad:
            counts[module_of(name)] += param.numel()
    return counts


def setup_recipe(vlm: nn.Module, spec: LoraSpec, source: Path, *, is_main: bool, vision: bool = True) -> dict:
    """The recipes' LoRA set-up: the base written to `source` when it is a random init (so the adapter has a base to
    name, merge into and serve with), then adapters on the spec's targets. Returns the trainable counts."""
    from qwen25vl.train.distributed import barrier

    if not (Path(source) / "config.json").is_file():
        if is_main:
            vlm.save_pretrained(source)
        barrier()
    paths = add_lora(vlm, spec)
    if not vision and any(p.startswith("visual.") for p in paths):
        raise ConfigError("this recipe runs the vision tower frozen under no_grad (its features are shared with the "
                          "reference): LoRA targets must stay in the LLM, got "
                          f"{[p for p in paths if p.startswith('visual.')][:3]}")
    return trainable_counts(vlm)


# --- PEFT's file format ------------------------------------------------------------------------------------------

def hf_module_path(path: str) -> str:
    """Our module path -> transformers 5's in-memory path (the names PEFT records); inverse of `internal_key`."""
    if path.startswith("visual."):
        return "model." + path
    if path.startswith("model."):
        return "model.language_model." + path[len("model."):]
    return path


def adapter_tensors(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module path -> full CPU (A, B). Under FSDP every rank must call it (the shards are gathered)."""
    out = {}
    for path, module in lora_modules(model).items():
        pair = []
        for weight in (module.lora_A.weight.detach(), module.lora_B.weight.detach()):
            weight = weight.full_tensor() if hasattr(weight, "full_tensor") else weight
            pair.append(weight.cpu().contiguous())
        out[path] = tuple(pair)
    return out


def save_adapter(model: nn.Module, folder: str | Path, *, base: str | Path | None = None,
                 is_main: bool = True) -> Path | None:
    """Write adapter_config.json + adapter_model.safetensors (PEFT's names) for the model's LoRALinear layers."""
    from safetensors.torch import save_file

    modules = lora_modules(model)
    if not modules:
        raise ConfigError("the model has no LoRA adapters to save")
    tensors = adapter_tensors(model)
    if not is_main:
        return None
    first = next(iter(modules.values()))
    if any((m.alpha, m.dropout, m.rslora) != (first.alpha, first.dropout, first.rslora) for m in modules.values()):
        raise ConfigError("adapters with different alpha, dropout or scaling rule cannot share one adapter_config")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf = {path: hf_module_path(path) for path in modules}
    config = {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": None if base is None else str(base),
        "r": first.rank, "lora_alpha": first.alpha, "lora_dropout": first.dropout,
        "target_modules": sorted(hf.values()), "bias": "none", "fan_in_fan_out": False,
        "use_rslora": first.rslora, "use_dora": False, "modules_to_save": None, "init_lora_weights": True,
        "inference_mode": True,
        "rank_pattern": {hf[p]: m.rank for p, m in modules.items() if m.rank != first.rank}, "alpha_pattern": {},
    }
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    named = {f"{PEFT_PREFIX}{hf[path]}.{part}.weight": weight
             for path, pair in tensors.items() for part, weight in zip(("lora_A", "lora_B"), pair)}
    save_file(named, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    return folder


@dataclass(frozen=True)
class Adapter:
    """An adapter read from disk: per module path (ours) its (A, B) and scaling; the config as written."""
    config: dict
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]
    scaling: dict[str, float]
    rslora: bool


def read_adapter(folder: str | Path) -> Adapter:
    """Read and check a PEFT LoRA adapter folder (ours or another tool's); keys in either transformers layout."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_path.is_file() or not weights_path.is_file():
        raise CheckpointError(f"{folder} is not a LoRA adapter folder: it needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as err:
        raise CheckpointError(f"cannot parse {config_path}: {err}") from None
    _check_config(config, config_path)
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(weights_path)).items():
        stem = internal_key(key.removeprefix(PEFT_PREFIX))
        for part in ("lora_A", "lora_B"):
            if stem.endswith(f".{part}.weight"):
                halves.setdefault(stem[: -len(f".{part}.weight")], {})[part] = tensor
                break
        else:
            raise CheckpointError(f"{weights_path.name}: key {key!r} is not a LoRA A or B weight")
    weights, scaling = {}, {}
    rslora = bool(config.get("use_rslora"))
    for path, pair in halves.items():
        if set(pair) != {"lora_A", "lora_B"}:
            raise CheckpointError(f"{weights_path.name}: module {path} has {sorted(pair)} but needs lora_A and lora_B")
        a, b = pair["lora_A"], pair["lora_B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise CheckpointError(f"{weights_path.name}: module {path} has A {tuple(a.shape)} and B "
                                  f"{tuple(b.shape)}, which do not chain (B is out x r, A is r x in)")
        weights[path] = (a, b)
        rank = a.shape[0]
        scaling[path] = float(config["lora_alpha"]) / (math.sqrt(rank) if rslora else rank)
    if not weights:
        raise CheckpointError(f"{weights_path} holds no adapter weights")
    return Adapter(config, weights, scaling, rslora)


def _check_config(config: dict, where: Path) -> None:
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"{where}: peft_type {config.get('peft_type')!r} is not LORA")
    unsupported = {"use_dora": bool(config.get("use_dora")), "bias": config.get("bias", "none") != "none",
                   "modules_to_save": bool(config.get("modules_to_save")),
                   "alpha_pattern": bool(config.get("alpha_pattern")),
                   "fan_in_fan_out": bool(config.get("fan_in_fan_out"))}
    bad = [name for name, on in unsupported.items() if on]
    if bad:
        raise CheckpointError(f"{where}: LoRA options {bad} are not supported here (plain LoRA on Linear layers)")
    if not isinstance(config.get("lora_alpha"), (int, float)):
        raise CheckpointError(f"{where}: lora_alpha {config.get('lora_alpha')!r} is not a number")


def load_adapter(model: nn.Module, folder: str | Path) -> list[str]:
    """Wrap the adapter's modules of `model` in LoRALinear holding its weights (unmerged); the wrapped paths."""
    adapter = read_adapter(folder)
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    for path, (a, b) in adapter.weights.items():
        base = linears.get(path)
        if base is None or path == "lm_head":
            raise CheckpointError(f"adapter {folder}: module {path} is not a Linear layer the model can adapt")
        if (a.shape[1], b.shape[0]) != (base.in_features, base.out_features):
            raise CheckpointError(f"adapter {folder}: module {path} maps {a.shape[1]} -> {b.shape[0]} but the "
                                  f"model's is {base.in_features} -> {base.out_features}")
    alpha = float(adapter.config["lora_alpha"])
    spec = LoraSpec(rank=1, alpha=alpha, dropout=0.0, targets=tuple(adapter.weights))
    paths = add_lora(model, spec, rslora=adapter.rslora, ranks={p: a.shape[0] for p, (a, _) in adapter.weights.items()})
    with torch.no_grad():
        for path in paths:
            module = model.get_submodule(path)
            a, b = adapter.weights[path]
            module.lora_A.weight.copy_(a)
            module.lora_B.weight.copy_(b)
    return paths
