"""Memory planner: the per-rank memory of a recipe before anything runs (`qwen25vl train plan`).

    parameters   P x bytes / world              (FSDP shards every parameter)
    gathered     2 x the largest FSDP unit      (one unit unsharded for compute, the next one prefetched)
    gradients    trainable x 4 / world          (fp32)
    optimizer    trainable x 8 / world          (AdamW's two fp32 moments)
    activations  per token (LLM layers) and per patch (ViT blocks), measured on a one-layer probe of the real widths
    loss         chunk x vocab x 4 x 2 (logits, logsumexp's temporary) + the head's fp32 gradient (vocab x hidden x 4)
                 when the head trains

A LoRA recipe (`recipe.lora`): the parameters are the frozen base plus the adapters; only the adapters are trainable,
so gradients and optimizer state are the adapters' alone, the (frozen, tied) head has no gradient, and the probes
carry the same adapters, so the activations are what the adapted layers keep (their inputs, for the adapters'
weight gradients, and what the frozen layers need to pass gradients down).

Activations are measured, not derived: a probe with one decoder layer (and one ViT block) at the config's widths runs
a packed forward on `probe_tokens` tokens under `saved_tensors_hooks`, which sees every tensor autograd keeps for
backward; bytes / token times the depth is the stack's cost (with activation checkpointing: one layer's input per
layer, plus one layer's full set during its recomputation). Parameters saved for backward are not counted twice.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from qwen25vl.train.losses import DEFAULT_CHUNK
from qwen25vl.train.optim import module_of

GIB = 1024 ** 3


@dataclass
class MemoryPlan:
    parameters: int
    gathered: int
    gradients: int
    optimizer: int
    activations: int
    loss: int
    tokens: int
    patches: int

    @property
    def total(self) -> int:
        return self.parameters + self.gathered + self.gradients + self.optimizer + self.activations + self.loss

    def table(self) -> str:
        rows = [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in ("tokens", "patches")]
        lines = [f"pack of {self.tokens} tokens ({self.patches} ViT patches), per rank:"]
        lines += [f"  {name:<12} {value / GIB:8.2f} GiB" for name, value in rows]
        lines.append(f"  {'total':<12} {self.total / GIB:8.2f} GiB")
        return "\n".join(lines)


def saved_bytes(fn, exclude=()) -> int:
    """Bytes of the distinct storages autograd saves while `fn()` runs (excluding the tensors in `exclude`)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _built(make, trainable: bool, dtype):
    """A module of the real widths with arbitrary values (memory, not numbers, is measured)."""
    with torch.device("meta"):
        module = make()
    module = module.to_empty(device="cpu").to(dtype)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(std=0.02) if p.ndim >= 2 else p.fill_(1.0)
            p.requires_grad_(trainable)
    return module


def _adapted(module, path: str, lora):
    """`module` with the LoRA spec's adapters where its targets name its layers, read as if it sat at `path` in the
    model (every base parameter then frozen); `module` unchanged without a spec."""
    from torch import nn

    from qwen25vl.errors import ConfigError
    from qwen25vl.train.lora import add_lora, select_targets

    if lora is None:
        return module
    holder = node = nn.Module()
    *parents, name = path.split(".")
    for part in parents:
        node.add_module(part, nn.Module())
        node = getattr(node, part)
    node.add_module(name, module)
    hits = []
    for target in lora.targets:  # a target may name layers elsewhere in the model, none of this probe's
        try:
            hits += select_targets(holder, [target])
        except ConfigError:
            pass
    if hits:
        add_lora(holder, dataclasses.replace(lora, targets=tuple(hits)))
    else:
        module.requires_grad_(False)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:  # B = 0 at init; a trained adapter's values (only memory is measured)
                p.normal_(std=0.02)
    return holder.get_submodule(path)


