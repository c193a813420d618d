"""The tiny model's MODEL_CARD.md, written from a run's folder: its log, times, stage settings and the held-out
scores `tiny_eval` measured (`recipes/tiny.py` installs it with the model)."""

from __future__ import annotations

import json
from pathlib import Path

from qwen25vl.recipes.tiny_eval import RELIABLE_SIGMAS


def verdict(s: dict) -> str:
    """'reliable' (3+ s.e. over the baseline and right at least half the time), 'above chance, unreliable' (3+ s.e.
    over the baseline but wrong most of the time) or 'not reliable'."""
    if not s["reliable"]:
        return "not reliable"
    if s.get("lower_is_better"):  # an error (video timestamps, seconds): reliable within `reliable_below`
        return "reliable" if s["score"] <= s["reliable_below"] else "above chance, unreliable"
    return "reliable" if s["score"] >= 0.5 else "above chance, unreliable"


def _verdict_cell(s: dict) -> str:
    return verdict(s) if verdict(s) == "reliable" else f"**{verdict(s)}**"


def _table_head(above: str) -> list[str]:
    return [f"| ability | n | held-out ± s.e. | trivial baseline | s.e. {above} | verdict |",
            "|---|---|---|---|---|---|"]


def _row(name: str, s: dict) -> str:
    return (f"| {name} | {s['n']} | {s['score']:.1%} ± {s['se']:.1%} | {s['baseline']:.1%} | "
            f"{s['sigmas']:+.1f} | {_verdict_cell(s)} |")


SCORE_NAMES = {"grounding": "grounding acc@IoU 0.5 (detect + refer)", "point": "pointing inside the object",
               "count": "counting exact match", "absent": "absent query answered `[]`",
               "presence": "presence (balanced: `[]` iff absent)"}


def score_table(scores: dict) -> str:
    lines = _table_head("above")
    lines += [_row(SCORE_NAMES[k], v) for k, v in scores.items() if k in SCORE_NAMES]
    return "\n".join(lines)


def _earlier_lines(run: Path) -> list[str]:
    """The recipe lines of an earlier run's card, when this run started from that run's exported folder (the
    latest stage folder holding a MODEL_CARD.md: `model-skills/`, `model-refine/`, `model-presence/` or
    `model-joint/`)."""
    card = next((run / name / "MODEL_CARD.md" for name in ("model-skills", "model-refine", "model-presence",
                                                           "model-joint")
                 if (run / name / "MODEL_CARD.md").is_file()), None)
    if card is None:
        return ["- The stages before this run's ran in an earlier run whose card is not at hand."]
    lines, inside = [], False
    for line in card.read_text().splitlines():
        if line.startswith("## "):
            inside = line.strip() == "## Data and recipe"
            continue
        if inside and line.strip():
            lines.append(line)
    return [f"- The stages before this run's ran in earlier runs (from the card of `{card.parent.name}/`, the folder "
            "this run started from):"] + ["  " + x for x in lines]


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
        "grounding engine's synthetic scenes"
        + (", then on the OCR and video engines' data beside a grounding replay"
           if any(e["stage"] in ("skills", "reading") for e in log) else " only")
        + ". It exists to prove the system works end to end and to power `make demo`; it is not a useful "
        "vision-language model.",
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
        parts += _earlier_lines(run)
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
    parts += _skills_lines(run, [e for e in log if e["stage"] == "skills"], gap_line)
    parts += _reading_lines(run, [e for e in log if e["stage"] in ("letters", "reading")], gap_line)
    later = [json.loads((run / f"stage{n}.json").read_text()) for n in (5, 6) if (run / f"stage{n}.json").is_file()]
    parts.append(time_line(times, next((s["threads"] for s in later if "threads" in s), 1)))
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
    if scores and scores.get("skills"):
        parts += ["", "## Held-out scores of the other engines", "",
                  "`python -m qwen25vl.recipes.tiny_skills --model qwen25vl/assets/tiny-model --data build/tiny/data`: "
                  "held-out samples of each engine (engine seed 7, never drawn by a training stage), greedy decoding, "
                  "each beside its trivial baseline fitted on that dataset's train split. OCR and video use the "
                  "options stage 5 trained on; charts, documents and agent screens the engines' defaults (at 448 px; "
                  "never trained on). A timestamp error is called reliable at 3+ standard errors below its baseline "
                  "and within 1 s.", "", skills_table(scores["skills"])]
    return "\n".join(parts) + "\n"


TIME_LABELS = (("data_and_tokenizer_s", "data + tokenizer"), ("vision_s", "vision stage"), ("joint_s", "joint stage"),
               ("presence_data_s", "stage-3 data"), ("presence_s", "stage 3"), ("refine_s", "stage 4 with its data"),
               ("skills_s", "stage 5 with its data"), ("reading_s", "stage 6"),
               ("heldout_eval_s", "held-out scoring"))


def time_line(times: dict, threads: int) -> str:
    """The card's time line: each recorded stage's minutes and, when one run recorded every stage from the data
    to the held-out scoring (`make tiny-model` from nothing), their total."""
    where = "one thread" if threads == 1 else f"{threads} threads"
    line = (f"- Time on {where} of the shared 2-core CPU: "
            + ", ".join(f"{label} {times[key] / 60:.1f} min" for key, label in TIME_LABELS if key in times) + ".")
    if all(key in times for key, _ in TIME_LABELS):
        total = sum(times[key] for key, _ in TIME_LABELS)
        line += f" In all {total / 60:.0f} min ({total / 3600:.2f} h) from nothing."
    return line


