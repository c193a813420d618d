"""The Qwen2.5-VL chat template, in Python: messages -> text, token ids and the training loss mask, together.

Layout (the official `chat_template.json` of the Qwen2.5-VL instruct checkpoints, kept verbatim below as
`OFFICIAL_CHAT_TEMPLATE` so written checkpoints also work in transformers):
  * `<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n` when the first message is not a system one;
  * each message `<|im_start|>{role}\\n{content}<|im_end|>\\n`; list content renders part by part with no separator:
    text verbatim, an image as `<|vision_start|><|image_pad|><|vision_end|>`, a video with `<|video_pad|>`
    (optionally prefixed `Picture n: ` / `Video n: `);
  * `<|im_start|>assistant\\n` as generation prompt.
The official template cannot render OpenAI function calling (it drops `tool_calls` and fails on `content: null`).
When a call passes `tools` or an assistant message carries `tool_calls`, the conversation follows the official
Qwen2.5 text template's function-calling layout instead (as Qwen-Agent, used by the Qwen2.5-VL agent cookbooks,
formats it): a `# Tools` block appended to the system message, `<tool_call>\\n{"name": ..., "arguments": ...}\\n
</tool_call>` after the assistant's content, and `tool` results as a user turn of `<tool_response>` blocks.
Otherwise a `tool` message renders as the official template writes it (`<|im_start|>tool\\n...`). OpenAI's
`video_url` part (dropped by the official template) is a video here.

Loss mask: the official fine-tuning code labels each assistant turn except its `<|im_start|>assistant\\n` header,
i.e. the answer, its `<|im_end|>` and the newline after it. The renderer knows where each answer starts and ends
while it writes the text, and marks the tokens that start inside those character spans: no string searching.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from qwen25vl.errors import InputError

OFFICIAL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
IMAGE_BLOCK = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO_BLOCK = "<|vision_start|><|video_pad|><|vision_end|>"
_TOOLS_HEADER = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>"
)


@dataclass
class RenderedChat:
    """`text` holds one pad per vision item (as the template writes it); `input_ids` has each pad expanded to its
    item's token count, and `loss_mask[i]` is 1 where token i is trained on (assistant answers)."""

    text: str
    input_ids: list[int]
    loss_mask: list[int]
    num_images: int = 0
    num_videos: int = 0
    answer_spans: list[tuple[int, int]] = field(default_factory=list)  # character spans of `text`


def part_kind(part, where: str) -> str:
    """'image', 'video' or 'text' for one content part, by the official template's rules (+ OpenAI video_url)."""
    if isinstance(part, str):
        return "text"
    if not isinstance(part, dict):
        raise InputError(f"{where}: a content part must be a dict or str, got {type(part).__name__}")
    kind = part.get("type")
    if kind == "image" or "image" in part or "image_url" in part:
        return "image"
    if kind == "video" or "video" in part or kind == "video_url" or "video_url" in part:
        return "video"
    if "text" in part:
        return "text"
    raise InputError(f"{where}: unsupported content part type {kind!r} (keys {sorted(part)})")


def media_parts(messages) -> list[tuple[str, dict]]:
    """The conversation's ('image' | 'video', part) items in the order their pads appear in the rendered text."""
    found = []
    for m, message in enumerate(_check_messages(messages)):
        content = message.get("content")
        if isinstance(content, list):
            for p, part in enumerate(content):
                kind = part_kind(part, f"messages[{m}].content[{p}]")
                if kind != "text":
                    found.append((kind, part))
    return found


class _Writer:
    """Collects the rendered text and the character spans that belong to assistant answers."""

    def __init__(self, add_vision_id: bool):
        self.chunks: list[str] = []
        self.length = 0
        self.spans: list[tuple[int, int]] = []
        self.images = 0
        self.videos = 0
        self.add_vision_id = add_vision_id

    def write(self, text: str) -> None:
        self.chunks.append(text)
        self.length += len(text)

    def content(self, content, where: str) -> None:
        if isinstance(content, str):
            self.write(content)
            return
        for p, part in enumerate(content):
            kind = part_kind(part, f"{where}[{p}]")
            if kind == "text":
                self.write(part if isinstance(part, str) else _text_of(part, f"{where}[{p}]"))
            elif kind == "image":
                self.images += 1
                self.write((f"Picture {self.images}: " if self.add_vision_id else "") + IMAGE_BLOCK)
            else:
                self.videos += 1
                self.write((f"Video {self.videos}: " if self.add_vision_id else "") + VIDEO_BLOCK)


