"""The FastAPI application: /v1/chat/completions (plain and SSE), /v1/models, /health.

A handler validates the request, loads its media and runs the processor in a worker thread (blocking work never runs
on the event loop), checks the limits, then hands a `GenRequest` to the scheduler and relays the scheduler's events:
as one JSON response, or as server-sent events. Every error leaves in OpenAI's shape
({"error": {"message", "type", "param", "code"}}), which the official client turns into its typed exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import hmac
import logging
import time
from typing import AsyncIterator, Optional

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from qwen25vl.errors import Qwen25VLError
from qwen25vl.generation.sampling import SamplingParams
from qwen25vl.serve import schemas as S
from qwen25vl.serve.fetch import MediaFetcher
from qwen25vl.serve.messages import LimitError, check_processed, to_processor_messages
from qwen25vl.serve.responses import Shape, collect, stream
from qwen25vl.serve.rows import Event, GenRequest
from qwen25vl.serve.scheduler import QueueFull, Scheduler
from qwen25vl.serve.settings import ServeSettings
from qwen25vl.serve.tools import tool_plan

log = logging.getLogger("qwen25vl.serve")


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


def _error(status: int, message: str, type_: str, param=None, code=None) -> JSONResponse:
    return JSONResponse(S.error_body(message, type_, param, code), status_code=status)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_req, err: ApiError):
        return _error(err.status, err.message, err.type, err.param, err.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req, err: RequestValidationError):
        problems = [f"{'.'.join(str(x) for x in e['loc'][1:]) or 'body'}: "
                    + ("not a field this server supports" if e["type"] == "extra_forbidden" else e["msg"])
                    for e in err.errors()[:5]]
        first = err.errors()[0]["loc"] if err.errors() else ()
        param = ".".join(str(x) for x in first[1:]) or None
        return _error(400, "invalid request: " + "; ".join(problems), "invalid_request_error", param)

    @app.exception_handler(Qwen25VLError)
    async def _user(_req, err: Qwen25VLError):
        code = "limit_exceeded" if isinstance(err, LimitError) else None
        return _error(400, str(err), "invalid_request_error", None, code)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req, err: StarletteHTTPException):  # unknown routes, wrong methods: OpenAI's shape, not "detail"
        type_ = "invalid_request_error" if err.status_code < 500 else "server_error"
        code = {404: "not_found", 405: "method_not_allowed", 413: "limit_exceeded"}.get(err.status_code)
        return _error(err.status_code, str(err.detail), type_, None, code)


class _Guard:
    """Outermost ASGI layer of our own: bounds the request body, and turns a bug into a 500 without losing the
    connection.

    A handler registered for `Exception` runs in Starlette's ServerErrorMiddleware, which re-raises after sending the
    500; uvicorn then closes the keep-alive connection under the client's next request. Here the error is answered and
    the exception ends, so the connection stays usable. Bodies are counted as they arrive (Content-Length can lie or
    be absent with chunked encoding): past `max_body_bytes` the request is answered 413 before the body is parsed.
    """

    def __init__(self, app, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, received = False, 0
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            message = (f"the request body has {int(declared)} bytes, over the server limit "
                       f"max_body_bytes={self.max_body_bytes}")
            response = _error(413, message, "invalid_request_error", None, "limit_exceeded")
            response.headers["connection"] = "close"  # the body is not read
            return await response(scope, receive, send)

        async def counting_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise _BodyTooLarge(f"the request body has more than {self.max_body_bytes} bytes, over the "
                                    f"server limit max_body_bytes={self.max_body_bytes}")
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge as err:
            if not started:
                await _error(413, err.detail, "invalid_request_error", None, "limit_exceeded")(scope, receive, send)
        except Exception as err:
            log.exception("unhandled error")
            if started:  # mid-response: nothing can be said any more; the connection must go
                raise
            await _error(500, f"internal error: {type(err).__name__}", "server_error")(scope, receive, send)


class _BodyTooLarge(StarletteHTTPException):
    """Raised from `receive`: an HTTPException, so FastAPI's body reader passes it on as it is (a 413)."""

    def __init__(self, message: str):
        super().__init__(413, message)


_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p")
_NEUTRAL = dict(temperature=1.0, top_p=1.0, top_k=0, min_p=0.0)


