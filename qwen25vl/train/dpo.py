"""Direct preference optimisation: the losses as small pure functions, preference pairs packed like SFT, and the
packed forward that returns each answer's summed log-probability.

Losses, on per-pair summed log-probs of the chosen (c) and rejected (r) answers under the policy (pi) and the frozen
reference (ref), with h = (pi_c - pi_r) - (ref_c - ref_r):

    sigmoid (DPO)        -(1 - eps) * logsigmoid(beta * h) - eps * logsigmoid(-beta * h)   eps: label smoothing
    ipo                  (h - 1 / (2 * beta)) ** 2                                          (on per-token means)
    rewards              beta * (pi_c - ref_c), beta * (pi_r - ref_r); margin = their difference; accuracy = margin > 0

With eps > 0 the sigmoid loss is conservative DPO (labels flipped with probability eps). IPO regresses h onto a
fixed target, so it is given per-token mean log-probs (as TRL does): a summed log-ratio grows with the answer's length
and the target would mean something else for every length.

A pair is one unit of packing: its chosen and rejected sequences (prompt + answer, each with its own M-RoPE ids from
0) sit side by side in one pack, so the pair's images are encoded once and their features fill both sequences' pad
tokens. Only the answer's tokens are scored: tokens of the prompt, including earlier assistant turns in `messages`,
are masked (they are the same in both sequences, and would only add noise to the logged log-probs).

    pack          c0 (prompt0 + chosen0) | r0 (prompt0 + rejected0) | c1 ... | r1 ...      cu_seqlens per sequence
    ViT input     images of pair 0, images of pair 1 (once each)
    features      f0 -> pads of c0 and r0; f1 -> pads of c1 and r1
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo")


def preference_logits(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                      ref_rejected: torch.Tensor) -> torch.Tensor:
    """h per pair: how much more the policy prefers the chosen answer than the reference does."""
    return (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)


def sigmoid_loss(logits: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO's loss per pair; with label smoothing eps the conservative DPO loss."""
    return (-(1.0 - label_smoothing) * F.logsigmoid(beta * logits)
            - label_smoothing * F.logsigmoid(-beta * logits))


def ipo_loss(logits: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO's loss per pair: the squared distance of h from 1 / (2 beta)."""
    return (logits - 1.0 / (2.0 * beta)) ** 2


def rewards(policy: torch.Tensor, ref: torch.Tensor, beta: float) -> torch.Tensor:
    """The implicit reward beta * log(pi / ref) of each answer (no gradient: it is only logged)."""
    return beta * (policy - ref).detach()


@dataclass
class PairStats:
    """Per-pair values of one micro-batch: losses (with gradient) and the logged rewards and log-probs."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor

    @property
    def margins(self) -> torch.Tensor:
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracies(self) -> torch.Tensor:
        return (self.chosen_rewards > self.rejected_rewards).float()


def preference_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                    ref_rejected: torch.Tensor, *, beta: float = 0.1, label_smoothing: float = 0.0,
                    loss_type: str = "sigmoid") -> PairStats:
    """The chosen loss of each pair, with its rewards. Inputs are (P,) log-probs (summed for sigmoid, per-token
    means for IPO: the caller decides, see the module's docstring)."""
    check_options(beta, label_smoothing, loss_type)
    logits = preference_logits(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    losses = sigmoid_loss(logits, beta, label_smoothing) if loss_type == "sigmoid" else ipo_loss(logits, beta)
    return PairStats(losses, rewards(policy_chosen, ref_chosen, beta), rewards(policy_rejected, ref_rejected, beta),
                     policy_chosen.detach(), policy_rejected.detach())


def check_options(beta: float, label_smoothing: float, loss_type: str) -> None:
    from qwen25vl.errors import ConfigError

    if loss_type not in LOSS_TYPES:
        raise ConfigError(f"unknown DPO loss {loss_type!r}; choose among {list(LOSS_TYPES)}")
    if not (beta > 0 and math.isfinite(beta)):
        raise ConfigError(f"beta must be a positive number, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ConfigError(f"label smoothing must be in [0, 0.5), got {label_smoothing}")
    if loss_type == "ipo" and label_smoothing:
        raise ConfigError("label smoothing applies to the sigmoid loss only, not to IPO")
