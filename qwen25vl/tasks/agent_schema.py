"""The computer-use and mobile-use function schemas of the official Qwen2.5-VL cookbooks, and the system prompt that
declares them.

The cookbooks (`cookbooks/utils/agent_function_call.py`, rendered by qwen-agent's Nous-style function-call prompt in
`mobile_agent.ipynb` / `computer_use.ipynb`) put the tool in the system message as Qwen2.5 tool declarations:
`<tools>` + one JSON line per function (`name_for_human`, `name`, `description`, `parameters`, `args_format`) +
`</tools>`, then the `<tool_call>` instructions. The description states the screen size, which must be the *resized*
screenshot size, since the model's coordinates are in that frame. Strings below are the model's training prompts:
their exact bytes matter.
"""

from __future__ import annotations

import json

_CLICK_TIP = "Make sure to click any buttons, links, icons, etc with the cursor tip in the center of the element."
_COORD = "(x, y): The x (pixels from the left edge) and y (pixels from the top edge) coordinates to move the mouse to."

COMPUTER_ACTIONS = {  # action -> what the cookbook's description says it does
    "key": "Performs key down presses on the arguments passed in order, then performs key releases in reverse order.",
    "type": "Type a string of text on the keyboard.",
    "mouse_move": "Move the cursor to a specified (x, y) pixel coordinate on the screen.",
    "left_click": "Click the left mouse button.",
    "left_click_drag": "Click and drag the cursor to a specified (x, y) pixel coordinate on the screen.",
    "right_click": "Click the right mouse button.",
    "middle_click": "Click the middle mouse button.",
    "double_click": "Double-click the left mouse button.",
    "scroll": "Performs a scroll of the mouse scroll wheel.",
    "wait": "Wait specified seconds for the change to happen.",
    "terminate": "Terminate the current task and report its completion status.",
}

MOBILE_ACTIONS = {
    "key": "Perform a key event on the mobile device.\n    - This supports adb's `keyevent` syntax.\n    - Examples: "
           '"volume_up", "volume_down", "power", "camera", "clear".',
    "click": "Click the point on the screen with coordinate (x, y).",
    "long_press": "Press the point on the screen with coordinate (x, y) for specified seconds.",
    "swipe": "Swipe from the starting point with coordinate (x, y) to the end point with coordinates2 (x2, y2).",
    "type": "Input the specified text into the activated input box.",
    "system_button": "Press the system button.",
    "open": "Open an app on the device.",
    "wait": "Wait specified seconds for the change to happen.",
    "terminate": "Terminate the current task and report its completion status.",
}

# Arguments each action cannot do without (the cookbook's "Required only by ..." and its `call()` dispatch).
# Clicks on the desktop take an optional coordinate: the description says none, yet the model routinely gives one.
COMPUTER_REQUIRED = {"key": ("keys",), "type": ("text",), "mouse_move": ("coordinate",),
                     "left_click_drag": ("coordinate",), "scroll": ("pixels",), "wait": ("time",),
                     "terminate": ("status",)}
MOBILE_REQUIRED = {"key": ("text",), "click": ("coordinate",), "long_press": ("coordinate", "time"),
                   "swipe": ("coordinate", "coordinate2"), "type": ("text",), "system_button": ("button",),
                   "open": ("text",), "wait": ("time",), "terminate": ("status",)}
MOBILE_BUTTONS = ("Back", "Home", "Menu", "Enter")
STATUSES = ("success", "failure")


def _action_param(actions: dict) -> dict:
    listing = "\n".join(f"* `{name}`: {text}" for name, text in actions.items())
    return {"description": f"The action to perform. The available actions are:\n{listing}",
            "enum": list(actions), "type": "string"}


def _status_param() -> dict:
    return {"description": "The status of the task. Required only by `action=terminate`.", "type": "string",
            "enum": list(STATUSES)}


