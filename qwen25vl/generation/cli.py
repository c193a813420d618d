"""`qwen25vl run` (one shot) and `qwen25vl chat` (a REPL on stdin).

Answers stream to stdout; progress and status go to stderr. User mistakes (a missing file, a bad image, a folder
that is not a model) become `Qwen25VLError`s, which the dispatcher prints as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qwen25vl.errors import InputError
from qwen25vl.runtime import add_runtime_args, fps_arg, load_from_args, positive_int_arg

CHAT_HELP = ("commands: /image PATH, /video PATH, /reset, /quit (anything else is your message; // escapes a /); "
             "Ctrl-C stops a reply, Ctrl-C or Ctrl-D at the prompt quits")


def register(subparsers) -> None:
    run = subparsers.add_parser("run", help="answer one prompt (with images / a video) and exit")
    _common(run)
    run.add_argument("--prompt", "-p", help="the question (default: read stdin)")
    run.add_argument("--image", action="append", default=[], metavar="PATH", help="attach an image (repeatable)")
    run.add_argument("--video", action="append", default=[], metavar="PATH", help="attach a video (repeatable)")
    run.add_argument("--json", action="store_true", help="print one JSON object (text, finish_reason, token counts)")
    run.set_defaults(func=cmd_run)

    chat = subparsers.add_parser("chat", help="interactive chat on stdin; " + CHAT_HELP)
    _common(chat)
    chat.set_defaults(func=cmd_chat)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", help="checkpoint folder (default: the embedded tiny model)")
    add_runtime_args(p)
    p.add_argument("--fps", type=fps_arg, help="video frames sampled per second (default 2)")
    p.add_argument("--max-pixels", type=positive_int_arg, help="per image / video frame pixel budget")
    p.add_argument("--max-new-tokens", type=int, help="default: the checkpoint's generation_config, else 256")
    p.add_argument("--temperature", type=float, help="0 = greedy (default: the checkpoint's generation_config)")
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", default=None, metavar="TEXT", help="stop string (repeatable)")
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step (pays off on GPU)")


def _sampling(args) -> dict:
    out = {"max_new_tokens": args.max_new_tokens,
           "temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k,
           "repetition_penalty": args.repetition_penalty, "seed": args.seed}
    if args.stop:
        out["stop"] = tuple(args.stop)
    return {k: v for k, v in out.items() if v is not None}


def _load(args):
    print(f"loading {args.model or 'embedded tiny model'} ...", file=sys.stderr)
    return load_from_args(args, compile=args.compile)


def _check_file(kind: str, path: str) -> str:
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{kind} file {path!r} does not exist")
    if not p.is_file():
        raise InputError(f"{kind} path {path!r} is not a file")
    return str(p)


def _image_part(path: str, args) -> dict:
    part = {"type": "image", "image": _check_file("image", path)}
    if args.max_pixels is not None:
        part["max_pixels"] = args.max_pixels
    return part


def _video_part(path: str, args) -> dict:
    part = {"type": "video", "video": _check_file("video", path)}
    if args.fps is not None:
        part["fps"] = args.fps
    if args.max_pixels is not None:
        part["max_pixels"] = args.max_pixels
    return part


def _prepare(vlm, messages):
    """Run the processor (video decoding shows a tqdm bar on stderr), turning file-format failures of third-party
    decoders into readable errors."""
    from tqdm import tqdm

    bars: list = []

    def progress(done: int, total: int) -> None:  # the video decoder reports frames as it goes
        if not bars:
            bars.append(tqdm(total=total, desc="decoding video", unit="frame", file=sys.stderr, leave=False))
        bars[0].update(done - bars[0].n)

    try:
        return vlm.prepare(messages, video_options={"progress": progress})[0]
    except InputError:
        raise
    except (OSError, ValueError) as err:  # PIL's UnidentifiedImageError, av's InvalidDataError, ...
        raise InputError(f"cannot read attachment: {err}") from None
    finally:
        for bar in bars:
            bar.close()


def _answer(vlm, messages, sampling: dict, show: bool = True):
    """Stream one answer to stdout (when `show`); return its text and the TokenGenerator (tokens, finish)."""
    from qwen25vl.generation.generate import TokenGenerator, _text_events

    inputs = _prepare(vlm, messages)
    gen = TokenGenerator(vlm.model, inputs, vlm.sampling_params(**sampling), stop_token_ids=vlm._stop_ids(),
                         vision_cache=vlm.vision_cache, compile=vlm.compile)
    parts = []
    for delta in _text_events(gen, vlm.tokenizer):
        if show and delta.text:
            sys.stdout.write(delta.text)
            sys.stdout.flush()
        parts.append(delta.text)
    return "".join(parts), gen


def cmd_run(args) -> int:
    prompt = args.prompt
    if prompt is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise InputError("no --prompt given (and nothing on stdin)")
        prompt = sys.stdin.read()
    parts = [_image_part(p, args) for p in args.image] + [_video_part(p, args) for p in args.video]
    sampling = _sampling(args)
    vlm = _load(args)
    messages = [{"role": "user", "content": parts + [{"type": "text", "text": prompt}]}]
    text, gen = _answer(vlm, messages, sampling, show=not args.json)
    if args.json:
        print(json.dumps({"text": text, "finish_reason": gen.finish_reasons[0],
                          "prompt_tokens": int(gen.prompt_tokens[0]), "completion_tokens": len(gen.tokens[0])},
                         ensure_ascii=False))
    else:
        print()
    return 0


def cmd_chat(args) -> int:
    """The REPL. Ctrl-C during a reply stops it (the turn is dropped, the session goes on); Ctrl-C at the prompt
    exits with 130, end of input (Ctrl-D) or /quit with 0."""
    session = _ChatSession(_load(args), args)
    interactive = sys.stdin.isatty()
    print(CHAT_HELP, file=sys.stderr)
    while True:
        try:
            if interactive:
                print("> ", end="", flush=True)
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            print(file=sys.stderr)  # end the prompt's line
            return 130
        if not line or not session.handle(line.strip()):
            return 0


class _ChatSession:
    """One conversation: its history, the attachments waiting for the next message, the sampling flags."""

    def __init__(self, vlm, args):
        self.vlm, self.args, self.sampling = vlm, args, _sampling(args)
        self.history: list[dict] = []
        self.attachments: list[dict] = []

    def handle(self, line: str) -> bool:
        """Act on one input line; False to quit. A bad attachment or command costs the turn, not the session."""
        command, _, rest = line.partition(" ")
        try:
            return self._dispatch(line, command, rest.strip())
        except InputError as err:
            print(f"qwen25vl: error: {err}", file=sys.stderr)
            if command not in ("/image", "/video"):
                self.attachments = []
            return True

    def _dispatch(self, line: str, command: str, rest: str) -> bool:
        if not line:
            return True
        if command == "/quit":
            return False
        if command == "/reset":
            self.history, self.attachments = [], []
            print("(conversation cleared)", file=sys.stderr)
        elif command in ("/image", "/video"):
            self._attach(command, rest)
        elif command.startswith("/") and not line.startswith("//"):
            raise InputError(f"unknown command {command!r}; {CHAT_HELP}")
        else:
            self._reply(line[1:] if line.startswith("//") else line)  # // escapes a leading slash
        return True

    def _attach(self, command: str, path: str) -> None:
        if not path:
            raise InputError(f"{command} needs a file path")
        make = _image_part if command == "/image" else _video_part
        self.attachments.append(make(path, self.args))
        print(f"(attached {path})", file=sys.stderr)

    def _reply(self, text: str) -> None:
        turn = {"role": "user", "content": self.attachments + [{"type": "text", "text": text}]}
        try:
            answer, _ = _answer(self.vlm, self.history + [turn], self.sampling)
        except KeyboardInterrupt:  # the reply is dropped; its attachments wait for the next message
            print()  # end the partial answer's line
            print("(reply stopped)", file=sys.stderr)
            return
        print()
        self.history += [turn, {"role": "assistant", "content": answer}]
        self.attachments = []
