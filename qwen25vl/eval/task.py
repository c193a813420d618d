"""What a benchmark is made of: samples read from local files, a profile of settings, and the task definition
(reader, prompt, answer extractor, per-sample score, summary), plus the registry the command line looks tasks up in.

A `Sample` holds what the prompt template may use (`fields`), its media sources, and the reference (`target`, kept
JSON-serialisable so that the results file alone can rescore it). A reader yields `Skipped` for a row it cannot
use, with the row's place and the reason: a malformed row is reported, never fatal.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwen25vl.errors import InputError

OFFICIAL = "qwen25vl-official"


@dataclass
class Sample:
    id: str
    fields: dict  # what the prompt template reads: question, options, query, ...
    target: Any  # the reference answer(s), JSON-serialisable
    images: list = field(default_factory=list)  # sources: paths, bytes, PIL images
    videos: list = field(default_factory=list)  # paths or lists of frame paths
    meta: dict = field(default_factory=dict)  # breakdown keys (category, split, ...), logged with the answer
    options: list = field(default_factory=list)  # per media item (images, then videos): the data's own settings


@dataclass(frozen=True)
class Skipped:
    where: str  # file:row
    reason: str
    id: str | None = None


@dataclass(frozen=True)
class Profile:
    """Every setting that changes an answer. `source` says where the prompt comes from."""

    name: str = OFFICIAL
    prompt: str = "{question}"
    system: str | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    fps: float | None = None
    min_frames: int | None = None
    max_frames: int | None = None
    total_pixels: int | None = None
    max_new_tokens: int = 128
    temperature: float = 0.0
    repetition_penalty: float = 1.0
    source: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def overridden(self, overrides: dict[str, str | Any]) -> "Profile":
        """A copy with settings replaced; string values (from the command line) are converted to the field's type.
        Unknown names and unconvertible values are InputErrors naming them."""
        if not overrides:
            return self
        types = {f.name: f.type for f in dataclasses.fields(self)}
        values = {}
        for key, value in overrides.items():
            if key not in types or key == "name":
                known = ", ".join(sorted(set(types) - {"name"}))
                raise InputError(f"unknown profile setting {key!r}; settings: {known}")
            values[key] = _convert(key, value, str(types[key]))
        return dataclasses.replace(self, **values, name=f"{self.name}+overrides")

    def sampling(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                "repetition_penalty": self.repetition_penalty, "top_k": 0, "top_p": 1.0, "min_p": 0.0}

    def image_options(self) -> dict:
        return {k: v for k, v in (("min_pixels", self.min_pixels), ("max_pixels", self.max_pixels)) if v is not None}

    def video_options(self) -> dict:
        pairs = (("fps", self.fps), ("min_frames", self.min_frames), ("max_frames", self.max_frames),
                 ("total_pixels", self.total_pixels), ("min_pixels", self.min_pixels),
                 ("max_pixels", self.max_pixels))
        return {k: v for k, v in pairs if v is not None}

    @classmethod
    def from_dict(cls, data: dict) -> "Profile":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _convert(key: str, value, kind: str):
    if not isinstance(value, str):
        return value
    if value.lower() in ("none", "null", "") and "None" in kind:
        return None
    try:
        if kind.startswith("int"):
            return int(value)
        if kind.startswith("float"):
            return float(value)
    except ValueError:
        raise InputError(f"profile setting {key}={value!r} must be a number ({kind})") from None
    return value.replace("\\n", "\n")


def prompt_fields(template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name}
    except ValueError as err:
        raise InputError(f"prompt template {template!r:.80} is malformed ({err}); write a literal brace as {{{{ }}}}")


def fill(template: str, values: dict, sample_id: str) -> str:
    """The template with the sample's fields; a placeholder the sample lacks is an InputError naming both."""
    missing = prompt_fields(template) - set(values)
    if missing:
        raise InputError(f"prompt template uses {sorted(missing)}, which sample {sample_id!r} does not have "
                         f"(fields: {sorted(values)})")
    return template.format_map(values)


@dataclass(frozen=True)
class Task:
    """A benchmark. `extract(raw, context)` -> extracted answer (JSON-serialisable or None); `score(extracted,
    target)` -> float in [0, 1]; `summarize(scores)` -> {metric: value in [0, 1]}, `metric` naming the headline one.
    `context(sample, frames)` -> what extraction needs beyond the text (options, the image's frame), stored in the
    results so that rescoring needs nothing else; `frames` are the images' `Frame`s (original and resized sizes).
    `system_prompt(sample, frames)` for tasks whose system message depends on the frame (agent clicks).
    `published`: the report's scores of Qwen2.5-VL-3B / 7B (percent)."""

    name: str
    read: Callable[[Path], Iterator[Sample | Skipped]]
    profile: Profile
    extract: Callable[[str, dict], Any]
    score: Callable[[Any, Any], float]
    metric: str = "accuracy"
    summarize: Callable[[list[float]], dict] | None = None
    context: Callable[[Sample, list], dict] | None = None
    system_prompt: Callable[[Sample, list], str | None] | None = None  # (sample, frames) -> system message
    prompt_for: Callable[[Sample, Profile], str] | None = None  # when one template does not fit every sample
    published: dict = field(default_factory=dict)
    data_hint: str = ""  # the local layout the reader expects, for --help and errors
    family: str = ""

    def summary(self, scores: list[float]) -> dict:
        if self.summarize is not None:
            return self.summarize(scores)
        return {self.metric: sum(scores) / len(scores) if scores else 0.0}

    def prompt(self, sample: Sample, profile: Profile) -> str:
        if self.prompt_for is not None:
            return self.prompt_for(sample, profile)
        return fill(profile.prompt, sample.fields, sample.id)

    def context_for(self, sample: Sample, frames: list) -> dict:
        return self.context(sample, frames) if self.context else {}


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} registered twice")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    from qwen25vl.eval import tasks  # noqa: F401  (fills TASKS)

    if name not in TASKS:
        raise InputError(f"unknown evaluation task {name!r}; tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def all_tasks() -> dict[str, Task]:
    from qwen25vl.eval import tasks  # noqa: F401

    return dict(TASKS)
