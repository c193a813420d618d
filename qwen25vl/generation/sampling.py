"""Sampling parameters and the next-token choice, as pure tensor operations.

`sample` follows the order of transformers' logits processors (repetition penalty, then temperature, top-k, top-p,
min-p) so that the same settings give the same distribution. The random draw uses the exponential-race trick
(argmax of p / q with q ~ Exp(1)), which equals a multinomial draw but needs no GPU->CPU sync and no cumsum search.
Rows may carry different parameters (a continuous-batching server mixes requests), given as a list of params.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping, Sequence

import torch

from qwen25vl.errors import InputError


@dataclass(frozen=True)
class SamplingParams:
    """How to choose tokens and when to stop. `temperature=0` (or `top_k=1`) is greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off; applied to prompt and generated tokens, as transformers does
    seed: int | None = None
    stop: tuple[str, ...] = ()  # stop strings: the text ends before the first occurrence
    stop_token_ids: tuple[int, ...] = field(default=())  # extra to the tokenizer's EOS ids

    def __post_init__(self):
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        checks = (
            ("max_new_tokens", isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 0, "an int >= 0"),
            ("temperature", _finite(self.temperature) and self.temperature >= 0, "a number >= 0"),
            ("top_k", isinstance(self.top_k, int) and self.top_k >= 0, "an int >= 0"),
            ("top_p", _finite(self.top_p) and 0 < self.top_p <= 1, "in (0, 1]"),
            ("min_p", _finite(self.min_p) and 0 <= self.min_p <= 1, "in [0, 1]"),
            ("repetition_penalty", _finite(self.repetition_penalty) and self.repetition_penalty > 0, "a number > 0"),
            ("seed", self.seed is None or isinstance(self.seed, int), "an int or None"),
        )
        for name, ok, want in checks:
            if not ok:
                raise InputError(f"sampling parameter {name}={getattr(self, name)!r} must be {want}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise InputError(f"sampling parameter stop={self.stop!r} must hold non-empty strings")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    def updated(self, **overrides: Any) -> "SamplingParams":
        """A copy with the given fields replaced; unknown names are a user mistake. None values are ignored."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise InputError(f"unknown sampling parameter(s) {unknown}; known: {sorted(known)}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def from_generation_config(cls, config: Mapping[str, Any]) -> "SamplingParams":
        """Defaults from a checkpoint's generation_config.json (transformers' field names)."""
        kwargs: dict[str, Any] = {}
        if config.get("do_sample") is False:
            kwargs["temperature"] = 0.0
        elif "temperature" in config:
            kwargs["temperature"] = float(config["temperature"])
        for name, cast in (("top_k", int), ("top_p", float), ("min_p", float), ("repetition_penalty", float)):
            if config.get(name) is not None:
                kwargs[name] = cast(config[name])
        if config.get("max_new_tokens") is not None:
            kwargs["max_new_tokens"] = int(config["max_new_tokens"])
        eos = config.get("eos_token_id")
        if eos is not None:
            kwargs["stop_token_ids"] = tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)
        return cls(**kwargs)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def seen_mask(token_rows: Sequence[Sequence[int]] | torch.Tensor, vocab_size: int, device=None) -> torch.Tensor:
    """(B, V) bool: which tokens each row has seen (for the repetition penalty); negative ids (padding) are skipped."""
    if not isinstance(token_rows, torch.Tensor):
        width = max((len(r) for r in token_rows), default=0)
        token_rows = torch.tensor([list(r) + [-1] * (width - len(r)) for r in token_rows], dtype=torch.long)
    token_rows = token_rows.to(device)
    # invalid ids go to an extra column that is dropped (scatter with duplicate indices has no defined winner)
    mask = torch.zeros(token_rows.shape[0], vocab_size + 1, dtype=torch.bool, device=token_rows.device)
    valid = (token_rows >= 0) & (token_rows < vocab_size)
    mask.scatter_(1, torch.where(valid, token_rows, vocab_size), True)
    return mask[:, :vocab_size]


def _row_values(params: Sequence[SamplingParams], name: str, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor([getattr(p, name) for p in params], dtype=like.dtype, device=like.device)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """Divide positive logits (multiply negative ones) of seen tokens by the row's penalty. penalty: (B, 1)."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def _filter_sorted(sorted_logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Top-k, top-p, min-p on logits sorted in descending order (B, V); removed entries become -inf.

    Each filter sees the previous one's result renormalised, as transformers' warpers chained in sequence do.
    """
    neg_inf = torch.finfo(sorted_logits.dtype).min
    B, V = sorted_logits.shape
    top_k = torch.tensor([p.top_k if p.top_k > 0 else V for p in params], device=sorted_logits.device)
    kth = sorted_logits.gather(1, (top_k.clamp(max=V) - 1)[:, None])  # (B, 1): ties with the k-th value are kept
    x = sorted_logits.masked_fill(sorted_logits < kth, neg_inf)
    if any(p.top_p < 1 for p in params):
        probs = x.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass strictly ahead of each token
        drop = before >= _row_values(params, "top_p", probs)[:, None]
        drop[:, 0] = False  # always keep the most likely token
        x = x.masked_fill(drop, neg_inf)
    if any(p.min_p > 0 for p in params):
        probs = x.softmax(-1)
        drop = probs < _row_values(params, "min_p", probs)[:, None] * probs[:, :1]
        drop[:, 0] = False
        x = x.masked_fill(drop, neg_inf)
    return x


def sample(
    logits: torch.Tensor,
    params: SamplingParams | Sequence[SamplingParams],
    generator: torch.Generator | None = None,
    prev_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Choose the next token of each row. logits (B, V) -> tokens (B,) long, on the logits' device.

    prev_tokens: tokens seen so far for the repetition penalty, either (B, T) ids (negative = padding) or a (B, V)
    bool mask (cheaper to keep up to date during decoding, see `seen_mask`).
    """
    B, V = logits.shape
    rows = [params] * B if isinstance(params, SamplingParams) else list(params)
    if len(rows) != B:
        raise InputError(f"got {len(rows)} sampling params for a batch of {B} rows")
    logits = logits.float()
    if prev_tokens is not None and any(p.repetition_penalty != 1 for p in rows):
        seen = prev_tokens if prev_tokens.dtype == torch.bool else seen_mask(prev_tokens, V, logits.device)
        logits = apply_repetition_penalty(logits, seen, _row_values(rows, "repetition_penalty", logits)[:, None])
    greedy_tokens = logits.argmax(-1)
    if all(p.greedy for p in rows):
        return greedy_tokens
    if any(p.top_k > 0 or p.top_p < 1 or p.min_p > 0 for p in rows):
        sorted_logits, order = _scale(logits, rows).sort(-1, descending=True)  # (B, V) each
        probs = _filter_sorted(sorted_logits, rows).softmax(-1)
        choice = order.gather(1, _race(probs, generator)[:, None])[:, 0]
    else:
        choice = _race(_scale(logits, rows).softmax(-1), generator)
    is_greedy = torch.tensor([p.greedy for p in rows], device=logits.device)
    return torch.where(is_greedy, greedy_tokens, choice)