def render_text(
    messages, *, add_generation_prompt: bool = False, tools=None, add_vision_id: bool = False
) -> tuple[str, list[tuple[int, int]], int, int]:
    """The template's text, the answer spans (for the loss mask) and the image and video counts."""
    messages = _check_messages(messages)
    w = _Writer(add_vision_id)
    first = messages[0] if messages else None
    start = 0
    if tools:
        system = _system_text(first["content"], "messages[0].content") if first and first["role"] == "system" else None
        w.write("<|im_start|>system\n" + (DEFAULT_SYSTEM_PROMPT if system is None else system) + _TOOLS_HEADER)
        for tool in tools:
            w.write("\n" + _tojson(tool))
        w.write(_TOOLS_FOOTER + "<|im_end|>\n")
        start = 1 if system is not None else 0
    elif first is None or first["role"] != "system":
        w.write(f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n")
    function_calling = bool(tools) or any(m["role"] == "assistant" and m.get("tool_calls") for m in messages)
    for m in range(start, len(messages)):
        message, where = messages[m], f"messages[{m}]"
        role, content = message["role"], message.get("content")
        if role == "tool" and function_calling:
            if m == 0 or messages[m - 1]["role"] != "tool":
                w.write("<|im_start|>user")
            w.write("\n<tool_response>\n")
            w.content("" if content is None else content, f"{where}.content")
            w.write("\n</tool_response>")
            if m == len(messages) - 1 or messages[m + 1]["role"] != "tool":
                w.write("<|im_end|>\n")
            continue
        calls = message.get("tool_calls") if role == "assistant" else None
        if calls:
            # The Qwen2.5 layout: the content (if any) and each call start on a new line after the role.
            w.write(f"<|im_start|>{role}")
            answer_start = w.length + 1  # the header's newline is not trained on, as in the plain layout
            if content:
                w.write("\n")
                w.content(content, f"{where}.content")
            for c, call in enumerate(calls):
                name, arguments = _tool_call(call, f"{where}.tool_calls[{c}]")
                w.write('\n<tool_call>\n{"name": "' + name + '", "arguments": ' + _tojson(arguments) + "}\n</tool_call>")
        elif content is None:
            raise InputError(f"{where}: content is missing (role {role!r})")
        else:
            w.write(f"<|im_start|>{role}\n")
            answer_start = w.length
            w.content(content, f"{where}.content")
        w.write("<|im_end|>\n")
        if role == "assistant":
            w.spans.append((answer_start, w.length))
    if add_generation_prompt:
        w.write("<|im_start|>assistant\n")
    return "".join(w.chunks), w.spans, w.images, w.videos


def render(
    messages,
    *,
    tokenizer,
    add_generation_prompt: bool = False,
    tools=None,
    add_vision_id: bool = False,
    image_token_counts=None,
    video_token_counts=None,
) -> RenderedChat:
    """Render and tokenize a conversation.

    `image_token_counts[i]` / `video_token_counts[i]` are the number of pad tokens of the i-th image / video
    (grid_t * grid_h * grid_w / 4); without them each pad stays a single token.
    """
    text, spans, n_images, n_videos = render_text(
        messages, add_generation_prompt=add_generation_prompt, tools=tools, add_vision_id=add_vision_id
    )
    ids, mask = _encode_with_mask(tokenizer, text, spans)
    special = tokenizer.special
    counts = {special.image_pad: (image_token_counts, n_images, "image"),
              special.video_pad: (video_token_counts, n_videos, "video")}  # fmt: skip
    for pad_id, (given, expected, kind) in counts.items():
        found = ids.count(pad_id)
        if found != expected:
            raise InputError(
                f"the conversation has {expected} {kind} part(s) but its text holds {found} <|{kind}_pad|> tokens "
                f"(a message text contains the pad token's surface form)"
            )
        if given is not None and len(given) != expected:
            raise InputError(f"{len(given)} {kind} token count(s) given for {expected} {kind} part(s)")
    if image_token_counts is not None or video_token_counts is not None:
        ids, mask = _expand_pads(ids, mask, special.image_pad, image_token_counts, special.video_pad, video_token_counts)
    return RenderedChat(text, ids, mask, n_images, n_videos, spans)


def _encode_with_mask(tokenizer, text: str, spans) -> tuple[list[int], list[int]]:
    """Ids of `text` and the mask of tokens inside `spans`.

    An answer starts after the header's newline and ends before the next `<|im_start|>`: unless it starts with
    whitespace both are safe cuts, so the answers are encoded as segments of their own (no offsets needed). An
    answer starting with whitespace may share a token with the header's newline; then the tokens' character offsets
    decide (a token starting inside a span is trained on).
    """
    cuts = [p for span in spans for p in span]
    if all(tokenizer.is_safe_cut(text, p) for p in cuts):
        segments = tokenizer.encode_segments(text, cuts)
        ids: list[int] = []
        mask: list[int] = []
        inside = {2 * i + 1 for i in range(len(spans))}  # segment k lies between cuts k-1 and k
        for k, segment in enumerate(segments):
            ids.extend(segment)
            mask.extend([1 if k in inside else 0] * len(segment))
        return ids, mask
    ids, offsets = tokenizer.encode_with_offsets(text)
    return ids, _mask_from_spans(offsets, spans)


def _mask_from_spans(offsets, spans) -> list[int]:
    mask = [0] * len(offsets)
    if not spans:
        return mask
    s, n = 0, len(spans)
    for i, (start, _end) in enumerate(offsets):
        while s < n and start >= spans[s][1]:
            s += 1
        if s == n:
            break
        if start >= spans[s][0]:
            mask[i] = 1
    return mask


def _expand_pads(ids, mask, image_pad, image_counts, video_pad, video_counts):
    out_ids: list[int] = []
    out_mask: list[int] = []
    image_i = video_i = 0
    for tid, m in zip(ids, mask):
        if tid == image_pad and image_counts is not None:
            n = int(image_counts[image_i])
            image_i += 1
        elif tid == video_pad and video_counts is not None:
            n = int(video_counts[video_i])
            video_i += 1
        else:
            out_ids.append(tid)
            out_mask.append(m)
            continue
        if n < 1:
            raise InputError(f"a vision item must have at least one token, got {n}")
        out_ids.extend([tid] * n)
        out_mask.extend([0] * n)  # vision features are inputs, never targets
    return out_ids, out_mask


def _check_messages(messages) -> list[dict]:
    if isinstance(messages, dict) or not isinstance(messages, (list, tuple)):
        raise InputError(f"messages must be a list of dicts, got {type(messages).__name__}")
    for m, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InputError(f"messages[{m}] must be a dict, got {type(message).__name__}")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise InputError(f"messages[{m}].role must be a non-empty string, got {role!r}")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise InputError(f"messages[{m}].content must be a string or a list of parts, got {type(content).__name__}")
    return list(messages)


def _text_of(part: dict, where: str) -> str:
    text = part["text"]
    if not isinstance(text, str):
        raise InputError(f"{where}.text must be a string, got {type(text).__name__}")
    return text


def _system_text(content, where: str) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for i, part in enumerate(content or []):
        if part_kind(part, f"{where}[{i}]") != "text":
            raise InputError(f"{where}[{i}]: a system message with tools can hold text only")
        texts.append(part if isinstance(part, str) else _text_of(part, f"{where}[{i}]"))
    return "".join(texts)


def _tool_call(call, where: str) -> tuple[str, object]:
    if not isinstance(call, dict):
        raise InputError(f"{where} must be a dict, got {type(call).__name__}")
    fn = call.get("function", call)
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        raise InputError(f"{where}: the function name is missing")
    arguments = fn.get("arguments", {})
    if isinstance(arguments, str):
        # OpenAI sends arguments as a JSON string; the model was trained on the object itself.
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as err:
            raise InputError(f"{where}.arguments is not valid JSON: {arguments[:80]!r}") from err
    return name, arguments


def _tojson(value) -> str:
    # transformers' `tojson` filter: json.dumps without ASCII escaping and with the default separators.
    return json.dumps(value, ensure_ascii=False)
