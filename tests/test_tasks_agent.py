"""Agent: the cookbook's tool schemas and system prompt, <tool_call> parsing into actions, screen scaling, errors."""

import json
import re

import pytest

from qwen25vl.errors import InputError
from qwen25vl.tasks import (Action, ActionError, Frame, agent_system_prompt, agent_user_prompt, parse_actions,
                            parse_tool_calls)
from qwen25vl.tasks.agent_schema import (COMPUTER_ACTIONS, COMPUTER_REQUIRED, MOBILE_ACTIONS, MOBILE_REQUIRED,
                                         mobile_use_function)


def _call(tool, **args):
    return f"<tool_call>\n{json.dumps({'name': tool, 'arguments': args})}\n</tool_call>"


def test_system_prompt_declares_the_tool_as_the_cookbook_renders_it():
    prompt = agent_system_prompt("mobile", (1092, 2408))
    head = ("You are a helpful assistant.\n\n# Tools\n\nYou may call one or more functions to assist with the user "
            "query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n")
    tail = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
            '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
            "<args-json-object>}\n</tool_call>")
    assert prompt.startswith(head) and prompt.endswith(tail)
    decl = json.loads(prompt[len(head): -len(tail)])
    fn = decl["function"]
    assert decl["type"] == "function" and list(fn) == ["name_for_human", "name", "description", "parameters",
                                                       "args_format"]
    assert fn["name"] == fn["name_for_human"] == "mobile_use"
    assert "* The screen's resolution is 1092x2408.\n" in fn["description"]
    params = fn["parameters"]
    assert list(params["properties"]) == ["action", "coordinate", "coordinate2", "text", "time", "button", "status"]
    assert params["properties"]["action"]["enum"] == ["key", "click", "long_press", "swipe", "type", "system_button",
                                                      "open", "wait", "terminate"]
    assert params["properties"]["button"]["enum"] == ["Back", "Home", "Menu", "Enter"]
    assert params["required"] == ["action"]
    # the cookbook's rendering, key order and separators included (checked on a fragment of its printed prompt)
    assert ('"coordinate2": {"description": "(x, y): The x (pixels from the left edge) and y (pixels from the top '
            'edge) coordinates to move the mouse to. Required only by `action=swipe`.", "type": "array"}') in prompt
    assert prompt.count("\n") == 14  # the declaration is one line: newlines inside it are JSON escapes


def test_computer_schema():
    fn = json.loads(re.search(r"<tools>\n(.*)\n</tools>", agent_system_prompt("computer", (1280, 728))).group(1))
    props = fn["function"]["parameters"]["properties"]
    assert list(props) == ["action", "keys", "text", "coordinate", "pixels", "time", "status"]
    assert props["action"]["enum"] == ["key", "type", "mouse_move", "left_click", "left_click_drag", "right_click",
                                       "middle_click", "double_click", "scroll", "wait", "terminate"]
    assert "The screen's resolution is 1280x728." in fn["function"]["description"]
    assert "* `scroll`: Performs a scroll of the mouse scroll wheel." in props["action"]["description"]


def test_user_prompt_with_history():
    hist = [{"name": "mobile_use", "arguments": {"action": "open", "text": "File Manager"}},
            Action("mobile_use", "click", coordinate=(10, 20))]
    text = agent_user_prompt("Open the file", hist)
    assert text == ('The user query: Open the file\nTask progress (You have done the following operation on the '
                    'current device): Step 1: {"name": "mobile_use", "arguments": {"action": "open", "text": '
                    '"File Manager"}}; Step 2: {"name": "mobile_use", "arguments": {"action": "click", '
                    '"coordinate": [10, 20]}};')
    assert agent_user_prompt("x") == "The user query: x"


# One valid call per action, with every argument the action takes.
COMPUTER_CALLS = {
    "key": {"keys": ["ctrl", "c"]}, "type": {"text": "hello"}, "mouse_move": {"coordinate": [100, 50]},
    "left_click": {"coordinate": [100, 50]}, "left_click_drag": {"coordinate": [300, 200]},
    "right_click": {"coordinate": [10, 20]}, "middle_click": {"coordinate": [30, 40]},
    "double_click": {"coordinate": [50, 60]}, "scroll": {"pixels": -300, "coordinate": [70, 80]},
    "wait": {"time": 2}, "terminate": {"status": "success"},
}
MOBILE_CALLS = {
    "key": {"text": "volume_up"}, "click": {"coordinate": [935, 406]},
    "long_press": {"coordinate": [100, 200], "time": 2}, "swipe": {"coordinate": [500, 1500], "coordinate2": [500, 300]},
    "type": {"text": "hi"}, "system_button": {"button": "Back"}, "open": {"text": "Settings"}, "wait": {"time": 1.5},
    "terminate": {"status": "failure"},
}


def test_every_action_is_covered():
    assert set(COMPUTER_CALLS) == set(COMPUTER_ACTIONS) and set(MOBILE_CALLS) == set(MOBILE_ACTIONS)