def activation_costs(config, train: dict, *, probe_tokens: int = 256, dtype=torch.float32, lora=None) -> dict:
    """Bytes autograd keeps per token of one decoder layer, per patch of one ViT block and per patch of the tower's
    fixed part (patch embedding, merger), measured on probes of the real widths (with `lora`'s adapters)."""
    from qwen25vl.model.attention import VarlenPlan
    from qwen25vl.model.text import AttnSpec, DecoderLayer, mrope_cos_sin
    from qwen25vl.model.vision import VisionTransformer

    tc, vc = config.text, config.vision
    # under LoRA every layer but the first gets its input from adapted layers below it
    upstream = lora is not None or train.get("vision", True) or train.get("merger", True)
    layer = _adapted(_built(lambda: DecoderLayer(tc), train.get("llm", True), dtype), "model.layers.0", lora)
    hidden = torch.randn(1, probe_tokens, tc.hidden_size, dtype=dtype, requires_grad=upstream)
    positions = torch.arange(probe_tokens).expand(3, 1, -1)
    cos, sin = mrope_cos_sin(positions, tc.head_dim, tc.rope_theta, tc.mrope_section, dtype)
    spec = AttnSpec(plan=VarlenPlan.build([0, probe_tokens]))
    per_token = saved_bytes(lambda: layer(hidden, cos, sin, spec, 0), list(layer.parameters())) / probe_tokens
    side = 16  # a 16 x 16-patch image: 2 x 2 windows of the real window size
    grid = torch.tensor([[1, side, side]])
    pixels = torch.randn(side * side, vc.in_chans * vc.temporal_patch_size * vc.patch_size ** 2, dtype=dtype)
    tower = []
    for depth in (1, 2):
        cfg = dataclasses.replace(vc, depth=depth, fullatt_block_indexes=())
        visual = _built(lambda: VisionTransformer(cfg), train.get("vision", True), dtype)
        visual.merger.requires_grad_(bool(train.get("merger", True)))
        visual = _adapted(visual, "visual", lora)
        tower.append(saved_bytes(lambda: visual(pixels, grid), list(visual.parameters())) / (side * side))
    return {"llm_per_token": per_token, "vision_per_patch": tower[1] - tower[0],
            "vision_fixed_per_patch": 2 * tower[0] - tower[1],
            "hidden_bytes": tc.hidden_size * _size(dtype), "vision_hidden_bytes": vc.hidden_size * _size(dtype)}


