"""The report's training stages as settings in code; the command line overrides a few of them.

| recipe | trains | packs of | data (report) |
|---|---|---|---|
| clip (before stage 1) | ViT + merger from scratch, against a throwaway text tower | pair batches | image captions |
| pretrain stage 1 | ViT + merger, LLM frozen | 8,192 | captions, OCR, knowledge |
| pretrain stage 2 | everything | 8,192 | the full interleaved mix |
| pretrain stage 3 | everything | 32,768 | long video and agent data |
| sft | merger + LLM, ViT frozen | 8,192 | instruction data |

The learning rates are ours (the report gives none): the official fine-tuning scripts' habit of a smaller rate for
the ViT than for the merger and LLM is kept. The clip recipe (`recipes/clip.py::CLIP`) exports a full model folder
whose `visual.*` weights are the trained ones: stage 1 starts from it with `--model`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from qwen25vl.data.packing import DEFAULT_BUDGET, LONG_BUDGET
from qwen25vl.train.lora import LoraSpec


@dataclass(frozen=True)
class Recipe:
    name: str
    train: dict = field(default_factory=lambda: {"vision": True, "merger": True, "llm": True})
    lr: dict = field(default_factory=lambda: {"vision": 2e-5, "merger": 1e-4, "llm": 1e-5})
    budget: int = DEFAULT_BUDGET
    packs_per_step: int = 1  # global batch, in packs (split over ranks, the rest accumulated)
    steps: int = 1000
    warmup: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    save_every: int = 200
    keep: int = 2
    checkpoint_vision: bool = False  # activation checkpointing, per tower
    checkpoint_llm: bool = False
    seed: int = 0
    window: int = 1024  # records per first-fit-decreasing window
    lora: LoraSpec | None = None  # adapters on these targets train, every base weight is frozen (train/lora.py)

    def replace(self, **changes) -> Recipe:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


PRETRAIN = {
    1: Recipe("pretrain-stage1", train={"vision": True, "merger": True, "llm": False},
              lr={"vision": 2e-4, "merger": 2e-4}),
    2: Recipe("pretrain-stage2"),
    3: Recipe("pretrain-stage3", budget=LONG_BUDGET, checkpoint_vision=True, checkpoint_llm=True),
}
SFT = Recipe("sft", train={"vision": False, "merger": True, "llm": True}, lr={"merger": 2e-5, "llm": 1e-5},
             warmup=20, weight_decay=0.0)
