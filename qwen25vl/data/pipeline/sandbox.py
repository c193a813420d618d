"""Running a candidate's code against its tests in a subprocess with a time limit, a memory limit and no network.

Limits: `resource.setrlimit` in the child before it starts (address space = `memory_mb`, CPU seconds =
`timeout_s` + 1, file size, open files, no core dumps), plus a wall-clock kill at `timeout_s` (a sleeping or
blocked child uses no CPU). Network: the child runs in its own empty network namespace (`unshare -rn`) where the
system allows unprivileged namespaces, and, always, with `socket` replaced by a stub that refuses, in an isolated
interpreter (`-I -S`: no site-packages, no user paths, no PYTHON* variables), in a fresh temporary folder.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

_PRELUDE = '''
import socket as _socket
def _refuse(*args, **kwargs):
    raise OSError("network access is disabled in the sandbox")
_socket.socket = _refuse
_socket.create_connection = _refuse
_socket.getaddrinfo = _refuse
del _socket, _refuse
'''


@dataclass
class SandboxResult:
    passed: bool
    reason: str  # passed | failed | timeout | memory
    returncode: int | None
    stderr: str


@lru_cache(maxsize=1)
def _unshare_prefix() -> tuple[str, ...]:
    tool = shutil.which("unshare")
    if tool is None:
        return ()
    try:
        ok = subprocess.run([tool, "-rn", "true"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return (tool, "-rn") if ok else ()


def _limits(memory_mb: int, timeout_s: float):
    def apply():
        import resource

        memory = memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        cpu = int(timeout_s) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 2**20, 16 * 2**20))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def run_python(source: str, *, timeout_s: float = 5.0, memory_mb: int = 256) -> SandboxResult:
    """Run `source` (the candidate's code followed by its tests); passed when it exits 0 within the limits."""
    with tempfile.TemporaryDirectory(prefix="qwen25vl-sandbox-") as folder:
        script = Path(folder) / "main.py"
        script.write_text(_PRELUDE + "\n" + source, encoding="utf-8")
        command = [*_unshare_prefix(), sys.executable, "-I", "-S", str(script)]
        try:
            done = subprocess.run(command, cwd=folder, env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                                  text=True, timeout=timeout_s, preexec_fn=_limits(memory_mb, timeout_s),
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as err:  # run() killed the child
            stderr = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else (err.stderr or "")
            return SandboxResult(False, "timeout", None, stderr[-2000:])
    stderr = done.stderr[-2000:]
    if done.returncode == 0:
        return SandboxResult(True, "passed", 0, stderr)
    if done.returncode in (-24, 152) or "SIGXCPU" in stderr:  # CPU limit: SIGXCPU
        return SandboxResult(False, "timeout", done.returncode, stderr)
    if "MemoryError" in stderr or done.returncode in (-9, -11, 137, 139):  # the address-space limit
        return SandboxResult(False, "memory", done.returncode, stderr)
    return SandboxResult(False, "failed", done.returncode, stderr)
