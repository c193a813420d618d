"""The skills evaluation's scores and baselines: each engine's reference answer scores perfectly against its own
truth, a wrong answer scores lower by the stated rule, and the fitted baselines are the trivial answers named."""

import json

import pytest

from qwen25vl.recipes import tiny_skills as sk


def _split(kind, tmp_path, train=8, **options):
    from qwen25vl.data.synth import write_dataset
    from qwen25vl.recipes.tiny_data import read_split

    write_dataset(kind, tmp_path / kind, train=train, heldout=0, seed=2, progress=False, **options)
    return sk._items(kind, *read_split(tmp_path / kind, "train"))


def test_video_error_reads_spans_and_single_times_and_charges_the_clip_for_no_time():
    assert sk.video_error("The given query happens in 1.0 - 4.0 seconds.", [1.5, 3.0], "span", 8) == 0.75
    assert sk.video_error("6.4", [5.0], "disappear", 8) == pytest.approx(1.4)
    assert sk.video_error("at 2.0 seconds", [5.0], "disappear", 8) == 3.0
    assert sk.video_error('```json\n[{"bbox_2d": [1, 2, 3, 4]}]', [1.0, 2.0], "span", 8) != 0.0
    assert sk.video_error("no idea", [1.0, 2.0], "span", 6) == 6.0
    assert sk.video_error("never", [5.0], "disappear", 7) == 7.0


def test_reference_answers_score_perfectly_on_every_kind(tmp_path):
    kinds = {"ocr": {"size": 224, "tasks": "word", "scripts": "latin"},
             "video": {"size": 112, "max_seconds": 4, "max_objects": 1, "tasks": "span,disappear"},
             "charts": {"size": 224}, "documents": {"size": 224, "max_blocks": 3}, "agent": {"size": 224}}
    for kind, options in kinds.items():
        items = _split(kind, tmp_path, **options)
        assert items, kind
        best = 0.0 if kind in sk.LOWER_IS_BETTER else 1.0
        for record, meta, truth in items:
            assert sk.score(kind, sk._answer_text(record), meta, truth) == pytest.approx(best), (kind, meta["id"])


def test_wrong_answers_score_lower(tmp_path):
    record, meta, truth = next(i for i in _split("documents", tmp_path, train=4, size=448, max_blocks=6)
                               if len(i[2]) >= 2)
    answer = sk._answer_text(record)
    first = truth[0]
    moved = answer.replace(" ".join(map(str, first)), " ".join(str(v + 60) for v in first), 1)
    assert moved != answer
    assert sk.document_f1(moved, truth) == pytest.approx(2 * (len(truth) - 1) / (2 * len(truth)))
    assert sk.document_f1("plain words, no HTML", truth) == 0.0
    (record, meta, truth), *_ = _split("agent", tmp_path, train=1, size=224)
    x1, y1, x2, y2 = truth
    call = {"name": meta["truth"]["tool"], "arguments": {"action": "left_click", "coordinate": [x2 + 3, y2 + 3]}}
    outside = f"<tool_call>\n{json.dumps(call)}\n</tool_call>"
    assert sk.score("agent", outside, meta, truth) == 0.0
    assert sk.click_of("<tool_call>\n{not json\n</tool_call>") is None


def test_baselines_are_the_trivial_answers(tmp_path):
    train = _split("ocr", tmp_path, train=30, size=224, tasks="word", scripts="latin")
    scores, best = sk.baseline_answers("ocr", train, train)
    words = [t for _, _, t in train]
    assert best == max(set(words), key=words.count) and sum(scores) == words.count(best)
    video = _split("video", tmp_path, train=12, size=112, max_seconds=4, max_objects=1, tasks="span,disappear")
    errors, means = sk.baseline_answers("video", video, video)
    ends = [t[0] for _, m, t in video if m["task"] == "disappear"]
    assert means["disappear"][0] == pytest.approx(sum(ends) / len(ends))
    assert len(means["span"]) == 2 and all(e >= 0 for e in errors)
    agent = _split("agent", tmp_path, train=6, size=224)
    centre, fitted = sk.baseline_answers("agent", agent, agent)
    assert fitted == "centre" and len(centre) == len(agent)
    for (_, m, box), hit in zip(agent, centre):
        w, h = m["truth"]["size"]
        assert hit == float(box[0] <= w / 2 <= box[2] and box[1] <= h / 2 <= box[3])


def test_skills_table_writes_seconds_for_the_timestamp_error_and_flags_unreliable_rows():
    from qwen25vl.recipes.tiny_card import skills_table

    table = skills_table({
        "ocr": {"n": 200, "score": 0.42, "se": 0.035, "baseline": 0.01, "sigmas": 11.7, "reliable": True},
        "video": {"n": 200, "score": 1.25, "se": 0.08, "baseline": 2.0, "sigmas": 6.0, "reliable": True,
                  "lower_is_better": True, "reliable_below": 1.0},
        "agent": {"n": 90, "score": 0.1, "se": 0.03, "baseline": 0.08, "sigmas": 0.5, "reliable": False}})
    rows = table.splitlines()[2:]
    assert rows[0].startswith("| OCR word exact match | 200 | 42.0% ± 3.5% | 1.0% (the most frequent word)")
    assert "**above chance, unreliable**" in rows[0]  # 3+ s.e. over the baseline but wrong most of the time
    assert "1.25 s ± 0.08" in rows[1] and "2.00 s (the mean times)" in rows[1]
    assert "**above chance, unreliable**" in rows[1]  # better than the mean times, but off by more than 1 s
    assert rows[2].endswith("| +0.5 | **not reliable** |")