def _scale(logits: torch.Tensor, rows: Sequence[SamplingParams]) -> torch.Tensor:
    temperature = torch.tensor([p.temperature if not p.greedy else 1.0 for p in rows], device=logits.device)
    return logits / temperature[:, None]


def sampling_probs(
    logits: torch.Tensor, params: SamplingParams | Sequence[SamplingParams], prev_tokens: torch.Tensor | None = None
) -> torch.Tensor:
    """The distribution `sample` draws from, (B, V) in vocabulary order (for tests and log-probs); greedy rows
    get the distribution of temperature 1 after the penalty, since their draw ignores it."""
    B, V = logits.shape
    rows = [params] * B if isinstance(params, SamplingParams) else list(params)
    logits = logits.float()
    if prev_tokens is not None and any(p.repetition_penalty != 1 for p in rows):
        seen = prev_tokens if prev_tokens.dtype == torch.bool else seen_mask(prev_tokens, V, logits.device)
        logits = apply_repetition_penalty(logits, seen, _row_values(rows, "repetition_penalty", logits)[:, None])
    sorted_logits, order = _scale(logits, rows).sort(-1, descending=True)
    probs_sorted = _filter_sorted(sorted_logits, rows).softmax(-1)
    return torch.empty_like(probs_sorted).scatter_(1, order, probs_sorted)


def _race(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A draw from each row's categorical distribution: argmax(p / q), q ~ Exp(1) (no sync, no cumsum search)."""
    q = torch.empty_like(probs).exponential_(1, generator=generator)
    return (probs / q).argmax(-1)
