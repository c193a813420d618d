"""`qwen25vl serve`: the OpenAI-compatible server from the command line."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from qwen25vl.errors import ConfigError
from qwen25vl.runtime import add_runtime_args, load_from_args
from qwen25vl.serve.settings import Limits, ServeSettings


class _DefaultsFormatter(argparse.HelpFormatter):
    """Show a default only where there is one and the help text does not already explain it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, [], False, argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="OpenAI-compatible HTTP server with continuous batching",
                              formatter_class=_DefaultsFormatter)
    p.add_argument("--model", "-m", help="checkpoint folder (default: the embedded tiny model, when shipped)")
    p.add_argument("--adapter", help="a LoRA adapter folder (PEFT's format) to run on the model, unmerged")
    p.add_argument("--served-model-name", help="the name clients pass as `model` (default: the folder's name)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes the server to the network)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $QWEN25VL_API_KEY, else none)")
    p.add_argument("--allow-private-urls", action="store_true",
                   help="let requests fetch from private, loopback and link-local addresses (trusted networks only)")
    p.add_argument("--local-root", action="append", default=[], metavar="DIR",
                   help="a folder whose files requests may name by path (repeatable; default: none)")
    add_runtime_args(p)
    d, lim = ServeSettings(), Limits()
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="sequences decoded together")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="waiting requests before answering 429")
    p.add_argument("--request-timeout", type=float, default=d.request_timeout, help="seconds per request")
    p.add_argument("--max-image-pixels", type=int, default=lim.max_image_pixels, help="per image after resizing")
    p.add_argument("--max-request-pixels", type=int, default=lim.max_request_pixels,
                   help="all images and frames of a request after resizing")
    p.add_argument("--max-frames", type=int, default=lim.max_frames, help="frames per video")
    p.add_argument("--max-prompt-tokens", type=int, default=lim.max_prompt_tokens, help="vision tokens included")
    p.add_argument("--max-tokens", type=int, default=lim.max_tokens, help="the most max_tokens a request may ask")
    p.add_argument("--max-fetch-bytes", type=int, default=d.max_fetch_bytes, help="per fetched image or video")
    p.add_argument("--fetch-timeout", type=float, default=d.fetch_timeout, help="seconds per fetch")
    p.add_argument("--max-slot-tokens", type=int, default=None,
                   help="KV-cache tokens per row at most (default: grow as needed); longer requests are a 400")
    p.set_defaults(func=run)


def settings_from_args(args, model_name: str) -> ServeSettings:
    for name in ("max_batch", "max_queue", "max_image_pixels", "max_request_pixels", "max_frames",
                 "max_prompt_tokens", "max_tokens", "max_fetch_bytes"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if getattr(args, "max_slot_tokens", None) is not None and args.max_slot_tokens < 64:
        raise ConfigError(f"--max-slot-tokens must be at least 64 (the cache's first width), got "
                          f"{args.max_slot_tokens}")
    roots = []
    for root in args.local_root:
        if not Path(root).is_dir():
            raise ConfigError(f"--local-root {root!r} is not a folder")
        roots.append(Path(root).resolve())
    limits = Limits(max_image_pixels=args.max_image_pixels, max_request_pixels=args.max_request_pixels,
                    max_frames=args.max_frames, max_prompt_tokens=args.max_prompt_tokens, max_tokens=args.max_tokens)
    api_key = args.api_key or os.environ.get("QWEN25VL_API_KEY") or None  # not a default: --help would show it
    return ServeSettings(model_name=model_name, api_key=api_key,
                         allow_private_urls=args.allow_private_urls, local_roots=tuple(roots),
                         max_fetch_bytes=args.max_fetch_bytes, fetch_timeout=args.fetch_timeout,
                         max_batch=args.max_batch, max_queue=args.max_queue, request_timeout=args.request_timeout,
                         max_slot_tokens=getattr(args, "max_slot_tokens", None), limits=limits)


def run(args) -> int:
    import uvicorn

    from qwen25vl.api import model_path
    from qwen25vl.serve.app import create_app

    folder = model_path(args.model)
    settings = settings_from_args(args, args.served_model_name or folder.name)
    vlm = load_from_args(args, adapter=args.adapter)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach it may use it")
    app = create_app(vlm, settings)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
