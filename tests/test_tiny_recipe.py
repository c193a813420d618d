"""The tiny model's recipe: dense targets on a hand-made scene, and a CI-sized run of both stages."""

import dataclasses
import json
import math
import shutil

import pytest
import torch

from qwen25vl.data.synth.grounding import Thing
from qwen25vl.data.synth.shapes import SHAPES
from qwen25vl.recipes.bootstrap import COLOUR_NAMES, dense_targets


def test_dense_targets_of_a_hand_made_scene():
    # 84 x 56 px: 2 rows x 3 columns of 28 px cells, centres at x 14 / 42 / 70, y 14 / 42
    star = Thing("star", "red", "plain", (28, 0, 60, 30), (40, 10))
    ring = Thing("ring", "blue", "plain", (0, 40, 20, 55), (5, 45))
    t = dense_targets([star, ring], (84, 56))
    kind_star, kind_ring = 1 + SHAPES.index("star"), 1 + SHAPES.index("ring")
    assert t.kind.tolist() == [0, kind_star, 0, kind_ring, 0, 0]
    assert t.colour.tolist() == [0, 1 + COLOUR_NAMES.index("red"), 0, 1 + COLOUR_NAMES.index("blue"), 0, 0]
    assert t.row.tolist() == [0, 0, 0, 1, 1, 1] and t.col.tolist() == [0, 1, 2, 0, 1, 2]
    # cell (0, 1), centre (42, 14): to the star's left, top, right, bottom edges, over the longer side 84
    assert torch.allclose(t.offsets[1], torch.tensor([14.0, 14.0, 18.0, 16.0]) / 84)
    assert torch.allclose(t.offsets[3], torch.tensor([14.0, 2.0, 6.0, 13.0]) / 84)
    assert torch.isnan(t.offsets[[0, 2, 4, 5]]).all()


def test_replayed_scene_matches_the_written_truth(tmp_path):
    from qwen25vl.data.synth import write_dataset
    from qwen25vl.recipes.bootstrap import scene_of
    from qwen25vl.recipes.tiny import data_options, read_split

    write_dataset("grounding", tmp_path, train=6, seed=3, progress=False, size=112, max_objects=3)
    _, metas = read_split(tmp_path, "train")
    for meta in metas:
        image, things = scene_of(meta["seed"], data_options(tmp_path))
        assert list(image.size) == meta["truth"]["size"]
        boxes = {tuple(t.box) for t in things}
        assert all(tuple(o["bbox_2d"]) in boxes for o in meta["truth"]["objects"] if "bbox_2d" in o)



def test_count_query_most_asks_for_the_most_frequent_category():
    import random

    from qwen25vl.data.synth.grounding import question

    star = [Thing("star", "red", "plain", (x, 0, x + 10, 10), (x + 5, 5)) for x in (0, 20, 40)]
    ring = Thing("ring", "blue", "plain", (0, 30, 10, 40), (5, 35))
    scene = [ring, *star]
    queried = {question(random.Random(seed), "count", scene)[2]["query"] for seed in range(20)}
    assert queried == {"blue ring", "red star"}  # "any": both categories get asked
    for seed in range(20):
        prompt, answer, truth = question(random.Random(seed), "count", scene, "most")
        assert truth["query"] == "red star" and truth["count"] == 3 and answer.endswith("Total number: 3.")
    tie = [ring, star[0]]  # equal counts: either may be asked
    assert {question(random.Random(s), "count", tie, "most")[2]["query"] for s in range(20)} == queried
    detect = {question(random.Random(seed), "detect", scene, "most")[2]["query"] for seed in range(20)}
    assert detect == queried  # only count questions change


def test_count_query_must_be_a_known_mode(tmp_path):
    from qwen25vl.data.synth import write_dataset
    from qwen25vl.errors import InputError

    with pytest.raises(InputError, match="count_query must be one of"):
        write_dataset("grounding", tmp_path, train=1, seed=0, progress=False, size=112, count_query="fewest")

