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
