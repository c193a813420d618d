"""Held-out scores of the tiny model beside trivial baselines, with standard errors.

`python -m qwen25vl.recipes.tiny_eval --model FOLDER --data build/tiny/data/grounding` answers every held-out
grounding record greedily and scores it by task:

| task | score | trivial baseline (fitted on the train split) |
|---|---|---|
| detect, refer | grounding acc@IoU 0.5: truth boxes matched one-to-one / max(truth, predicted) | the best constant box |
| point | the point lies inside the truth box | the best constant point |
| count | the stated count equals the truth | the majority count |
| absent | the answer is `[]` | always `[]` (100%, but 0 on every present query) |
| presence | mean of (absent answered `[]`, present answered non-empty) | any constant answer: 50% |
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path

GROUNDING = ("detect", "refer")
RELIABLE_SIGMAS = 3.0  # an ability is called reliable when its score is this many standard errors over baseline


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = ix * iy
    union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
    return inter / union if union > 0 else 0.0


def box_score(predicted: list, truth: list, threshold: float = 0.5) -> float:
    """Truth boxes matched one-to-one (greedy by IoU) at >= threshold, over max(len(truth), len(predicted))."""
    if not truth and not predicted:
        return 1.0
    pairs = sorted(((iou(p, t), i, j) for i, p in enumerate(predicted) for j, t in enumerate(truth)), reverse=True)
    used_p, used_t, hits = set(), set(), 0
    for value, i, j in pairs:
        if value >= threshold and i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
            hits += 1
    return hits / max(len(truth), len(predicted))


def inside(point, box) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def score_answer(meta: dict, answer: str, options: dict) -> dict:
    """{'task': ..., 'score': 0..1} for one held-out answer (plus 'present' for the presence score)."""
    from qwen25vl.tasks.grounding import parse_grounding

    truth, task = meta["truth"], meta["task"]
    parsed = parse_grounding(answer)
    boxes = [o["bbox_2d"] for o in truth["objects"] if "bbox_2d" in o]
    if task in GROUNDING:
        score = box_score(parsed.boxes, boxes)
    elif task == "point":
        target = truth["objects"][0]
        score = float(bool(parsed.points) and _point_inside(parsed.points[0], target, meta, options))
    elif task == "count":
        stated = parsed.stated_count if parsed.stated_count is not None else parsed.count
        score = float(stated == truth["count"])
    else:
        score = float(parsed.count == 0)
    return {"task": task, "score": score, "empty": parsed.count == 0}


def _point_inside(point, target: dict, meta: dict, options: dict) -> bool:
    return inside(point, pointed_box(meta, options))


def pointed_box(meta: dict, options: dict):
    """The pointed object's box, replayed from the engine (a point answer holds no box)."""
    from qwen25vl.recipes.bootstrap import scene_of

    _, things = scene_of(meta["seed"], options)
    return next(t.box for t in things if list(t.point) == meta["truth"]["objects"][0]["point_2d"])


def mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / max(1, n - 1)
    return mean, math.sqrt(var / n)