def test_ci_sized_run_loss_falls_and_logs_the_shuffled_gap(small_run, tmp_path):
    from qwen25vl.model.vlm import Qwen25VL
    from qwen25vl.recipes.tiny import export, joint_stage, vision_stage

    vlm, base, data = small_run
    log = []
    vision_stage(vlm, data, steps=11, batch=6, lr=3e-3, seed=0, log=log.append)
    vision = [e["loss"] for e in log]
    assert vision[-1] < vision[0]
    log.clear()
    last = joint_stage(vlm, base, data, steps=20, batch=6, lr=3e-3, vision_ratio=0.2, dense_until=0.5, seed=0,
                       log_every=20, log=log.append)
    ce = [e["ce"] for e in log]
    assert ce[-1] < 0.8 * ce[0], ce  # the 6 train records, seen every step
    assert math.isfinite(last["shuffled_gap"]) and last["shuffled_ce"] > 0
    assert log[0]["dense"] is not None and log[-1]["dense"] is None  # dense loss on for the first half only
    folder = export(vlm, base, tmp_path / "model")  # a plain folder: the heads do not ship
    again = Qwen25VL.from_pretrained(folder)
    assert set(again.state_dict()) == set(vlm.state_dict())


def test_presence_mix_asks_a_present_and_an_absent_category_on_each_image(tmp_path):
    from qwen25vl.data.synth import write_dataset
    from qwen25vl.errors import InputError
    from qwen25vl.recipes.tiny import read_split

    write_dataset("grounding", tmp_path, train=6, seed=2, progress=False, size=112, max_objects=3, mix="presence")
    records, metas = read_split(tmp_path, "train")
    assert len(records) == 18
    for i in range(6):
        trio = metas[3 * i:3 * i + 3]
        assert len({m["seed"] for m in trio}) == 1  # one picture
        assert len({r.messages[0]["content"][0]["image"] for r in records[3 * i:3 * i + 3]}) == 1
        detect, absent, third = trio
        assert detect["task"] == "detect" and detect["truth"]["query"] in detect["truth"]["present"]
        assert absent["task"] == "absent" and absent["truth"]["query"] not in absent["truth"]["present"]
        assert absent["truth"]["objects"] == [] and detect["truth"]["objects"]
        assert third["task"] == ("count", "refer", "point")[i % 3] or third["task"] == "detect"  # detect: nothing
        # to single out for refer / point
        prompt = lambda r: r.messages[0]["content"][1]["text"]  # noqa: E731
        assert prompt(records[3 * i]).replace(detect["truth"]["query"], "Q") == \
            prompt(records[3 * i + 1]).replace(absent["truth"]["query"], "Q")  # same question form
    with pytest.raises(InputError, match="mix must be one of"):
        write_dataset("grounding", tmp_path / "x", train=1, seed=0, progress=False, size=112, mix="shuffle")


