"""`qwen25vl ground | parse-doc | video-find | act`: the tasks from the command line.

Each command loads the model with `qwen25vl.load(--model)`, runs one task and prints a readable summary (or, with
--json, one JSON object). A model answer with nothing usable is reported as such, with exit status 0: the command
worked, the model found nothing.

`--out` is checked (its folder exists and is writable, its extension is an image format Pillow writes) before the
model is loaded, so a typo costs nothing; the picture is written after the result is printed, so a failure to write
it never throws the answer away. While the model generates, stderr shows a live token count on a terminal, or the
answer itself as it streams with `--stream`; a closing line gives the count and the time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from qwen25vl.errors import InputError
from qwen25vl.runtime import add_runtime_args, fps_arg, load_from_args, positive_int_arg


def _common(p: argparse.ArgumentParser, *, pixels: bool = True):
    p.add_argument("--model", "-m", metavar="PATH", default=None, help="checkpoint folder (default: the embedded model)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    p.add_argument("--max-new-tokens", type=positive_int_arg, default=None, help="answer length cap")
    add_runtime_args(p)
    p.add_argument("--stream", action="store_true", help="show the model's answer on stderr as it is generated")
    if pixels:
        p.add_argument("--min-pixels", type=positive_int_arg, default=None, help="image resize floor (pixels)")
        p.add_argument("--max-pixels", type=positive_int_arg, default=None, help="image resize cap (pixels)")


def _load(args):
    return load_from_args(args)


def _sampling(args) -> dict:
    return {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}


def _print_json(obj):
    print(json.dumps(obj, ensure_ascii=False, indent=2))


def check_out(path: str | None) -> None:
    """Raise InputError unless an image can be written at `path` (None: nothing to check)."""
    if path is None:
        return
    from PIL import Image

    target = Path(path)
    if target.is_dir():
        raise InputError(f"--out {path!r} is a folder; give a file name such as {str(target / 'out.png')!r}")
    folder = target.parent
    if not folder.is_dir():
        raise InputError(f"--out {path!r}: folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise InputError(f"--out {path!r}: folder {str(folder)!r} is not writable")
    Image.init()
    fmt = Image.registered_extensions().get(target.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise InputError(f"--out {path!r}: {target.suffix or 'no extension'!r} is not an image format that can be "
                         "written; use .png, .jpg or .webp")


def _save(image, path: str):
    try:
        image.save(path)
    except (OSError, ValueError) as err:  # the disk filled up, the folder went away, a format refused the mode
        raise InputError(f"--out {path!r}: could not write the picture: {err}") from None
    print(f"wrote {path}", file=sys.stderr)


class Progress:
    """Shows a generation on stderr: the answer's text as it streams (`echo`), else a live count of the deltas
    (about one per token) on a terminal; `close()` writes the count and the time."""

    def __init__(self, echo: bool = False, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.echo = echo
        self.live = not echo and bool(getattr(self.stream, "isatty", lambda: False)())
        self.count, self.started, self.shown = 0, time.monotonic(), float("-inf")

    def __call__(self, delta: str):
        self.count += 1
        if self.echo:
            self.stream.write(delta)
        elif self.live and time.monotonic() - self.shown >= 0.25:
            self.shown = time.monotonic()
            self.stream.write(f"\rgenerating: {self.count} tokens")
        else:
            return
        self.stream.flush()

    def close(self):
        end = "\n" if self.echo and self.count else "\r\x1b[K" if self.live else ""
        self.stream.write(f"{end}generated {self.count} tokens in {time.monotonic() - self.started:.1f} s\n")
        self.stream.flush()


def _run(task, args, *call_args, **kw):
    """`task(model, *call_args, progress=..., **kw)` with the progress shown while it generates."""
    vlm = _load(args)
    progress = Progress(echo=args.stream)
    try:
        return task(vlm, *call_args, progress=progress, **kw, **_sampling(args))
    finally:
        progress.close()


def _ground(args) -> int:
    from qwen25vl.processing.image import load_image
    from qwen25vl.tasks.draw import draw_groundings
    from qwen25vl.tasks.run import ground

    check_out(args.out)
    image = load_image(args.image)
    result = _run(ground, args, image, args.query, mode=args.mode, min_pixels=args.min_pixels,
                  max_pixels=args.max_pixels)
    if args.json:
        _print_json({**result.to_json(), "raw": result.raw})
    else:
        print(result.summary())
        for g in result.items:
            print(f"  {g.label or '?'}: " + (f"box {[round(v, 1) for v in g.bbox]}" if g.bbox else "")
                  + (f" point {[round(v, 1) for v in g.point]}" if g.point else ""))
    if args.out:
        _save(draw_groundings(image, result.items), args.out)
    return 0


def _parse_doc(args) -> int:
    from qwen25vl.processing.image import load_image
    from qwen25vl.tasks.draw import draw_layout
    from qwen25vl.tasks.run import parse_document

    check_out(args.out)
    image = load_image(args.image)
    doc = _run(parse_document, args, image, min_pixels=args.min_pixels, max_pixels=args.max_pixels)
    if not doc.blocks:
        print("no layout blocks parsed from the answer", file=sys.stderr)
    if args.json or args.format == "json":
        _print_json({**doc.to_json(), "raw": doc.raw} if args.json else doc.to_json())
    elif args.format == "html":
        print(doc.to_html())
    else:
        print(doc.to_markdown(), end="")
    if args.out:
        _save(draw_layout(image, doc.blocks), args.out)
    return 0


def _check_video_args(args):
    for name in ("start", "end"):
        value = getattr(args, name)
        if value is not None and not value >= 0:
            raise InputError(f"--{name} must be >= 0 seconds, got {value}")
    if args.start is not None and args.end is not None and args.end <= args.start:
        raise InputError(f"--end ({args.end}) must be after --start ({args.start})")


def _video_find(args) -> int:
    from qwen25vl.tasks.run import find_in_video

    _check_video_args(args)
    answer = _run(find_in_video, args, args.video, args.event, fps=args.fps, start=args.start, end=args.end,
                  max_pixels=args.max_pixels)
    if args.json:
        _print_json({"spans": [s.to_dict(args.style) for s in answer.spans], "raw": answer.raw})
    else:
        print(answer.summary())
    return 0


def _screen_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--screen-size must be WIDTHxHEIGHT such as 2560x1600, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise InputError(f"--screen-size must be positive, got {text!r}")
    return w, h


def _act(args) -> int:
    from qwen25vl.processing.image import load_image
    from qwen25vl.tasks.draw import draw_actions
    from qwen25vl.tasks.run import act

    check_out(args.out)
    screen = _screen_size(args.screen_size)
    image = load_image(args.screenshot)
    step = _run(act, args, image, args.instruction, kind=args.kind, screen_size=screen, min_pixels=args.min_pixels,
                max_pixels=args.max_pixels)
    if args.json:
        _print_json({"actions": [a.to_call() for a in step.actions], "frame": "screen", "raw": step.raw})
    else:
        print(step.summary())
    if args.out:
        canvas = image if screen is None else image.resize(screen)  # actions are in screen pixels
        _save(draw_actions(canvas, step.actions), args.out)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("ground", help="find objects in an image: boxes / points in the image's own pixels")
    p.add_argument("image")
    p.add_argument("query", help='what to find, e.g. "cat" or "the red car on the left"')
    p.add_argument("--mode", choices=("detect", "refer", "point", "count"), default="detect")
    p.add_argument("--out", metavar="PNG", help="write the image with boxes, labels and a legend")
    _common(p)
    p.set_defaults(func=_ground)

    p = subparsers.add_parser("parse-doc", help="parse a page image into layout blocks (QwenVL HTML)")
    p.add_argument("image")
    p.add_argument("--format", choices=("md", "html", "json"), default="md")
    p.add_argument("--out", metavar="PNG", help="write the layout overlay")
    _common(p)
    p.set_defaults(func=_parse_doc)

    p = subparsers.add_parser("video-find", help="when does an event happen in a video (seconds)")
    p.add_argument("video")
    p.add_argument("event")
    p.add_argument("--fps", type=fps_arg, default=2.0, help="frames sampled per second")
    p.add_argument("--start", type=float, default=None, help="only look from this second")
    p.add_argument("--end", type=float, default=None, help="only look until this second")
    p.add_argument("--style", choices=("seconds", "mm:ss.ff", "hh:mm:ss.ff", "hh:mm:ss:ff"), default="seconds",
                   help="time format of --json output")
    _common(p, pixels=False)
    p.add_argument("--max-pixels", type=positive_int_arg, default=None, help="per-frame resize cap (pixels)")
    p.set_defaults(func=_video_find)

    p = subparsers.add_parser("act", help="one computer / phone agent step on a screenshot")
    p.add_argument("screenshot")
    p.add_argument("instruction")
    p.add_argument("--kind", choices=("computer", "mobile"), default="computer")
    p.add_argument("--screen-size", metavar="WxH", help="real screen size if the screenshot is scaled")
    p.add_argument("--out", metavar="PNG", help="write the screenshot with the action targets")
    _common(p)
    p.set_defaults(func=_act)
