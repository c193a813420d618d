"""`qwen25vl plan`: what a request will cost, before anything heavy runs.

Reads config.json, preprocessor_config.json, the tokenizer and the media headers (an image's size from its header, a
video's frame count, rate and size from its container, demuxed but not decoded); never the weights. Visual tokens
follow the processor's own rules (`smart_resize`, the video frame sampling and per-frame pixel budget), so the counts
are exact; memory figures are arithmetic on the config:

- weights: the parameter count (computed from the config; equals the published counts) x bytes of the dtype.
- KV cache: layers x 2 (k and v) x KV heads x head dim x (prompt + max new tokens) x bytes, as `KVCache` allocates.
- vision peak: one tower call over a kind's patches (N rows): the float32 pixel rows, then the larger of a block's
  attention phase (residual, normed input, qkv, rotated q and k, output: 8 x N x width) and its MLP phase (residual,
  normed input, gate, up, their product: 2 x N x width + 3 x N x MLP width). Attention scores are not counted: the
  CPU SDPA kernels and flash attention work in blocks and never hold an N x N matrix.
- prefill peak: the same two phases of an LLM layer over the prompt's T tokens (the embeddings stay alive beside
  the residual: attention 6 x T x hidden + 3 x T x KV width, MLP 4 x T x hidden + 3 x T x MLP width), the image
  features, and the (T x T) attention mask: bool, plus the copy in the model's dtype SDPA makes of it.
Checked once against the peak RSS of a forward (fp32, 1 thread): a real-width 2-block tower over 4,096 patches grew
194 MB (estimate 201 MB beyond the pixel rows); two 0.5B-wide LLM layers over 2,048 tokens grew 174 MB (estimate 162).
An estimate of the largest transient, not a measurement: allocator slack and the processor's uint8 frames come on top.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qwen25vl.errors import InputError
from qwen25vl.runtime import DTYPE_CHOICES, fps_arg, positive_int_arg

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_PIXEL_BYTES = 4  # the processor's pixel rows are float32 whatever the model's dtype
_MB = 2**20


# --- arithmetic on the config -------------------------------------------------------------------------------------

def text_parameters(t) -> int:
    """Parameters of the language model (TextConfig): embedding, layers, final norm, untied head."""
    kv = t.num_key_value_heads * t.head_dim
    attention = (t.hidden_size + 1) * t.hidden_size + 2 * (t.hidden_size + 1) * kv + t.hidden_size ** 2  # q,k,v bias
    layer = attention + 3 * t.hidden_size * t.intermediate_size + 2 * t.hidden_size  # MLP, two norms
    head = 0 if t.tie_word_embeddings else t.vocab_size * t.hidden_size
    return t.vocab_size * t.hidden_size + t.num_hidden_layers * layer + t.hidden_size + head


def vision_parameters(v) -> int:
    """Parameters of the vision tower (VisionConfig): patch conv, blocks (biased linears), 2x2 merger."""
    d, m = v.hidden_size, v.intermediate_size
    patch = d * v.in_chans * v.temporal_patch_size * v.patch_size ** 2
    block = 2 * d + (d + 1) * 3 * d + (d + 1) * d + 2 * (d + 1) * m + (m + 1) * d
    merged = d * v.spatial_merge_size ** 2
    merger = d + (merged + 1) * merged + (merged + 1) * v.out_hidden_size
    return patch + v.depth * block + merger


def kv_cache_bytes(t, tokens: int, nbytes: int) -> int:
    return t.num_hidden_layers * 2 * t.num_key_value_heads * t.head_dim * tokens * nbytes


def vision_peak_bytes(v, patches: int, nbytes: int) -> int:
    if patches == 0:
        return 0
    attention = 8 * patches * v.hidden_size
    mlp = 2 * patches * v.hidden_size + 3 * patches * v.intermediate_size
    return patches * 1176 * _PIXEL_BYTES + max(attention, mlp) * nbytes


def prefill_peak_bytes(t, tokens: int, visual_tokens: int, nbytes: int) -> int:
    kv = t.num_key_value_heads * t.head_dim
    attention = tokens * (6 * t.hidden_size + 3 * kv)  # embeds, x, normed, q, rotated q, out; k, v, rotated k
    mlp = tokens * (4 * t.hidden_size + 3 * t.intermediate_size)  # embeds, x, normed, new x; act, up, product
    features = visual_tokens * t.hidden_size
    return (max(attention, mlp) + features) * nbytes + tokens * tokens * (1 + nbytes)


# --- media --------------------------------------------------------------------------------------------------------

@dataclass
class ItemPlan:
    kind: str  # "image" or "video"
    path: str
    original_size: tuple[int, int]  # (width, height)
    resized_size: tuple[int, int]
    grid_thw: tuple[int, int, int]
    patches: int
    tokens: int
    frames: dict = field(default_factory=dict)  # videos: total, fps, sampled, sampled_fps


def _grid_item(kind: str, path: str, size, resized_hw, groups: int, config) -> ItemPlan:
    rh, rw = resized_hw
    grid = (groups, rh // config.patch_size, rw // config.patch_size)
    patches = math.prod(grid)
    return ItemPlan(kind, path, tuple(size), (rw, rh), grid, patches, patches // config.merge_size ** 2)


def image_item(path: str, config, max_pixels: int | None) -> ItemPlan:
    """An image's tokens from its header (EXIF rotation applied, as the processor does)."""
    from qwen25vl.processing.image import resolve_pixel_limits, smart_resize

    width, height = _image_size(path)
    lo, hi = resolve_pixel_limits(max_pixels=max_pixels, default_min=config.min_pixels,
                                  default_max=config.max_pixels, pixels_per_token=config.pixels_per_token,
                                  name=f"image {path!r}")
    try:
        resized = smart_resize(height, width, config.factor, lo, hi)
    except InputError as err:
        raise InputError(f"image {path!r}: {err}") from None
    return _grid_item("image", path, (width, height), resized, 1, config)