def test_decision_tokens_count_decision_weight_times_in_training_only(small_run):
    from qwen25vl.data.encoding import Encoder
    from qwen25vl.data.packing import collate_pack
    from qwen25vl.recipes.bootstrap import JointLoss
    from qwen25vl.recipes.tiny import decision_token_ids, read_split
    from qwen25vl.train.losses import full_cross_entropy

    vlm, base, data = small_run
    ids = decision_token_ids(base)
    assert ids  # this test tokenizer holds only the tab as one token; the tiny model's holds all four
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(base / "tokenizer.json")).get_vocab()
    assert {t for t, i in vocab.items() if i in ids} <= {"[]\u010a", "[\u010a", "]\u010a", "\u0109"}
    from qwen25vl.generation.paths import EMBEDDED_MODEL_DIR

    assert len(decision_token_ids(EMBEDDED_MODEL_DIR)) == 4
    records, _ = read_split(data, "train")
    pack = collate_pack([Encoder.from_pretrained(base, config=vlm.config)(r) for r in records[:4]])
    labels = pack.labels[0]
    where = torch.isin(labels, torch.tensor(ids))
    assert 0 < int(where.sum()) < int((labels != -100).sum())
    loss = JointLoss(vlm, decision_ids=ids, decision_weight=4.0)
    ce, _, stats = loss(pack)
    plain, _, none = JointLoss(vlm)(pack)
    assert torch.allclose(ce, plain) and "decision_extra" not in none
    # the extra is 3x the decision positions' summed CE, from the same hidden states
    hidden = {}
    handle = vlm.model.norm.register_forward_hook(lambda m, i, o: hidden.setdefault("h", o))
    loss(pack)
    handle.remove()
    want = 3.0 * full_cross_entropy(hidden["h"][0][where], vlm.lm_head.weight, labels[where])
    torch.testing.assert_close(stats["decision_extra"], want, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        assert "decision_extra" not in loss(pack)[2]  # the gap and evaluation read plain CE


def test_entry_counts_find_the_list_opening_and_count_the_entries():
    from qwen25vl.recipes.bootstrap import entry_counts

    E, L, T, X = 7, 8, 9, -100  # '[]\n', '[\n', the entry tab, an unsupervised position
    labels = torch.tensor([X, X, 3, E, 4,  # sample 0: an empty list
                           X, 3, L, T, 5, T, 5, T, 6,  # sample 1: three entries
                           X, X, 2, 2,  # sample 2: no list at all: left out
                           X, L, T, 1, L])  # sample 3: one entry (a later '[\n' is not a second opening)
    cu = torch.tensor([0, 5, 14, 18, 23])
    where, counts = entry_counts(labels, cu, torch.tensor([E, L]), T)
    assert where.tolist() == [3, 7, 19] and counts.tolist() == [0, 3, 1]


def test_count_probe_trains_only_while_on(small_run):
    from qwen25vl.data.encoding import Encoder
    from qwen25vl.data.packing import collate_pack
    from qwen25vl.recipes.bootstrap import JointLoss
    from qwen25vl.recipes.tiny import read_split

    vlm, base, data = small_run
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(base / "tokenizer.json")).get_vocab()
    tab = vocab["\u0109"]
    records, _ = read_split(data, "train")
    pack = collate_pack([Encoder.from_pretrained(base, config=vlm.config)(r) for r in records[:4]])
    # the test tokenizer spells '[' alone; the list opens at its position
    loss = JointLoss(vlm, count_probe=((vocab["["],), tab))
    _, _, stats = loss(pack)
    assert stats["count_loss"].requires_grad and 0 <= stats["count_acc"] <= 1
    stats["count_loss"].backward()
    assert loss.count_head.weight.grad.abs().sum() > 0
    assert vlm.model.layers[0].self_attn.q_proj.weight.grad is not None  # it reaches the early layers
    assert vlm.model.norm.weight.grad is None  # read before the final norm and the LM head
    loss.count_head_on = False
    assert "count_loss" not in loss(pack)[2]
    with torch.no_grad():
        loss.count_head_on = True
        assert "count_loss" not in loss(pack)[2]


def test_text_first_records_ask_the_question_before_the_image(tmp_path):
    from qwen25vl.data.synth import write_dataset
    from qwen25vl.recipes.tiny import PRESENCE_OPTIONS, read_split
    from qwen25vl.recipes.tiny_eval import reordered, text_first

    write_dataset("grounding", tmp_path / "a", train=3, seed=4, progress=False, size=112, text_first=True)
    write_dataset("grounding", tmp_path / "b", train=3, seed=4, progress=False, size=112)
    first, _ = read_split(tmp_path / "a", "train")
    plain, _ = read_split(tmp_path / "b", "train")
    for a, b in zip(first, plain):
        assert [p["type"] for p in a.messages[0]["content"]] == ["text", "image"]
        assert [p["type"] for p in b.messages[0]["content"]] == ["image", "text"]
        assert reordered(b, True).messages == a.messages and reordered(b, False) is b  # eval reorders the same way
        assert text_first(b.messages[0]) == a.messages[0]
    assert PRESENCE_OPTIONS["text_first"] and (tmp_path / "a" / "media").is_dir()


