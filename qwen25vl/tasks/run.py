"""Thin wrappers that ask a loaded model (`qwen25vl.load(...)`, anything with `.chat(messages, **sampling) -> str`)
to do a task, then parse the answer and map it back to the caller's pixels.

Each wrapper puts explicit `min_pixels` / `max_pixels` on the image part, and computes the frame the model will see
from the same limits, so the mapping cannot disagree with the processor's resize (trap #1 and #2 of SPEC section 9).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qwen25vl.errors import InputError
from qwen25vl.tasks.agent import (Action, history_in_model_frame, agent_system_prompt, agent_user_prompt, parse_actions,
                                  tool_name)
from qwen25vl.tasks.coords import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, Frame, as_frame
from qwen25vl.tasks.documents import DOCUMENT_PROMPT, DOCUMENT_SYSTEM_PROMPT, Document, parse_qwenvl_html
from qwen25vl.tasks.grounding import GroundingResult, grounding_prompt, parse_grounding
from qwen25vl.tasks.video_time import EventSpan, parse_event_spans, video_grounding_prompt

# Near-greedy decoding, as the instruct checkpoints' generation_config.json; long enough for a page of HTML.
DEFAULT_SAMPLING = {"temperature": 0.0, "max_new_tokens": 1024}


def _limits(vlm, min_pixels, max_pixels) -> tuple[int, int]:
    """Explicit limits win; else the model's processor's own image limits when it exposes them; else the official."""
    processor = getattr(vlm, "processor", None)
    sources = [processor, getattr(processor, "image_config", None), getattr(processor, "image_processor", None)]
    for src in sources:
        if src is None:
            continue
        min_pixels = min_pixels or getattr(src, "min_pixels", None)
        max_pixels = max_pixels or getattr(src, "max_pixels", None)
    lo, hi = int(min_pixels or DEFAULT_MIN_PIXELS), int(max_pixels or DEFAULT_MAX_PIXELS)
    if lo <= 0 or hi < lo:
        raise InputError(f"pixel limits must satisfy 0 < min_pixels <= max_pixels, got {lo}, {hi}")
    return lo, hi


def _image_turn(vlm, image, text: str, min_pixels, max_pixels, text_first: bool = False):
    """(user message with the image and text, the image's Frame, the loaded PIL image). `text_first` puts the text
    before the image, as the official spatial-understanding (grounding) cookbook does."""
    from qwen25vl.processing.image import load_image  # lazy: the pure task functions need no processor

    pil = load_image(image)
    lo, hi = _limits(vlm, min_pixels, max_pixels)
    # the processor's resize step (patch 14 x merge 2 = 28 for every released checkpoint)
    config = getattr(getattr(vlm, "processor", None), "image_config", None)
    factor = int(getattr(config, "factor", 28))
    frame = as_frame(original_size=pil.size, min_pixels=lo, max_pixels=hi, factor=factor)
    content = [{"type": "image", "image": pil, "min_pixels": lo, "max_pixels": hi}, {"type": "text", "text": text}]
    return {"role": "user", "content": content[::-1] if text_first else content}, frame, pil


def _chat(vlm, messages, sampling, progress=None) -> str:
    """The answer's text. With `progress` (a callable), the answer is streamed and each text delta is passed to it
    as it arrives (a model whose chat() returns a whole string passes it once)."""
    params = {**DEFAULT_SAMPLING, **sampling}
    if progress is None:
        answer = vlm.chat(messages, **params)
        return answer if isinstance(answer, str) else "".join(answer)  # a streaming iterator
    answer = vlm.chat(messages, stream=True, **params)
    if isinstance(answer, str):
        progress(answer)
        return answer
    pieces = []
    for delta in answer:
        pieces.append(delta)
        progress(delta)
    return "".join(pieces)


def ground(vlm, image, query: str, *, mode: str = "detect", prompt: str | None = None, min_pixels: int | None = None,
           max_pixels: int | None = None, progress=None, **sampling) -> GroundingResult:
    """Find `query` in `image`; boxes and points come back in the original image's pixels (`result.frame_map` holds
    the resized <-> original map). `progress`, on every wrapper: a callable given each text delta as the answer
    streams in."""
    message, frame, _ = _image_turn(vlm, image, prompt or grounding_prompt(query, mode), min_pixels, max_pixels,
                                    text_first=True)  # the cookbook's order: the query, then the image
    return parse_grounding(_chat(vlm, [message], sampling, progress)).to_original(frame)


def parse_document(vlm, image, *, min_pixels: int | None = None, max_pixels: int | None = None, progress=None,
                   **sampling) -> Document:
    """Parse a page image into ordered layout blocks (boxes in the original image's pixels)."""
    message, frame, _ = _image_turn(vlm, image, DOCUMENT_PROMPT, min_pixels, max_pixels)
    messages = [{"role": "system", "content": DOCUMENT_SYSTEM_PROMPT}, message]
    sampling.setdefault("max_new_tokens", 4096)
    return parse_qwenvl_html(_chat(vlm, messages, sampling, progress)).to_original(frame)


@dataclass
class VideoAnswer:
    """Spans found for an event, in seconds of the source video; the raw answer for inspection."""

    spans: list[EventSpan]
    raw: str = ""

    def summary(self) -> str:
        if not self.spans:
            return "no time span parsed from the answer"
        return "; ".join(f"{s.start:.1f} - {s.end:.1f} s" + (f": {s.description}" if s.description else "")
                         for s in self.spans)


def find_in_video(vlm, video, event: str, *, fps: float = 2.0, start: float | None = None, end: float | None = None,
                  max_pixels: int | None = None, total_pixels: int | None = None, progress=None,
                  **sampling) -> VideoAnswer:
    """When does `event` happen in `video`? Times are seconds from the video's start (a `start=` cut is added back,
    since the model counts from the first frame it saw)."""
    part: dict = {"type": "video", "video": video, "fps": float(fps)}
    for key, value in (("video_start", start), ("video_end", end), ("max_pixels", max_pixels),
                       ("total_pixels", total_pixels)):
        if value is not None:
            part[key] = value
    message = {"role": "user", "content": [part, {"type": "text", "text": video_grounding_prompt(event)}]}
    raw = _chat(vlm, [message], sampling, progress)
    return VideoAnswer(parse_event_spans(raw, offset=float(start or 0.0)), raw)


@dataclass
class AgentStep:
    """The actions the model chose, with coordinates in screen pixels; `frame_map` maps resized <-> screen."""

    actions: list[Action]
    raw: str = ""
    frame_map: Frame | None = field(default=None, repr=False)

    def summary(self) -> str:
        if not self.actions:
            return "no action parsed from the answer"
        return "; ".join(f"{a.action}" + (f" at {a.coordinate}" if a.coordinate else "") for a in self.actions)


def act(vlm, screenshot, instruction: str, *, kind: str = "computer", history: list | None = None,
        screen_size: tuple[int, int] | None = None, min_pixels: int | None = None, max_pixels: int | None = None,
        progress=None, **sampling) -> AgentStep:
    """One agent step on `screenshot`: actions with coordinates on the real screen (`screen_size`, default the
    screenshot's own size). `history`: earlier steps (the `Action`s returned before, or tool-call dicts in the
    model's pixels); the user turn lists them as the cookbook does, then the screenshot."""
    tool = tool_name(kind)
    message, frame, _ = _image_turn(vlm, screenshot, "", min_pixels, max_pixels)
    screen = Frame(tuple(screen_size), frame.resized_size) if screen_size else frame
    steps = [history_in_model_frame(h, screen) for h in history or ()]  # earlier steps in the model's own pixels
    message["content"] = [{"type": "text", "text": agent_user_prompt(instruction, steps)}, message["content"][0]]
    system = {"role": "system", "content": agent_system_prompt(tool, frame.resized_size)}
    raw = _chat(vlm, [system, message], sampling, progress)
    return AgentStep([a.to_screen(screen) for a in parse_actions(raw, tool=tool)], raw, screen)
