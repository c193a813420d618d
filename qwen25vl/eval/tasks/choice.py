"""Multiple choice over images: MMMU (validation parquet, open questions too) and MMBench (the official TSV with
base64 images, or its parquet mirror). Scored by the letter `extract_choice` finds in the answer; MMBench is scored
in one pass (not the official circular evaluation, which re-asks every question with rotated options)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from qwen25vl.errors import InputError
from qwen25vl.eval import sources
from qwen25vl.eval.choices import LETTERS, extract_choice, format_options
from qwen25vl.eval.normalize import normalize_vqa_answer
from qwen25vl.eval.task import Profile, Sample, Task, fill, register_task
from qwen25vl.eval.tasks._common import (CHOICE_ANSWER, OFFICIAL_MAX_PIXELS, OFFICIAL_MIN_PIXELS, SHORT_ANSWER,
                                         first_roots, row_id, short_answer, table_samples)


def choice_context(sample: Sample, frames: list) -> dict:
    return {"options": sample.fields.get("option_texts")}


def extract_letter_or_text(raw: str, context: dict) -> str | None:
    """A letter for a multiple-choice sample (context has options), else the short answer (open questions)."""
    options = context.get("options")
    if options:
        return extract_choice(raw, options)
    return short_answer(raw) or None


def choice_score(extracted, target) -> float:
    if isinstance(target, dict):  # an open question: {"open": [accepted answers]}
        return open_answer_score(extracted, target["open"])
    return float(extracted is not None and extracted == target)


_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def open_answer_score(prediction: str | None, answers: list[str]) -> float:
    """An open answer is right when it equals an accepted answer after VQA normalisation, or when a number in it
    equals a numeric accepted answer (to 1e-6 relative)."""
    if not prediction:
        return 0.0
    pred = normalize_vqa_answer(prediction)
    numbers = [float(n.replace(",", "")) for n in _NUMBER.findall(prediction)]
    for answer in answers:
        if normalize_vqa_answer(answer) == pred:
            return 1.0
        try:
            gold = float(str(answer).replace(",", ""))
        except ValueError:
            continue
        if any(abs(n - gold) <= 1e-6 * max(1.0, abs(gold)) for n in numbers):
            return 1.0
    return 0.0


def _choice_prompt(sample: Sample, profile: Profile) -> str:
    if sample.fields.get("option_texts"):
        return fill(profile.prompt, sample.fields, sample.id)
    return fill(SHORT_ANSWER, sample.fields, sample.id)


# --- MMMU ------------------------------------------------------------------------------------------------------

def _options_cell(value, where: str) -> list[str]:
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value) if value.strip() else []
        except (ValueError, SyntaxError):
            raise InputError(f"{where}: options {value!r:.60} is not a list") from None
    if not isinstance(value, (list, tuple)):
        raise InputError(f"{where}: options must be a list, got {type(value).__name__}")
    return [str(v) for v in value]


def _mmmu_sample(row: dict, where: str, path: Path) -> Sample:
    question = sources.field(row, "question", where=where)
    options = _options_cell(row.get("options", []), where)
    answer = sources.field(row, "answer", where=where, kind=None)
    roots = first_roots(path, "images")
    images = [sources.image_source(row[k], where, roots) for k in sorted(row, key=_image_order)
              if re.fullmatch(r"image_\d+", k) and row[k] is not None]
    fields = {"question": question, "options": format_options(options), "option_texts": options}
    is_choice = options and row.get("question_type", "multiple-choice") == "multiple-choice"
    if is_choice:
        letter = str(answer).strip()
        if letter not in LETTERS[:len(options)]:
            raise InputError(f"{where}: answer {answer!r} is not one of the {len(options)} option letters")
        target = letter
    else:
        fields["option_texts"] = []
        target = {"open": sources.answers_list(answer, where)}
    meta = {k: row[k] for k in ("subfield", "topic_difficulty", "question_type") if isinstance(row.get(k), str)}
    return Sample(row_id(row, where, "id"), fields, target, images=images, meta=meta)


def _image_order(key: str) -> int:
    return int(key.split("_")[1]) if re.fullmatch(r"image_\d+", key) else -1


# --- MMBench ---------------------------------------------------------------------------------------------------

def _mmbench_sample(row: dict, where: str, path: Path) -> Sample:
    question = sources.field(row, "question", where=where)
    options = [str(row[k]).strip() for k in LETTERS[:8] if _present(row.get(k))]
    if len(options) < 2:
        raise InputError(f"{where}: fewer than two options (columns A, B, ...)")
    answer = str(sources.field(row, "answer", where=where, kind=None)).strip()
    if answer not in LETTERS[:len(options)]:
        raise InputError(f"{where}: answer {answer!r} is not one of the {len(options)} option letters")
    hint = row.get("hint")
    text = f"{hint}\n{question}" if _present(hint) else question
    image = sources.image_source(sources.field(row, "image", where=where, kind=None), where, first_roots(path))
    meta = {k: row[k] for k in ("category", "l2-category", "split") if isinstance(row.get(k), str)}
    fields = {"question": text, "options": format_options(options), "option_texts": options}
    return Sample(row_id(row, where, "index", "id"), fields, answer, images=[image], meta=meta)


def _present(value) -> bool:
    return value is not None and str(value).strip() not in ("", "nan", "None")


_CHOICE = Profile(prompt=CHOICE_ANSWER, min_pixels=OFFICIAL_MIN_PIXELS, max_pixels=OFFICIAL_MAX_PIXELS,
                  max_new_tokens=64, source="the multiple-choice instruction of Qwen's evaluations (open MMMU "
                                            "questions get the short-answer one)")

register_task(Task("mmmu", lambda data: table_samples(data, ("**/validation-*.parquet", "**/*.parquet", "*.jsonl",
                                                              "*.json"), "MMMU rows", _mmmu_sample),
                   _CHOICE, extract_letter_or_text, choice_score, context=choice_context, prompt_for=_choice_prompt,
                   published={"3B": 53.1, "7B": 58.6},
                   data_hint="the MMMU parquet files (one folder per subject; validation split has answers)",
                   family="choice"))
register_task(Task("mmbench", lambda data: table_samples(data, ("*DEV*.tsv", "*.tsv", "**/*.parquet"),
                                                          "MMBench rows", _mmbench_sample),
                   _CHOICE, extract_letter_or_text, choice_score, context=choice_context, prompt_for=_choice_prompt,
                   data_hint="MMBench_DEV_EN.tsv (base64 images) or its parquet mirror", family="choice"))
