"""Where models are: the checkpoint folder a user names, or the embedded tiny model. Free of torch imports, so a
bad path is reported before the slow imports start."""

from __future__ import annotations

from pathlib import Path

from qwen25vl.errors import CheckpointError, InputError

# The embedded tiny model (a folder in the package, `make tiny-model`): used when no path is given.
EMBEDDED_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "tiny-model"
NO_EMBEDDED_MODEL = "no --model given and no embedded model ships yet"


def model_path(path: str | Path | None) -> Path:
    """The checkpoint folder to load: `path` checked (exists, is a folder, has config.json), or the embedded one."""
    if path is None:
        if (EMBEDDED_MODEL_DIR / "config.json").is_file():
            return EMBEDDED_MODEL_DIR
        raise InputError(NO_EMBEDDED_MODEL)
    folder = Path(path).expanduser()
    if not folder.exists():
        raise CheckpointError(f"model folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise CheckpointError(f"model path {str(folder)!r} is not a folder")
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"model folder {str(folder)!r} has no config.json")
    return folder
