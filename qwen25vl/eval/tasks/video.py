"""Video: Charades-STA (temporal grounding: R@0.3/0.5/0.7 and mIoU) and multiple choice over video (Video-MME,
MVBench, LVBench), at the report's budget: 2 fps, at most 768 frames and 24,576 video tokens per video."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

from qwen25vl.errors import InputError
from qwen25vl.eval import sources
from qwen25vl.eval.choices import LETTERS, extract_choice, format_options
from qwen25vl.eval.metrics import span_iou
from qwen25vl.eval.task import Profile, Sample, Skipped, Task, register_task
from qwen25vl.eval.tasks._common import CHOICE_ANSWER, mean, row_id, table_samples
from qwen25vl.eval.tasks.choice import choice_context, choice_score
from qwen25vl.tasks.video_time import parse_event_spans, video_grounding_prompt

VIDEO_TOKENS = 24576
VIDEO_TOTAL_PIXELS = VIDEO_TOKENS * 28 * 28  # a video's token count is its total pixels / 28^2
VIDEO_MIN_PIXELS = 16 * 28 * 28  # the cookbook's video frame floor


def _video_profile(prompt: str, max_new_tokens: int, source: str, system: str | None = None) -> Profile:
    return Profile(prompt=prompt, system=system, fps=2.0, max_frames=768, total_pixels=VIDEO_TOTAL_PIXELS,
                   min_pixels=VIDEO_MIN_PIXELS, max_new_tokens=max_new_tokens, source=source)


@lru_cache(maxsize=8)
def _video_index(folder: str) -> dict[str, str]:
    """Every video file under `folder` by its name and by its name without extension (releases nest them in
    per-source subfolders)."""
    index: dict[str, str] = {}
    for root, _, files in os.walk(folder):
        for name in files:
            if name.lower().endswith((".mp4", ".mkv", ".webm", ".avi", ".mov")):
                path = os.path.join(root, name)
                index.setdefault(name, path)
                index.setdefault(os.path.splitext(name)[0], path)
    return index


def find_video(name: str, data: Path, where: str) -> Path:
    """A video named in a row: as a path under the data folder, else found by file name anywhere below it; a video
    found nowhere keeps its direct path, so that the run counts the sample as failed (missing media)."""
    base = data if data.is_dir() else data.parent
    direct = base / name
    if direct.is_file():
        return direct
    found = _video_index(str(base.parent if base.name in ("json", "annotations") else base))
    hit = found.get(Path(name).name) or found.get(Path(name).stem)
    return Path(hit) if hit else direct


# --- Charades-STA --------------------------------------------------------------------------------------------------

_STA_LINE = re.compile(r"^(\S+)\s+(\d+(?:\.\d+)?)\s+(\d+(?:\.\d+)?)##(.+)$")


def _read_charades(data: Path):
    for path in sources.find_files(data, ("charades_sta_test.txt", "*.txt", "*.jsonl", "*.json", "**/*.parquet"),
                                   "Charades-STA annotations"):
        if path.suffix == ".txt":
            yield from _charades_lines(path, data)
        else:
            yield from table_samples(path, ("*",), "rows", lambda row, where, p: _charades_row(row, where, data))


def _charades_lines(path: Path, data: Path):
    for where, line in sources.text_lines(path):
        m = _STA_LINE.match(line.strip())
        if not m:
            yield Skipped(where, f"{where}: not 'VIDEO START END##sentence': {line[:60]!r}")
            continue
        video, start, end, query = m.groups()
        yield _charades_sample(f"{video}:{where.rsplit(':', 1)[1]}", video, float(start), float(end), query, data,
                               where)


def _charades_row(row: dict, where: str, data: Path) -> Sample:
    video = str(sources.field(row, "video", "video_id", "vid", where=where, kind=None))
    query = sources.field(row, "query", "caption", "sentence", "description", where=where)
    span = sources.field(row, "timestamp", "span", "times", where=where, kind=(list, tuple))
    if len(span) != 2:
        raise InputError(f"{where}: timestamp must be [start, end], got {span!r}")
    sample = _charades_sample(row_id(row, where, "id", "qid"), video, float(span[0]), float(span[1]), query, data,
                              where)
    if isinstance(sample, Skipped):
        raise InputError(sample.reason)
    return sample


def _charades_sample(sid, video, start, end, query, data, where):
    if end <= start:
        return Skipped(where, f"{where}: span {start} - {end} is empty", sid)
    path = find_video(video if Path(video).suffix else f"{video}.mp4", data, where)
    return Sample(sid, {"query": query.strip()}, [start, end], videos=[path])


def extract_span(raw: str, context: dict | None = None) -> list[float] | None:
    spans = parse_event_spans(raw)
    return [round(spans[0].start, 3), round(spans[0].end, 3)] if spans else None


def grounding_summary(scores: list[float]) -> dict:
    out = {"mIoU": mean(scores)}
    for t in (0.3, 0.5, 0.7):
        out[f"R@{t}"] = mean([float(s >= t) for s in scores])
    return out


register_task(Task(
    "charades-sta", _read_charades,
    _video_profile(video_grounding_prompt("{query}"), 64, "the official video-grounding cookbook's question"),
    extract_span, span_iou, metric="mIoU", summarize=grounding_summary, published={"3B": 38.8, "7B": 43.6},
    data_hint="charades_sta_test.txt ('VIDEO START END##sentence') with the videos below the folder",
    family="video"))


# --- Video-MME, MVBench, LVBench -----------------------------------------------------------------------------------

_OPTION_PREFIX = re.compile(r"^\s*\(?([A-Z])[.)]\s*")


def _strip_letter(option: str) -> str:
    return _OPTION_PREFIX.sub("", str(option)).strip()


def _mc_sample(sid, question, options, letter, video, meta, where) -> Sample:
    if letter not in LETTERS[:len(options)]:
        raise InputError(f"{where}: answer {letter!r} is not one of the {len(options)} option letters")
    fields = {"question": question.strip(), "options": format_options(options), "option_texts": options}
    return Sample(sid, fields, letter, videos=[video], meta=meta)


def _videomme_sample(row: dict, where: str, data: Path) -> Sample:
    options = [_strip_letter(o) for o in sources.field(row, "options", where=where, kind=(list, tuple))]
    vid = str(sources.field(row, "videoID", "video_id", where=where, kind=None))
    video = find_video(vid if Path(vid).suffix else f"{vid}.mp4", data, where)
    meta = {k: row[k] for k in ("duration", "domain", "task_type") if isinstance(row.get(k), str)}
    letter = str(sources.field(row, "answer", where=where)).strip()
    return _mc_sample(row_id(row, where, "question_id"), sources.field(row, "question", where=where), options,
                      letter, video, meta, where)


def _mvbench_rows(data: Path):
    for path in sources.find_files(data, ("json/*.json", "*.json"), "MVBench task files"):
        def make(row, where, p, task=path.stem):
            options = [str(c) for c in sources.field(row, "candidates", where=where, kind=(list, tuple))]
            answer = str(sources.field(row, "answer", where=where, kind=None))
            if answer not in options:
                raise InputError(f"{where}: answer {answer!r} is not among the candidates")
            video = find_video(str(sources.field(row, "video", where=where)), data, where)
            sample = _mc_sample(f"{task}:{where.rsplit(':', 1)[1]}", sources.field(row, "question", where=where),
                                options, LETTERS[options.index(answer)], video, {"task": task}, where)
            sample.fields["options"] = format_options(options, "({letter}) {text}")
            return sample

        yield from table_samples(path, ("*",), "rows", make)


_LV_OPTION = re.compile(r"\(([A-Z])\)\s*(.+)")


def _lvbench_rows(data: Path):
    for path in sources.find_files(data, ("video_info.meta.jsonl", "*.jsonl"), "LVBench metadata"):
        for where, row in sources.rows(path):
            if not isinstance(row, dict):
                yield Skipped(where, f"{where}: {row}")
                continue
            yield from _lvbench_video(row, where, data)


def _lvbench_video(row: dict, where: str, data: Path):
    try:
        key = str(sources.field(row, "key", "video_id", where=where, kind=None))
        qas = sources.field(row, "qa", where=where, kind=list)
    except InputError as err:
        yield Skipped(where, str(err))
        return
    video = find_video(f"{key}.mp4", data, where)
    for i, qa in enumerate(qas):
        at = f"{where} qa {i}"
        try:
            text = sources.field(qa, "question", where=at)
            stem, options = _lvbench_question(text, at)
            sample = _mc_sample(str(qa.get("uid", f"{key}:{i}")), stem, options,
                                str(sources.field(qa, "answer", where=at)).strip(), video,
                                {"type": str(row.get("type", ""))}, at)
            yield sample
        except (InputError, AttributeError) as err:
            yield Skipped(at, str(err))


def _lvbench_question(text: str, where: str) -> tuple[str, list[str]]:
    """LVBench writes the options into the question: "stem\\n(A) first\\n(B) second..."."""
    lines = text.splitlines()
    options = [m.group(2).strip() for m in (_LV_OPTION.match(ln.strip()) for ln in lines) if m]
    stem = "\n".join(ln for ln in lines if not _LV_OPTION.match(ln.strip())).strip()
    if len(options) < 2:
        raise InputError(f"{where}: question holds fewer than two '(A) ...' options")
    return stem, options


def _extract_mc(raw: str, context: dict) -> str | None:
    return extract_choice(raw, context.get("options") or None)


_VIDEOMME_PROMPT = ("Select the best answer to the following multiple-choice question based on the video. Respond "
                    "with only the letter (A, B, C, or D) of the correct option.\n{question}\n{options}\n"
                    "The best answer is:")
_MVBENCH_SYSTEM = ("Carefully watch the video and pay attention to the cause and sequence of events, the detail and "
                   "movement of objects, and the action and pose of persons. Based on your observations, select the "
                   "best option that accurately addresses the question.")
_MVBENCH_PROMPT = "Question: {question}\nOptions:\n{options}\nOnly give the best option."

register_task(Task(
    "videomme", lambda data: table_samples(data, ("**/*.parquet", "*.jsonl", "*.json"), "Video-MME rows",
                                           lambda row, where, path: _videomme_sample(row, where, data)),
    _video_profile(_VIDEOMME_PROMPT, 16, "the Video-MME authors' prompt (no subtitles)"), _extract_mc, choice_score,
    context=choice_context, published={"3B": 61.5, "7B": 65.1},
    data_hint="the Video-MME parquet (videoID, question, options, answer) with the videos below the folder",
    family="video"))
register_task(Task(
    "mvbench", _mvbench_rows, _video_profile(_MVBENCH_PROMPT, 16, "the MVBench authors' prompt", _MVBENCH_SYSTEM),
    _extract_mc, choice_score, context=choice_context,
    data_hint="json/<task>.json ({video, question, candidates, answer}) with video/ below the folder",
    family="video"))
register_task(Task(
    "lvbench", _lvbench_rows, _video_profile(CHOICE_ANSWER, 16, "the multiple-choice instruction of Qwen's "
                                                                "evaluations"),
    _extract_mc, choice_score, context=choice_context,
    data_hint="video_info.meta.jsonl ({key, qa: [{uid, question with (A)..(D), answer}]}) with <key>.mp4 videos",
    family="video"))