def test_match_targets_mark_the_cells_of_the_queried_category():
    from qwen25vl.recipes.bootstrap import match_targets

    star = Thing("star", "red", "plain", (28, 0, 60, 30), (40, 10))  # covers cell (0, 1)
    ring = Thing("ring", "blue", "plain", (0, 40, 20, 55), (5, 45))  # covers cell (1, 0)
    other = Thing("star", "blue", "plain", (56, 28, 84, 56), (70, 42))  # covers cell (1, 2): same shape, other colour
    t = dense_targets([star, ring, other], (84, 56))
    metas = [{"task": "detect", "truth": {"query": "red star"}}, {"task": "absent", "truth": {"query": "red ring"}},
             {"task": "count", "truth": {"query": "blue ring"}}, {"task": "refer", "truth": {"query": "leftmost x"}}]
    m = match_targets([t] * 4, metas)
    assert m.shape == (24,)
    assert m[:6].tolist() == [0, 1, 0, 0, 0, 0]  # only the red star's cell, not the blue star's
    assert m[6:12].tolist() == [0] * 6  # an absent category matches nothing
    assert m[12:18].tolist() == [0, 0, 0, 1, 0, 0]
    assert torch.isnan(m[18:]).all()  # refer: left out


def test_match_probe_reads_the_image_tokens_after_layer_1(small_run):
    from qwen25vl.data.encoding import Encoder
    from qwen25vl.data.packing import collate_pack
    from qwen25vl.recipes.bootstrap import JointLoss
    from qwen25vl.recipes.tiny import read_split

    vlm, base, data = small_run
    records, _ = read_split(data, "train")
    pack = collate_pack([Encoder.from_pretrained(base, config=vlm.config)(r) for r in records[:3]])
    cells = int((pack.input_ids == vlm.config.image_token_id).sum())
    match = torch.zeros(cells)
    match[::5] = 1
    match[-3:] = float("nan")
    loss = JointLoss(vlm)
    _, _, stats = loss(pack, match=match)
    assert stats["match_loss"].requires_grad and 0 <= stats["match_recall"] <= 1
    stats["match_loss"].backward()
    assert loss.match_head.weight.grad.abs().sum() > 0 and vlm.model.norm.weight.grad is None
    assert "match_loss" not in loss(pack)[2]  # no targets, no probe


def _mixed_data(tmp_path):
    """Tiny datasets of every engine beside the small run's grounding (sizes the small model handles fast)."""
    from qwen25vl.data.synth import write_dataset

    options = {"ocr": {"size": 112, "tasks": "word", "scripts": "latin", "rotate": False, "min_px": 20},
               "video": {"size": 112, "max_seconds": 4, "max_objects": 1, "sample_fps": "1,2",
                         "tasks": "span,disappear"},
               "charts": {"size": 224}, "documents": {"size": 224, "max_blocks": 3}, "agent": {"size": 224}}
    folders = []
    for kind, opts in options.items():
        write_dataset(kind, tmp_path / kind, train=2, heldout=0, seed=4, progress=False, **opts)
        folders.append(tmp_path / kind)
    return folders


def test_a_mixed_stage_trains_on_every_engine_and_keeps_the_gap(small_run, tmp_path):
    """Stage 5's path: one joint stage over the grounding folder and every other engine's records (videos
    included); each engine's CE per answer token falls, and the shuffled-image gap is measured on the grounding
    held-out packs."""
    from qwen25vl.data.encoding import Encoder
    from qwen25vl.data.packing import collate_pack
    from qwen25vl.recipes.bootstrap import JointLoss
    from qwen25vl.recipes.tiny import joint_stage, read_split

    vlm, base, data = small_run
    folders = _mixed_data(tmp_path)
    encoder = Encoder.from_pretrained(base, config=vlm.config)
    packs = {f.name: collate_pack([encoder(r) for r in read_split(f, "train")[0]]) for f in folders}

    def ce_per_token() -> dict:
        with torch.no_grad():
            return {name: float(JointLoss(vlm)(pack)[0]) / pack.num_targets for name, pack in packs.items()}

    before = ce_per_token()
    log = []
    last = joint_stage(vlm, base, [data] + folders, steps=12, batch=16, lr=3e-3, vision_ratio=1.0, dense_until=0.0,
                       seed=0, log_every=12, log=log.append, stage="skills")
    after = ce_per_token()
    assert all(after[k] < 0.9 * before[k] for k in before), (before, after)
    assert math.isfinite(last["shuffled_gap"]) and last["stage"] == "skills"


