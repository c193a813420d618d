"""Run a task: read samples, build each conversation under the profile, answer them in batches through the engine,
extract and score, and append every answer with its settings to the results file. Resumable: samples already in
the file are not asked again.

An answerer is any callable `(conversations, sampling) -> list[str | Answer]` (one per conversation, in order).
`EngineAnswerer(vlm)` runs a batch through `vlm.generate` (one left-padded batch, rows dropped as they finish).
Tests and offline checks pass their own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from qwen25vl.errors import Qwen25VLError
from qwen25vl.eval.results import VERSION, ResultsFile, summarize
from qwen25vl.eval import sources
from qwen25vl.eval.sources import media_name
from qwen25vl.eval.task import Profile, Sample, Skipped, Task
from qwen25vl.tasks.coords import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, Frame, as_frame


@dataclass
class Answer:
    text: str
    finish_reason: str | None = None


class EngineAnswerer:
    """Answers a batch of conversations with one batched generation of a loaded model (`qwen25vl.load`)."""

    def __init__(self, vlm):
        self.vlm = vlm

    @property
    def factor(self) -> int:
        config = getattr(getattr(self.vlm, "processor", None), "image_config", None)
        return int(getattr(config, "factor", 28))

    def __call__(self, conversations: list[list[dict]], sampling: dict) -> list[Answer]:
        done = self.vlm.generate(conversations, **sampling)
        return [Answer(c.text, c.finish_reason) for c in done]


@dataclass
class Prepared:
    sample: Sample
    messages: list[dict]
    record: dict  # the results line so far: prompt, media settings, context


def _frame(image, options: dict, factor: int) -> Frame:
    lo = options.get("min_pixels") or DEFAULT_MIN_PIXELS
    hi = options.get("max_pixels") or DEFAULT_MAX_PIXELS
    return as_frame(original_size=image.size, min_pixels=lo, max_pixels=hi, factor=factor)


def prepare(task: Task, sample: Sample, profile: Profile, factor: int = 28) -> Prepared:
    """The conversation of one sample (images decoded here, so that their frames are the processor's) and its
    results line. Raises Qwen25VLError / OSError when a media file is missing or undecodable."""
    from qwen25vl.processing.image import load_image

    item_options = list(sample.options) + [{}] * (len(sample.images) + len(sample.videos) - len(sample.options))
    parts, media, frames = [], [], []
    for source, own in zip(sample.images, item_options):
        options = {**profile.image_options(), **{k: v for k, v in own.items() if k in ("min_pixels", "max_pixels")}}
        image = load_image(str(source) if isinstance(source, Path) else source)
        frame = _frame(image, options, factor)
        frames.append(frame)
        options = {"min_pixels": options.get("min_pixels") or DEFAULT_MIN_PIXELS,
                   "max_pixels": options.get("max_pixels") or DEFAULT_MAX_PIXELS}  # explicit: frame == processor's
        parts.append({"type": "image", "image": image, **options})
        media.append({"type": "image", "source": media_name(source), **options,
                      "original_size": list(frame.original_size), "resized_size": list(frame.resized_size)})
    for source, own in zip(sample.videos, item_options[len(sample.images):]):
        options = {**profile.video_options(), **own}
        video = [str(s) for s in source] if isinstance(source, list) else str(source)
        parts.append({"type": "video", "video": video, **options})
        media.append({"type": "video", "source": media_name(source), **options})
    prompt = task.prompt(sample, profile)
    system = task.system_prompt(sample, frames) if task.system_prompt else profile.system
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": parts + [{"type": "text", "text": prompt}]}]
    record = {"kind": "sample", "id": sample.id, "prompt": prompt, "system": system, "media": media,
              "target": sample.target, "context": task.context_for(sample, frames), "meta": sample.meta}
    return Prepared(sample, messages, record)


def _failed(sample_id: str, kind: str, reason: str, base: dict | None = None) -> dict:
    return {**(base or {"kind": "sample", "id": sample_id}), "status": "failed", "reason_kind": kind,
            "reason": reason[:500], "score": 0.0}


def _scored(task: Task, prepared: Prepared, answer) -> dict:
    answer = answer if isinstance(answer, Answer) else Answer(str(answer))
    try:
        extracted = task.extract(answer.text, prepared.record["context"])
    except Qwen25VLError:  # extractors tolerate any text; a parser's complaint is an unanswerable answer
        extracted = None
    score = task.score(extracted, prepared.record["target"])
    return {**prepared.record, "status": "ok", "raw": answer.text, "extracted": extracted, "score": float(score),
            "finish_reason": answer.finish_reason}


def answer_batch(task: Task, batch: list[Prepared], answerer, sampling: dict) -> list[dict]:
    """Records of a batch: one batched call; when the batch is refused (a media item the processor cannot use),
    each sample alone, so that one bad video fails only its own sample."""
    try:
        answers = answerer([p.messages for p in batch], sampling)
    except (Qwen25VLError, OSError) as err:
        if len(batch) == 1:
            return [_failed(batch[0].sample.id, "model-input", f"{type(err).__name__}: {err}", batch[0].record)]
        return [r for p in batch for r in answer_batch(task, [p], answerer, sampling)]
    if len(answers) != len(batch):
        raise RuntimeError(f"answerer returned {len(answers)} answers for {len(batch)} conversations")
    return [_scored(task, p, a) for p, a in zip(batch, answers)]


def _samples(task: Task, data: Path, limit: int | None) -> Iterable[Sample | Skipped]:
    seen: dict[str, int] = {}
    count = 0
    for item in task.read(data):
        if isinstance(item, Sample):
            if limit is not None and count >= limit:
                return
            count += 1
            n = seen[item.id] = seen.get(item.id, 0) + 1
            if n > 1:  # releases repeat ids now and then; the results need each sample once
                item.id = f"{item.id}#{n}"
        yield item


def _skip_record(item: Skipped) -> dict:
    return {"kind": "sample", "id": item.id or f"skipped:{item.where}", "status": "skipped",
            "reason_kind": "malformed-row", "reason": item.reason[:500], "where": item.where}


@dataclass
class _Run:
    task: Task
    answerer: Callable
    results: ResultsFile
    profile: Profile
    factor: int
    batch_size: int
    done: set
    progress: Callable[[int, int], None] | None = None
    answered: int = 0

    def feed(self, items: Iterable[Sample | Skipped]) -> None:
        pending: list[Prepared] = []
        for item in items:
            if isinstance(item, Skipped):
                self._skip(item)
            elif item.id not in self.done:
                try:
                    pending.append(prepare(self.task, item, self.profile, self.factor))
                except (Qwen25VLError, OSError) as err:
                    self.results.append([_failed(item.id, "media", f"{type(err).__name__}: {err}")])
                if len(pending) >= self.batch_size:
                    self._answer(pending)
                    pending = []
        if pending:
            self._answer(pending)

    def _skip(self, item: Skipped) -> None:
        record = _skip_record(item)
        if record["id"] not in self.done:
            self.results.append([record])
            self.done.add(record["id"])

    def _answer(self, batch: list[Prepared]) -> None:
        self.results.append(answer_batch(self.task, batch, self.answerer, self.profile.sampling()))
        self.answered += len(batch)
        if self.progress:
            self.progress(self.answered, len(self.done))


def run_task(task: Task, data: str | Path, answerer: Callable, out: str | Path, *, profile: Profile | None = None,
             batch_size: int = 8, limit: int | None = None, model: str = "", retry_failed: bool = False,
             factor: int | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
    """Run (or resume) `task` on the local files at `data`; returns the summary (see `results.summarize`).
    `progress(answered now, done before)` is called after each batch."""
    profile = profile or task.profile
    header = {"kind": "header", "version": VERSION, "task": task.name, "profile": profile.to_dict(),
              "model": model, "data": str(data), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    results = ResultsFile(out)
    done = {r["id"] for r in results.start(header) if not (retry_failed and r["status"] == "failed")}
    run = _Run(task, answerer, results, profile, factor or int(getattr(answerer, "factor", 28)), batch_size, done,
               progress)
    sources.EXCLUDED.add(results.path.resolve())
    try:
        run.feed(_samples(task, Path(data), limit))
    finally:
        sources.EXCLUDED.discard(results.path.resolve())
    header, records = results.read()
    return summarize(task, header, records)
