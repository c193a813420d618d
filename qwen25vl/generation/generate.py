"""Prefill -> decode step -> token stream -> text stream, for a left-padded batch of prompts.

Layers (each a generator over the one below, mlx-lm style):
- `decode_step(model, tokens, cache)`: one token per row through the model; small and free of Python state so that
  `torch.compile` can capture it (optional; off by default on CPU where a cold compile costs more than it saves).
- `TokenGenerator`: allocates one `KVCache` for the request (prompt length + max_new_tokens), runs the prefill
  with logits for the last position only, then decodes; rows that finish are dropped from the cache
  (`KVCache.select`) so they stop costing work. Vision features are computed once, at prefill (and reused across
  calls through an optional `VisionCache`).
- `stream_batch` / `generate_batch`: per-row text deltas (incremental detokenizer + stop strings held back) and the
  finished `Completion`s, built by the same code so streamed deltas always concatenate to the returned text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch

from qwen25vl.errors import InputError
from qwen25vl.generation.sampling import SamplingParams, make_generator, sample, seen_mask
from qwen25vl.generation.streaming import TextStream
from qwen25vl.generation.vision_cache import VisionCache, encode_items

# Inputs the model's forward takes from a processor batch (mm_token_type_ids is transformers' business).
_MODEL_INPUTS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


@dataclass
class StepToken:
    row: int  # index of the prompt in the batch
    token: int | None  # None when the row finished without a new visible token (a stop token)
    finish_reason: str | None = None  # "stop" | "length" once the row is done


@dataclass
class Delta:
    index: int
    text: str
    finish_reason: str | None = None


@dataclass
class Completion:
    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    prompt_tokens: int = 0


def decode_step(model, tokens: torch.Tensor, cache) -> torch.Tensor:
    """tokens (B, 1) -> next-token logits (B, V); positions come from the cache (valid slots + rope delta)."""
    return model(tokens, cache=cache, logits_to_keep=1).logits[:, -1]


_compiled_step = None


def _step_fn(compile: bool):
    global _compiled_step
    if not compile:
        return decode_step
    if _compiled_step is None:
        # dynamic: the key length grows every step and the batch shrinks as rows finish
        _compiled_step = torch.compile(decode_step, dynamic=True)
    return _compiled_step


def _rows(params: SamplingParams | Sequence[SamplingParams], batch: int) -> list[SamplingParams]:
    rows = [params] * batch if isinstance(params, SamplingParams) else list(params)
    if len(rows) != batch:
        raise InputError(f"got {len(rows)} sampling params for {batch} prompts")
    return rows


class TokenGenerator:
    """Iterate to get, per decode step, the `StepToken`s of the rows still running. `cancel(row)` stops a row
    (a stop string found by the text layer); it is dropped from the cache before the next step."""

    def __init__(
        self,
        model,
        inputs: Mapping[str, Any],
        params: SamplingParams | Sequence[SamplingParams],
        *,
        stop_token_ids: Sequence[int] = (),
        vision_cache: VisionCache | None = None,
        compile: bool = False,
    ):
        from qwen25vl.model.kv_cache import KVCache  # the model package is imported only when generating

        self.model = model
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        ids = inputs["input_ids"]
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise InputError(f"input_ids must be (batch, tokens) and non-empty, got shape {tuple(ids.shape)}")
        self.input_ids = ids.to(self.device)
        mask = inputs.get("attention_mask")
        self.attention_mask = (torch.ones_like(self.input_ids) if mask is None else mask).to(self.device)
        if not bool(self.attention_mask[:, -1].all()):
            raise InputError("batched prompts must be left-padded (a row's last token is padding)")
        self.batch = self.input_ids.shape[0]
        self.rows = _rows(params, self.batch)
        self.stop_ids = [set(stop_token_ids) | set(p.stop_token_ids) for p in self.rows]
        self.prompt_tokens = self.attention_mask.sum(-1).tolist()
        self.tokens: list[list[int]] = [[] for _ in range(self.batch)]
        self.finish_reasons: list[str | None] = [None] * self.batch
        self._cancelled: set[int] = set()
        self.extra = {k: inputs[k] for k in _MODEL_INPUTS if inputs.get(k) is not None}
        self.vision_cache = vision_cache
        self.step_fn = _step_fn(compile)
        seed = next((p.seed for p in self.rows if p.seed is not None), None)
        self.generator = make_generator(seed, self.device)
        max_new = max(p.max_new_tokens for p in self.rows)
        self.cache = KVCache.for_model(model, self.batch, self.input_ids.shape[1] + max_new)

    def cancel(self, row: int, reason: str = "stop") -> None:
        if self.finish_reasons[row] is None:
            self.finish_reasons[row] = reason
            self._cancelled.add(row)

    def _prefill(self) -> torch.Tensor:
        kwargs = {k: v.to(self.device, self.dtype) if k.startswith("pixel") else v.to(self.device)
                  for k, v in self.extra.items()}
        if "pixel_values" in kwargs:
            kwargs["image_embeds"] = encode_items(
                self.model, "image", kwargs.pop("pixel_values"), kwargs["image_grid_thw"], self.vision_cache)
        if "pixel_values_videos" in kwargs:
            kwargs["video_embeds"] = encode_items(
                self.model, "video", kwargs.pop("pixel_values_videos"), kwargs["video_grid_thw"], self.vision_cache)
        out = self.model(self.input_ids, attention_mask=self.attention_mask, cache=self.cache, logits_to_keep=1,
                         **kwargs)
        return out.logits[:, -1]  # (B, V): left padding puts every row's last prompt token in the last column

    # no_grad, not inference_mode: index tensors the model caches per grid during generation must stay usable by a
    # later training forward in the same process (inference tensors cannot be saved for backward)
    @torch.no_grad()
    def __iter__(self) -> Iterator[list[StepToken]]:
        active = [i for i in range(self.batch) if self.rows[i].max_new_tokens > 0]
        for i in range(self.batch):
            if i not in active:
                self.finish_reasons[i] = "length"
        if not active:
            return
        logits = self._prefill()
        if len(active) < self.batch:
            logits, self.cache = logits[active], self.cache.select(torch.tensor(active, device=self.device))
        seen = None
        if any(self.rows[i].repetition_penalty != 1 for i in active):
            prompt = torch.where(self.attention_mask.bool(), self.input_ids, -1)[active]
            seen = seen_mask(prompt, logits.shape[-1], self.device)
        while active:
            tokens = sample(logits, [self.rows[i] for i in active], self.generator, seen)  # (B_active,)
            step = []
            for i, t in zip(active, tokens.tolist()):  # the one GPU->CPU sync per step: stop checks need it
                if i in self._cancelled:
                    continue
                if t in self.stop_ids[i]:
                    self.finish_reasons[i] = "stop"
                    step.append(StepToken(i, None, "stop"))
                    continue
                self.tokens[i].append(t)
                done = len(self.tokens[i]) >= self.rows[i].max_new_tokens
                if done:
                    self.finish_reasons[i] = "length"
                step.append(StepToken(i, t, "length" if done else None))
            yield step  # the consumer may cancel rows here
            keep = [j for j, i in enumerate(active) if self.finish_reasons[i] is None]
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=self.device)
                self.cache = self.cache.select(index)
                tokens = tokens[index]
                seen = seen[index] if seen is not None else None
                active = [active[j] for j in keep]
            if seen is not None:
                seen.scatter_(1, tokens[:, None], True)
            logits = self.step_fn(self.model, tokens[:, None], self.cache)


def stream_batch(model, tokenizer, inputs, params, *, stop_token_ids=(), **kwargs) -> Iterator[Delta]:
    """Text deltas of every row as they come; each row's last Delta carries its finish_reason."""
    gen = TokenGenerator(model, inputs, params, stop_token_ids=stop_token_ids, **kwargs)
    yield from _text_events(gen, tokenizer)


