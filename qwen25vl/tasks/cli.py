"""`qwen25vl ground | parse-doc | video-find | act`: the tasks from the command line.

Each command loads the model with `qwen25vl.load(--model)`, runs one task and prints a readable summary (or, with
--json, one JSON object). A model answer with nothing usable is reported as such, with exit status 0: the command
worked, the model found nothing.
"""

from __future__ import annotations

import argparse
import json
import sys


def _common(p: argparse.ArgumentParser, *, pixels: bool = True):
    p.add_argument("--model", "-m", metavar="PATH", default=None, help="checkpoint folder (default: the embedded model)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    p.add_argument("--max-new-tokens", type=int, default=None, help="answer length cap")
    p.add_argument("--device", default=None)
    if pixels:
        p.add_argument("--min-pixels", type=int, default=None, help="image resize floor (pixels)")
        p.add_argument("--max-pixels", type=int, default=None, help="image resize cap (pixels)")


def _load(args):
    import qwen25vl

    return qwen25vl.load(args.model, device=args.device)


def _sampling(args) -> dict:
    return {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}


def _print_json(obj):
    print(json.dumps(obj, ensure_ascii=False, indent=2))


def _save(image, path: str):
    image.save(path)
    print(f"wrote {path}", file=sys.stderr)


def _ground(args) -> int:
    from qwen25vl.processing.image import load_image
    from qwen25vl.tasks.draw import draw_groundings
    from qwen25vl.tasks.run import ground

    image = load_image(args.image)
    result = ground(_load(args), image, args.query, mode=args.mode, min_pixels=args.min_pixels,
                    max_pixels=args.max_pixels, **_sampling(args))
    if args.out:
        _save(draw_groundings(image, result.items), args.out)
    if args.json:
        _print_json({**result.to_json(), "raw": result.raw})
    else:
        print(result.summary())
        for g in result.items:
            print(f"  {g.label or '?'}: " + (f"box {[round(v, 1) for v in g.bbox]}" if g.bbox else "")
                  + (f" point {[round(v, 1) for v in g.point]}" if g.point else ""))
    return 0


def _parse_doc(args) -> int:
    from qwen25vl.processing.image import load_image
    from qwen25vl.tasks.draw import draw_layout
    from qwen25vl.tasks.run import parse_document

    image = load_image(args.image)
    doc = parse_document(_load(args), image, min_pixels=args.min_pixels, max_pixels=args.max_pixels,
                         **_sampling(args))
    if args.out:
        _save(draw_layout(image, doc.blocks), args.out)
    if not doc.blocks:
        print("no layout blocks parsed from the answer", file=sys.stderr)
    if args.json or args.format == "json":
        _print_json({**doc.to_json(), "raw": doc.raw} if args.json else doc.to_json())
    elif args.format == "html":
        print(doc.to_html())
    else:
        print(doc.to_markdown(), end="")
    return 0


def _video_find(args) -> int:
    from qwen25vl.tasks.run import find_in_video

    answer = find_in_video(_load(args), args.video, args.event, fps=args.fps, start=args.start, end=args.end,
                           max_pixels=args.max_pixels, **_sampling(args))
    if args.json:
        _print_json({"spans": [s.to_dict(args.style) for s in answer.spans], "raw": answer.raw})
    else:
        print(answer.summary())
    return 0


def _act(args) -> int:
    from qwen25vl.processing.image import load_image
    from qwen25vl.tasks.draw import draw_actions
    from qwen25vl.tasks.run import act

    image = load_image(args.screenshot)
    screen = tuple(int(v) for v in args.screen_size.lower().split("x")) if args.screen_size else None
    step = act(_load(args), image, args.instruction, kind=args.kind, screen_size=screen,
               min_pixels=args.min_pixels, max_pixels=args.max_pixels, **_sampling(args))
    if args.out:
        canvas = image if screen is None else image.resize(screen)  # actions are in screen pixels
        _save(draw_actions(canvas, step.actions), args.out)
    if args.json:
        _print_json({"actions": [a.to_call() for a in step.actions], "frame": "screen", "raw": step.raw})
    else:
        print(step.summary())
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
    p.add_argument("--fps", type=float, default=2.0, help="frames sampled per second")
    p.add_argument("--start", type=float, default=None, help="only look from this second")
    p.add_argument("--end", type=float, default=None, help="only look until this second")
    p.add_argument("--style", choices=("seconds", "mm:ss.ff", "hh:mm:ss.ff", "hh:mm:ss:ff"), default="seconds",
                   help="time format of --json output")
    _common(p, pixels=False)
    p.add_argument("--max-pixels", type=int, default=None, help="per-frame resize cap (pixels)")
    p.set_defaults(func=_video_find)

    p = subparsers.add_parser("act", help="one computer / phone agent step on a screenshot")
    p.add_argument("screenshot")
    p.add_argument("instruction")
    p.add_argument("--kind", choices=("computer", "mobile"), default="computer")
    p.add_argument("--screen-size", metavar="WxH", help="real screen size if the screenshot is scaled")
    p.add_argument("--out", metavar="PNG", help="write the screenshot with the action targets")
    _common(p)
    p.set_defaults(func=_act)