def _size(dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def parameter_counts(config, train: dict, lora=None) -> dict:
    """(total, trainable, largest FSDP unit) parameter counts, built on the meta device; with `lora`, the base plus
    its adapters, of which only the adapters train. `vision_trainable`: trainable in the ViT blocks and patch
    embedding; `head_trains`: whether the (tied) head gets a gradient."""
    from qwen25vl.model.vlm import Qwen25VL
    from qwen25vl.train.lora import add_lora

    with torch.device("meta"):
        model = Qwen25VL(config)
    for name, p in model.named_parameters():
        p.requires_grad_(bool(train.get(module_of(name), True)))
    if lora is not None:
        add_lora(model, lora)
    total = trainable = vision = 0
    for name, p in model.named_parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
            vision += p.numel() if module_of(name) == "vision" else 0
    units = [sum(p.numel() for p in m.parameters()) for m in (*model.visual.blocks, *model.model.layers)]
    root = total - sum(units)
    return {"total": total, "trainable": trainable, "largest_unit": max(units + [root]), "root": root,
            "vision_trainable": vision, "head_trains": model.lm_head.weight.requires_grad}


def plan_memory(config, recipe, *, tokens: int | None = None, vision_share: float = 0.5, world_size: int = 1,
                dtype=torch.float32, costs: dict | None = None, counts: dict | None = None) -> MemoryPlan:
    """Per-rank bytes of one micro-batch (a pack of `tokens`, `vision_share` of them image tokens)."""
    tokens = tokens or recipe.budget
    patches = int(tokens * vision_share) * config.vision.spatial_merge_size ** 2
    costs = costs or activation_costs(config, recipe.train, dtype=dtype, lora=recipe.lora)
    counts = counts or parameter_counts(config, recipe.train, recipe.lora)
    width = _size(dtype)
    params = counts["total"] * width // world_size
    gathered = 2 * counts["largest_unit"] * width if world_size > 1 else 0
    grads = counts["trainable"] * 4 // world_size
    optim = counts["trainable"] * 8 // world_size
    layers, depth = config.text.num_hidden_layers, config.vision.depth
    if recipe.checkpoint_llm:
        llm = layers * tokens * costs["hidden_bytes"] + tokens * costs["llm_per_token"]
    else:
        llm = layers * tokens * costs["llm_per_token"]
    vision = 0.0
    if counts["vision_trainable"] and patches:
        if recipe.checkpoint_vision:
            vision = depth * patches * costs["vision_hidden_bytes"] + patches * costs["vision_per_patch"]
        else:
            vision = depth * patches * costs["vision_per_patch"]
        vision += patches * costs["vision_fixed_per_patch"]
    vocab, hidden = config.text.vocab_size, config.text.hidden_size
    supervised = min(tokens, DEFAULT_CHUNK)
    # one chunk's logits and logsumexp's temporary of the same size; the head's fp32 gradient; the hidden gradient
    loss = 2 * supervised * vocab * 4 + vocab * hidden * 4 * counts["head_trains"] + tokens * hidden * width
    return MemoryPlan(params, gathered, grads, optim, int(llm + vision), loss, tokens, patches)


def largest_pack(config, recipe, memory_bytes: int, **kwargs) -> int:
    """The largest pack (tokens, a multiple of 256) whose plan fits `memory_bytes`; 0 if none does."""
    dtype = kwargs.get("dtype", torch.float32)
    costs = kwargs.pop("costs", None) or activation_costs(config, recipe.train, dtype=dtype, lora=recipe.lora)
    counts = kwargs.pop("counts", None) or parameter_counts(config, recipe.train, recipe.lora)
    lo, hi = 0, 1 << 22
    while hi - lo > 256:
        mid = (lo + hi) // 2 // 256 * 256
        fits = plan_memory(config, recipe, tokens=mid, costs=costs, counts=counts, **kwargs).total <= memory_bytes
        lo, hi = (mid, hi) if fits else (lo, mid)
    return lo


def step_flops(config, train: dict, batches) -> float:
    """Model FLOPs of this rank's micro-batches (matmuls; attention scores left out): 2 per parameter and token
    forward, 2 more for the input gradients and 2 for the weight gradients of trainable modules; the head only over
    supervised rows (the chunked loss computes nothing else); the ViT forward only when nothing in it trains."""
    from qwen25vl.data.encoding import IGNORE

    tc, vc = config.text, config.vision
    layer = (tc.hidden_size * tc.head_dim * (2 * tc.num_attention_heads + 2 * tc.num_key_value_heads)
             + 3 * tc.hidden_size * tc.intermediate_size)
    block = 4 * vc.hidden_size ** 2 + 3 * vc.hidden_size * vc.intermediate_size
    merged = vc.hidden_size * vc.spatial_merge_size ** 2
    merger = merged * merged + merged * vc.out_hidden_size
    embed = vc.in_chans * vc.temporal_patch_size * vc.patch_size ** 2 * vc.hidden_size
    llm_factor = 6 if train.get("llm", True) else 4
    vision_factor = 6 if train.get("vision", True) else (4 if train.get("merger", True) else 2)
    total = 0.0
    for b in batches:
        tokens = b.input_ids.numel()
        targets = int((b.labels != IGNORE).sum())
        patches = sum(int(g.prod(-1).sum()) for g in (b.image_grid_thw, b.video_grid_thw) if g is not None)
        total += llm_factor * tc.num_hidden_layers * layer * tokens
        total += llm_factor * tc.vocab_size * tc.hidden_size * targets
        total += vision_factor * (vc.depth * block + embed) * patches
        total += (6 if train.get("merger", True) else 2) * merger * patches / vc.spatial_merge_size ** 2
    return total
