"""Rejection sampling: N candidates per prompt through the engine; keep those whose extracted answer matches the
reference, after dropping candidates that switch script, run too long or repeat themselves.

    - {op: rejection_sample, model: CKPT, n: 8, task: number, sampling: {temperature: 1.0, top_p: 0.95}}
    - {op: threshold, stat: rs_correct, min: 1, reason: no_correct_candidate}

The prompt is the record's messages up to its last assistant answer; the reference is `meta.answer` or that last
answer. The task type (`task:`, or per record `meta.task`) chooses the extraction:
- number: the last number of the answer, equal to the reference's within `tolerance` (relative);
- choice: the option letter (`qwen25vl.eval.choices.extract_choice`);
- box: the first `bbox_2d` (`tasks.grounding`), IoU >= `iou` with the reference box;
- span: the first time span (`tasks.video_time`), temporal IoU >= `tiou`;
- code: the last fenced code block run with `meta.tests` in the sandbox (time, memory, no network).
Stats: `candidates` [{text, verdict}] (verdict: correct, wrong, no_answer, code_switch, too_long, repetition,
timeout, memory, no_reply), `rs_correct`, `rs_total`. The run writes `sft.jsonl` (each kept row's correct
candidates as training records) and `dpo.jsonl` (correct / incorrect pairs as preference records).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from qwen25vl.data.pipeline.engine import ModelOp, ask
from qwen25vl.data.pipeline.ops import StatsOp, portable_messages, question_text, register, resolve_media
from qwen25vl.data.pipeline.text_rules import foreign_script_ratio, ngram_repeat
from qwen25vl.errors import ConfigError

TASKS = ("number", "choice", "box", "span", "code")
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?")
_FENCE = re.compile(r"```[a-zA-Z0-9_+-]*\n(.*?)(?:```|$)", re.DOTALL)


def last_number(text: str) -> float | None:
    found = _NUMBER.findall(text or "")
    return float(found[-1].replace(",", "")) if found else None


def code_of(text: str) -> str:
    """The last fenced block of the answer, or the whole answer when it has no fence."""
    blocks = _FENCE.findall(text)
    return blocks[-1] if blocks else text


def check_answer(task: str, candidate: str, reference: str, meta: dict, settings: dict) -> str:
    """The verdict of one candidate: correct, wrong, no_answer (nothing extractable), or the sandbox's reason."""
    if task == "number":
        got, want = last_number(candidate), last_number(reference)
        if got is None:
            return "no_answer"
        return "correct" if want is not None and abs(got - want) <= settings["tolerance"] * max(1.0, abs(want)) \
            else "wrong"
    if task == "choice":
        from qwen25vl.eval.choices import extract_choice

        count = len(meta.get("options") or []) or None
        got = extract_choice(candidate, meta.get("options"), count=count)
        if got is None:
            return "no_answer"
        return "correct" if got == extract_choice(reference, meta.get("options"), count=count) else "wrong"
    if task == "box":
        from qwen25vl.tasks.coords import box_iou
        from qwen25vl.tasks.grounding import parse_grounding

        got, want = parse_grounding(candidate).boxes, parse_grounding(reference).boxes
        if not got:
            return "no_answer"
        return "correct" if want and box_iou(got[0], want[0]) >= settings["iou"] else "wrong"
    if task == "span":
        from qwen25vl.tasks.video_time import parse_event_spans, temporal_iou

        got, want = parse_event_spans(candidate), parse_event_spans(reference)
        if not got:
            return "no_answer"
        return "correct" if want and temporal_iou(got[0], want[0]) >= settings["tiou"] else "wrong"
    from qwen25vl.data.pipeline.sandbox import run_python

    tests = meta.get("tests")
    if not isinstance(tests, str) or not tests.strip() or not code_of(candidate).strip():
        return "no_answer"
    result = run_python(code_of(candidate) + "\n\n" + tests, timeout_s=settings["timeout_s"],
                        memory_mb=settings["memory_mb"])
    return "correct" if result.passed else "wrong" if result.reason == "failed" else result.reason


def split_prompt(row: dict) -> tuple[list[dict], str]:
    """(messages before the last assistant answer, that answer's text)."""
    messages = row.get("messages") or []
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=len(messages))
    answer = messages[last]["content"] if last < len(messages) else ""
    if isinstance(answer, list):
        answer = "\n".join(p.get("text", "") for p in answer if p.get("type") == "text")
    return messages[:last], answer