def sampling_params(req: S.ChatCompletionRequest, defaults: SamplingParams, settings: ServeSettings) -> SamplingParams:
    """The request's settings over the checkpoint's generation_config.

    A request that names none of temperature / top_p / top_k / min_p samples as the checkpoint says. A request that
    names any of them gets OpenAI's meaning for the ones it leaves out (temperature 1, no top-p, top-k or min-p
    filter): otherwise a checkpoint's `top_k=1` (Qwen's generation_config) would silently make `temperature=0.8,
    n=4` four copies of the greedy answer. repetition_penalty, max_tokens, stop and seed come from the request when
    given and from the checkpoint otherwise.
    """
    limits = settings.limits
    max_tokens = req.max_completion_tokens or req.max_tokens or limits.default_max_tokens
    if max_tokens > limits.max_tokens:
        raise ApiError(400, f"max_tokens={max_tokens} is over the server limit max_tokens={limits.max_tokens}",
                       param="max_tokens", code="limit_exceeded")
    if req.n > limits.max_n:
        raise ApiError(400, f"n={req.n} is over the server limit max_n={limits.max_n}", param="n",
                       code="limit_exceeded")
    stops = req.stop_list()
    if len(stops) > 4 or any(not s for s in stops):
        raise ApiError(400, f"stop={stops!r}: at most 4 non-empty strings", param="stop")
    given = {name: getattr(req, name) for name in _SAMPLING_FIELDS if getattr(req, name) is not None}
    base = defaults.updated(**_NEUTRAL) if given else defaults
    return base.updated(max_new_tokens=max_tokens, repetition_penalty=req.repetition_penalty, seed=req.seed,
                        stop=tuple(stops) or None, **given)


