"""Small native kernels, built on first use with the machine's C compiler and loaded through ctypes.

On CPUs with only AVX2 torch has no int8 or bf16 product that streams at memory speed (benchmarks/results/quant.md:
`torch._weight_int8pack_mm` ~4.5 GB/s, bf16 products 8-10 GB/s), so int8 and bf16 decode use `kernels/matvec.c`
(each weight widened to fp32 exactly, fp32 sums; 0.5B gate/up 4864 x 896, 1 thread: int8 0.29-0.32 ms, fp32
`F.linear` 1.3 ms). The library is compiled once per source, compiler and flags into `$QWEN25VL_CACHE` (default
`~/.cache/qwen25vl/kernels`; the temporary folder when that is not writable), with `-fopenmp` so that it runs on the
OpenMP runtime torch has already loaded (same `libgomp.so.1`: one thread pool; checked at load: its thread count must
follow `torch.set_num_threads`). Each call passes torch's thread count, since a thread other than the one that set it
(a server worker) would otherwise start from the runtime's default. Nothing here is required: without a compiler,
without AVX2 + FMA, or with `QWEN25VL_NATIVE=0`, `matvec()` returns None and callers use torch.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("kernels") / "matvec.c"
FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC", "-fno-math-errno")
_lock = threading.Lock()
_state: dict = {}


def cache_dir() -> Path:
    root = os.environ.get("QWEN25VL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "qwen25vl")
    return Path(root) / "kernels"


def cpu_has_avx2_fma() -> bool:
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    return {"avx2", "fma"} <= set(flags.split(":", 1)[-1].split())


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def build(force: bool = False) -> Path:
    """Compile the kernel library (atomically: a temporary file renamed into place); returns its path."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + cc.encode() + " ".join(FLAGS).encode()).hexdigest()[:16]
    out = cache_dir() / f"matvec-{key}.so"
    if out.is_file() and not force:
        return out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(out.parent, os.W_OK):
            raise PermissionError(out.parent)
    except OSError:  # a read-only home: the temporary folder, one per user
        out = Path(tempfile.gettempdir()) / f"qwen25vl-kernels-{os.getuid()}" / out.name
        if out.is_file() and not force:
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        done = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{cc} failed: {done.stderr.strip()[-500:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _load():
    if os.environ.get("QWEN25VL_NATIVE", "1") == "0":
        return None, "disabled by QWEN25VL_NATIVE=0"
    if sys.platform != "linux" or not cpu_has_avx2_fma():
        return None, "needs Linux on a CPU with AVX2 and FMA"
    try:
        lib = ctypes.CDLL(str(build()))
    except (RuntimeError, OSError) as e:
        return None, f"could not build or load the kernel: {e}"
    fns = {}
    for kind in ("int8", "bf16"):
        fn = getattr(lib, f"qw_{kind}_matvec")
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                       ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
        fns[kind] = fn
    lib.qw_max_threads.restype = ctypes.c_int
    before = torch.get_num_threads()
    try:  # the same OpenMP runtime as torch's: its thread count follows torch.set_num_threads
        torch.set_num_threads(1)
        shared = lib.qw_max_threads() == 1
        torch.set_num_threads(max(2, before))
        shared = shared and lib.qw_max_threads() == max(2, before)
    finally:
        torch.set_num_threads(before)
    if not shared:
        return None, "the kernel's OpenMP runtime is not torch's (two thread pools would fight for the cores)"
    return fns, None


def matvec() -> dict | None:
    """{"int8": fn, "bf16": fn}: the ctypes functions `qw_<kind>_matvec(x, rows, w, scale, bias, y, N, K, threads)`,
    or None (see `why_not`)."""
    if "fns" not in _state:
        with _lock:
            if "fns" not in _state:
                _state["fns"], _state["why"] = _load()
    return _state["fns"]


def why_not() -> str | None:
    """Why `matvec()` is None (None when it is available)."""
    matvec()
    return _state["why"]


_WEIGHT_KINDS = {torch.int8: "int8", torch.bfloat16: "bf16"}
MAX_ROWS = 16  # decode batches; above this the product is compute-bound and torch's GEMM is the better one


def kernels_for(x: torch.Tensor, rows: int, weight: torch.Tensor) -> dict | None:
    """The mat-vecs where they serve this product (CPU, at most MAX_ROWS rows, float activations, a contiguous
    weight, no autograd through it), else None: the caller takes torch's path."""
    if (x.device.type != "cpu" or rows > MAX_ROWS or not x.dtype.is_floating_point or not weight.is_contiguous()
            or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
        return None
    return matvec()


def fp32_bias(module) -> torch.Tensor | None:
    """`module.bias` as contiguous fp32 for the kernels, converted once and again only when the bias changes."""
    bias = module.bias
    if bias is None:
        return None
    key = (bias.data_ptr(), bias._version)
    cached = getattr(module, "_bias32", None)
    if cached is None or cached[0] != key:
        cached = (key, bias.detach().float().contiguous())
        module._bias32 = cached
    return cached[1]


def module_product(module, x: torch.Tensor, rows: int, scale: torch.Tensor | None, fns: dict) -> torch.Tensor:
    """A Linear-like module's forward on the kernels: x (..., in) in any float dtype -> (..., out) in that dtype."""
    y = linear(x.reshape(rows, module.in_features).to(torch.float32), module.weight, scale, fp32_bias(module), fns)
    return y.to(x.dtype).view(*x.shape[:-1], module.out_features)


def linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None,
           fns: dict | None = None) -> torch.Tensor:
    """(rows, K) fp32 x, (N, K) contiguous int8 or bf16 weight, (N,) fp32 scale (int8 only; None for bf16), (N,)
    fp32 bias or None -> (rows, N) fp32 = x @ (weight * scale).T + bias."""
    fns = fns or matvec()
    rows, k = x.shape
    n = weight.shape[0]
    kind = _WEIGHT_KINDS.get(weight.dtype)
    if (kind is None or weight.shape[1] != k or x.dtype != torch.float32 or not weight.is_contiguous()
            or (scale is None) != (kind == "bf16")):
        raise ValueError(f"native.linear: x {tuple(x.shape)} {x.dtype}, weight {tuple(weight.shape)} {weight.dtype}"
                         f"{' (not contiguous)' if not weight.is_contiguous() else ''}, scale "
                         f"{'none' if scale is None else tuple(scale.shape)}")
    for t in (scale, bias):
        if t is not None and (t.dtype != torch.float32 or t.shape != (n,) or not t.is_contiguous()):
            raise ValueError(f"native.linear: scale and bias must be contiguous fp32 ({n},), got {tuple(t.shape)} "
                             f"{t.dtype}")
    x = x.contiguous()
    y = torch.empty(rows, n, dtype=torch.float32)
    fns[kind](x.data_ptr(), rows, weight.data_ptr(), 0 if scale is None else scale.data_ptr(),
              0 if bias is None else bias.data_ptr(), y.data_ptr(), n, k, torch.get_num_threads())
    return y
