"""The `qwen25vl` command line.

Each area of the package registers its own sub-commands: a module listed in `_COMMAND_MODULES` exposes
`register(subparsers)`, which adds its parsers and sets `func` on them. User mistakes (`Qwen25VLError`) print one
readable line and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from qwen25vl.errors import Qwen25VLError

_COMMAND_MODULES = (
    "qwen25vl.generation.cli",  # run, chat
    "qwen25vl.processing.cli",  # tokenizer from-tiktoken
    "qwen25vl.tasks.cli",  # ground, parse-doc, video-find, act
    "qwen25vl.serve.cli",  # serve
    "qwen25vl.plan",  # plan
    "qwen25vl.data.cli",  # data convert
    "qwen25vl.recipes.cli",  # train pretrain / sft
    "qwen25vl.eval.cli",  # eval TASK / rescore / report / list
)


def _register_quantize(subparsers) -> None:
    p = subparsers.add_parser(
        "quantize", help="write an int8 weight-only copy of a checkpoint folder",
        description="Quantise the language model's linear layers of checkpoint SRC to int8 weights with per-channel "
                    "scales (qwen25vl.weights.quantize_folder) and write a folder OUT that qwen25vl.load(OUT) reads "
                    "quantised; the tokenizer, processor and generation files are copied.")
    p.add_argument("src", metavar="SRC", help="checkpoint folder to read (bf16 / fp16 / fp32)")
    p.add_argument("out", metavar="OUT", help="folder to write (created if missing)")
    p.add_argument("--float-lm-head", action="store_true",
                   help="leave lm_head in floating point (fp32): larger, closer to the float model's logits")
    p.add_argument("--max-shard-size", default="5GB", help="shard the weights above this size (default: 5GB)")
    p.add_argument("--overwrite", action="store_true", help="write into OUT even when it is not empty")
    p.set_defaults(func=_quantize)


def _weight_bytes(folder) -> int:
    return sum(path.stat().st_size for path in folder.glob("*.safetensors"))


def _quantize(args) -> int:
    """Check the folders before loading anything (one readable error line each), quantise, report the result."""
    import json
    from pathlib import Path

    from qwen25vl.errors import CheckpointError, InputError
    from qwen25vl.weights import QUANT_NAME, quantize_folder

    src, out = Path(args.src), Path(args.out)
    if not src.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {src}")
    if not (src / "config.json").is_file():
        raise CheckpointError(f"{src} is not a checkpoint folder: it has no config.json")
    if out.exists() and out.resolve() == src.resolve():
        raise InputError(f"OUT is the source folder {src}: give another output folder")
    if out.exists() and not out.is_dir():
        raise InputError(f"OUT {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise InputError(f"OUT {out} is not empty: pass --overwrite to write into it")
    quantize_folder(src, out, max_shard_size=args.max_shard_size, include_lm_head=not args.float_lm_head,
                    progress=False)
    modules = json.loads((out / QUANT_NAME).read_text())["modules"]
    before, after = _weight_bytes(src), _weight_bytes(out)
    head = "fp32" if args.float_lm_head else "int8"
    print(f"wrote {out}: {len(modules)} linear modules in int8 (lm_head {head}); weights {before / 2**20:.1f} MB -> "
          f"{after / 2**20:.1f} MB ({before:,} -> {after:,} bytes, {after / max(before, 1):.2f}x)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwen25vl", description="Qwen2.5-VL: run, chat, serve and task tools.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is None or not name.startswith(err.name):  # a missing dependency inside it is a real error
                raise
            continue
        module.register(sub)
    _register_quantize(sub)  # quantize
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except Qwen25VLError as err:
        print(f"qwen25vl: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
