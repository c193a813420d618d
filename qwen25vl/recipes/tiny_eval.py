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


def answer_all(folder: Path, data: Path, records, batch: int = 16, max_new_tokens: int = 160,
               first_text: bool = False) -> list[str]:
    import qwen25vl

    vlm = qwen25vl.load(folder, device="cpu", threads=1)
    conversations = []
    for r in records:
        user = json.loads(json.dumps(r.messages[0]))
        for part in user["content"]:
            if part.get("type") == "image":
                part["image"] = str((data / part["image"]).resolve())
        conversations.append([text_first(user) if first_text else user])
    answers = []
    for i in range(0, len(conversations), batch):
        answers += vlm.chat(conversations[i:i + batch], max_new_tokens=max_new_tokens, temperature=0.0)
    return answers


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
    result = evaluate(Path(args.model), Path(args.data), args.limit, text_first=args.text_first)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())


def verdict(s: dict) -> str:
    """'reliable' (3+ s.e. over the baseline and right at least half the time), 'above chance, unreliable' (3+ s.e.
    over the baseline but wrong most of the time) or 'not reliable'."""
    if not s["reliable"]:
        return "not reliable"
    return "reliable" if s["score"] >= 0.5 else "above chance, unreliable"


def _row(name: str, s: dict) -> str:
    verdict_text = verdict(s) if verdict(s) == "reliable" else f"**{verdict(s)}**"
    return (f"| {name} | {s['n']} | {s['score']:.1%} ± {s['se']:.1%} | {s['baseline']:.1%} | "
            f"{s['sigmas']:+.1f} | {verdict_text} |")


SCORE_NAMES = {"grounding": "grounding acc@IoU 0.5 (detect + refer)", "point": "pointing inside the object",
               "count": "counting exact match", "absent": "absent query answered `[]`",
               "presence": "presence (balanced: `[]` iff absent)"}


def score_table(scores: dict) -> str:
    lines = ["| ability | n | held-out ± s.e. | trivial baseline | s.e. above | verdict |",
             "|---|---|---|---|---|---|"]
    lines += [_row(SCORE_NAMES[k], v) for k, v in scores.items() if k in SCORE_NAMES]
    return "\n".join(lines)


def _stage12_lines(run: Path) -> list[str]:
    """Stages 1-2's lines of an earlier run's card (`model-joint/MODEL_CARD.md`), when this run started from it."""
    card = run / "model-joint" / "MODEL_CARD.md"
    if not card.is_file():
        return ["- Stages 1-2 ran in an earlier run whose card is not at hand."]
    lines, inside = [], False
    for line in card.read_text().splitlines():
        if line.startswith("## "):
            inside = line.strip() == "## Data and recipe"
            continue
        if inside and line.strip():
            lines.append(line)
    return ["- Stages 1-2 ran in an earlier run (`model-joint/`; from its card):"] + ["  " + x for x in lines]