def _image_size(path: str) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(_checked(path, "image")) as image:
            width, height = image.size
            turned = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # the orientations that swap the sides
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputError(f"image {path!r}: cannot read its header ({err})") from None
    return (height, width) if turned else (width, height)


def video_item(path: str, config, fps: float | None, max_pixels: int | None) -> ItemPlan:
    """A video's tokens from its container: frames sampled as the processor samples, frame size from the budget."""
    from qwen25vl.processing.video_reader import open_video
    from qwen25vl.processing.image import smart_resize
    from qwen25vl.processing.video import FPS, frame_pixel_limits, sample_frames

    name = f"video {path!r}"
    with open_video(_checked(path, "video"), name) as video:
        total, rate, (width, height) = video.total_frames, video.fps, video.size
    indices, sampled_fps = sample_frames(total, rate, fps=fps or FPS, name=name)
    lo, hi = frame_pixel_limits(len(indices), None, max_pixels, None)
    try:
        resized = smart_resize(height, width, config.factor, lo, hi)
    except InputError as err:
        raise InputError(f"{name}: {err}") from None
    item = _grid_item("video", path, (width, height), resized,
                      math.ceil(len(indices) / config.temporal_patch_size), config)
    item.frames = {"total": total, "fps": rate, "sampled": len(indices), "sampled_fps": sampled_fps}
    return item


def _checked(path: str, kind: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"{kind} {path!r} " + ("is not a file" if p.exists() else "does not exist"))
    return p


# --- the plan -----------------------------------------------------------------------------------------------------

@dataclass
class Plan:
    model: str
    dtype: str
    device: str
    parameters: dict
    items: list
    prompt_tokens: int
    max_new_tokens: int
    memory_mb: dict


def prompt_tokens(folder: Path, prompt: str, items: list[ItemPlan]) -> int:
    """Tokens of the rendered user turn with the generation prompt, each item's pads counted."""
    from qwen25vl.processing.chat_template import render
    from qwen25vl.processing.tokenizer import Tokenizer

    parts = [{"type": item.kind, item.kind: item.path} for item in items]
    messages = [{"role": "user", "content": parts + [{"type": "text", "text": prompt}]}]
    rendered = render(messages, tokenizer=Tokenizer.from_pretrained(folder), add_generation_prompt=True,
                      image_token_counts=[i.tokens for i in items if i.kind == "image"] or None,
                      video_token_counts=[i.tokens for i in items if i.kind == "video"] or None)
    return len(rendered.input_ids)


def memory(config, items: list[ItemPlan], tokens: int, new_tokens: int, nbytes: int) -> dict:
    """Bytes (in MB) of the weights, the KV cache, the vision and prefill transients, and their peak sum."""
    params = text_parameters(config.text) + vision_parameters(config.vision)
    vision = max(vision_peak_bytes(config.vision, sum(i.patches for i in items if i.kind == kind), nbytes)
                 for kind in ("image", "video"))
    visual = sum(i.tokens for i in items)
    out = {"weights": params * nbytes, "kv_cache": kv_cache_bytes(config.text, tokens + new_tokens, nbytes),
           "vision_peak": vision, "prefill_peak": prefill_peak_bytes(config.text, tokens, visual, nbytes)}
    out["total_peak"] = out["weights"] + out["kv_cache"] + max(out["vision_peak"], out["prefill_peak"])
    return {k: v / _MB for k, v in out.items()}


