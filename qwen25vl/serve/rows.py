"""What the scheduler tracks per request and per generated sequence (a "row" of the running batch)."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from qwen25vl.generation.sampling import SamplingParams, make_generator, seen_mask
from qwen25vl.generation.streaming import TextStream
from qwen25vl.serve.json_mode import JsonConstraint

_ids = itertools.count()


@dataclass
class Event:
    """One message from the worker to a request's handler."""

    kind: str  # "delta" | "finish" | "error" | "end"; "gone" (the client left: from the handler, not the worker)
    index: int = 0  # choice index (delta, finish)
    text: str = ""  # delta text, or the error message
    reason: Optional[str] = None  # finish reason ("stop", "length"), or the error type
    status: int = 0  # HTTP status of an error
    usage: Optional[dict[str, Any]] = None  # "end": completion token counts
    logprobs: Optional[list[dict]] = None  # delta / finish: OpenAI entries of the tokens behind this text


@dataclass
class GenRequest:
    """A chat completion waiting for or taking part in the running batch."""

    inputs: dict[str, torch.Tensor]  # the processor's output for one conversation (batch of 1)
    params: SamplingParams  # max_new_tokens = the request's max_tokens
    n: int = 1
    json_mode: bool = False
    ignore_eos: bool = False
    timeout: float = 600.0
    loop: Optional[asyncio.AbstractEventLoop] = None
    queue: Optional[asyncio.Queue] = None
    id: int = field(default_factory=lambda: next(_ids))
    created: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished_rows: int = 0
    completion_tokens: int = 0
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token generated so far
    frequency_penalty: float = 0.0  # OpenAI's: subtracted per occurrence in the generated tokens
    top_logprobs: Optional[int] = None  # None: no logprobs; k >= 0: the chosen token's logprob and the k best

    @property
    def deadline(self) -> float:
        return self.created + self.timeout

    @property
    def prompt_len(self) -> int:
        return int(self.inputs["input_ids"].shape[-1])

    def emit(self, events: list[Event]) -> None:
        """Hand events to the request's event loop (thread-safe; a closed loop means the client is gone)."""
        if events:
            emit_all([(self, events)])

    def fail(self, status: int, type_: str, message: str) -> None:
        self.emit([Event("error", text=message, reason=type_, status=status)])


def emit_all(batch: list[tuple["GenRequest", list[Event]]]) -> None:
    """Deliver one step's events of many requests with one wake-up per event loop.

    Each `call_soon_threadsafe` wakes the loop's thread, which then holds the GIL while the worker waits for it:
    measured on the shared 2-core host, about 2 ms per wake-up, as much as a decode step of a small model. So a step
    costs one wake-up, not one per running request.
    """
    by_loop: dict[int, tuple[asyncio.AbstractEventLoop, list]] = {}
    for request, events in batch:
        if events and request.loop is not None and request.queue is not None:
            by_loop.setdefault(id(request.loop), (request.loop, []))[1].append((request, events))
    for loop, items in by_loop.values():
        try:
            loop.call_soon_threadsafe(_put_all, items)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            for request, _ in items:
                request.cancelled.set()


def _put_all(items: list[tuple["GenRequest", list[Event]]]) -> None:
    for request, events in items:
        for event in events:
            request.queue.put_nowait(event)


class Row:
    """One sequence being decoded: the request it answers, its choice index, sampling state and text stream."""

    def __init__(self, request: GenRequest, index: int, tokenizer, eos_ids: tuple[int, ...], vocab_size: int,
                 json_table=None, device="cpu"):
        self.request = request
        self.index = index
        params = request.params
        seed = None if params.seed is None else params.seed + index  # n choices with one seed still differ
        self.params = params.updated(seed=seed) if seed is not None else params
        self.generator = make_generator(seed, device) if not params.greedy else None
        self.stream = TextStream(tokenizer, params.stop)
        # ignore_eos: the defaults' stop_token_ids are the checkpoint's EOS ids too, so none of them stop the row
        self.stop_ids = frozenset() if request.ignore_eos else frozenset(eos_ids) | frozenset(params.stop_token_ids)
        json_end = tuple(self.stop_ids) or tuple(eos_ids)
        self.json = JsonConstraint(json_table, json_end) if request.json_mode else None
        self.generated = 0
        self.last_token = -1
        self.finish_reason: Optional[str] = None
        self.seen: Optional[torch.Tensor] = None  # (1, V) bool for the repetition penalty
        if params.repetition_penalty != 1:
            self.seen = seen_mask(request.inputs["input_ids"].reshape(1, -1), vocab_size, device)
        self.counts: Optional[torch.Tensor] = None  # (V,) generated-token counts for presence/frequency penalties
        if request.presence_penalty or request.frequency_penalty:
            self.counts = torch.zeros(vocab_size, device=device)
        self.pending_logprobs: list[dict] = []  # entries of tokens whose text is not sent yet
        self.prefill = None  # (chunks left, image features, video features) while a long prompt is prefilled

    def penalize(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (V,) -> logits with OpenAI's presence and frequency penalties applied (generated tokens only)."""
        if self.counts is None:
            return logits
        request = self.request
        return logits - request.presence_penalty * (self.counts > 0) - request.frequency_penalty * self.counts

    def accept(self, token: int, logprob: Optional[dict] = None) -> list[Event]:
        """Record the sampled token (and its logprob entry); returns the events to send (text delta, finish)."""
        self.generated += 1
        self.last_token = token
        if self.seen is not None:
            self.seen[0, token] = True
        if self.counts is not None:
            self.counts[token] += 1
        if logprob is not None and token not in self.stop_ids:
            self.pending_logprobs.append(logprob)
        if self.json is not None:
            self.json.advance(token)
        events = []
        if token in self.stop_ids:
            self.finish_reason = "stop"
        else:
            delta = self.stream.push(token)
            if delta:
                events.append(Event("delta", self.index, delta, logprobs=self._take_logprobs()))
            if self.stream.stopped:
                self.finish_reason = "stop"
            elif self.generated >= self.params.max_new_tokens:
                self.finish_reason = "length"
        if self.finish_reason:
            tail = self.stream.finish()
            if tail:
                events.append(Event("delta", self.index, tail, logprobs=self._take_logprobs()))
            events.append(Event("finish", self.index, reason=self.finish_reason, logprobs=self._take_logprobs()))
        return events

    def _take_logprobs(self) -> Optional[list[dict]]:
        if not self.pending_logprobs:
            return None
        taken, self.pending_logprobs = self.pending_logprobs, []
        return taken