def _text_events(gen: TokenGenerator, tokenizer) -> Iterator[Delta]:
    streams = [TextStream(tokenizer, p.stop) for p in gen.rows]
    for i in range(gen.batch):
        if gen.rows[i].max_new_tokens == 0:
            yield Delta(i, "", "length")
    for step in gen:
        for ev in step:
            stream = streams[ev.row]
            delta = stream.push(ev.token) if ev.token is not None else ""
            if stream.stopped:
                gen.cancel(ev.row, "stop")
                yield Delta(ev.row, delta, "stop")
            elif ev.finish_reason is not None:
                yield Delta(ev.row, delta + stream.finish(), ev.finish_reason)
            elif delta:
                yield Delta(ev.row, delta)


def generate_batch(model, tokenizer, inputs, params, *, stop_token_ids=(), **kwargs) -> list[Completion]:
    """Run a batch to the end and return one Completion per row (the concatenation of its stream's deltas)."""
    gen = TokenGenerator(model, inputs, params, stop_token_ids=stop_token_ids, **kwargs)
    texts: list[list[str]] = [[] for _ in range(gen.batch)]
    for delta in _text_events(gen, tokenizer):
        texts[delta.index].append(delta.text)
    return [
        Completion("".join(texts[i]), gen.tokens[i], gen.finish_reasons[i] or "length", int(gen.prompt_tokens[i]))
        for i in range(gen.batch)
    ]