def make_plan(model, *, images=(), videos=(), prompt: str = "", max_pixels: int | None = None,
              fps: float | None = None, max_new_tokens: int | None = None, dtype: str = "auto",
              device: str | None = None) -> Plan:
    """The plan of one request: `model` a checkpoint folder (config.json, tokenizer, preprocessor config)."""
    from qwen25vl.api import read_generation_config, resolve_device_dtype
    from qwen25vl.config import Qwen25VLConfig
    from qwen25vl.generation.paths import model_path
    from qwen25vl.processing.image import ImageProcessorConfig

    folder = model_path(model)
    config = Qwen25VLConfig.from_pretrained(folder)
    image_config = ImageProcessorConfig.from_pretrained(folder)
    items = [image_item(p, image_config, max_pixels) for p in images]
    items += [video_item(p, image_config, fps, max_pixels) for p in videos]
    device, torch_dtype = resolve_device_dtype(device, dtype, stored=config.torch_dtype)
    dtype_name = str(torch_dtype).removeprefix("torch.")
    if max_new_tokens is None:
        max_new_tokens = int(read_generation_config(folder).get("max_new_tokens") or 256)
    tokens = prompt_tokens(folder, prompt, items)
    params = {"text": text_parameters(config.text), "vision": vision_parameters(config.vision)}
    params["total"] = params["text"] + params["vision"]
    return Plan(folder.name, dtype_name, str(device), params, items, tokens, max_new_tokens,
                memory(config, items, tokens, max_new_tokens, _DTYPE_BYTES[dtype_name]))


# --- output -------------------------------------------------------------------------------------------------------

def _item_line(item: ItemPlan) -> str:
    (w, h), (rw, rh) = item.original_size, item.resized_size
    line = f"{item.kind} {item.path}: {w}x{h}"
    if item.frames:
        f = item.frames
        line += (f", {f['total']} frames at {f['fps']:g} fps -> {f['sampled']} frames at {f['sampled_fps']:.3g} fps"
                 f" ({item.grid_thw[0]} groups)")
    return line + f" -> {rw}x{rh}, grid {item.grid_thw}, {item.patches} patches, {item.tokens} visual tokens"


def format_plan(plan: Plan) -> str:
    p, m = plan.parameters, plan.memory_mb
    visual = sum(i.tokens for i in plan.items)
    lines = [f"model {plan.model}: {p['total'] / 1e6:,.1f}M parameters (LLM {p['text'] / 1e6:,.1f}M, vision "
             f"{p['vision'] / 1e6:,.1f}M), {plan.dtype} on {plan.device}"]
    lines += [_item_line(item) for item in plan.items]
    lines.append(f"prompt {plan.prompt_tokens:,} tokens ({visual:,} visual) + {plan.max_new_tokens:,} new tokens")
    lines.append("memory (MB): " + ", ".join(f"{k.replace('_', ' ')} {v:,.1f}" for k, v in m.items()))
    return "\n".join(lines)


def register(subparsers) -> None:
    p = subparsers.add_parser("plan", help="visual tokens, weight, KV-cache and activation memory of a request, "
                                           "before it runs (reads config and media headers only)")
    p.add_argument("--model", "-m", help="checkpoint folder (default: the embedded tiny model)")
    p.add_argument("--image", action="append", default=[], metavar="PATH", help="an image (repeatable)")
    p.add_argument("--video", action="append", default=[], metavar="PATH", help="a video (repeatable)")
    p.add_argument("--prompt", "-p", default="", help="the question's text (default: empty)")
    p.add_argument("--max-pixels", type=positive_int_arg, help="per image / video frame pixel budget")
    p.add_argument("--fps", type=fps_arg, help="video frames sampled per second (default 2)")
    p.add_argument("--max-new-tokens", type=int, help="default: the checkpoint's generation_config, else 256")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help="weights' dtype (default: as load picks)")
    p.add_argument("--device", help="cpu, cuda ... (default: cuda when available; picks the auto dtype)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    if args.max_new_tokens is not None and args.max_new_tokens < 0:
        raise InputError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    plan = make_plan(args.model, images=args.image, videos=args.video, prompt=args.prompt,
                     max_pixels=args.max_pixels, fps=args.fps, max_new_tokens=args.max_new_tokens,
                     dtype=args.dtype, device=args.device)
    print(json.dumps(asdict(plan)) if args.json else format_plan(plan), file=sys.stdout)
    return 0
