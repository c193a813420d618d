"""The Python API: `vlm = qwen25vl.load(path)`, then `vlm.chat(messages)`.

```
vlm = qwen25vl.load("Qwen2.5-VL-3B-Instruct")            # CUDA + bf16 when available, else CPU (see dtype)
vlm.chat("Describe this.", images=["cat.png"])            # -> str
for delta in vlm.chat(messages, stream=True): ...         # text deltas
vlm.chat([conv_a, conv_b], max_new_tokens=64)             # a batch -> list[str]
```
Sampling defaults come from the checkpoint's generation_config.json; keyword arguments override them per call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from qwen25vl.errors import CheckpointError, InputError
from qwen25vl.generation.paths import EMBEDDED_MODEL_DIR, NO_EMBEDDED_MODEL, model_path  # noqa: F401 (re-exported)
from qwen25vl.generation.generate import Completion, Delta, generate_batch, stream_batch
from qwen25vl.generation.layout import use_decode_layout, use_native_bf16
from qwen25vl.generation.sampling import SamplingParams
from qwen25vl.generation.vision_cache import VisionCache

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}
_DEVICE_TYPES = ("cpu", "cuda")


def resolve_device(device=None) -> torch.device:
    """cuda when available, else cpu; a named device must be one we run on and present on this machine."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"device {device!r} is not a valid torch device: {err}") from None
    if device.type not in _DEVICE_TYPES:
        raise InputError(f"device {str(device)!r} is not supported: use cpu or cuda")
    if device.type == "cuda":
        _check_cuda(device)
    return torch.device("cpu") if device.type == "cpu" else device


def _check_cuda(device: torch.device) -> None:
    if not torch.cuda.is_available():
        build = "a CPU-only torch build" if torch.version.cuda is None else "no GPU visible"
        raise InputError(f"device {str(device)!r} asked for but CUDA is not available ({build}); use device='cpu'")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"device {str(device)!r} asked for but only {torch.cuda.device_count()} GPU(s) are visible")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 / AMX on x86, BF16 on Arm); else bf16 is emulated."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = {word for line in f if line.startswith(("flags", "Features")) for word in line.split()}
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_device_dtype(device=None, dtype=None, *, stored: str | None = None) -> tuple[torch.device, torch.dtype]:
    """The device and the weights' dtype. dtype None / "auto": bf16 on CUDA (fp16 on GPUs without bf16); on CPU
    bf16 when the checkpoint is `stored` in bf16 and the CPU computes it natively, else fp32."""
    device = resolve_device(device)
    if dtype is None or dtype == "auto":
        return device, _auto_dtype(device, stored)
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise InputError(f"dtype {dtype!r} is not one of {sorted(_DTYPES) + ['auto']}")
        dtype = _DTYPES[dtype]
    if dtype not in _DTYPES.values():
        raise InputError(f"dtype {dtype!r} is not one of float32, bfloat16, float16")
    return device, dtype


def _auto_dtype(device: torch.device, stored: str | None) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if stored == "bfloat16" and cpu_has_bf16() else torch.float32


def load(path: str | Path | None = None, device=None, dtype=None, *, threads: int | str | None = "auto",
         compile: bool = False, vision_cache_bytes: int = 256 * 2**20, decode_layout: bool | None = None,
         adapter: str | Path | None = None) -> "VLM":
    """Load a checkpoint folder (model, processor, generation defaults).

    dtype: a torch dtype, its name, None / "auto" (see `resolve_device_dtype`), or "int8": the language model's
    linear layers quantised at load to int8 weights with per-channel scales, the rest fp32 (`model/quant.py`; a
    folder saved from such a model loads quantised whatever the dtype). threads: torch's CPU thread
    count, set for the process on CPU: N as given, "auto" as `qwen25vl.runtime.auto_threads` chooses (1 for a tiny
    model, else the cores idle at load), None keeps torch's current count. Why auto: with another process on the
    second of 2 cores, a tiny model's 100 greedy tokens took 13.4 s on 2 threads and 0.8-1.1 s on 1. compile:
    torch.compile the decode step (pays on GPU; a cold compile costs seconds on CPU). decode_layout: store wide LLM weights transposed for faster CPU
    decoding (`generation/layout.py`); default on for CPU, except bf16 weights on a CPU without native bf16 (there
    torch's bf16 product with the transposed layout ran 10x slower: 0.9 against 9.8 GB/s, AMD EPYC with AVX2, 4864 x
    896, 1 thread; benchmarks/results/quant.md). bf16 weights on CPU run their decode products on the AVX2 bf16
    mat-vec where it builds (`layout.use_native_bf16`; not when decode_layout is given). vision_cache_bytes: LRU budget of image/video features
    reused across calls (0 = off).
    """
    from qwen25vl.config import Qwen25VLConfig
    from qwen25vl.model.vlm import Qwen25VL
    from qwen25vl.processing.processor import Processor

    folder = model_path(path)
    _check_threads(threads)
    quantize = isinstance(dtype, str) and dtype == "int8"  # int8 LLM linears, everything else fp32
    if quantize and adapter is not None:
        raise InputError("an unmerged LoRA adapter runs on floating-point weights, not int8: merge it first "
                         "(qwen25vl train merge) and load the merged folder with dtype int8")
    device, dtype = resolve_device_dtype(device, "float32" if quantize else dtype,
                                         stored=Qwen25VLConfig.from_pretrained(folder).torch_dtype)
    model = Qwen25VL.from_pretrained(folder, dtype=dtype, device=device).eval()
    if quantize:
        from qwen25vl.model.quant import quantize_model

        quantize_model(model)
    if adapter is not None:
        from qwen25vl.train.lora import load_adapter

        load_adapter(model, adapter)
        model.eval()
    reason = _set_threads(model, threads) if device.type == "cpu" else None
    # bf16 weights on CPU: the native mat-vec where it builds (streams at fp32's per-core rate; torch's bf16
    # product ran 1.2x slower with the usual layout and 2.3x slower with the decode layout, AMD EPYC with AVX512-BF16)
    native_bf16 = (decode_layout is None and device.type == "cpu" and dtype == torch.bfloat16
                   and use_native_bf16(model) > 0)
    if decode_layout is None and native_bf16:
        decode_layout = False
    elif decode_layout is None:
        decode_layout = device.type == "cpu" and (dtype != torch.bfloat16 or cpu_has_bf16())
    if decode_layout:
        use_decode_layout(model)
    processor = Processor.from_pretrained(folder)
    vlm = VLM(model, processor, generation_config=read_generation_config(folder), compile=compile,
              vision_cache=VisionCache(vision_cache_bytes) if vision_cache_bytes else None)
    vlm.threads_reason = reason
    return vlm


