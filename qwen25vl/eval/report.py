"""Summaries as people read them: one table row per task with the score beside the report's Qwen2.5-VL-3B / 7B
figures and the difference, plus counts of failed and skipped samples."""

from __future__ import annotations

_HEAD = ("| task | metric | ours | 3B (report) | Δ 3B | 7B (report) | Δ 7B | samples | failed | skipped | profile |\n"
         "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")


def _delta(ours: float, published: float | None) -> str:
    return "—" if published is None else f"{ours - published:+.1f}"


def _published(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def table_row(summary: dict) -> str:
    ours, pub = summary["score"], summary.get("published") or {}
    cells = [summary["task"], summary["metric"], f"{ours:.1f}", _published(pub.get("3B")), _delta(ours, pub.get("3B")),
             _published(pub.get("7B")), _delta(ours, pub.get("7B")), str(summary["samples"]),
             str(summary["failed"]), str(summary["skipped"]), str(summary.get("profile") or "")]
    return "| " + " | ".join(cells) + " |"


def summary_table(summaries: list[dict]) -> str:
    return "\n".join([_HEAD, *(table_row(s) for s in summaries)])


def _details(summary: dict) -> list[str]:
    metrics = ", ".join(f"{k} {v:.2f}" for k, v in summary["metrics"].items())
    lines = [f"### {summary['task']}", "", f"metrics: {metrics}"]
    if summary["unextracted"]:
        lines.append(f"answers with nothing extractable: {summary['unextracted']} (scored 0)")
    for label, key in (("failed", "failed_reasons"), ("skipped", "skipped_reasons")):
        if summary[key]:
            lines.append(f"{label}: " + ", ".join(f"{k} {n}" for k, n in summary[key].items()))
    for meta, groups in summary.get("breakdown", {}).items():
        lines.append(f"by {meta}: " + ", ".join(f"{v} {g['score']:.1f} ({g['samples']})" for v, g in groups.items()))
    return lines + [""]


def report_markdown(summaries: list[dict], title: str = "Evaluation") -> str:
    """The whole report: the table, then per task its metrics, failure reasons and breakdowns."""
    models = sorted({str(s.get("model") or "?") for s in summaries})
    lines = [f"# {title}", "", f"model: {', '.join(models)}", "",
             "Published figures: the Qwen2.5-VL report (DocVQA test, RefCOCO val, MMMU val, Video-MME without "
             "subtitles); a dash where it gives none for this task. Failed samples count as wrong; skipped rows "
             "(malformed in the data) are left out.", "", summary_table(summaries), ""]
    for s in summaries:
        lines += _details(s)
    return "\n".join(lines)