def baselines(train_metas: list[dict], held_metas: list[dict], options: dict) -> dict:
    """Trivial answers fitted on the train split, scored on held-out: {task: (mean, se)}."""
    ground_train = [m for m in train_metas if m["task"] in GROUNDING]
    candidates = [o["bbox_2d"] for m in ground_train[:400] for o in m["truth"]["objects"]]

    def fit(score):
        return max(candidates, key=lambda c: sum(score(c, m) for m in ground_train[:800]))

    def grounding_score(c, m):
        return box_score([c], [o["bbox_2d"] for o in m["truth"]["objects"]])

    best_box = fit(grounding_score)
    held_ground = [m for m in held_metas if m["task"] in GROUNDING]
    point_boxes = [pointed_box(m, options) for m in held_metas if m["task"] == "point"]
    points = [((c[0] + c[2]) // 2, (c[1] + c[3]) // 2) for c in candidates]
    train_point_boxes = [pointed_box(m, options) for m in train_metas if m["task"] == "point"][:300]
    best_point = max(points, key=lambda p: sum(inside(p, b) for b in train_point_boxes))
    counts = Counter(m["truth"]["count"] for m in train_metas if m["task"] == "count")
    majority = counts.most_common(1)[0][0]
    return {
        "grounding": mean_se([grounding_score(best_box, m) for m in held_ground]),
        "point": mean_se([float(inside(best_point, b)) for b in point_boxes]),
        "count": mean_se([float(m["truth"]["count"] == majority) for m in held_metas if m["task"] == "count"]),
        "absent": (1.0, 0.0),
        "presence": (0.5, 0.0),
        "fitted": {"box": best_box, "point": list(best_point), "majority_count": majority},
    }


def text_first(message: dict) -> dict:
    """The user message with its text parts before its media (the official grounding cookbook's order)."""
    content = message["content"]
    if isinstance(content, str):
        return message
    return {**message, "content": [p for p in content if p.get("type") == "text"] +
            [p for p in content if p.get("type") != "text"]}


def reordered(record, first_text: bool):
    """The record with its user turn's text before the media when `first_text`, else as written."""
    import dataclasses

    if not first_text:
        return record
    return dataclasses.replace(record, messages=[text_first(m) if m["role"] == "user" else m for m in record.messages])


def resolve_media(messages: list[dict], root: Path) -> list[dict]:
    """A copy of `messages` whose image and video paths are made absolute against `root`."""
    messages = json.loads(json.dumps(messages))
    for message in messages:
        for part in message["content"] if isinstance(message["content"], list) else ():
            for key in ("image", "video"):
                if part.get("type") == key:
                    part[key] = str((root / part[key]).resolve())
    return messages


def answer_records(folder: Path, data: Path, records, max_new_tokens: int, batch: int = 8) -> list[str]:
    """Greedy answers of the model in `folder` to each record's conversation up to its answer."""
    import qwen25vl

    vlm = qwen25vl.load(folder, device="cpu", threads=1)
    conversations = [resolve_media(r.messages[:-1], data) for r in records]
    answers = []
    for i in range(0, len(conversations), batch):
        answers += vlm.chat(conversations[i:i + batch], max_new_tokens=max_new_tokens, temperature=0.0)
    return answers


def answer_all(folder: Path, data: Path, records, batch: int = 16, max_new_tokens: int = 160,
               first_text: bool = False) -> list[str]:
    return answer_records(folder, data, [reordered(r, first_text) for r in records], max_new_tokens, batch)


def evaluate(folder: Path, data: Path, limit: int | None = None, text_first: bool = False) -> dict:
    """Scores on the held-out split; `text_first` asks every question before its image (how the model trained)."""
    from qwen25vl.recipes.tiny import data_options, read_split

    records, metas = read_split(data, "heldout")
    records, metas = records[:limit], metas[:limit]
    answers = answer_all(folder, data, records, first_text=text_first)
    options = data_options(data)
    scored = [score_answer(m, a, options) for m, a in zip(metas, answers)]
    by = {"grounding": [s["score"] for s in scored if s["task"] in GROUNDING]}
    for task in ("point", "count", "absent"):
        by[task] = [s["score"] for s in scored if s["task"] == task]
    present = mean_se([float(not s["empty"]) for s in scored if s["task"] != "absent"])
    absent = mean_se(by["absent"])
    _, train_metas = read_split(data, "train")
    base = baselines(train_metas, metas, options)
    result = {"heldout": len(records), "fitted_baselines": base.pop("fitted"), "scores": {}}
    # presence: the balanced accuracy of answering [] exactly when the object is absent
    by["presence"] = ((absent[0] + present[0]) / 2, math.hypot(absent[1], present[1]) / 2,
                      len(scored))
    for name, values in by.items():
        mean, se = values[:2] if name == "presence" else mean_se(values)
        n = values[2] if name == "presence" else len(values)
        b_mean, b_se = base[name]
        sigmas = (mean - b_mean) / math.hypot(se, b_se) if se > 0 or b_se > 0 else 0.0
        result["scores"][name] = {"n": n, "score": mean, "se": se, "baseline": b_mean,
                                  "baseline_se": b_se, "sigmas": sigmas,
                                  "reliable": bool(sigmas >= RELIABLE_SIGMAS and name != "absent")}
    result["examples"] = [{"id": m["id"], "task": m["task"], "answer": a} for m, a in list(zip(metas, answers))[:5]]
    return result


def full_scores(folder: Path, data_root: Path, text_first: bool) -> dict:
    """Everything `scores.json` holds: the grounding scores, the shuffled-image gap per task, the absent-query image
    test (all on `data_root/grounding`) and the other engines' scores (`tiny_skills`, datasets under `data_root`)."""
    from qwen25vl.recipes.tiny_skills import evaluate as evaluate_skills

    grounding = data_root / "grounding"
    scores = evaluate(folder, grounding, text_first=text_first)
    scores["text_first"] = text_first
    scores["task_gaps"] = {task: {"right": r, "shuffled": w, "gap": w - r}
                           for task, (r, w) in task_gaps(folder, grounding, text_first).items()}
    scores["absent_contrast"] = absent_contrast(folder, grounding, text_first)
    scores["skills"] = evaluate_skills(folder, data_root)
    return scores


def task_gaps(folder: Path, data: Path, text_first: bool = False) -> dict:
    """{task: (held-out CE with the right images, CE with images rolled across packs of that task)} per token; NaN
    where no two of the task's held-out images share a grid."""
    import torch

    from qwen25vl.data.encoding import Encoder
    from qwen25vl.model.vlm import Qwen25VL
    from qwen25vl.recipes.bootstrap import JointLoss, shuffled_gap
    from qwen25vl.recipes.tiny import gap_packs, read_split

    vlm = Qwen25VL.from_pretrained(folder).float().eval()
    encoder, loss_fn = Encoder.from_pretrained(folder, config=vlm.config), JointLoss(vlm)
    records, metas = read_split(data, "heldout")
    records = [reordered(r, text_first) for r in records]
    out = {}
    for task in ("detect", "refer", "point", "count", "absent"):
        chosen = [i for i, m in enumerate(metas) if m["task"] == task]
        packs = gap_packs(encoder, [records[i] for i in chosen], [metas[i] for i in chosen], len(chosen))
        with torch.no_grad():  # no two held-out images of this task share a grid: nothing to roll
            out[task] = shuffled_gap(loss_fn, packs) if packs else (float("nan"), float("nan"))
    return out


def absent_contrast(folder: Path, data: Path, text_first: bool = False) -> dict:
    """The absent queries' image test. Rolling images across a pack cannot test them: the rolled-in scene almost
    never holds the absent category either, so `[]` stays right and the gap stays ~0 whatever the model does. Here each
    absent query's answer `[]` is scored with its own image and with a held-out image of the same size that does hold
    the queried category (where `[]` is wrong): {"right", "contrast", "gap", "se", "n"}, CE per answer token (se: of
    the per-pair gaps); gap > 0 means the model reads the image to answer `[]`."""
    import dataclasses

    import torch

    from qwen25vl.data.encoding import Encoder
    from qwen25vl.data.packing import collate_pack
    from qwen25vl.model.vlm import Qwen25VL
    from qwen25vl.recipes.bootstrap import JointLoss
    from qwen25vl.recipes.tiny import read_split

    vlm = Qwen25VL.from_pretrained(folder, progress=False).float().eval()
    encoder, loss_fn = Encoder.from_pretrained(folder, config=vlm.config), JointLoss(vlm)
    records, metas = read_split(data, "heldout")

    def image_of(record):
        return next(p for m in record.messages if isinstance(m["content"], list) for p in m["content"]
                    if p.get("type") == "image")

    def ce(record) -> tuple[float, int]:
        batch = collate_pack([encoder(reordered(record, text_first))])
        with torch.no_grad():
            return float(loss_fn(batch)[0]), batch.num_targets

    right = contrast = tokens = pairs = 0
    per_pair = []
    for record, meta in zip(records, metas):
        if meta["task"] != "absent":
            continue
        query, size = meta["truth"]["query"], meta["truth"]["size"]
        other = next((r for r, m in zip(records, metas) if m["truth"]["size"] == size
                      and query in m["truth"].get("present", [])), None)
        if other is None:
            continue
        swapped = json.loads(json.dumps(record.messages))
        for m in swapped:
            if isinstance(m["content"], list):
                for part in m["content"]:
                    if part.get("type") == "image":
                        part.update(image_of(other))
        a, n = ce(record)
        b, _ = ce(dataclasses.replace(record, messages=swapped))
        right, contrast, tokens, pairs = right + a, contrast + b, tokens + n, pairs + 1
        per_pair.append((b - a) / n)
    if not pairs:
        return {"right": float("nan"), "contrast": float("nan"), "gap": float("nan"), "se": float("nan"), "n": 0}
    return {"right": right / tokens, "contrast": contrast / tokens, "gap": (contrast - right) / tokens,
            "se": mean_se(per_pair)[1], "n": pairs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m qwen25vl.recipes.tiny_eval", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--limit", type=int)
    p.add_argument("--out", help="write the scores as JSON here")
    p.add_argument("--gaps", action="store_true", help="print the shuffled-image gap per task instead")
    p.add_argument("--text-first", action="store_true",
                   help="ask each question before its image (the order the shipped model's last stage trained on)")
    args = p.parse_args(argv)
    if args.gaps:
        for task, (right, wrong) in task_gaps(Path(args.model), Path(args.data), args.text_first).items():
            print(f"{task}: right {right:.4f} shuffled {wrong:.4f} gap {wrong - right:+.4f}")
        c = absent_contrast(Path(args.model), Path(args.data), args.text_first)
        print(f"absent, against an image that holds the category ({c['n']} pairs): right {c['right']:.4f} "
              f"contrast {c['contrast']:.4f} gap {c['gap']:+.4f} (s.e. {c['se']:.4f} over pairs)")
        return 0
    return emit(evaluate(Path(args.model), Path(args.data), args.limit, text_first=args.text_first), args.out)


def emit(result: dict, out: str | None) -> int:
    """Print the scores as JSON (and write them to `out` when given); the exit status."""
    text = json.dumps(result, indent=2)
    if out:
        Path(out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
