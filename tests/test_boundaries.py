"""The package's layering, checked by parsing imports (STYLE.md: boundaries)."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "qwen25vl"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _files(sub: str = "") -> list[Path]:
    return sorted((PKG / sub).rglob("*.py"))


def test_package_has_modules():
    assert len(_files()) > 5


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(PKG)))
def test_no_transformers_at_run_time(path):
    bad = {m for m in _imports(path) if m == "transformers" or m.startswith("transformers.")}
    assert not bad, f"{path} imports {bad}: transformers is a test-only dependency"


@pytest.mark.parametrize("path", _files("model"), ids=lambda p: str(p.relative_to(PKG)))
def test_model_does_no_io_layers(path):
    forbidden = ("qwen25vl.processing", "qwen25vl.serve", "qwen25vl.generation", "qwen25vl.tasks", "tokenizers",
                 "torch.distributed", "PIL", "av")
    bad = {m for m in _imports(path) if any(m == f or m.startswith(f + ".") for f in forbidden)}
    assert not bad, f"{path} imports {bad}: model/ is pure torch"


@pytest.mark.parametrize("path", _files("processing"), ids=lambda p: str(p.relative_to(PKG)))
def test_processing_defines_no_module(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            bases = {ast.unparse(b) for b in node.bases}
            assert not bases & {"nn.Module", "torch.nn.Module", "Module"}, f"{path}:{node.name} is an nn.Module"
    bad = {m for m in _imports(path) if m.startswith("qwen25vl.model")}
    assert not bad, f"{path} imports {bad}: processing never imports model/"


@pytest.mark.parametrize("name", ["vision_layout.py", "varlen.py", "positions.py"])
def test_index_math_imports_no_model(name):
    bad = {m for m in _imports(PKG / name) if m.startswith("qwen25vl.") and not m.startswith("qwen25vl.errors")
           and m not in ("qwen25vl.varlen", "qwen25vl.config")}
    assert not bad, f"{name} imports {bad}: pure index math depends on nothing but configs and errors"