def test_video_tokens_carry_the_frames_features(small_run, tmp_path):
    """JointLoss puts the vision tower's video features in the video placeholders: the CE changes when the frames
    change, and the tower's weights get a gradient from a pack with no image at all."""
    from qwen25vl.data.encoding import Encoder
    from qwen25vl.data.packing import collate_pack
    from qwen25vl.recipes.bootstrap import JointLoss
    from qwen25vl.recipes.tiny import read_split

    vlm, base, _ = small_run
    video = _mixed_data(tmp_path)[1]
    records, _ = read_split(video, "train")
    encoder = Encoder.from_pretrained(base, config=vlm.config)
    pack = collate_pack([encoder(r) for r in records])
    assert pack.pixel_values is None and pack.pixel_values_videos is not None
    loss_fn = JointLoss(vlm)
    ce, dense, _ = loss_fn(pack)
    assert dense is None and math.isfinite(float(ce.detach()))
    ce.backward()
    grad = vlm.visual.patch_embed.proj.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    with torch.no_grad():
        noisy = dataclasses.replace(pack, pixel_values_videos=torch.randn_like(pack.pixel_values_videos))
        assert abs(float(loss_fn(noisy)[0]) - float(ce)) > 1e-4


def test_reading_stage_teaches_letters_then_trains_on_stage_5s_mix(small_run, tmp_path):
    """Stage 6: refused with a plain error (nothing written) while stage 5's sets are missing; then the letter stage
    (ViT alone), the words alone and the mix run in turn, each logged, the gap measured, and a plain folder lands
    in out/model."""
    from safetensors.torch import load_file

    from qwen25vl.data.synth import write_dataset
    from qwen25vl.recipes.tiny import export, reading_stage

    vlm, base, data = small_run
    out = tmp_path / "out"
    start = export(vlm, base, tmp_path / "start")
    log = []
    kwargs = dict(letter_steps=50, letter_lr=3e-3, steps=4, batch=4, lr=3e-3, decision_weight=4.0, seed=0,
                  log_every=4, log=log.append, anchor_batch=2, char_until=1.0, words_steps=3)
    with pytest.raises(FileNotFoundError, match="stage 5's sets"):
        reading_stage(out, base, start, **kwargs)
    assert not (out / "model").exists() and log == []
    write_dataset("grounding", out / "data" / "grounding-skills", train=4, heldout=12, seed=1, progress=False,
                  size=112, max_objects=2, mix="presence", text_first=True)  # the question first, as stage 5's scenes
    write_dataset("ocr", out / "data" / "ocr-skills", train=24, heldout=2, seed=4, progress=False, size=112,
                  tasks="word", scripts="latin", rotate=False, min_px=20)
    write_dataset("video", out / "data" / "video-skills", train=2, heldout=0, seed=4, progress=False, size=112,
                  max_seconds=4, max_objects=1, sample_fps="1,2", tasks="span,disappear")
    folder = reading_stage(out, base, start, **kwargs)
    assert folder == out / "model"
    stages = [e["stage"] for e in log]
    assert stages == (["letters"] * stages.count("letters") + ["reading-words"] * stages.count("reading-words")
                      + ["reading"] * stages.count("reading"))  # letters, then the words alone, then the mix
    words = [e for e in log if e["stage"] == "reading-words"]
    assert words[-1]["step"] == 3 and "char_probe" in words[-1]  # the probes on throughout the words phase
    assert math.isnan(words[-1]["shuffled_gap"])  # two held-out words of different sizes: no pack, no gap
    assert [e["step"] for e in log if e["stage"] == "letters"] == [50]
    assert all(e["anchor_drift"] >= 0 for e in log if e["stage"] == "letters")  # grounding scenes held by default
    assert math.isfinite([e for e in log if e["stage"] == "reading"][-1]["shuffled_gap"])
    assert "char_probe" in [e for e in log if e["stage"] == "reading"][-1]  # the character probes ride along
    before, after = load_file(start / "model.safetensors"), load_file(folder / "model.safetensors")
    assert before.keys() == after.keys()  # the letter head does not ship
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("model."))  # the mix: the LLM
