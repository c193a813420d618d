"""Request and response bodies of the OpenAI chat-completions API (the subset we serve, plus our vision extensions).

Requests are validated by pydantic; a malformed body becomes a 400 in OpenAI's error shape (see app.py). A request
field we do not know or do not implement (`logit_bias`, `audio`, a typo) is a 400 naming it, as OpenAI answers
unknown arguments: nothing is silently ignored, except fields that do not change the answer (`user`, `store`,
`metadata`, `service_tier`). Content parts stay lenient: the per-item vision extensions (`min_pixels`, `max_pixels`,
`fps`, ...) live beside OpenAI's own fields there.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class VisionOptions(_Lenient):
    """Per-item extensions, accepted on the content part or inside its image_url / video_url object."""

    min_pixels: Optional[int] = Field(default=None, gt=0)
    max_pixels: Optional[int] = Field(default=None, gt=0)
    total_pixels: Optional[int] = Field(default=None, gt=0)  # videos: the pixel budget over all frames
    fps: Optional[float] = Field(default=None, gt=0)  # videos: sampling rate (frame lists: the rate they were taken at)
    min_frames: Optional[int] = Field(default=None, gt=0)
    max_frames: Optional[int] = Field(default=None, gt=0)
    video_start: Optional[float] = Field(default=None, ge=0)
    video_end: Optional[float] = Field(default=None, gt=0)


class ImageURL(VisionOptions):
    url: str
    detail: Optional[str] = None  # OpenAI's; ignored (pixel limits say what we mean)


class VideoURL(VisionOptions):
    url: Union[str, list[str]]  # a video file, or a list of frames (each an image URL / data URL / path)


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ImageURLPart(VisionOptions):
    type: Literal["image_url"]
    image_url: Union[ImageURL, str]


class ImagePart(VisionOptions):
    """Qwen's own spelling: {"type": "image", "image": "<url or path>"}."""

    type: Literal["image"]
    image: str


class VideoURLPart(VisionOptions):
    type: Literal["video_url"]
    video_url: Union[VideoURL, str, list[str]]


class VideoPart(VisionOptions):
    """Qwen's own spelling: {"type": "video", "video": "<url>" or ["<frame url>", ...]}."""

    type: Literal["video"]
    video: Union[str, list[str]]


ContentPart = Union[TextPart, ImageURLPart, ImagePart, VideoURLPart, VideoPart]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FunctionCall(_Lenient):
    name: str
    arguments: str = "{}"  # a JSON string, as OpenAI sends it


class ToolCall(_Lenient):
    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Lenient):
    role: Literal["system", "user", "assistant", "tool"]
    content: Union[str, list[ContentPart], None] = None
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None  # an assistant's earlier calls
    tool_call_id: Optional[str] = None  # a tool message: the call it answers


class FunctionDef(_Lenient):
    name: str = Field(min_length=1)
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Lenient):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object"] = "text"


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[int] = Field(default=None, ge=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)  # the newer spelling of max_tokens
    temperature: Optional[float] = Field(default=None, ge=0, le=2)
    top_p: Optional[float] = Field(default=None, gt=0, le=1)
    top_k: Optional[int] = Field(default=None, ge=0)  # extension (vLLM's)
    repetition_penalty: Optional[float] = Field(default=None, gt=0)  # extension (vLLM's)
    ignore_eos: bool = False  # extension (vLLM's): generate max_tokens tokens (benchmarks)
    n: int = Field(default=1, ge=1)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    response_format: Optional[ResponseFormat] = None
    tools: Optional[list[Tool]] = Field(default=None, max_length=128)
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: Optional[bool] = None  # the model may call several tools either way; False keeps the first
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    min_p: Optional[float] = Field(default=None, ge=0, le=1)  # extension (vLLM's)
    # accepted and without effect on the answer (OpenAI's bookkeeping fields)
    user: Optional[str] = None
    store: Optional[bool] = None
    metadata: Optional[dict[str, Any]] = None
    service_tier: Optional[str] = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


# ---- responses ---------------------------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int  # includes the vision placeholder tokens: they occupy the context like any other token
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: Optional[dict[str, int]] = None  # {"image_tokens": ..., "video_tokens": ...}


class OutToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: Optional[str] = None
    tool_calls: Optional[list[OutToolCall]] = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: Optional[list[int]] = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class ChoiceLogprobs(BaseModel):
    content: Optional[list[TokenLogprob]] = None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Optional[str]
    logprobs: Optional[ChoiceLogprobs] = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: Optional[str] = None


class DeltaFunction(BaseModel):
    name: Optional[str] = None
    arguments: Optional[str] = None


class DeltaToolCall(BaseModel):
    index: int
    id: Optional[str] = None
    type: Optional[Literal["function"]] = None
    function: DeltaFunction


class Delta(BaseModel):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None
    tool_calls: Optional[list[DeltaToolCall]] = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: Optional[str] = None
    logprobs: Optional[ChoiceLogprobs] = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChunkChoice]
    usage: Optional[Usage] = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "qwen25vl"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def error_body(message: str, type_: str, param: Optional[str] = None, code: Optional[str] = None) -> dict[str, Any]:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}} (the official client reads it)."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
