"""What the model's forward returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, T', V): T' = T, or logits_to_keep when set
    position_ids: torch.Tensor  # (3, B, T) long: the M-RoPE ids this forward used
    rope_deltas: torch.Tensor  # (B,) long: max position + 1 - valid tokens so far (decode continues from it)
