"""App and desktop screens (buttons, text fields, list rows, icons) with an instruction, the steps already taken,
and the next step as a `computer_use` / `mobile_use` tool call (`tasks.agent.parse_actions` reads it back) whose
coordinate is the target's centre, inside its box, in the rendered frame the model sees."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from qwen25vl.data.synth.common import Example, image_part, single_turn
from qwen25vl.data.synth.draw import COLOURS, font, grid_side
from qwen25vl.data.synth.shapes import shape_mask
from qwen25vl.data.synth.words import phrase
from qwen25vl.tasks.agent import agent_system_prompt, agent_user_prompt

DEFAULTS = {"size": 448}
TASKS = ("click", "type", "open", "press")
BUTTONS = ("Save", "Open", "Cancel", "Submit", "Next", "Share", "Delete", "Send", "Login", "Edit", "Print", "Help",
           "Refresh", "Upload", "Download", "Apply")
FIELDS = ("Name", "Email", "Password", "Search", "Address", "Phone", "City", "Username")
APPS = ("Files", "Mail", "Music", "Photos", "Notes", "Maps", "Camera", "Clock", "Calendar", "Browser", "Weather",
        "Chat", "Store", "Terminal")
GLYPHS = ("circle", "star", "heart", "triangle", "ring", "moon", "cross", "diamond")


@dataclass
class Element:
    kind: str  # button, field, item, icon
    label: str
    box: tuple[int, int, int, int]  # inclusive

    @property
    def centre(self) -> tuple[int, int]:
        return (self.box[0] + self.box[2]) // 2, (self.box[1] + self.box[3]) // 2


class Screen:
    """Draws widgets row by row and remembers where each went."""

    def __init__(self, rng: random.Random, size: tuple[int, int]):
        self.rng, self.size = rng, size
        self.image = Image.new("RGB", size, tuple(rng.randint(225, 250) for _ in range(3)))
        self.draw = ImageDraw.Draw(self.image)
        self.font = font(rng.choice(("sans", "sans-bold")), rng.randint(11, 13))
        self.elements: list[Element] = []

    def bar(self, y: int, height: int, title: str, x: int = 0) -> int:
        colour = COLOURS[self.rng.choice(("blue", "purple", "green", "black", "grey"))]
        self.draw.rectangle((x, y, self.size[0] - 1, y + height - 1), fill=colour)
        self.draw.text((x + 8, y + (height - self.font.size) // 2), title, font=self.font, fill=(250, 250, 250))
        return y + height

    def _text_centre(self, box, text, fill) -> None:
        w = self.font.getlength(text)
        self.draw.text(((box[0] + box[2] - w) / 2, (box[1] + box[3] - self.font.size) / 2 - 1), text,
                       font=self.font, fill=fill)

    def widget(self, kind: str, label: str, x: int, y: int, width: int, height: int) -> Element:
        box = (x, y, x + width - 1, y + height - 1)
        if kind == "button":
            fill = COLOURS[self.rng.choice(("blue", "green", "red", "orange", "purple"))]
            self.draw.rounded_rectangle(box, radius=5, fill=fill)
            self._text_centre(box, label, (250, 250, 250))
        elif kind == "field":
            self.draw.rectangle(box, fill=(255, 255, 255), outline=(120, 120, 120))
            self.draw.text((x + 6, y + (height - self.font.size) // 2 - 1), label, font=self.font, fill=(140, 140, 140))
        elif kind == "item":
            self.draw.rectangle(box, fill=(255, 255, 255), outline=(210, 210, 210))
            self.draw.text((x + 8, y + (height - self.font.size) // 2 - 1), label, font=self.font, fill=(30, 30, 30))
        else:
            self.draw.rounded_rectangle(box, radius=6, fill=COLOURS[self.rng.choice(("blue", "green", "red",
                                                                                       "orange", "purple", "cyan"))])
            glyph = shape_mask(self.rng, self.rng.choice(GLYPHS), max(8, width // 2))
            self.image.paste((250, 250, 250), (x + (width - glyph.width) // 2, y + (height - glyph.height) // 2),
                             glyph)
            lw = self.font.getlength(label)
            self.draw.text((x + (width - lw) / 2, y + height + 2), label, font=self.font, fill=(30, 30, 30))
        element = Element(kind, label, box)
        self.elements.append(element)
        return element


def _row(screen: Screen, kind: str, labels, x0: int, x1: int, y: int, height: int, gap: int = 8) -> int:
    x = x0
    for label in labels:
        width = int(screen.font.getlength(label)) + 24 if kind == "button" else max(60, (x1 - x0) // 2 - gap)
        if x + width > x1:
            break
        screen.widget(kind, label, x, y, width, height)
        x += width + gap
    return y + height + gap


def desktop(rng: random.Random, size: int) -> Screen:
    screen = Screen(rng, (size, grid_side(rng, int(size * 0.65), int(size * 0.8))))
    w, h = screen.size
    y = 10
    for app in rng.sample(APPS, min(len(APPS), max(1, (h - 20) // 62))):  # desktop icons down the left edge
        screen.widget("icon", app, 14, y, 36, 36)
        y += 62
    x0 = 84
    y = screen.bar(10, 22, phrase(rng, 1, 3, "latin").title(), x0 - 6)
    y = _row(screen, "button", rng.sample(BUTTONS, 5), x0, w - 8, y + 8, 24)
    y = _row(screen, "field", rng.sample(FIELDS, 2), x0, w - 8, y, 24)
    for text in [phrase(rng, 1, 3, "latin") for _ in range(6)]:
        if y + 24 > h - 8 or any(e.label == text for e in screen.elements):
            continue
        screen.widget("item", text, x0, y, w - 8 - x0, 22)
        y += 26
    return screen


def mobile(rng: random.Random, size: int) -> Screen:
    screen = Screen(rng, (grid_side(rng, int(size * 0.5), int(size * 0.6)), size))
    w, h = screen.size
    y = screen.bar(0, 36, phrase(rng, 1, 2, "latin").title()) + 10
    y = _row(screen, "field", rng.sample(FIELDS, 1), 10, w - 10, y, 28)
    for text in [phrase(rng, 1, 3, "latin") for _ in range(4)]:
        if not any(e.label == text for e in screen.elements):
            screen.widget("item", text, 10, y, w - 20, 30)
            y += 36
    y = _row(screen, "button", rng.sample(BUTTONS, 3), 10, w - 10, y + 4, 30)
    icon, per_row = 40, max(1, (w - 20) // 60)
    for i, app in enumerate(rng.sample(APPS, per_row * 2)):
        top = y + 8 + (i // per_row) * 64
        if top + icon + 18 < h:
            screen.widget("icon", app, 14 + (i % per_row) * 60, top, icon, icon)
    return screen


def _call(tool: str, **arguments) -> dict:
    return {"name": tool, "arguments": arguments}


def step(rng: random.Random, task: str, screen: Screen, tool: str):
    """(instruction, history calls, the answer's call, the target element)."""
    by_kind = {k: [e for e in screen.elements if e.kind == k] for k in ("button", "field", "item", "icon")}
    click = "left_click" if tool == "computer_use" else "click"
    if task == "type" and by_kind["field"]:
        field = rng.choice(by_kind["field"])
        text = phrase(rng, 1, 3, "latin")
        return (f"Type '{text}' into the {field.label} field.", [_call(tool, action=click, coordinate=list(field.centre))],
                _call(tool, action="type", text=text), field)
    if task == "open" and by_kind["icon"]:
        icon = rng.choice(by_kind["icon"])
        action = "double_click" if tool == "computer_use" else "click"
        return f"Open the {icon.label} app.", [], _call(tool, action=action, coordinate=list(icon.centre)), icon
    if task == "press" and by_kind["item"]:
        item = rng.choice(by_kind["item"])
        if tool == "computer_use":
            return (f"Right-click the '{item.label}' row.", [], _call(tool, action="right_click",
                                                                      coordinate=list(item.centre)), item)
        return (f"Long press on '{item.label}'.", [], _call(tool, action="long_press", coordinate=list(item.centre),
                                                             time=2), item)
    button = rng.choice(by_kind["button"] or screen.elements)
    return f"Click the {button.label} button.", [], _call(tool, action=click, coordinate=list(button.centre)), button


def make_sample(rng: random.Random, media, options: dict) -> list[Example]:
    tool = "computer_use" if media.index % 2 == 0 else "mobile_use"
    screen = (desktop if tool == "computer_use" else mobile)(rng, options["size"])
    task = TASKS[(media.index // 2) % len(TASKS)]
    instruction, history, call, target = step(rng, task, screen, tool)
    path = media.image(screen.image)
    answer = f"<tool_call>\n{json.dumps(call, ensure_ascii=False)}\n</tool_call>"
    prompt = agent_user_prompt(instruction, history)
    system = agent_system_prompt(tool, screen.size)
    truth = {"tool": tool, "call": call, "history": history, "size": list(screen.size),
             "targets": [{"label": target.label, "kind": target.kind, "bbox_2d": list(target.box),
                          **({"coordinate": call["arguments"]["coordinate"]} if "coordinate" in call["arguments"]
                             else {})}]}
    messages = single_turn(image_part(path, screen.size), prompt, answer, system=system, media_first=False)
    return [Example(messages, call["arguments"]["action"], truth)]