def test_cli_refuses_an_unknown_kind_before_loading_anything(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        sk.main(["--model", str(tmp_path / "none"), "--data", str(tmp_path), "--kinds", "ocr,poems"])
    assert stop.value.code == 2 and "poems" in capsys.readouterr().err
    assert not (tmp_path / "eval-ocr").exists()


def test_cli_names_a_missing_model_folder_without_a_traceback(tmp_path, capsys):
    assert sk.main(["--model", str(tmp_path / "none"), "--data", str(tmp_path), "--kinds", "ocr"]) == 2
    err = capsys.readouterr().err
    assert "none" in err and "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "eval-ocr").exists()  # nothing written for a run that cannot start


def test_time_line_totals_only_a_run_that_recorded_every_stage():
    from qwen25vl.recipes.tiny_card import TIME_LABELS, time_line

    every = {key: 60.0 * (i + 1) for i, (key, _) in enumerate(TIME_LABELS)}  # 1 + 2 + ... + 9 = 45 min
    line = time_line(every, 2)
    assert line.startswith("- Time on 2 threads of the shared 2-core CPU: data + tokenizer 1.0 min, vision stage 2.0")
    assert "stage 5 with its data 7.0 min, stage 6 8.0 min" in line
    assert line.endswith("held-out scoring 9.0 min. In all 45 min (0.75 h) from nothing.")
    later = {k: v for k, v in every.items() if k not in ("vision_s", "joint_s")}  # started from an earlier run
    assert "In all" not in time_line(later, 1) and time_line(later, 1).startswith("- Time on one thread")


def test_a_run_from_an_earlier_stage_5_folder_takes_that_cards_recipe_and_adds_stage_6(tmp_path):
    from qwen25vl.recipes.tiny_card import _earlier_lines, _reading_lines

    none = "- The stages before this run's ran in an earlier run whose card is not at hand."
    assert _earlier_lines(tmp_path) == [none]
    for name, line in (("model-refine", "- stage 4 line"), ("model-skills", "- stage 5 line")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "MODEL_CARD.md").write_text(
            f"# card\n\n## Architecture\n- not recipe\n\n## Data and recipe\n{line}\n  - nested\n\n"
            "## Held-out\n| x |\n")
    lines = _earlier_lines(tmp_path)  # the latest stage folder's card wins, its recipe section only, indented
    assert lines[0].endswith("(from the card of `model-skills/`, the folder this run started from):")
    assert lines[1:] == ["  - stage 5 line", "    - nested"]

    entries = [{"stage": "letters", "step": 100, "char_acc_100": 0.4},
               {"stage": "letters", "step": 4000, "char_acc_100": 0.532},
               {"stage": "reading", "step": 2000, "shuffled_gap": 0.5}]
    assert _reading_lines(tmp_path, entries, lambda e: "GAPS") == []  # no stage6.json: the stage did not run here
    (tmp_path / "stage6.json").write_text(json.dumps({"letter_steps": 4000, "letter_lr": 0.002, "steps": 2000,
                                                      "batch": 16, "lr": 0.0005, "decision_weight": 4.0}))
    recipe, gap = _reading_lines(tmp_path, entries, lambda e: f"{len(e)} GAPS")
    assert "first 4000 steps" in recipe and "lr 0.002" in recipe and "then 2000 steps of 16 records" in recipe
    assert "centre-letter accuracy over its last 100 steps 53.2%" in recipe  # the last letters entry, not the first
    assert "held to the starting tower's" not in recipe and "probes" not in recipe  # none recorded, none claimed
    (tmp_path / "stage6.json").write_text(json.dumps({"letter_steps": 4000, "letter_lr": 0.002, "steps": 2000,
                                                      "batch": 16, "lr": 0.0005, "decision_weight": 4.0,
                                                      "letter_anchor": 10.0, "anchor_batch": 8, "char_until": 0.6,
                                                      "words_steps": 1200, "words_lr": 0.0008}))
    assert "while 8 of stage 5's grounding scenes a step are held to the starting tower's merged features" in \
        _reading_lines(tmp_path, entries, lambda e: "")[0]
    assert "weighted 10x" in _reading_lines(tmp_path, entries, lambda e: "")[0]
    assert "then 1200 steps of 16 records on stage 5's words alone, lr 0.0008" in _reading_lines(
        tmp_path, entries, lambda e: "")[0] and "words alone" not in recipe  # a phase only when recorded
    assert "for the first 60% of them training-only character probes" in _reading_lines(tmp_path, entries,
                                                                                          lambda e: "")[0]
    assert gap == "- Stage 6 shuffled-image gap on grounding held-out packs: 1 GAPS."  # reading entries only
    assert _reading_lines(tmp_path, entries[:2], lambda e: "GAPS") == []  # no mix steps logged: nothing claimed
