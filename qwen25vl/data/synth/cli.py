"""`qwen25vl data synth KIND --out DIR --train N --heldout M --seed S [--size PX] [--set key=value ...]` and
`qwen25vl data synth tokenizer --out DIR --data DIR...`. `register_synth(subparsers)` adds the `synth` command to
the `data` group's sub-parsers; `python -m qwen25vl.data.synth` runs it on its own."""

from __future__ import annotations

import argparse
import sys
import time

from qwen25vl.errors import InputError


def register_synth(subparsers) -> None:
    from qwen25vl.data.synth import ENGINES

    p = subparsers.add_parser("synth", help="write synthetic training data (or train the tiny tokenizer on it)")
    p.add_argument("kind", choices=ENGINES + ("tokenizer",))
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--train", type=int, default=100, help="train samples (default 100)")
    p.add_argument("--heldout", type=int, default=0, help="held-out samples (default 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, help="the frame's longer side in pixels (a multiple of 28)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an engine option")
    p.add_argument("--data", nargs="+", help="tokenizer: dataset folders whose train splits form the corpus")
    p.add_argument("--regular-tokens", type=int, default=512, help="tokenizer: regular ids before the specials")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_synth)


_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _parse_bool(value: str) -> bool:
    """'true' / 'false' (also yes / no, 1 / 0, any case); `bool('false')` would be True."""
    if value.strip().lower() not in _BOOLS:
        raise ValueError(value)
    return _BOOLS[value.strip().lower()]


def _options(kind: str, pairs: list[str], size: int | None) -> dict:
    from qwen25vl.data.synth import engine

    defaults = engine(kind).DEFAULTS
    options = {} if size is None else {"size": size}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in defaults:
            raise InputError(f"--set {pair!r}: expected KEY=VALUE with KEY one of {sorted(defaults)}")
        try:
            options[key] = _parse_bool(value) if isinstance(defaults[key], bool) else type(defaults[key])(value)
        except ValueError:
            raise InputError(f"--set {pair!r}: {key} must be a {type(defaults[key]).__name__}") from None
    return options


def cmd_synth(args) -> int:
    if args.kind == "tokenizer":
        from qwen25vl.data.synth.tokenizer import train_from_datasets

        if not args.data:
            raise InputError("synth tokenizer needs --data with at least one dataset folder")
        path = train_from_datasets(args.data, args.out, args.regular_tokens)
        print(f"wrote {path}", file=sys.stderr)
        return 0
    from qwen25vl.data.synth import write_dataset

    start = time.perf_counter()
    manifest = write_dataset(args.kind, args.out, train=args.train, heldout=args.heldout, seed=args.seed,
                             progress=not args.no_progress, **_options(args.kind, args.set, args.size))
    seconds = time.perf_counter() - start
    samples = sum(s["samples"] for s in manifest["splits"].values())
    records = sum(s["records"] for s in manifest["splits"].values())
    print(f"wrote {samples} samples ({records} records) of {args.kind} to {args.out} in {seconds:.1f} s "
          f"({samples / max(seconds, 1e-9):.1f} samples/s); manifest {args.out}/manifest.json", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    from qwen25vl.errors import Qwen25VLError

    parser = argparse.ArgumentParser(prog="python -m qwen25vl.data.synth")
    register_synth(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Qwen25VLError as err:
        print(f"qwen25vl: error: {err}", file=sys.stderr)
        return 2
