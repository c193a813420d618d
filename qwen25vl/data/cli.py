"""`qwen25vl data convert`: LLaVA/ShareGPT or ms-swift annotations -> our JSONL records; `data run` / `data stats`:
the filtering pipeline (`qwen25vl.data.pipeline.cli`)."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="training data tools")
    sub = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    from qwen25vl.data.synth.cli import register_synth

    register_synth(sub)
    from qwen25vl.data.pipeline.cli import register_pipeline

    register_pipeline(sub)
    convert = sub.add_parser("convert", help="convert LLaVA/ShareGPT or ms-swift annotations to our records")
    convert.add_argument("source", help="input .json (a list) or .jsonl")
    convert.add_argument("target", help="output .jsonl")
    convert.add_argument("--from", dest="layout", choices=("llava", "swift"), required=True)
    convert.add_argument("--skip-bad", action="store_true", help="report bad records instead of stopping")
    convert.add_argument("--min-pixels", type=int, help="per-image min_pixels written into every image part")
    convert.add_argument("--max-pixels", type=int, help="per-image max_pixels written into every image part")
    convert.add_argument("--fps", type=float, help="fps written into every video part")
    convert.set_defaults(func=cmd_convert)


def cmd_convert(args) -> int:
    from qwen25vl.data.convert import convert_file

    image = {k: v for k, v in (("min_pixels", args.min_pixels), ("max_pixels", args.max_pixels)) if v}
    video = {**image, **({"fps": args.fps} if args.fps else {})}
    written, skipped = convert_file(args.source, args.target, args.layout, skip_bad=args.skip_bad,
                                    item_options={"image": image, "video": video})
    for reason in skipped:
        print(f"skipped: {reason}", file=sys.stderr)
    print(f"wrote {written} records to {args.target} ({len(skipped)} skipped)", file=sys.stderr)
    return 0
