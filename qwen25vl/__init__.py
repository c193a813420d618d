"""qwen25vl: a from-scratch implementation of the Qwen2.5-VL vision-language system.

Top-level names are imported lazily so that `import qwen25vl` stays cheap (the CLI, the processor alone).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "load": ("qwen25vl.api", "load"),
    "VLM": ("qwen25vl.api", "VLM"),
    "Qwen25VL": ("qwen25vl.model.vlm", "Qwen25VL"),
    "Qwen25VLConfig": ("qwen25vl.config", "Qwen25VLConfig"),
    "Processor": ("qwen25vl.processing.processor", "Processor"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'qwen25vl' has no attribute {name!r}") from None
    return getattr(importlib.import_module(module_name), attr)
