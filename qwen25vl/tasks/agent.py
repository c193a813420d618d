"""Agent actions: `<tool_call>` JSON parsed into typed, validated actions, mapped to real screen pixels.

The model's coordinates are in the resized screenshot's pixels (the size the system prompt declares); `Action.to_screen`
scales them to the device's own pixels (the original screenshot's size, or the real screen's when the screenshot was
taken at another scale, as on HiDPI displays).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace

from qwen25vl.errors import InputError
from qwen25vl.tasks._json import decode_value_at
from qwen25vl.tasks.agent_schema import (COMPUTER_ACTIONS, COMPUTER_REQUIRED, MOBILE_ACTIONS, MOBILE_BUTTONS,
                                         MOBILE_REQUIRED, STATUSES, computer_use_function, mobile_use_function,
                                         tools_system_prompt)
from qwen25vl.tasks.coords import Frame, as_frame

TOOLS = {"computer_use": (COMPUTER_ACTIONS, COMPUTER_REQUIRED, computer_use_function),
         "mobile_use": (MOBILE_ACTIONS, MOBILE_REQUIRED, mobile_use_function)}
_ALIASES = {"computer": "computer_use", "desktop": "computer_use", "mobile": "mobile_use", "phone": "mobile_use"}
_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


class ActionError(InputError):
    """A tool call that names an unknown function or action, or lacks / mistypes an argument."""


def tool_name(kind: str) -> str:
    name = _ALIASES.get(kind, kind)
    if name not in TOOLS:
        raise InputError(f"agent kind must be computer or mobile (computer_use / mobile_use), got {kind!r}")
    return name


def agent_system_prompt(kind: str, screen_size: tuple[int, int]) -> str:
    """The system message for a `computer` or `mobile` agent whose screenshots the model sees at `screen_size`
    (width, height): pass the *resized* size, the frame the model will answer in."""
    width, height = (int(v) for v in screen_size)
    return tools_system_prompt([TOOLS[tool_name(kind)][2](width, height)])


def agent_user_prompt(instruction: str, history: list | None = None) -> str:
    """The cookbook's user turn: the task, then the steps already done (each a tool-call dict or Action)."""
    text = f"The user query: {instruction.strip()}"
    if history:
        steps = " ".join(f"Step {i}: {json.dumps(h.to_call() if isinstance(h, Action) else h, ensure_ascii=False)};"
                         for i, h in enumerate(history, 1))
        text += f"\nTask progress (You have done the following operation on the current device): {steps}"
    return text


@dataclass(frozen=True)
class Action:
    """One validated action. Coordinates are (x, y) in the frame named by `frame` ("resized" as parsed)."""

    tool: str
    action: str
    coordinate: tuple[float, float] | None = None
    coordinate2: tuple[float, float] | None = None
    keys: tuple[str, ...] | None = None
    text: str | None = None
    pixels: float | None = None
    time: float | None = None
    button: str | None = None
    status: str | None = None
    frame: str = "resized"

    def to_call(self) -> dict:
        """The tool call as the model writes it (for the history of the next turn)."""
        args = {"action": self.action}
        for key, value in asdict(self).items():
            if key in ("tool", "action", "frame") or value is None:
                continue
            args[key] = list(value) if isinstance(value, tuple) else value
        return {"name": self.tool, "arguments": args}

    def to_screen(self, frame: Frame) -> "Action":
        """Coordinates mapped from the resized screenshot to the screen (`frame.original_size`), rounded to pixels."""
        frame = as_frame(frame)  # a Frame or the processor's ResizeInfo
        if self.frame != "resized":
            raise InputError(f"action is already in the {self.frame!r} frame")

        def scale(p):
            if p is None:
                return None
            x, y = frame.to_original(*p)
            w, h = frame.original_size
            return min(max(round(x), 0), w - 1), min(max(round(y), 0), h - 1)

        return replace(self, coordinate=scale(self.coordinate), coordinate2=scale(self.coordinate2), frame="screen")


