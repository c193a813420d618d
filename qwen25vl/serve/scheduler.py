"""Continuous batching: one worker thread owns the model and decodes every running request together.

Each iteration of the worker loop
1. drops rows whose client went away or whose time ran out, and requests that waited too long;
2. admits waiting requests (up to `max_batch` rows and a prefill token budget, so decoding rows never stall for long):
   their images and videos go through the vision tower in one call across requests, then each request is prefilled
   into its own KVCache, its first token sampled, and its rows joined to the running cache (`KVCache.concat`);
3. runs one decode step for all running rows (rows sit at different lengths: the cache keeps per-row offsets);
4. sends each request its new text (`loop.call_soon_threadsafe` onto the request's asyncio queue) and removes
   finished rows from the cache (`KVCache.select`).
Handlers never touch the model; the worker never awaits anything.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable, Optional

import torch

from qwen25vl.errors import InputError, Qwen25VLError
from qwen25vl.generation.sampling import sample
from qwen25vl.generation.vision_cache import VisionCache, encode_items
from qwen25vl.model.kv_cache import KVCache
from qwen25vl.serve.json_mode import token_byte_table
from qwen25vl.serve.rows import Event, GenRequest, Row, emit_all

log = logging.getLogger("qwen25vl.serve")


def _fail_for(request: GenRequest, err: Exception) -> None:
    if isinstance(err, Qwen25VLError):
        request.fail(400, "invalid_request_error", str(err))
    else:
        log.exception("request failed")
        request.fail(500, "server_error", f"generation failed: {type(err).__name__}: {err}")


class QueueFull(Exception):
    """The waiting queue holds `max_queue` requests already (answered with 429)."""


class Scheduler:
    def __init__(self, model, tokenizer, *, max_batch: int = 32, max_queue: int = 256,
                 prefill_tokens_per_step: int = 8192, vision_cache_bytes: int = 256 * 2**20):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.prefill_budget = prefill_tokens_per_step
        self.vision_cache = VisionCache(vision_cache_bytes) if vision_cache_bytes > 0 else None
        self.device = model.model.embed_tokens.weight.device
        self.vocab_size = model.lm_head.weight.shape[0] if hasattr(model, "lm_head") else model.config.text.vocab_size
        self.eos_ids = tuple(getattr(tokenizer, "eos_token_ids", ()) or (model.config.eos_token_id,))
        self._token_bytes = None  # bytes of every token id: JSON mode and logprobs, built on first use
        self._waiting: collections.deque[GenRequest] = collections.deque()
        self._rows: list[Row] = []
        self._cache: Optional[KVCache] = None
        self._cond = threading.Condition()
        self._stop = False
        self._thread: Optional[threading.Thread] = None
        self.steps = 0  # decode steps run (for tests and the benchmark)
        self.max_rows_seen = 0
        self.rows_cancelled = 0  # rows dropped because their client went away
        self.before_step: Optional[Callable[[], None]] = None  # called before each decode step (tests, tracing)
        self._changed = threading.Condition()  # notified after every worker iteration (observers, not the worker)

    # ---- called from the HTTP side ------------------------------------------------------------------------------

    def start(self) -> "Scheduler":
        self._thread = threading.Thread(target=self._run, name="qwen25vl-scheduler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def submit(self, request: GenRequest) -> None:
        if request.n > self.max_batch:  # it could never be admitted, and would block the queue behind it
            raise InputError(f"n={request.n} is over the server limit max_batch={self.max_batch}")
        with self._cond:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"the server's queue is full (max_queue={self.max_queue}); retry later")
            self._waiting.append(request)
            self._cond.notify_all()

    def cancel(self, request: GenRequest) -> None:
        """The client went away: its rows leave the batch at the next step."""
        request.cancelled.set()
        with self._cond:
            self._cond.notify()

    def wait_until(self, predicate: Callable[["Scheduler"], bool], timeout: float) -> bool:
        """Block until `predicate(self)` holds after a worker iteration (or now); False when `timeout` passes first.

        For tests and tools that must observe the worker without polling it on a clock.
        """
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout=timeout)

    def wait_rows(self, count: int, timeout: float) -> bool:
        """Block until `count` rows are running or waiting (from a `before_step` hook: the worker pauses meanwhile)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: len(self._rows) + sum(r.n for r in self._waiting) >= count or self._stop, timeout=timeout)

    @property
    def running_rows(self) -> int:
        return len(self._rows)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- the worker ---------------------------------------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._stop and not self._waiting and not self._rows:
                        self._cond.wait(timeout=0.5)
                    if self._stop:
                        break
                try:
                    self._drop_gone()
                    self._admit()
                    if self._rows:
                        if self.before_step is not None:
                            self.before_step()
                        self._decode_step()
                except Exception as err:  # a bug must not kill the server: fail the running requests, go on
                    log.exception("scheduler step failed")
                    failed = {id(r.request): r.request for r in self._rows}.values()
                    self._rows, self._cache = [], None
                    for request in failed:
                        request.fail(500, "server_error", f"generation failed: {type(err).__name__}: {err}")
                with self._changed:
                    self._changed.notify_all()
        for request in list(self._waiting) + [r.request for r in self._rows]:
            request.fail(503, "server_shutdown", "the server is shutting down")
        with self._changed:
            self._changed.notify_all()

    def _drop_gone(self) -> None:
        now = time.monotonic()
        with self._cond:
            for request in list(self._waiting):
                if request.cancelled.is_set():
                    self._waiting.remove(request)
                elif now > request.deadline:
                    self._waiting.remove(request)
                    request.fail(504, "timeout", f"request waited past the limit request_timeout={request.timeout}s")
        timed_out = {id(r.request): r.request for r in self._rows if now > r.request.deadline}
        for request in timed_out.values():
            request.fail(504, "timeout", f"request ran past the limit request_timeout={request.timeout}s")
            request.cancelled.set()
        keep = [i for i, r in enumerate(self._rows) if not r.request.cancelled.is_set()]
        self.rows_cancelled += sum(1 for r in self._rows
                                   if r.request.cancelled.is_set() and id(r.request) not in timed_out)
        self._keep(keep)

    def _keep(self, keep: list[int]) -> None:
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[i] for i in keep]
        self._cache = self._cache.select(keep) if keep else None

    def _take_admissible(self) -> list[GenRequest]:
        taken, rows, tokens = [], len(self._rows), 0
        with self._cond:
            while self._waiting:
                request = self._waiting[0]
                if rows + request.n > self.max_batch:
                    break
                if taken and tokens + request.prompt_len > self.prefill_budget:
                    break  # the rest waits one decode step: running rows keep streaming meanwhile
                self._waiting.popleft()
                taken.append(request)
                rows += request.n
                tokens += request.prompt_len
        return taken

    def _admit(self) -> None:
        taken = self._take_admissible()
        if not taken:
            return
        try:
            embeds = self._encode_vision(taken)
        except Exception as err:
            for request in taken:
                _fail_for(request, err)
            return
        for request, (image_embeds, video_embeds) in zip(taken, embeds):
            try:
                self._prefill(request, image_embeds, video_embeds)
            except Exception as err:  # one bad request must not take the others down
                _fail_for(request, err)
        self.max_rows_seen = max(self.max_rows_seen, len(self._rows))

    def _encode_vision(self, requests: list[GenRequest]) -> list[tuple]:
        """One tower call per kind across all admitted requests; split the features back per request."""
        out = [[None, None] for _ in requests]
        for slot, (kind, pix_key, grid_key) in enumerate(
                (("image", "pixel_values", "image_grid_thw"), ("video", "pixel_values_videos", "video_grid_thw"))):
            owners = [i for i, r in enumerate(requests) if r.inputs.get(pix_key) is not None]
            if not owners:
                continue
            pixels = torch.cat([requests[i].inputs[pix_key] for i in owners]).to(self.device)
            grids = torch.cat([requests[i].inputs[grid_key] for i in owners]).to(self.device)
            feats = encode_items(self.model, kind, pixels, grids, self.vision_cache)
            merge = self.model.config.vision.spatial_merge_size ** 2
            sizes = [int(requests[i].inputs[grid_key].prod(-1).sum()) // merge for i in owners]
            for i, part in zip(owners, torch.split(feats, sizes)):
                out[i][slot] = part
        return [tuple(x) for x in out]

    def _prefill(self, request: GenRequest, image_embeds, video_embeds) -> None:
        inputs = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in request.inputs.items()}
        cache = KVCache.for_model(self.model, 1, request.prompt_len + request.params.max_new_tokens)
        out = self.model(
            inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
            image_grid_thw=inputs.get("image_grid_thw"), video_grid_thw=inputs.get("video_grid_thw"),
            second_per_grid_ts=inputs.get("second_per_grid_ts"), cache=cache,
            image_embeds=image_embeds, video_embeds=video_embeds, logits_to_keep=1,
        )
        if request.n > 1:
            cache = cache.select([0] * request.n)  # the n choices share the prompt: one prefill, n copies
        rows = [Row(request, i, self.tokenizer, self.eos_ids, self.vocab_size,
                    self.token_bytes() if request.json_mode else None, self.device) for i in range(request.n)]
        logits = out.logits[:, -1].float().expand(request.n, -1)  # (n, V)
        tokens, logprobs = self._sample(rows, logits)
        joined = cache if self._cache is None else self._cache.concat(cache)
        self._rows, self._cache = self._rows + rows, joined  # together: rows and cache rows stay aligned
        self._deliver(rows, tokens, logprobs)

    def _decode_step(self) -> None:
        tokens = torch.tensor([[r.last_token] for r in self._rows], dtype=torch.long, device=self.device)  # (B, 1)
        out = self.model(tokens, cache=self._cache, logits_to_keep=1)
        self.steps += 1
        self._deliver(self._rows, *self._sample(self._rows, out.logits[:, -1].float()))

    def token_bytes(self) -> list:
        if self._token_bytes is None:
            self._token_bytes = token_byte_table(self.tokenizer, self.vocab_size)
        return self._token_bytes

    def _penalize(self, rows: list[Row], logits: torch.Tensor) -> torch.Tensor:
        asking = [i for i, r in enumerate(rows) if r.counts is not None]
        if not asking:
            return logits
        logits = logits.clone()
        for i in asking:
            logits[i] = rows[i].penalize(logits[i])
        return logits

    def _logprobs(self, rows: list[Row], logits: torch.Tensor, tokens: list[int]) -> list:
        """OpenAI logprob entries for the rows that ask (None for the others), from the model's distribution
        after the penalties and before temperature and filtering (what vLLM reports too)."""
        out: list = [None] * len(rows)
        for i, row in enumerate(rows):
            k = row.request.top_logprobs
            if k is None:
                continue
            logp = torch.log_softmax(logits[i].float(), dim=-1)  # (V,)
            top = torch.topk(logp, k) if k else None
            entry = self._entry(tokens[i], float(logp[tokens[i]]))
            entry["top_logprobs"] = [] if top is None else [
                self._entry(int(t), float(v)) for v, t in zip(top.values.tolist(), top.indices.tolist())]
            out[i] = entry
        return out

    def _entry(self, token: int, logprob: float) -> dict:
        raw = self.token_bytes()[token] if token < self.vocab_size else None
        if raw is None:  # special tokens: their name is their text
            text = self.tokenizer.decode([token], skip_special_tokens=False)
            raw = text.encode("utf-8")
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": max(logprob, -9999.0),
                "bytes": list(raw)}

    def _sample(self, rows: list[Row], logits: torch.Tensor) -> tuple[list[int], list]:
        """logits (B, V) -> one token per row, and the logprob entries of the rows that ask for them.

        Rows without state of their own share one batched `sample` call (each with its own params); seeded rows
        draw from their own generator (so a seed gives the same text whatever else is running) and JSON rows are
        masked first, one row at a time.
        """
        logits = self._penalize(rows, logits)
        own = {i for i, r in enumerate(rows) if r.json is not None or r.generator is not None}
        shared = [i for i in range(len(rows)) if i not in own]
        tokens = [0] * len(rows)
        if shared:
            sub = logits if len(shared) == len(rows) else logits[shared]
            seen = None
            if any(rows[i].seen is not None for i in shared):
                seen = torch.zeros(sub.shape, dtype=torch.bool, device=sub.device)  # (B_shared, V)
                for j, i in enumerate(shared):
                    if rows[i].seen is not None:
                        seen[j] = rows[i].seen[0]
            picked = sample(sub, [rows[i].params for i in shared], None, seen).tolist()
            for j, i in enumerate(shared):
                tokens[i] = picked[j]
        for i in sorted(own):
            row, row_logits = rows[i], logits[i]
            if row.json is not None:
                row_logits = row.json.mask(row_logits, row.params.max_new_tokens - row.generated)
            tokens[i] = int(sample(row_logits[None], row.params, row.generator, row.seen)[0])
        return tokens, self._logprobs(rows, logits, tokens)

    def _deliver(self, rows: list[Row], tokens: list[int], logprobs: list) -> None:
        """Send each request its events for this step; drop rows that finished."""
        by_request: dict[int, tuple[GenRequest, list[Event]]] = {}
        for row, token, logprob in zip(rows, tokens, logprobs):
            request = row.request
            events = by_request.setdefault(request.id, (request, []))[1]
            events.extend(row.accept(token, logprob))
            request.completion_tokens += 1
            if row.finish_reason:
                request.finished_rows += 1
                if request.finished_rows == request.n:
                    events.append(Event("end", usage={"completion_tokens": request.completion_tokens}))
        emit_all(list(by_request.values()))
        self._keep([i for i, r in enumerate(self._rows) if r.finish_reason is None])
