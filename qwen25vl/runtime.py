"""What a command runs on: the `--device / --dtype / --threads` flags every command shares, the thread count chosen
when none is given, and the startup line naming model, device, dtype, threads and weight memory.

Commands call `add_runtime_args(parser)` when building their parser and `load_from_args(args)` (or
`runtime_from_args(args)` for the keyword arguments of `qwen25vl.load`) when running. Free of torch imports at module
level, so `--help` and argument mistakes stay fast.

Threads: `--threads N` is used as given. Without it ("auto"), a model whose largest decode matrix is below the
decode layout's split size (`generation/layout.py`, a tiny test model) runs on one thread, since its per-step
products take microseconds and a thread hand-off costs more; otherwise every core our process may use that was
idle at load (CPU time over 0.1 s from /proc/stat), at least one. A core another process keeps busy is left to
it: beside busy processes on 2 cores, 2 threads took a tiny model's 100 greedy tokens from 0.8-1.1 s to 13.4 s and
a 0.5B model's decode from 1.9 to 0.25 tokens/s (benchmarks/results/dtype.md).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16", "int8")
_IDLE_SAMPLE_S = 0.1


def _threads_arg(text: str) -> int | str:
    return text if text == "auto" else positive_int_arg(text)


def add_runtime_args(parser: argparse.ArgumentParser, *, device_help: str | None = None) -> None:
    """--device, --dtype and --threads, with the same names, choices and checks on every command."""
    parser.add_argument("--device", help=device_help or "cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                        help="weights' dtype (default auto: bf16 on CUDA; on CPU bf16 where the CPU computes it "
                             "natively and the checkpoint is stored in it, else float32; int8: the language "
                             "model's linear layers quantised at load, per-channel int8 weights)")
    parser.add_argument("--threads", type=_threads_arg, default="auto", metavar="N",
                        help="CPU threads (default auto: 1 for a tiny model, else the cores idle at load)")


def runtime_from_args(args) -> dict:
    """The keyword arguments of `qwen25vl.load` that the runtime flags give."""
    return {"device": args.device, "dtype": args.dtype, "threads": args.threads}


def load_from_args(args, **load_kwargs):
    """Check the model folder (before the slow imports), load it as the flags ask and print the startup line."""
    from qwen25vl.generation.paths import model_path

    folder = model_path(args.model)
    import qwen25vl

    vlm = qwen25vl.load(folder, **runtime_from_args(args), **load_kwargs)
    print(startup_line(vlm, folder.name), file=sys.stderr)
    return vlm


# --- thread choice ------------------------------------------------------------------------------------------------

def choose_threads(cores: int, busy: float, largest_matrix_bytes: int, split_min_bytes: int) -> int:
    """The "auto" thread count: 1 when no decode product is worth splitting, else the cores not busy (>= 1)."""
    if largest_matrix_bytes < split_min_bytes:
        return 1
    return max(1, min(cores, cores - math.floor(busy + 0.5)))


def usable_cores() -> list[int]:
    """The CPUs this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def _cpu_times() -> dict[int, tuple[int, int]]:
    """cpu index -> (idle jiffies, total jiffies), from /proc/stat; {} where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            lines = [line.split() for line in f if line.startswith("cpu") and line[3].isdigit()]
    except OSError:
        return {}
    times = {}
    for fields in lines:
        values = [int(v) for v in fields[1:]]
        times[int(fields[0][3:])] = (values[3] + (values[4] if len(values) > 4 else 0), sum(values[:8]))
    return times


def busy_fraction(before: dict, after: dict, cores: list[int]) -> float:
    """How many of `cores` other work kept busy between two `_cpu_times` readings (0 .. len(cores))."""
    busy = 0.0
    for cpu in cores:
        if cpu in before and cpu in after:
            idle = after[cpu][0] - before[cpu][0]
            total = after[cpu][1] - before[cpu][1]
            busy += 1 - idle / total if total > 0 else 0.0
    return busy


def busy_cores(cores: list[int], seconds: float = _IDLE_SAMPLE_S) -> float:
    """Cores (of ours) other processes used over a short sample; 0 where /proc/stat is unavailable."""
    before = _cpu_times()
    time.sleep(seconds)
    return busy_fraction(before, _cpu_times(), cores)


def auto_threads(model) -> tuple[int, str]:
    """(threads, why) for a loaded CPU model."""
    from qwen25vl.generation.layout import SPLIT_MIN_BYTES, largest_decode_matrix_bytes

    cores = usable_cores()
    largest = largest_decode_matrix_bytes(model)
    if largest < SPLIT_MIN_BYTES:
        return 1, "auto: tiny model"
    busy = busy_cores(cores)
    threads = choose_threads(len(cores), busy, largest, SPLIT_MIN_BYTES)
    return threads, f"auto: {len(cores)} cores, {busy:.1f} busy at load"


# --- the startup line ---------------------------------------------------------------------------------------------

def startup_line(vlm, name: str) -> str:
    """One line for stderr: model, parameters, device, dtype, threads and weight memory."""
    import torch

    params = list(vlm.model.parameters())
    count = sum(p.numel() for p in params)
    weight_mb = sum(p.numel() * p.element_size() for p in params) / 2**20
    dtype = str(params[0].dtype).removeprefix("torch.")
    if getattr(vlm.model, "quantization", None):
        dtype = f"int8 LLM linears + {dtype}"
    count_threads = torch.get_num_threads()
    threads = f"{count_threads} thread{'s' if count_threads > 1 else ''}" + (f" ({vlm.threads_reason})" if vlm.threads_reason else "")
    return (f"qwen25vl: {name} ({count / 1e6:.1f}M parameters) on {vlm.device}, {dtype}, {threads}, "
            f"weights {weight_mb:.{1 if weight_mb < 10 else 0}f} MB")


def positive_int_arg(text: str) -> int:
    """argparse type of a count or pixel budget: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}")
    return value


def fps_arg(text: str) -> float:
    """argparse type of --fps: a finite positive frame rate (the API rejects the rest; say so before loading)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of frames per second, got {text!r}")
    return value