def history_in_model_frame(item, frame: Frame):
    """A history step as the model wrote it: screen-frame actions go back to the model's (resized) pixels."""
    if isinstance(item, Action) and item.frame == "screen":
        def back(p):
            return None if p is None else tuple(round(v) for v in frame.to_resized(*p))

        return replace(item, coordinate=back(item.coordinate), coordinate2=back(item.coordinate2), frame="resized")
    return item


def _point(value, name: str, action: str):
    if isinstance(value, str):
        value = re.findall(r"-?\d+(?:\.\d+)?", value)
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ActionError(f"action {action!r}: {name} must be [x, y], got {value!r}")
    try:
        return float(value[0]), float(value[1])
    except (TypeError, ValueError):
        raise ActionError(f"action {action!r}: {name} must be two numbers, got {value!r}") from None


def _number(value, name: str, action: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ActionError(f"action {action!r}: {name} must be a number, got {value!r}") from None


def action_from_call(call: dict, *, tool: str | None = None) -> Action:
    """Validate one `{"name": ..., "arguments": {...}}` call: known function and action, required arguments present
    and of the right type. Raises `ActionError` naming the offending item."""
    if not isinstance(call, dict):
        raise ActionError(f"tool call must be a JSON object, got {call!r}")
    name = call.get("name")
    if name not in TOOLS or (tool is not None and name != tool):
        expected = tool or " or ".join(TOOLS)
        raise ActionError(f"tool call names function {name!r}; expected {expected}")
    args = call.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            raise ActionError(f"{name}: arguments are not JSON: {args[:80]!r}") from None
    if not isinstance(args, dict):
        raise ActionError(f"{name}: arguments must be an object, got {args!r}")
    actions, required, _ = TOOLS[name]
    action = args.get("action")
    if action not in actions:
        raise ActionError(f"{name}: unknown action {action!r}; known: {', '.join(actions)}")
    missing = [a for a in required.get(action, ()) if args.get(a) is None]
    if missing:
        raise ActionError(f"{name}: action {action!r} needs argument(s) {', '.join(missing)}; got {sorted(args)}")
    fields: dict = {"tool": name, "action": action}
    for key in ("coordinate", "coordinate2"):
        if args.get(key) is not None:
            fields[key] = _point(args[key], key, action)
    for key in ("pixels", "time"):
        if args.get(key) is not None:
            fields[key] = _number(args[key], key, action)
    if args.get("keys") is not None:
        keys = args["keys"]
        fields["keys"] = (keys,) if isinstance(keys, str) else tuple(str(k) for k in keys)
    if args.get("text") is not None:
        fields["text"] = str(args["text"])
    if args.get("button") is not None:
        if args["button"] not in MOBILE_BUTTONS:
            raise ActionError(f"{name}: button must be one of {', '.join(MOBILE_BUTTONS)}, got {args['button']!r}")
        fields["button"] = args["button"]
    if args.get("status") is not None:
        if args["status"] not in STATUSES:
            raise ActionError(f"{name}: status must be success or failure, got {args['status']!r}")
        fields["status"] = args["status"]
    return Action(**fields)


def parse_tool_calls(text: str) -> list[dict]:
    """The JSON of every `<tool_call>` block (a cut-off last block included when its JSON is complete); a block
    whose content is not JSON raises `ActionError` quoting it. No block: an empty list."""
    if not isinstance(text, str):
        raise InputError(f"model answer must be a string, got {type(text).__name__}")
    calls = []
    for match in _TOOL_CALL.finditer(text):
        body = match.group(1).strip()
        start = body.find("{")
        decoded = decode_value_at(body, start) if start >= 0 else None
        if decoded is None or not isinstance(decoded[0], dict):
            raise ActionError(f"<tool_call> content is not a JSON object: {body[:120]!r}")
        calls.append(decoded[0])
    return calls


def parse_actions(text: str, *, tool: str | None = None) -> list[Action]:
    """Every tool call in the answer as a validated `Action` (in the resized frame)."""
    tool = tool_name(tool) if tool else None
    return [action_from_call(call, tool=tool) for call in parse_tool_calls(text)]