def _for_engine(messages: list[dict], root: str) -> list[dict]:
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = [{**p, p["type"]: resolve_media(p[p["type"]], root)}
                       if p.get("type") in ("image", "video") and isinstance(p.get(p["type"]), str) else p
                       for p in content]
        out.append({**m, "content": content})
    return out


@register("rejection_sample")
class RejectionSample(ModelOp, StatsOp):
    note = "rs_no_reply"

    def __init__(self, n: int = 4, task: str | None = None, sampling: dict | None = None, tolerance: float = 0.01,
                 iou: float = 0.5, tiou: float = 0.5, max_chars: int = 4000, max_repeat: float = 0.5,
                 max_foreign: float = 0.2, timeout_s: float = 5.0, memory_mb: int = 256, **model):
        if task is not None and task not in TASKS:
            raise ConfigError(f"rejection_sample: task must be one of {TASKS}, got {task!r}")
        if int(n) < 1:
            raise ConfigError(f"rejection_sample: n must be positive, got {n!r}")
        base = self._init_model(**{"max_new_tokens": 256, "batch_size": 4, **model})
        self.checks = {"tolerance": float(tolerance), "iou": float(iou), "tiou": float(tiou),
                       "max_chars": int(max_chars), "max_repeat": float(max_repeat),
                       "max_foreign": float(max_foreign), "timeout_s": float(timeout_s), "memory_mb": int(memory_mb)}
        StatsOp.__init__(self, n=n, task=task, sampling=sampling, **self.checks, **base)
        self.n, self.task = int(n), task
        self.sampling = {"temperature": 1.0, "top_p": 0.95, **(sampling or {})}

    def verdict(self, row: dict, candidate: str | None, reference: str) -> str:
        if candidate is None:
            return "no_reply"
        if foreign_script_ratio(question_text(row), candidate) > self.checks["max_foreign"]:
            return "code_switch"
        if len(candidate) > self.checks["max_chars"]:
            return "too_long"
        if ngram_repeat(candidate) > self.checks["max_repeat"]:
            return "repetition"
        meta = row.get("meta") or {}
        task = meta.get("task", self.task)
        if task not in TASKS:
            raise ConfigError(f"{row.get('id')}: rejection task must be one of {TASKS}, got {task!r}")
        return check_answer(task, candidate, str(meta.get("answer", reference)), meta, self.checks)

    def compute(self, rows):
        prompts = [split_prompt(r) for r in rows]
        conversations = [_for_engine(p, r.get("root", ".")) for r, (p, _) in zip(rows, prompts) for _ in range(self.n)]
        texts = ask(self.answerer, conversations, {"max_new_tokens": self.max_new_tokens, **self.sampling})
        out = []
        for i, (row, (_, reference)) in enumerate(zip(rows, prompts)):
            mine = texts[i * self.n:(i + 1) * self.n]
            candidates = [{"text": t, "verdict": self.verdict(row, t, reference)} for t in mine]
            out.append({"candidates": candidates, "rs_total": self.n,
                        "rs_correct": sum(c["verdict"] == "correct" for c in candidates),
                        "rs_no_reply": any(c["verdict"] == "no_reply" for c in candidates)})
        return out


def training_outputs(out: Path, rows: list[dict]) -> dict:
    """Write sft.jsonl / dpo.jsonl from kept rows' candidates; {} when no row was rejection-sampled."""
    sampled = [r for r in rows if r["dropped"] is None and "candidates" in r["stats"]]
    if not any("candidates" in r["stats"] for r in rows):
        return {}
    sft = dpo = 0
    with (out / "sft.jsonl").open("w", encoding="utf-8") as f_sft, (out / "dpo.jsonl").open("w") as f_dpo:
        for row in sampled:
            prompt = portable_messages(split_prompt(row)[0], row.get("root", "."), out)
            good = [c["text"] for c in row["stats"]["candidates"] if c["verdict"] == "correct"]
            bad = [c["text"] for c in row["stats"]["candidates"]
                   if c["verdict"] != "correct" and c["text"] and c["text"].strip()]
            for text in good:
                f_sft.write(json.dumps({"messages": prompt + [{"role": "assistant", "content": text}]},
                                       ensure_ascii=False) + "\n")
                sft += 1
            for chosen, rejected in zip(good, bad):
                f_dpo.write(json.dumps({"messages": prompt, "chosen": chosen, "rejected": rejected},
                                       ensure_ascii=False) + "\n")
                dpo += 1
    return {"sft_records": sft, "dpo_pairs": dpo}
