"""Document, chart and scene-text question answering: DocVQA, InfoVQA (ANLS), ChartQA (relaxed accuracy), TextVQA
(VQA accuracy) and OCRBench (the answer appears in the prediction)."""

from __future__ import annotations

from pathlib import Path

from qwen25vl.eval import sources
from qwen25vl.eval.metrics import anls, relaxed_accuracy, vqa_accuracy
from qwen25vl.eval.task import Profile, Sample, Task, register_task
from qwen25vl.eval.tasks._common import (OFFICIAL_MAX_PIXELS, OFFICIAL_MIN_PIXELS, SHORT_ANSWER, first_roots, row_id,
                                         short_answer, table_samples)

_SOURCE = "the Qwen-VL family's short-answer VQA instruction"


def _profile(max_new_tokens: int = 64, prompt: str = SHORT_ANSWER, source: str = _SOURCE) -> Profile:
    return Profile(prompt=prompt, min_pixels=OFFICIAL_MIN_PIXELS, max_pixels=OFFICIAL_MAX_PIXELS,
                   max_new_tokens=max_new_tokens, source=source)


def _vqa_sample(row: dict, where: str, path: Path, *, ids, images, roots, answers=("answers", "answer"),
                questions=("question", "query"), image_name=None) -> Sample:
    question = sources.field(row, *questions, where=where)
    refs = sources.answers_list(sources.field(row, *answers, where=where, kind=None), where)
    if image_name is not None and not any(row.get(k) is not None for k in images):
        cell = image_name(row, where)
    else:
        cell = sources.field(row, *images, where=where, kind=None)
    image = sources.image_source(cell, where, first_roots(path, *roots))
    meta = {k: row[k] for k in ("question_types", "type", "answer_type", "dataset_name", "dataset") if k in row}
    return Sample(row_id(row, where, *ids), {"question": question}, refs, images=[image], meta=_plain(meta))


def _plain(meta: dict) -> dict:
    return {k: v if isinstance(v, (str, int, float, bool)) or v is None else str(v) for k, v in meta.items()}


# --- DocVQA and InfoVQA: the challenge's JSON ({"data": [...]}) or the Hugging Face parquet mirrors -------------

def _read_docvqa(data: Path):
    patterns = ("val_v1.0_withQT.json", "val_v1.0.json", "*.json", "*.jsonl", "**/*.parquet")
    return table_samples(data, patterns, "DocVQA annotations", lambda row, where, path: _vqa_sample(
        row, where, path, ids=("questionId", "question_id"), images=("image",),
        roots=("spdocvqa_images", "images", "documents")))


def _read_infovqa(data: Path):
    patterns = ("infographicsVQA_val*.json", "*.json", "*.jsonl", "**/*.parquet")
    return table_samples(data, patterns, "InfographicVQA annotations", lambda row, where, path: _vqa_sample(
        row, where, path, ids=("questionId", "question_id"), images=("image", "image_local_name"),
        roots=("infographicsVQA_val_v1.0_images", "images")))


def _anls_score(extracted, target) -> float:
    return anls(extracted or "", target)


# --- ChartQA: test_human.json / test_augmented.json ({"imgname", "query", "label"}) + png/, or parquet -----------

def _read_chartqa(data: Path):
    patterns = ("test/test_*.json", "test_*.json", "*.json", "*.jsonl", "**/*.parquet")

    def make(row, where, path):
        sample = _vqa_sample(row, where, path, ids=("id", "question_id"), images=("image", "imgname"),
                             answers=("label", "answer", "answers"), roots=("png", "test/png"))
        split = row.get("type") or ("human" if "human" in path.stem else "augmented" if "augmented" in path.stem
                                    else None)
        sample.id = sample.id if "id" in row else f"{path.stem}:{where.rsplit(':', 1)[1]}"
        sample.meta = {"split": split} if split else {}
        return sample

    return table_samples(data, patterns, "ChartQA annotations", make)


def _relaxed_score(extracted, target) -> float:
    return max((relaxed_accuracy(extracted or "", t) for t in target), default=0.0)


# --- TextVQA: TextVQA_0.5.1_val.json ({"data": [...]}) + train_images/{image_id}.jpg, or parquet -----------------

def _read_textvqa(data: Path):
    patterns = ("TextVQA_0.5.1_val.json", "*val*.json", "*.json", "*.jsonl", "**/*.parquet")

    def name(row, where):
        return f"{sources.field(row, 'image_id', where=where)}.jpg"

    return table_samples(data, patterns, "TextVQA annotations", lambda row, where, path: _vqa_sample(
        row, where, path, ids=("question_id",), images=("image", "image_path"), image_name=name,
        roots=("train_images", "train_val_images/train_images", "images")))


def _vqa_score(extracted, target) -> float:
    return vqa_accuracy(extracted or "", target)


# --- OCRBench: OCRBench.json + OCRBench_Images/, or the parquet mirror -------------------------------------------

_FORMULA_TYPE = "Handwritten Mathematical Expression Recognition"


def _read_ocrbench(data: Path):
    patterns = ("OCRBench.json", "*.json", "*.jsonl", "**/*.parquet")

    def make(row, where, path):
        sample = _vqa_sample(row, where, path, ids=("id",), images=("image_path", "image"),
                             roots=("OCRBench_Images",))
        sample.target = {"answers": sample.target, "type": row.get("type") or row.get("question_type") or ""}
        return sample

    return table_samples(data, patterns, "OCRBench annotations", make)


def ocrbench_score(prediction: str | None, target: dict) -> float:
    """OCRBench's rule: a reference answer appears in the prediction (case-insensitive; for handwritten formulas,
    case-sensitive with all whitespace removed from both)."""
    pred = prediction or ""
    for answer in target["answers"]:
        if target.get("type") == _FORMULA_TYPE:
            if "".join(answer.split()) in "".join(pred.split()):
                return 1.0
        elif answer.lower().strip() in pred.lower().strip():
            return 1.0
    return 0.0


def _whole_answer(raw: str, context: dict | None = None) -> str:
    return raw.strip()


_DOC = "the challenge's val JSON ({'data': [...]}) with its images, or a parquet mirror"

register_task(Task("docvqa", _read_docvqa, _profile(), short_answer, _anls_score, metric="anls",
                   published={"3B": 93.9, "7B": 95.7}, data_hint=_DOC, family="documents"))
register_task(Task("infovqa", _read_infovqa, _profile(), short_answer, _anls_score, metric="anls",
                   data_hint=_DOC, family="documents"))
register_task(Task("chartqa", _read_chartqa, _profile(), short_answer, _relaxed_score, metric="relaxed_accuracy",
                   published={"3B": 84.0, "7B": 87.3},
                   data_hint="ChartQA's test/test_human.json + test_augmented.json with test/png/, or parquet",
                   family="documents"))
register_task(Task("textvqa", _read_textvqa, _profile(), short_answer, _vqa_score, metric="vqa_accuracy",
                   published={"3B": 79.3, "7B": 84.9},
                   data_hint="TextVQA_0.5.1_val.json with train_images/, or parquet", family="documents"))
register_task(Task("ocrbench", _read_ocrbench, _profile(128, "{question}", "the benchmark's question as is"),
                   _whole_answer, ocrbench_score, data_hint="OCRBench.json with OCRBench_Images/, or parquet",
                   family="documents"))
