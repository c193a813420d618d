"""Continuous batching: one worker thread owns the model and decodes every running request together.

The running rows live in one `KVCache` of preallocated row slots, each of `max_len` token slots: a joining request is
prefilled straight into free rows (`add_rows` + `rows_view`), a finished row's slot is refilled by moving the last row
into it (`remove_rows`: that one row's used slots), so the running rows' cache is never copied to admit or drop
anyone while it has room.

The cache grows on demand, never up front: the first admission allocates the rows it needs (rounded up to a power of
two, at least `slot_rows`, at most `max_batch`) of the token slots its prompts need plus one (a power of two, at least
`slot_tokens`). When a join needs more rows, or a prefill chunk or a decode step more token slots, the cache is
reallocated once at double the short dimension (or what is needed, if more; rows capped at `max_batch`, tokens at
`max_slot_tokens` when set) and the running rows are copied into it (`resized`, counted in `cache_copies`). So n
tokens per row cost O(log n) reallocations, and memory follows the load's high-water mark instead of max_batch times
the longest possible request. The cache is kept (not shrunk) while the server runs; it is dropped only when a step
fails. `cache_allocs` counts every allocation, the first included.

Each iteration of the worker loop
1. drops rows whose client went away or whose time ran out, and requests that waited too long;
2. admits waiting requests (up to `max_batch` rows and a prefill token budget): their images and videos go through
   the vision tower in one call across requests (features reused across requests by content hash, `VisionCache`);
   prompts up to `prefill_chunk` tokens are prefilled together in one left-padded forward, a longer one chunk by
   chunk (`serve/prefill.py`), one chunk per iteration, so decoding rows never wait for a whole long prompt;
3. runs one decode step for all running rows (a row still being prefilled takes part as a padding token, which
   its cache marks invalid);
4. sends each request its new text (`loop.call_soon_threadsafe` onto the request's asyncio queue) and frees
   finished rows.
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
from qwen25vl.generation.vision_cache import VisionCache
from qwen25vl.model.kv_cache import KVCache
from qwen25vl.serve.prefill import can_batch, chunk_bounds, chunk_inputs, encode_vision, joined_features, padded_batch
from qwen25vl.serve.row_sampling import RowSampler
from qwen25vl.serve.rows import Event, GenRequest, Row, emit_all
from qwen25vl.serve.slots import slot_shape

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
                 prefill_tokens_per_step: int = 8192, vision_cache_bytes: int = 256 * 2**20,
                 prefill_chunk: int = 512, slot_tokens: int = 64, slot_rows: int = 1,
                 max_slot_tokens: Optional[int] = None):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.prefill_budget = prefill_tokens_per_step
        if prefill_chunk < 1:
            raise InputError(f"prefill_chunk must be a positive number of tokens, got {prefill_chunk}")
        self.prefill_chunk = prefill_chunk
        if min(slot_tokens, slot_rows) < 1 or (max_slot_tokens is not None and max_slot_tokens < slot_tokens):
            raise InputError(f"slot_tokens {slot_tokens} and slot_rows {slot_rows} must be positive and "
                             f"max_slot_tokens {max_slot_tokens} at least slot_tokens")
        self.slot_tokens = slot_tokens  # token slots per row at the first allocation, at least
        self.slot_rows = slot_rows  # rows at the first allocation, at least (capped at max_batch)
        self.max_slot_tokens = max_slot_tokens  # token slots per row never grow past this (None: no bound)
        self.vision_cache = VisionCache(vision_cache_bytes) if vision_cache_bytes > 0 else None
        self.device = model.model.embed_tokens.weight.device
        self.vocab_size = model.lm_head.weight.shape[0] if hasattr(model, "lm_head") else model.config.text.vocab_size
        self.eos_ids = tuple(getattr(tokenizer, "eos_token_ids", ()) or (model.config.eos_token_id,))
        self.sampler = RowSampler(tokenizer, self.vocab_size)
        self._waiting: collections.deque[GenRequest] = collections.deque()
        self._rows: list[Row] = []
        self._cache: Optional[KVCache] = None
        self._cond = threading.Condition()
        self._stop = False
        self._thread: Optional[threading.Thread] = None
        self.steps = 0  # decode steps run (for tests and the benchmark)
        self.max_rows_seen = 0
        self.prefill_calls = 0  # prefill forwards (a batch of prompts, or one chunk of a long one)
        self.cache_copies = 0  # times the running rows' cache was copied (only to grow it: more rows or slots)
        self.cache_allocs = 0  # cache allocations: the first, each growth, and after a failed step dropped it
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
                    failed = {id(r.request): r.request for r in self._rows if r is not None}.values()
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
        kept = set(keep)
        order = self._cache.remove_rows([i for i in range(len(self._rows)) if i not in kept])
        self._rows = [self._rows[i] for i in order]  # the cache moved rows: the list follows

    def _take_admissible(self) -> list[GenRequest]:
        # a request still in chunked prefill holds one row now and its other n - 1 choices once it joins
        reserved = sum(r.request.n - 1 for r in self._rows if r.prefill is not None)
        taken, rows, tokens = [], len(self._rows) + reserved, 0
        with self._cond:
            while self._waiting:
                request = self._waiting[0]
                if rows + request.n > self.max_batch:
                    break
                first = min(request.prompt_len, self.prefill_chunk)  # a long prompt costs one chunk now
                if taken and tokens + first > self.prefill_budget:
                    break  # the rest waits one decode step: running rows keep streaming meanwhile
                self._waiting.popleft()
                taken.append(request)
                rows += request.n
                tokens += first
        return taken

    def _admit(self) -> None:
        taken = self._take_admissible()
        if taken:
            try:
                embeds = encode_vision(self.model, [r.inputs for r in taken], self.device, self.vision_cache)
            except Exception as err:
                for request in taken:
                    _fail_for(request, err)
                taken = []
            pairs = list(zip(taken, embeds)) if taken else []
            short = [p[0].prompt_len <= self.prefill_chunk and can_batch(p[0].inputs) for p in pairs]
            group = [p for p, ok in zip(pairs, short) if ok]
            if group and not self._guarded(self._prefill_batch, group, report=len(group) == 1):
                for pair in group:  # one bad prompt fails the batch: each alone, so only it fails
                    self._guarded(self._prefill_batch, [pair])
            for pair, ok in zip(pairs, short):
                if not ok:
                    self._guarded(self._start_chunked, [pair])
        self._next_chunk()
        self.max_rows_seen = max(self.max_rows_seen, len(self._rows))

    def _guarded(self, fn, pairs: list, report: bool = True) -> bool:
        """Run a prefill; a bad request must not take the running rows down. On failure its rows are removed and
        (`report`) its requests answered with the error; returns whether it succeeded."""
        try:
            fn(pairs)
            return True
        except Exception as err:
            requests = {id(p[0]): p[0] for p in pairs}
            self._keep([i for i, r in enumerate(self._rows) if r is not None and id(r.request) not in requests])
            for request in requests.values() if report else ():
                _fail_for(request, err)
            return False

    def _open_rows(self, count: int, need: int, most: int, extra: int = 0) -> range:
        """`count` new rows in free slots of at least `need` token slots each, with room for `extra` more rows (the
        other choices of n > 1 requests) so their join copies nothing; `most` is the slots a row can come to hold.
        The running rows stay where they are unless the cache must grow."""
        if self.max_slot_tokens is not None and most > self.max_slot_tokens:
            raise InputError(f"the prompt and max_tokens need {most} cache slots per row, over the server's "
                             f"max_slot_tokens={self.max_slot_tokens}")
        running = 0 if self._cache is None else self._cache.batch
        self._fit(running + count + extra, need)
        return self._cache.add_rows(count)

    def _fit(self, rows: int, tokens: int) -> None:
        """Make the cache hold `rows` rows of `tokens` slots each: the first allocation, or a growth (doubling the
        short dimension, one copy of the running rows) when it is too small; nothing when it fits."""
        cache = self._cache
        if cache is not None and rows <= cache.capacity and tokens <= cache.max_len:
            return
        capacity, length = slot_shape(None if cache is None else (cache.capacity, cache.max_len), rows, tokens,
                                      floor=(self.slot_rows, self.slot_tokens),
                                      most=(self.max_batch, self.max_slot_tokens))
        if cache is None or cache.batch == 0:
            self._cache = None  # nothing to copy: free the old one before allocating
            self._cache = KVCache.for_model(self.model, 0, length, capacity=capacity)
        else:
            self._cache = cache.resized(length, capacity)
            self.cache_copies += 1
        self.cache_allocs += 1

    def _new_rows(self, request: GenRequest) -> list[Row]:
        return [Row(request, i, self.tokenizer, self.eos_ids, self.vocab_size,
                    self.token_bytes() if request.json_mode else None, self.device) for i in range(request.n)]

    def _prefill_batch(self, pairs: list) -> None:
        """Prompts of a few requests in one left-padded forward, written straight into new slots."""
        batch = padded_batch([r.inputs for r, _ in pairs])
        width = batch["input_ids"].shape[1]
        slots = self._open_rows(len(pairs), width + 1, width + max(r.params.max_new_tokens for r, _ in pairs),
                                extra=sum(r.n - 1 for r, _ in pairs))
        self._rows += [None] * len(pairs)  # placeholders: a failure below removes these rows
        out = self._forward(batch, self._cache.rows_view(slots), *joined_features(pairs))
        failed = set()
        for i, (request, _) in enumerate(pairs):
            try:  # from here on others may have had tokens: fail this request alone, never retry the batch
                self._join(request, slots.start + i, out.logits[i, -1])
            except Exception as err:
                failed.add(request.id)
                _fail_for(request, err)
        self._keep_unfinished(failed)

    def _start_chunked(self, pairs: list) -> None:
        (request, (image_embeds, video_embeds)), = pairs
        cfg = self.model.config
        bounds = chunk_bounds(request.inputs["input_ids"].reshape(-1), self.prefill_chunk,
                              cfg.vision_start_token_id, cfg.vision_end_token_id)
        # each chunk but the last is followed by a decode step, which leaves one invalid slot in this row
        first = bounds[0][1] - bounds[0][0]
        slot = self._open_rows(1, first + 1, request.prompt_len + len(bounds) + request.params.max_new_tokens).start
        row = self._new_rows(request)[0]
        row.prefill = (bounds, image_embeds, video_embeds)
        self._rows.append(row)
        assert slot == len(self._rows) - 1

    def _next_chunk(self) -> None:
        """Prefill the next chunk of the oldest request still being prefilled (one chunk per iteration)."""
        waiting = [i for i, r in enumerate(self._rows) if r is not None and r.prefill is not None]
        if not waiting:
            return
        index = min(waiting, key=lambda i: self._rows[i].request.id)
        row = self._rows[index]
        bounds, image_embeds, video_embeds = row.prefill
        cfg = self.model.config
        part = chunk_inputs(row.request.inputs, *bounds[0], start_id=cfg.vision_start_token_id,
                            end_id=cfg.vision_end_token_id, image_id=cfg.image_token_id,
                            merge=cfg.vision.spatial_merge_size ** 2, image_embeds=image_embeds,
                            video_embeds=video_embeds)
        image_embeds, video_embeds = part.pop("image_embeds"), part.pop("video_embeds")
        try:
            self._fit(self._cache.batch, self._cache.row_used(index) + part["input_ids"].shape[1])
            out = self._forward(part, self._cache.rows_view(range(index, index + 1)), image_embeds, video_embeds)
        except Exception as err:
            self._keep([i for i in range(len(self._rows)) if i != index])
            _fail_for(row.request, err)
            return
        row.prefill = (bounds[1:], row.prefill[1], row.prefill[2]) if len(bounds) > 1 else None
        if row.prefill is None:
            self._join(row.request, index, out.logits[0, -1], first=row)
            self._keep_unfinished()

    def _forward(self, inputs: dict, cache: KVCache, image_embeds, video_embeds):
        inputs = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
        self.prefill_calls += 1
        return self.model(
            inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
            image_grid_thw=inputs.get("image_grid_thw"), video_grid_thw=inputs.get("video_grid_thw"),
            second_per_grid_ts=inputs.get("second_per_grid_ts"), cache=cache,
            image_embeds=image_embeds, video_embeds=video_embeds, logits_to_keep=1,
        )

    def _join(self, request: GenRequest, slot: int, logits: torch.Tensor, first: Row | None = None) -> None:
        """The prefilled row at `slot` starts decoding; n choices copy its cache into n - 1 more slots."""
        rows = self._new_rows(request) if first is None else [first] + self._new_rows(request)[1:]
        self._rows[slot] = rows[0]
        if request.n > 1:
            self._fit(self._cache.batch + request.n - 1, 1)  # a chunked request's choices may need more rows
            for extra in self._cache.add_rows(request.n - 1):  # the n choices share the prompt: one prefill
                self._cache.copy_row(slot, extra)
            self._rows += rows[1:]
        tokens, logprobs = self._sample(rows, logits.float()[None].expand(request.n, -1))
        self._deliver(rows, tokens, logprobs, keep=False)  # rows are freed once every join is done

    def _decode_step(self) -> None:
        decoding = [i for i, r in enumerate(self._rows) if r.prefill is None]
        if not decoding:
            return
        # a row still being prefilled steps along as a padding token (an invalid slot), so every row is in one call
        tokens = torch.tensor([[r.last_token if r.prefill is None else 0] for r in self._rows],
                              dtype=torch.long, device=self.device)  # (B, 1)
        self._fit(len(self._rows), self._cache.used() + 1)  # one more slot per row; doubles when full
        mask = None
        if len(decoding) < len(self._rows):
            mask = torch.tensor([[r.prefill is None] for r in self._rows], device=self.device)
        out = self.model(tokens, attention_mask=mask, cache=self._cache, logits_to_keep=1)
        self.steps += 1
        rows = [self._rows[i] for i in decoding]
        logits = out.logits[:, -1].float()
        self._deliver(rows, *self._sample(rows, logits if mask is None else logits[decoding]))

    def token_bytes(self) -> list:
        return self.sampler.token_bytes()

    def _sample(self, rows: list[Row], logits: torch.Tensor) -> tuple[list[int], list]:
        return self.sampler.sample(rows, logits)

    def _deliver(self, rows: list[Row], tokens: list[int], logprobs: list, keep: bool = True) -> None:
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
        if keep:
            self._keep_unfinished()

    def _keep_unfinished(self, failed: frozenset | set = frozenset()) -> None:
        """Free the rows that finished (and those of `failed` request ids, or never joined)."""
        self._keep([i for i, r in enumerate(self._rows)
                    if r is not None and r.finish_reason is None and r.request.id not in failed])