def _check_threads(threads) -> None:
    if threads is None or threads == "auto":
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError(f"threads must be a positive int, 'auto' or None, got {threads!r}")


def _set_threads(model, threads) -> str | None:
    """Apply the thread choice before the decode layout (which depends on it); say why, for the startup line."""
    if threads is None:
        return None
    reason = "as asked"
    if threads == "auto":
        from qwen25vl.runtime import auto_threads

        threads, reason = auto_threads(model)
    torch.set_num_threads(threads)
    return reason


def read_generation_config(folder: Path) -> dict:
    path = folder / "generation_config.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise CheckpointError(f"cannot parse {path}: {err}") from None
    return data if isinstance(data, dict) else {}


def _is_batch(messages: Any) -> bool:
    return isinstance(messages, (list, tuple)) and bool(messages) and all(
        isinstance(m, (list, tuple)) for m in messages)


def as_conversation(prompt: str, images: Sequence[Any] = (), videos: Sequence[Any] = ()) -> list[dict]:
    """A plain prompt with attachments -> one user message (images and videos first, as the cookbooks do)."""
    parts = [{"type": "image", "image": im} for im in images] + [{"type": "video", "video": v} for v in videos]
    return [{"role": "user", "content": parts + [{"type": "text", "text": prompt}]}]


class VLM:
    """A loaded model with its processor. `chat` for text, `generate` for Completions (token ids, finish reasons)."""

    def __init__(self, model, processor, *, generation_config: dict | None = None, compile: bool = False,
                 vision_cache: VisionCache | None = None):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.generation_config = dict(generation_config or {})
        self.defaults = SamplingParams.from_generation_config(self.generation_config)
        self.compile = compile
        self.vision_cache = vision_cache
        self.threads_reason: str | None = None  # how load chose the thread count, for the startup line

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def sampling_params(self, **overrides: Any) -> SamplingParams:
        return self.defaults.updated(**overrides)

    def _stop_ids(self) -> tuple[int, ...]:
        return tuple(self.tokenizer.eos_token_ids)

    def prepare(self, messages, *, images=(), videos=(), **processor_kwargs):
        """messages (one conversation, a batch of them, or a prompt string) -> (processor batch, is_batch)."""
        if isinstance(messages, str):
            messages = as_conversation(messages, images, videos)
        elif images or videos:
            raise InputError("images= / videos= go with a plain string prompt; put them in the messages instead")
        if not isinstance(messages, (list, tuple)) or not messages:
            raise InputError(f"messages must be a non-empty list of messages or conversations, got {messages!r:.80}")
        batch = _is_batch(messages)
        inputs = self.processor(list(messages), add_generation_prompt=True, **processor_kwargs)
        return inputs, batch

    def generate(self, messages, *, images=(), videos=(), processor_kwargs: dict | None = None,
                 **sampling: Any) -> list[Completion]:
        """One Completion per conversation (a single conversation gives a list of one)."""
        params = self.sampling_params(**sampling)
        inputs, _ = self.prepare(messages, images=images, videos=videos, **(processor_kwargs or {}))
        return generate_batch(self.model, self.tokenizer, inputs, params, stop_token_ids=self._stop_ids(),
                              vision_cache=self.vision_cache, compile=self.compile)

    def chat(self, messages, stream: bool = False, *, images=(), videos=(), processor_kwargs: dict | None = None,
             **sampling: Any):
        """Text of the answer (a list of texts for a batch). stream=True yields text deltas instead (for a batch:
        `Delta(index, text, finish_reason)` events)."""
        params = self.sampling_params(**sampling)
        inputs, batch = self.prepare(messages, images=images, videos=videos, **(processor_kwargs or {}))
        if stream:
            events = stream_batch(self.model, self.tokenizer, inputs, params, stop_token_ids=self._stop_ids(),
                                  vision_cache=self.vision_cache, compile=self.compile)
            return events if batch else _texts(events)
        done = generate_batch(self.model, self.tokenizer, inputs, params, stop_token_ids=self._stop_ids(),
                              vision_cache=self.vision_cache, compile=self.compile)
        return [c.text for c in done] if batch else done[0].text


def _texts(events: Iterator[Delta]) -> Iterator[str]:
    for event in events:
        if event.text:
            yield event.text