@pytest.mark.parametrize("tool, calls", [("computer_use", COMPUTER_CALLS), ("mobile_use", MOBILE_CALLS)])
def test_parse_and_scale_every_action(tool, calls):
    frame = Frame((2560, 1440), (1280, 720))  # the model saw half the screen's pixels
    for action, args in calls.items():
        (parsed,) = parse_actions(_call(tool, action=action, **args), tool=tool)
        assert parsed.tool == tool and parsed.action == action and parsed.frame == "resized"
        assert parsed.to_call() == {"name": tool, "arguments": {"action": action, **args}}  # lossless
        screen = parsed.to_screen(frame)
        assert screen.frame == "screen"
        for key in ("coordinate", "coordinate2"):
            if key in args:
                x, y = args[key]
                assert getattr(screen, key) == (min(2 * x, 2559), min(2 * y, 1439)), (action, key)
            else:
                assert getattr(screen, key) is None
        # what is not a coordinate is not scaled
        assert (screen.text, screen.time, screen.pixels, screen.keys) == (parsed.text, parsed.time, parsed.pixels,
                                                                          parsed.keys)


def test_scaling_to_an_odd_screen_rounds_and_clamps():
    frame = Frame((1920, 1080), (1932, 1092))  # smart_resize rounded the screenshot up
    (a,) = parse_actions(_call("computer_use", action="left_click", coordinate=[966, 1091.9]))
    assert a.to_screen(frame).coordinate == (960, 1079)
    with pytest.raises(InputError, match="already"):
        a.to_screen(frame).to_screen(frame)


def test_several_calls_prose_and_a_cut_closing_tag():
    text = ("I will open it.\n" + _call("mobile_use", action="open", text="Maps") + "\nthen\n"
            '<tool_call>\n{"name": "mobile_use", "arguments": {"action": "wait", "time": 1}}')
    assert [a.action for a in parse_actions(text)] == ["open", "wait"]


def test_no_tool_call_gives_no_actions():
    assert parse_actions("I am not sure what to do.") == []
    assert parse_tool_calls("") == []


@pytest.mark.parametrize("tool, args, message", [
    ("computer_use", {"action": "fly"}, "unknown action 'fly'"),
    ("mobile_use", {"action": "left_click", "coordinate": [1, 2]}, "unknown action 'left_click'"),
    ("computer_use", {}, "unknown action None"),
    ("computer_use", {"action": "key"}, "'key' needs argument\\(s\\) keys"),
    ("computer_use", {"action": "left_click_drag"}, "needs argument\\(s\\) coordinate"),
    ("mobile_use", {"action": "swipe", "coordinate": [1, 2]}, "needs argument\\(s\\) coordinate2"),
    ("mobile_use", {"action": "long_press"}, "coordinate, time"),
    ("mobile_use", {"action": "system_button", "button": "Power"}, "button must be one of .* 'Power'"),
    ("computer_use", {"action": "terminate", "status": "done"}, "status must be success or failure, got 'done'"),
    ("mobile_use", {"action": "click", "coordinate": [1, 2, 3]}, "coordinate must be \\[x, y\\]"),
    ("computer_use", {"action": "wait", "time": "soon"}, "time must be a number, got 'soon'"),
])
def test_clear_errors(tool, args, message):
    with pytest.raises(ActionError, match=message):
        parse_actions(_call(tool, **args))


def test_wrong_function_and_broken_json():
    with pytest.raises(ActionError, match="function 'browser'"):
        parse_actions(_call("browser", action="click"))
    with pytest.raises(ActionError, match="expected mobile_use"):
        parse_actions(_call("computer_use", action="wait", time=1), tool="mobile")
    with pytest.raises(ActionError, match="not a JSON object: 'click at 3, 4'"):
        parse_actions("<tool_call>click at 3, 4</tool_call>")
    with pytest.raises(InputError, match="computer or mobile"):
        parse_actions("", tool="tablet")


def test_arguments_as_a_json_string_and_python_literals():
    text = '<tool_call>{"name": "mobile_use", "arguments": "{\\"action\\": \\"click\\", \\"coordinate\\": [5, 6]}"}</tool_call>'
    assert parse_actions(text)[0].coordinate == (5, 6)
    text = "<tool_call>{'name': 'mobile_use', 'arguments': {'action': 'type', 'text': 'ok'}}</tool_call>"
    assert parse_actions(text)[0].text == "ok"


def test_required_tables_match_the_schema_descriptions():
    # every "Required only by `action=X`" in the mobile schema is in our required table, and back
    props = mobile_use_function(1, 1)["parameters"]["properties"]
    from_text = {(a, arg) for arg, p in props.items() if arg != "action"
                 for a in re.findall(r"`action=(\w+)`", p["description"])}
    assert from_text == {(a, arg) for a, args in MOBILE_REQUIRED.items() for arg in args}
    assert set(COMPUTER_REQUIRED) <= set(COMPUTER_ACTIONS)
