"""The scheduler's events for one request -> an OpenAI chat completion, whole or as server-sent events.

Both shapes carry the same things: each choice's text, finish reason, logprob entries (when asked), and tool calls
(when the request offered tools: `<tool_call>` blocks become OpenAI `tool_calls`, finish reason "tool_calls").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import AsyncIterator, Optional

from fastapi.responses import JSONResponse

from qwen25vl.serve import schemas as S
from qwen25vl.serve.rows import Event
from qwen25vl.serve.tools import ToolStream, call_id, split_tool_calls


@dataclass
class Shape:
    """What the answer looks like beyond plain text."""

    model: str
    n: int
    usage: dict
    tools: bool = False  # parse tool calls
    prefix: str = ""  # text the prompt already holds of the answer (a forced tool call)
    single_call: bool = False  # parallel_tool_calls=False: the first call only
    logprobs: bool = False
    include_usage: bool = False


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    reason: Optional[str] = None
    logprobs: list[dict] = field(default_factory=list)


def _error(status: int, message: str, type_: str) -> JSONResponse:
    return JSONResponse(S.error_body(message, type_), status_code=status)


def usage(shape: Shape, completion_tokens: int) -> S.Usage:
    prompt = shape.usage["prompt_tokens"]
    return S.Usage(prompt_tokens=prompt, completion_tokens=completion_tokens, total_tokens=prompt + completion_tokens,
                   prompt_tokens_details=shape.usage["prompt_tokens_details"])


def _calls(shape: Shape, calls: list[dict]) -> list[dict]:
    return calls[:1] if shape.single_call else calls


def _reason(reason: Optional[str], calls: list) -> Optional[str]:
    return "tool_calls" if calls and reason == "stop" else reason


def _message(shape: Shape, text: str) -> tuple[S.AssistantMessage, list]:
    if not shape.tools:
        return S.AssistantMessage(content=text), []
    content, calls = split_tool_calls(shape.prefix + text)
    calls = _calls(shape, calls)
    if not calls:
        return S.AssistantMessage(content=shape.prefix + text), []
    tool_calls = [S.OutToolCall(id=call_id(), function=S.FunctionCall(**c)) for c in calls]
    return S.AssistantMessage(content=content, tool_calls=tool_calls), calls


async def collect(first: Event, events: AsyncIterator[Event], shape: Shape):
    choices = [_Choice() for _ in range(shape.n)]
    event: Optional[Event] = first
    completion_tokens = 0
    while event is not None:
        if event.kind == "error":
            return _error(event.status, event.text, event.reason or "server_error")
        if event.kind in ("delta", "finish"):
            choice = choices[event.index]
            choice.logprobs.extend(event.logprobs or ())
            if event.kind == "delta":
                choice.text.append(event.text)
            else:
                choice.reason = event.reason
        elif event.kind == "end":
            completion_tokens = event.usage["completion_tokens"]
            break
        event = await anext(events, None)
    else:
        return JSONResponse({}, status_code=499)  # client gone
    out = []
    for i, choice in enumerate(choices):
        message, calls = _message(shape, "".join(choice.text))
        logprobs = S.ChoiceLogprobs(content=choice.logprobs) if shape.logprobs else None
        out.append(S.Choice(index=i, message=message, finish_reason=_reason(choice.reason, calls), logprobs=logprobs))
    body = S.ChatCompletion(id=S.completion_id(), model=shape.model, choices=out,
                            usage=usage(shape, completion_tokens))
    return JSONResponse(body.model_dump(exclude_none=True))


def _sse(payload) -> str:
    body = payload if isinstance(payload, str) else payload.model_dump_json(exclude_none=True)
    return f"data: {body}\n\n"


async def stream(first: Event, events: AsyncIterator[Event], shape: Shape) -> AsyncIterator[str]:
    cid = S.completion_id()

    def chunk(index: int, delta: S.Delta, finish: Optional[str] = None, logprobs=None) -> str:
        lp = S.ChoiceLogprobs(content=logprobs) if shape.logprobs and logprobs else None
        choice = S.ChunkChoice(index=index, delta=delta, finish_reason=finish, logprobs=lp)
        return _sse(S.ChatCompletionChunk(id=cid, model=shape.model, choices=[choice]))

    tool_streams = [ToolStream() for _ in range(shape.n)] if shape.tools else None
    if tool_streams and shape.prefix:
        for ts in tool_streams:
            ts.push(shape.prefix)
    for i in range(shape.n):
        yield chunk(i, S.Delta(role="assistant", content=""))
    event: Optional[Event] = first
    try:
        while event is not None:
            if event.kind == "error":
                yield _sse(json.dumps(S.error_body(event.text, event.reason or "server_error")))
                return
            if event.kind == "delta":
                text = tool_streams[event.index].push(event.text) if tool_streams else event.text
                if text or event.logprobs:
                    yield chunk(event.index, S.Delta(content=text), None, event.logprobs)
            elif event.kind == "finish":
                calls = []
                if tool_streams:
                    rest, calls = tool_streams[event.index].finish()
                    calls = _calls(shape, calls)
                    if rest:
                        yield chunk(event.index, S.Delta(content=rest))
                    if calls:
                        deltas = [S.DeltaToolCall(index=k, id=call_id(), type="function",
                                                  function=S.DeltaFunction(**c)) for k, c in enumerate(calls)]
                        yield chunk(event.index, S.Delta(tool_calls=deltas))
                yield chunk(event.index, S.Delta(), _reason(event.reason, calls), event.logprobs)
            elif event.kind == "end":
                if shape.include_usage:
                    tail = S.ChatCompletionChunk(id=cid, model=shape.model, choices=[],
                                                 usage=usage(shape, event.usage["completion_tokens"]))
                    yield _sse(tail)
                yield _sse("[DONE]")
                return
            event = await anext(events, None)
    finally:
        await events.aclose()  # runs the relay's cleanup: an abandoned stream cancels its rows