def model_card(folder: Path, run: Path) -> str:
    """MODEL_CARD.md from the run's log, times, stage-3 settings and the folder's scores.json. A run that started
    from an earlier run's `model-joint/` (no vision-stage entries in its log) takes stages 1-2's lines from that
    folder's card, and every joint entry of its log is stage 3's."""
    config = json.loads((folder / "config.json").read_text())
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    vision_log = [e for e in log if e["stage"] == "vision"]
    joint_log = [e for e in log if e["stage"] == "joint"] if vision_log else []
    presence_log = [e for e in log if e["stage"] == "presence" or (not vision_log and e["stage"] == "joint")]
    times = json.loads((run / "times.json").read_text())
    stage3 = json.loads((run / "stage3.json").read_text()) if (run / "stage3.json").is_file() else None
    scores = json.loads((folder / "scores.json").read_text()) if (folder / "scores.json").is_file() else None
    manifest = json.loads((run / "data" / "grounding" / "manifest.json").read_text())
    opts, splits = manifest["options"], manifest["splits"]
    v, size = config["vision_config"], (folder / "model.safetensors").stat().st_size

    def gap_line(entries):
        gaps = [e for e in entries if "shuffled_gap" in e]
        steps = ", ".join(f"step {e['step']}: {e['shuffled_gap']:+.3f}" for e in gaps[:: max(1, len(gaps) // 6)])
        return (f"{steps}; final {gaps[-1]['shuffled_gap']:+.3f} nats (right {gaps[-1]['heldout_ce']:.3f}, "
                f"shuffled {gaps[-1]['shuffled_ce']:.3f})") if gaps else "not logged"

    parts = [
        "# The embedded tiny Qwen2.5-VL",
        "",
        "A plain Qwen2.5-VL checkpoint folder (official key layout, bf16, "
        f"{size / 1e6:.1f} MB) trained from scratch by `make tiny-model` (`qwen25vl/recipes/tiny.py`) on the "
        "grounding engine's synthetic scenes only. It exists to prove the system works end to end and to power "
        "`make demo`; it is not a useful vision-language model.",
        "",
        "## Architecture",
        f"- ViT {v['hidden_size']} wide x {v['depth']} blocks, window {v['window_size']} px, full attention in "
        f"blocks {v['fullatt_block_indexes']}, 2x2 merger to {v['out_hidden_size']}; LLM {config['hidden_size']} "
        f"x {config['num_hidden_layers']} layers ({config['num_attention_heads']} heads, "
        f"{config['num_key_value_heads']} KV), M-RoPE, vocabulary {config['vocab_size']} (the tiny tokenizer trained "
        "on the train split's text: digits single tokens, Qwen special tokens at 512..533, official chat template).",
        "",
        "## Data and recipe",
    ]
    if vision_log:
        vision = vision_log[-1]
        parts += [
            f"- `python -m qwen25vl.data.synth grounding --size {opts['size']} --set max_objects={opts['max_objects']} "
            f"--set count_query={opts.get('count_query', 'any')} --train {splits['train']['records']} --heldout "
            f"{splits['heldout']['records']} --seed {manifest['seed']}`: 16 shapes x 12 colours, "
            f"1-{opts['max_objects']} objects, one question per image cycling detect / refer / point / count / absent "
            f"(count questions name {'the most frequent' if opts.get('count_query') == 'most' else 'any present'} "
            "category). Held-out seeds lie in a disjoint range; `make demo` uses a third.",
            "- Vision-only stage: ViT + merger with a throwaway linear head on every merged 28 px cell (class, colour, "
            f"box-edge offsets, absolute row and column). At its end: cell class {vision['kind_acc']:.1%}, row "
            f"{vision['row_acc']:.1%}, column {vision['col_acc']:.1%}, box-edge error "
            f"{vision.get('edge_err', float('nan')) * 224:.1f} px (at 224 px).",
            "- Joint training from that ViT (ViT lr 0.2x), the dense losses on the merger output and on LLM layer 1's "
            "image tokens for the first half, Qwen's default system prompt before the image. The heads are dropped "
            "at export.",
            f"- Shuffled-image loss gap on held-out packs (CE with images rolled across a pack minus CE with the right "
            f"ones): {gap_line(joint_log)}.",
        ]
    else:
        parts += _stage12_lines(run)
    presence_manifest = run / "data" / "grounding-presence" / "manifest.json"
    if presence_log and presence_manifest.is_file():
        pm = json.loads(presence_manifest.read_text())
        po, ps = pm["options"], pm["splits"]
        sets = " ".join(f"--set {k}={str(val).lower() if isinstance(val, bool) else val}" for k, val in po.items()
                        if k in ("max_objects", "count_query", "mix", "text_first"))
        s3 = stage3 or {}
        parts += [
            f"- Stage 3 (presence) data: `python -m qwen25vl.data.synth grounding --size {po['size']} {sets} --train "
            f"{ps['train']['records'] // 3} --heldout {ps['heldout']['records'] // 3} --seed {pm['seed']}`: new "
            f"scenes, three records per image ({ps['train']['records']} in all): a present and an absent category on "
            "the same picture (so only the image tells them apart), then count / refer / point in turn; the "
            "question before the image, as the official grounding cookbook writes it.",
            f"- Stage 3 training from the exported stage-2 folder (bf16 weights, trained on in fp32): "
            f"{s3.get('steps', '?')} steps of {s3.get('batch', '?')} records, lr {s3.get('lr', '?')} (ViT 0.2x), 5% "
            f"warm-up then cosine to 0.1x; the decision tokens' CE (`[]` or a list, one more entry or the end) counted "
            f"{s3.get('decision_weight', '?')}x; for the first {s3.get('count_until', 0):.0%} of the steps a "
            "training-only probe on LLM layer 1 at the position that opens the answer's list predicts how many "
            "entries follow (0 for an absent category)"
            + (f"; for the first {s3['match_until']:.0%} a training-only probe on every image token after LLM layer "
               "1 predicts whether its cell lies on an object of the queried category (detect / count / absent "
               "queries; the image tokens can read the query because it comes first)" if s3.get("match_until") else "")
            + ". The probes are dropped at export.",
            f"- Stage 3 shuffled-image gap on its held-out packs: {gap_line(presence_log)}.",
        ]
    refine_log = [e for e in log if e["stage"] == "refine"]
    refine_manifest = run / "data" / "grounding-refine" / "manifest.json"
    if refine_log and refine_manifest.is_file():
        rm = json.loads(refine_manifest.read_text())
        s4 = json.loads((run / "stage4.json").read_text()) if (run / "stage4.json").is_file() else {}
        parts += [
            f"- Stage 4 (refine): {rm['splits']['train']['records'] // 3} fresh scenes of the same mix (engine seed "
            f"{rm['seed']}), {s4.get('steps', '?')} steps of {s4.get('batch', '?')} records from the stage-3 folder, "
            f"lr {s4.get('lr', '?')} (ViT 0.2x), 5% warm-up then cosine to 0.1x, decision tokens "
            f"{s4.get('decision_weight', '?')}x, no probes: a second cosine cycle, since stage 3's figures were still "
            "rising at its learning-rate floor.",
            f"- Stage 4 shuffled-image gap on its held-out packs: {gap_line(refine_log)}.",
        ]
    parts.append(
        "- Time on one thread of the shared 2-core CPU: "
        + ", ".join(f"{label} {times[key] / 60:.1f} min" for key, label in (
            ("data_and_tokenizer_s", "data + tokenizer"), ("vision_s", "vision stage"), ("joint_s", "joint stage"),
            ("presence_data_s", "stage-3 data"), ("presence_s", "stage 3"), ("refine_s", "stage 4 with its data"),
            ("heldout_eval_s", "held-out scoring"))
            if key in times) + ".")
    if scores:
        order = " (each question asked before its image)" if scores.get("text_first") else ""
        parts += ["", "## Held-out scores", "",
                  f"{scores['heldout']} held-out records{order}, greedy decoding, "
                  "`python -m qwen25vl.recipes.tiny_eval --model qwen25vl/assets/tiny-model "
                  f"--data build/tiny/data/grounding{' --text-first' if scores.get('text_first') else ''}`. Baselines "
                  "are fitted on the train split: the best constant box "
                  f"{scores['fitted_baselines']['box']}, the best constant point "
                  f"{scores['fitted_baselines']['point']}, the majority count "
                  f"{scores['fitted_baselines']['majority_count']}; always `[]` for absent queries (which scores 0 on "
                  "every present one: the presence row is the fair comparison). An ability is called reliable at "
                  f"{RELIABLE_SIGMAS:.0f}+ standard errors above its baseline and right at least half the time; "
                  "3+ standard errors but wrong most of the time reads 'above chance, unreliable'.", "",
                  score_table(scores["scores"])]
        if scores.get("task_gaps"):
            parts += ["", "Shuffled-image gap per task on these records (`--gaps`): " + ", ".join(
                f"{task} {g['gap']:+.3f}" for task, g in scores["task_gaps"].items()) + " nats per answer token."]
        c = scores.get("absent_contrast")
        if c and c.get("n"):
            parts += ["", "Rolling images cannot test absent queries (the rolled-in scene almost never holds the "
                      "absent category either, so `[]` stays right): against a held-out image of the same size "
                      f"that does hold it, the answer `[]` costs {c['gap']:+.3f} ± {c['se']:.3f} nats per token "
                      f"more than with its own image ({c['n']} pairs; > 0: the model reads the image to answer `[]`)."]
    return "\n".join(parts) + "\n"