def computer_use_function(width: int, height: int) -> dict:
    """The `computer_use` function for a screen of `width` x `height` pixels (the resized screenshot's size)."""
    description = "\n".join([
        "Use a mouse and keyboard to interact with a computer, and take screenshots.",
        "* This is an interface to a desktop GUI. You do not have access to a terminal or applications menu. You must "
        "click on desktop icons to start applications.",
        "* Some applications may take time to start or process actions, so you may need to wait and take successive "
        "screenshots to see the results of your actions. E.g. if you click on Firefox and a window doesn't open, try "
        "wait and taking another screenshot.",
        f"* The screen's resolution is {width}x{height}.",
        "* Whenever you intend to move the cursor to click on an element like an icon, you should consult a "
        "screenshot to determine the coordinates of the element before moving the cursor.",
        "* If you tried clicking on a program or link but it failed to load, even after waiting, try adjusting your "
        "cursor position so that the tip of the cursor visually falls on the element that you want to click.",
        f"* {_CLICK_TIP} Don't click boxes on their edges unless asked.",
    ])
    properties = {
        "action": _action_param(COMPUTER_ACTIONS),
        "keys": {"description": "Required only by `action=key`.", "type": "array"},
        "text": {"description": "Required only by `action=type`.", "type": "string"},
        "coordinate": {"description": f"{_COORD} Required only by `action=mouse_move` and `action=left_click_drag`.",
                       "type": "array"},
        "pixels": {"description": "The amount of scrolling to perform. Positive values scroll up, negative values "
                                  "scroll down. Required only by `action=scroll`.", "type": "number"},
        "time": {"description": "The seconds to wait. Required only by `action=wait`.", "type": "number"},
        "status": _status_param(),
    }
    return {"name": "computer_use", "description": description,
            "parameters": {"properties": properties, "required": ["action"], "type": "object"}}


def mobile_use_function(width: int, height: int) -> dict:
    """The `mobile_use` function for a screen of `width` x `height` pixels (the resized screenshot's size)."""
    description = "\n".join([
        "Use a touchscreen to interact with a mobile device, and take screenshots.",
        "* This is an interface to a mobile device with touchscreen. You can perform actions like clicking, typing, "
        "swiping, etc.",
        "* Some applications may take time to start or process actions, so you may need to wait and take successive "
        "screenshots to see the results of your actions.",
        f"* The screen's resolution is {width}x{height}.",
        f"* {_CLICK_TIP} Don't click boxes on their edges unless asked.",
    ])
    properties = {
        "action": _action_param(MOBILE_ACTIONS),
        "coordinate": {"description": f"{_COORD} Required only by `action=click`, `action=long_press`, and "
                                      "`action=swipe`.", "type": "array"},
        "coordinate2": {"description": f"{_COORD} Required only by `action=swipe`.", "type": "array"},
        "text": {"description": "Required only by `action=key`, `action=type`, and `action=open`.", "type": "string"},
        "time": {"description": "The seconds to wait. Required only by `action=long_press` and `action=wait`.",
                 "type": "number"},
        "button": {"description": "Back means returning to the previous interface, Home means returning to the "
                                  "desktop, Menu means opening the application background menu, and Enter means "
                                  "pressing the enter. Required only by `action=system_button`",
                   "enum": list(MOBILE_BUTTONS), "type": "string"},
        "status": _status_param(),
    }
    return {"name": "mobile_use", "description": description,
            "parameters": {"properties": properties, "required": ["action"], "type": "object"}}


def tool_declaration(function: dict) -> str:
    """One `<tools>` line, as qwen-agent renders a function (with `name_for_human` and `args_format`)."""
    body = {"name_for_human": function["name"], **function, "args_format": "Format the arguments as a JSON object."}
    return json.dumps({"type": "function", "function": body}, ensure_ascii=False)


def tools_system_prompt(functions: list[dict], system: str = "You are a helpful assistant.") -> str:
    """The system message declaring `functions` in the Qwen2.5 tool-call convention."""
    tools = "\n".join(tool_declaration(f) for f in functions)
    return (f"{system}\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n"
            f"<tools>\n{tools}\n</tools>\n\n"
            "For each function call, return a json object with function name and arguments within "
            "<tool_call></tool_call> XML tags:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')
