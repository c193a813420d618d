"""The project's error types.

Every mistake a user can make (a bad file, a value out of range, a checkpoint we cannot read) is raised as a
subclass of `Qwen25VLError` whose message names the offending item and value. The CLI and the server turn these
into readable messages / HTTP 400s; anything else is a bug and keeps its traceback.
"""


class Qwen25VLError(Exception):
    """Base class of every error raised for bad user input, files or configuration."""


class InputError(Qwen25VLError, ValueError):
    """An image, video, message or argument that cannot be used as given."""


class ConfigError(Qwen25VLError, ValueError):
    """A config.json value that is missing, inconsistent or not supported."""


class CheckpointError(Qwen25VLError):
    """A checkpoint folder or file that is missing, incomplete or does not match the config."""
