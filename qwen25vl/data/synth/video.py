"""Videos of objects that appear, move across their own lane and disappear at known absolute times, encoded as
H.264 mp4 with PyAV at varied frame rates and sampled for the model at 0.5-8 fps. Times are multiples of 0.2 s on
frame boundaries, so "12.4" seconds, "00:00:12:10" (hh:mm:ss:ff at 25 frames per second) and "00:12.40" are exact.
Tasks: an object's span in seconds, its appearance in hh:mm:ss:ff, its disappearance in seconds, and the event list
(JSON with mm:ss.ff times)."""

from __future__ import annotations

import json
import random

import numpy as np
from PIL import Image, ImageDraw

from qwen25vl.data.synth.common import Example, chosen, single_turn, video_part
from qwen25vl.data.synth.draw import COLOURS, distance, frame_size
from qwen25vl.tasks.video_time import DENSE_CAPTION_PROMPT, format_timestamp, video_grounding_prompt

DEFAULTS = {"size": 224, "max_seconds": 12, "max_objects": 3, "tasks": "span,appear,disappear,events",
            "sample_fps": "0.5,1,2,4,8"}
TASKS = ("span", "appear", "disappear", "events")
VIDEO_FPS = (5, 10, 15, 20, 25, 30)
SAMPLE_FPS = (0.5, 1.0, 2.0, 4.0, 8.0)
SHAPES = ("circle", "square", "triangle", "diamond")
STEP = 5  # times are multiples of 1 / STEP seconds


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: int, colour) -> None:
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    elif shape == "square":
        draw.rectangle((x - r, y - r, x + r, y + r), fill=colour)
    elif shape == "triangle":
        draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=colour)
    else:
        draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=colour)


def plan(rng: random.Random, size: tuple[int, int], seconds: int, max_objects: int, paper) -> list[dict]:
    """Objects in separate horizontal lanes with start/end times (seconds) and a straight path."""
    width, height = size
    n = rng.randint(1, max_objects)
    lane = height // n
    labels = rng.sample([(c, s) for c in COLOURS for s in SHAPES if distance(COLOURS[c], paper) >= 150], n)
    objects = []
    for i, (colour, shape) in enumerate(labels):
        start = rng.randint(0, (seconds - 1) * STEP) / STEP
        end = rng.randint(int(start * STEP) + 3, seconds * STEP) / STEP
        r = max(4, min(lane // 2 - 3, width // 10))
        y = i * lane + lane // 2
        x0, x1 = rng.randint(r, width - r - 1), rng.randint(r, width - r - 1)
        objects.append({"label": f"{colour} {shape}", "shape": shape, "colour": list(COLOURS[colour]),
                        "start": start, "end": end, "from": [x0, y], "to": [x1, y], "radius": r})
    return objects


def position(obj: dict, frame: int, fps: int) -> tuple[float, float] | None:
    """Where the object's centre is in frame `frame`, or None when it is not visible then."""
    first, last = round(obj["start"] * fps), round(obj["end"] * fps)
    if not first <= frame < last:
        return None
    t = (frame - first) / max(1, last - 1 - first)
    return tuple(a + (b - a) * t for a, b in zip(obj["from"], obj["to"]))


def encode(path, frames, fps: int, size: tuple[int, int]) -> None:
    import av

    with av.open(str(path), "w", format="mp4") as container:
        # ultrafast: no B-frames, no lookahead, no macroblock tree; with one thread each frame is coded from the
        # frames before it alone, so the same frames give the same bytes (a CI run once saw the veryfast preset differ)
        stream = container.add_stream("libx264", rate=fps, options={"crf": "16", "preset": "ultrafast"})
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1  # one thread: the same bytes on every machine
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def render(objects, fps: int, seconds: int, size, paper):
    for k in range(fps * seconds):
        image = Image.new("RGB", size, paper)
        draw = ImageDraw.Draw(image)
        for obj in objects:
            at = position(obj, k, fps)
            if at is not None:
                _draw_shape(draw, obj["shape"], *at, obj["radius"], tuple(obj["colour"]))
        yield np.asarray(image)


def _direction(obj: dict) -> str:
    dx = obj["to"][0] - obj["from"][0]
    return "stays in place" if abs(dx) < 4 else "moves right" if dx > 0 else "moves left"


def question(rng: random.Random, task: str, objects: list[dict]) -> tuple[str, str]:
    obj = rng.choice(objects)
    label = obj["label"]
    if task == "span":
        return video_grounding_prompt(f"the {label} is visible"), \
            f"The given query happens in {obj['start']:.1f} - {obj['end']:.1f} seconds."
    if task == "appear":
        return f"When does the {label} appear? Answer in hh:mm:ss:ff at 25 frames per second.", \
            format_timestamp(obj["start"], "hh:mm:ss:ff")
    if task == "disappear":
        return f"When does the {label} disappear? Answer in seconds.", f"{obj['end']:.1f}"
    events = [{"start_time": format_timestamp(o["start"], "mm:ss.ff"), "end_time": format_timestamp(o["end"], "mm:ss.ff"),
               "description": f"A {o['label']} appears and {_direction(o)}."}
              for o in sorted(objects, key=lambda o: (o["start"], o["end"]))]
    return DENSE_CAPTION_PROMPT, "```json\n" + json.dumps(events, ensure_ascii=False, indent=2) + "\n```"


def _sampling_rates(value: str) -> tuple[float, ...]:
    from qwen25vl.errors import InputError

    try:
        rates = tuple(float(v) for v in value.split(","))
    except ValueError:
        rates = ()
    if not rates or any(not 0.1 <= r <= 30 for r in rates):
        raise InputError(f"synth video: option sample_fps must be a comma list of rates in [0.1, 30], got {value!r}")
    return rates


def make_sample(rng: random.Random, media, options: dict) -> list[Example]:
    """Options narrow the mix: `tasks` (comma list of span, appear, disappear, events; sample i takes the
    (i mod n)-th) and `sample_fps` (comma list of the rates the model samples at)."""
    tasks = chosen("video", options["tasks"], TASKS)
    size = frame_size(rng, options["size"], min_ratio=0.5)
    seconds = rng.randint(min(4, options["max_seconds"]), options["max_seconds"])
    fps, sample_fps = rng.choice(VIDEO_FPS), rng.choice(_sampling_rates(options["sample_fps"]))
    paper = tuple(rng.randint(200, 250) for _ in range(3))
    objects = plan(rng, size, seconds, options["max_objects"], paper)
    full, relative = media.path("video.mp4")
    encode(full, render(objects, fps, seconds, size, paper), fps, size)
    task = tasks[media.index % len(tasks)]
    prompt, answer = question(rng, task, objects)
    truth = {"fps": fps, "frames": fps * seconds, "seconds": seconds, "sample_fps": sample_fps,
             "paper": list(paper), "objects": [], "moving": objects, "video_size": list(size)}
    return [Example(single_turn(video_part(relative, size, sample_fps), prompt, answer), task, truth)]