SKILL_NAMES = {"ocr": "OCR word exact match", "charts": "chart value accuracy (relaxed 5%)",
               "documents": "document block F1 at IoU 0.5", "video": "video timestamp mean absolute error",
               "agent": "agent click inside the target"}
SKILL_BASELINES = {"ocr": "the most frequent word", "charts": "the most frequent value answer",
                   "documents": "one block at the best constant box", "video": "the mean times",
                   "agent": "the screen centre"}


def skills_table(skills: dict) -> str:
    lines = _table_head("better")
    for kind, s in skills.items():
        v = _verdict_cell(s)
        if s.get("lower_is_better"):
            score, base = f"{s['score']:.2f} s ± {s['se']:.2f}", f"{s['baseline']:.2f} s ({SKILL_BASELINES[kind]})"
        else:
            score, base = f"{s['score']:.1%} ± {s['se']:.1%}", f"{s['baseline']:.1%} ({SKILL_BASELINES[kind]})"
        lines.append(f"| {SKILL_NAMES[kind]} | {s['n']} | {score} | {base} | {s['sigmas']:+.1f} | {v} |")
    return "\n".join(lines)


def _skills_lines(run: Path, entries: list, gap_line) -> list[str]:
    """Stage 5's recipe lines (its data commands, settings and gap), when the run has it."""
    stage5 = run / "stage5.json"
    if not entries or not stage5.is_file():
        return []
    s5 = json.loads(stage5.read_text())

    def command(kind: str) -> str:
        m = json.loads((run / "data" / f"{kind}-skills" / "manifest.json").read_text())
        sets = " ".join(f"--set {k}={str(v).lower() if isinstance(v, bool) else v}"
                        for k, v in m["options"].items() if k in s5["options"].get(kind, {}) and k != "size")
        return (f"`python -m qwen25vl.data.synth {kind} --size {m['options']['size']} {sets} --train "
                f"{m['splits']['train']['samples']} --seed {m['seed']}`")

    records = s5["records"]
    return [
        f"- Stage 5 (skills) data: {command('ocr')} (large upright Latin words; the tiny tokenizer holds Latin "
        f"merges only), {command('video')} (one object per clip; its span or its disappearance asked in seconds; "
        "sampled at 1, 2 or 4 fps, so the answer must come from the frames' absolute-time M-RoPE positions, not from "
        f"counting frames), and {records['grounding']} fresh presence scenes (three records each) as a grounding "
        "replay.",
        f"- Stage 5 training from the stage-4 folder: {s5['steps']} steps of {s5['batch']} records drawn from the "
        f"shuffled mix, lr {s5['lr']} (ViT 0.2x), 5% warm-up then cosine to 0.1x, grounding decision tokens "
        f"{s5['decision_weight']}x, no probes.",
        f"- Stage 5 shuffled-image gap on grounding held-out packs: {gap_line(entries)}.",
    ]


def _reading_lines(run: Path, entries: list, gap_line) -> list[str]:
    """Stage 6's recipe lines (the letter stage's accuracy, the words and mix phases' settings, the mix's gap), when
    the run has it."""
    stage6 = run / "stage6.json"
    reading = [e for e in entries if e["stage"] == "reading"]
    if not reading or not stage6.is_file():
        return []
    s6 = json.loads(stage6.read_text())
    letters = [e for e in entries if e["stage"] == "letters"]
    accuracy = (f"; centre-letter accuracy over its last 100 steps {letters[-1]['char_acc_100']:.1%} (the most "
                "frequent letter alone: about 12%)") if letters else ""
    return [
        f"- Stage 6 (reading) from the stage-5 folder: first {s6['letter_steps']} steps of the ViT + merger alone on "
        f"stage 5's word images (24 a step, lr {s6['letter_lr']}, 5% warm-up then cosine to 0.1x) with a throwaway "
        "linear head on every merged 28 px cell predicting the letters under it, the letter under its centre and "
        f"that letter's place in the word (targets from the word's ink box split by advance widths)"
        + (f", while {s6.get('anchor_batch', '?')} of stage 5's grounding scenes a step are held to the starting "
           "tower's merged features (their squared error over the features' mean square, weighted "
           f"{s6['letter_anchor']:g}x, so the objects the LLM reads stay where they were)"
           if s6.get("letter_anchor") else "") + f"{accuracy}; "
        + (f"then {s6['words_steps']} steps of {s6['batch']} records on stage 5's words alone, lr {s6['words_lr']} "
           "(ViT 0.2x), the character probes on throughout; " if s6.get("words_steps") else "")
        + f"then {s6['steps']} steps of {s6['batch']} records on stage 5's mix again, lr {s6['lr']} (ViT 0.2x), 5% "
        f"warm-up then cosine to 0.1x, grounding decision tokens {s6['decision_weight']}x"
        + (f", for the first {s6['char_until']:.0%} of them training-only character probes on the merger output and "
           "LLM layer 1's image tokens of the word images (the letters under each cell)" if s6.get("char_until")
           else "") + ". The heads are dropped.",
        f"- Stage 6 shuffled-image gap on grounding held-out packs: {gap_line(reading)}.",
    ]


def install(folder: Path, run: Path, dest: Path) -> Path:
    """Copy the exported model (and scores.json when evaluated) to `dest` and write MODEL_CARD.md there."""
    import shutil

    from qwen25vl.recipes.tiny import say

    dest.mkdir(parents=True, exist_ok=True)
    for path in folder.iterdir():
        if path.is_file():
            shutil.copy(path, dest / path.name)
    (dest / "MODEL_CARD.md").write_text(model_card(dest, run))
    say(f"installed {dest}")
    return dest