def create_app(vlm, settings: ServeSettings = ServeSettings(), *, defaults: Optional[SamplingParams] = None) -> FastAPI:
    """vlm: anything with `.model` and `.processor` (the processor's `.tokenizer` decodes), e.g. `qwen25vl.load()`."""
    processor = copy.copy(vlm.processor)  # the server's decode caps, not the caller's object changed
    processor.max_image_pixels = settings.limits.max_decoded_pixels
    processor.max_frame_pixels = settings.limits.max_frame_pixels
    tokenizer = getattr(vlm, "tokenizer", None) or processor.tokenizer
    defaults = defaults or getattr(vlm, "defaults", None) or SamplingParams(temperature=1.0)
    scheduler = Scheduler(vlm.model, tokenizer, max_batch=settings.max_batch, max_queue=settings.max_queue,
                          prefill_tokens_per_step=settings.prefill_tokens_per_step,
                          vision_cache_bytes=settings.vision_cache_bytes, max_slot_tokens=settings.max_slot_tokens)
    fetcher = MediaFetcher(settings.fetch_policy())
    config = vlm.model.config
    image_pad, video_pad = config.image_token_id, config.video_token_id

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()

    app = FastAPI(title="qwen25vl", lifespan=lifespan)
    app.state.scheduler = scheduler
    app.state.settings = settings
    _install_error_handlers(app)
    app.add_middleware(_Guard, max_body_bytes=settings.max_body_bytes)

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
            raise ApiError(401, "invalid or missing API key (send Authorization: Bearer <key>)",
                           code="invalid_api_key")

    @app.get("/health")
    async def health():
        ok = scheduler.alive
        body = {"status": "ok" if ok else "worker stopped", "running_rows": scheduler.running_rows,
                "waiting": scheduler.waiting, "decode_steps": scheduler.steps, "max_rows_seen": scheduler.max_rows_seen}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models():
        return S.ModelList(data=[S.ModelCard(id=settings.model_name)])

    limits = dataclasses.replace(settings.limits, max_token_chars=_longest_token(scheduler))
    app.state.limits = limits

    def prepare(req: S.ChatCompletionRequest, tools: Optional[list[dict]], prefix: str) -> dict:
        """Blocking: fetch, decode, process. Runs in the threadpool."""
        messages = to_processor_messages(req.messages, fetcher, limits)
        inputs = processor(messages, add_generation_prompt=True, tools=tools)
        inputs = {k: v for k, v in dict(inputs).items() if v is not None}
        if prefix:
            inputs = _append_answer_prefix(inputs, tokenizer.encode(prefix))
        check_processed(inputs, limits, config.vision.patch_size)
        return inputs

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(req: S.ChatCompletionRequest, http: Request):
        if req.model != settings.model_name:
            raise ApiError(404, f"model {req.model!r} does not exist; this server serves {settings.model_name!r}",
                           param="model", code="model_not_found")
        arrived = time.monotonic()  # the timeout counts from here: fetching and processing included
        params = sampling_params(req, defaults, settings)
        choice = req.tool_choice.function.name if isinstance(req.tool_choice, S.NamedToolChoice) else req.tool_choice
        tools, prefix, parse = tool_plan([t.model_dump(exclude_none=True) for t in req.tools or ()], choice)
        if req.top_logprobs is not None and not req.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
        try:
            inputs = await run_in_threadpool(prepare, req, tools, prefix)
        except Exception:
            await run_in_threadpool(_release_memory)  # a refused big request must not keep its decoding buffers
            raise
        after = BackgroundTask(_release_memory) if _input_bytes(inputs) > _BIG_REQUEST_BYTES else None
        json_mode = req.response_format is not None and req.response_format.type == "json_object"
        gen = GenRequest(inputs=inputs, params=params, n=req.n, json_mode=json_mode, ignore_eos=req.ignore_eos,
                         timeout=settings.request_timeout, created=arrived, loop=asyncio.get_running_loop(),
                         queue=asyncio.Queue(), presence_penalty=req.presence_penalty,
                         frequency_penalty=req.frequency_penalty,
                         top_logprobs=(req.top_logprobs or 0) if req.logprobs else None)
        try:
            scheduler.submit(gen)
        except QueueFull as err:
            raise ApiError(429, str(err), "rate_limit_exceeded", code="queue_full") from None
        ids = inputs["input_ids"][0]
        usage = {"prompt_tokens": int(ids.numel()), "prompt_tokens_details": {
            "image_tokens": int((ids == image_pad).sum()), "video_tokens": int((ids == video_pad).sum())}}
        shape = Shape(model=req.model, n=req.n, usage=usage, tools=parse, prefix=prefix, logprobs=req.logprobs,
                      single_call=req.parallel_tool_calls is False,
                      include_usage=bool(req.stream_options and req.stream_options.include_usage))
        events = _relay(gen, http, scheduler)
        first = await anext(events, None)
        if first is None:  # the client left before anything happened
            return JSONResponse({}, status_code=499)
        if first.kind == "error":
            return _error(first.status, first.text, first.reason or "server_error")
        if req.stream:
            return StreamingResponse(stream(first, events, shape), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"}, background=after)
        response = await collect(first, events, shape)
        response.background = after  # runs once the answer is sent and the request's tensors are gone
        return response

    return app


def _longest_token(scheduler: Scheduler) -> int:
    """Characters of the vocabulary's longest token (special tokens by their names): bounds chars per token."""
    table, tokenizer = scheduler.token_bytes(), scheduler.tokenizer
    known = getattr(tokenizer, "vocab_size", len(table))
    specials = [len(tokenizer.decode([i], skip_special_tokens=False)) for i, b in enumerate(table[:known]) if b is None]
    return max([len(b) for b in table if b] + specials + [1])


_BIG_REQUEST_BYTES = 64 * 2**20
_libc = None


def _release_memory() -> None:
    """Hand freed heap memory back to the OS after a big request (glibc keeps it otherwise: measured, a server that
    decoded 8 large images stayed at 6.3 GB RSS after answering). A no-op where malloc_trim does not exist."""
    global _libc
    try:
        if _libc is None:
            import ctypes
            _libc = ctypes.CDLL("libc.so.6")
        _libc.malloc_trim(0)
    except (OSError, AttributeError):
        _libc = False


def _input_bytes(inputs: dict) -> int:
    return sum(v.numel() * v.element_size() for v in inputs.values() if isinstance(v, torch.Tensor))


def _append_answer_prefix(inputs: dict, ids: list[int]) -> dict:
    """The prompt followed by the start of the answer (a forced tool call): (1, T) tensors grow by len(ids)."""
    extra = torch.tensor([ids], dtype=inputs["input_ids"].dtype)
    out = dict(inputs, input_ids=torch.cat([inputs["input_ids"], extra], dim=1))
    for key, fill in (("attention_mask", 1), ("mm_token_type_ids", 0)):
        if key in inputs:
            out[key] = torch.cat([inputs[key], torch.full_like(extra, fill, dtype=inputs[key].dtype)], dim=1)
    return out


async def _watch_disconnect(http: Request, gen: GenRequest, scheduler: Scheduler) -> None:
    """Wait for the client to leave (the body is read, so the next ASGI message is the disconnect), then cancel.

    Independent of token flow: a request whose tokens stream without pause still sees its client leave at once, and
    its rows leave the batch at the worker's next step.
    """
    while (await http.receive())["type"] != "http.disconnect":
        pass
    scheduler.cancel(gen)
    gen.queue.put_nowait(Event("gone"))


async def _relay(gen: GenRequest, http: Request, scheduler: Scheduler) -> AsyncIterator[Event]:
    """The scheduler's events for one request; a client that goes away cancels its rows."""
    finished = False
    watcher = asyncio.create_task(_watch_disconnect(http, gen, scheduler))
    try:
        while True:
            patience = gen.deadline + 10 - time.monotonic()  # past it, the worker lost the request (a bug)
            try:
                event = await asyncio.wait_for(gen.queue.get(), timeout=max(patience, 0.01))
            except asyncio.TimeoutError:
                finished = True
                yield Event("error", text="no answer from the generation worker", reason="server_error", status=500)
                return
            if event.kind == "gone":
                return
            if event.kind in ("end", "error"):
                finished = True
            yield event
            if finished:
                return
    finally:
        watcher.cancel()
        if not finished:
            scheduler.cancel(gen)
