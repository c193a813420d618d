"""The tiny recipe's character probe: per-cell letter targets of OCR word images, the probes' loss, their place in
the joint forward and the OCR-only measurement."""

import json
import math

import pytest
import torch

from qwen25vl.recipes.tiny_ocr import IGNORE, LETTERS, CharTargets, char_loss, char_targets, letter_spans


def _word(text, box, size=(112, 56)):
    return {"task": "word", "truth": {"size": list(size), "objects": [{"text": text, "bbox_2d": box}]}}


def test_letter_spans_split_the_ink_box_by_advance_width():
    spans = letter_spans("mom", [14, 30, 89, 50])
    assert spans[0][0] == pytest.approx(14) and spans[-1][1] == pytest.approx(90)  # inclusive box: 76 columns
    assert all(a[1] == pytest.approx(b[0]) for a, b in zip(spans, spans[1:]))
    widths = [b - a for a, b in spans]
    assert widths[0] == pytest.approx(widths[2]) and widths[1] < 0.75 * widths[0]  # 'm' is wider than 'o'


def test_char_targets_name_the_letters_under_each_cell():
    # 112 x 56: 2 rows x 4 columns of 28 px cells; the word crosses row 1 only (row 0 by 0 px)
    t = char_targets(_word("mom", [14, 30, 89, 50]), "ocr")
    m, o = 1 + LETTERS.index("m"), 1 + LETTERS.index("o")
    assert t.centre.tolist() == [0, 0, 0, 0, m, m, m, 0]  # cell centres at x 14, 42, 70, 98
    assert t.order.tolist() == [IGNORE] * 4 + [0, 0, 2, IGNORE]  # the first 'm', again, the last; none
    spelled = ["".join(LETTERS[j] for j in torch.nonzero(row).flatten().tolist()) for row in t.letters]
    assert spelled == ["", "", "", "", "", "mo", "m", ""]  # letter centres at x 29, 53, 76
    upper = char_targets(_word("Ox", [10, 30, 73, 50]), "ocr")
    assert upper.centre[4] == 1 + LETTERS.index("O") and upper.centre[6] == 1 + LETTERS.index("x")


def test_char_targets_leave_out_other_records():
    grounding = {"task": "detect", "truth": {"size": [84, 56], "objects": []}}
    t = char_targets(grounding, "grounding")
    assert t.letters.shape == (6, len(LETTERS)) and torch.isnan(t.letters).all()
    assert (t.centre == IGNORE).all() and (t.order == IGNORE).all()
    assert char_targets({"task": "line", "truth": {"size": [84, 56]}}, "ocr").centre.eq(IGNORE).all()
    video = char_targets({"task": "span", "truth": {"size": [112, 112]}}, "video")
    assert video.letters.shape[0] == video.centre.numel() == 0  # a video has no image tokens


def test_char_loss_reads_only_ocr_cells_and_scores_the_centre_letter():
    word = char_targets(_word("mom", [14, 30, 89, 50]), "ocr")
    other = char_targets({"task": "detect", "truth": {"size": [56, 56]}}, "grounding")
    target = CharTargets.cat([word, other])
    n = target.centre.numel()
    logits = (torch.zeros(n, len(LETTERS)), torch.zeros(n, 1 + len(LETTERS)), torch.zeros(n, 16))
    right = logits[1].clone()
    right[torch.arange(8), word.centre] = 20.0  # the right centre letter (or 'none') on every OCR cell
    loss, stats = char_loss((logits[0], right, logits[2]), target)
    assert stats["char_acc"] == 1.0
    wrong = right.clone()
    wrong[4:7] = 0.0
    wrong[4:7, 1] = 20.0  # 'a' on the three letter cells
    worse, stats = char_loss((logits[0], wrong, logits[2]), target)
    assert stats["char_acc"] == 0.0 and float(worse) > float(loss) + 5  # 3 of 8 cells 20 nats off
    noise = right.clone()
    noise[8:] = torch.randn(n - 8, 1 + len(LETTERS)) * 50  # the grounding cells are left out
    assert float(char_loss((logits[0], noise, logits[2]), target)[0]) == pytest.approx(float(loss))
    assert char_loss(logits, CharTargets.cat([other]))[0] is None


@pytest.fixture
def ocr_pack(small_run, tmp_path):
    from qwen25vl.data.encoding import Encoder
    from qwen25vl.data.packing import collate_pack
    from qwen25vl.data.synth import write_dataset
    from qwen25vl.recipes.tiny import read_split

    vlm, base, data = small_run
    write_dataset("ocr", tmp_path / "ocr", train=3, heldout=2, seed=4, progress=False, size=112, tasks="word",
                  scripts="latin", rotate=False, min_px=20)
    encoder = Encoder.from_pretrained(base, config=vlm.config)
    records, metas = read_split(tmp_path / "ocr", "train")
    g_records, g_metas = read_split(data, "train")
    pack = collate_pack([encoder(r) for r in records + g_records[:2]])
    targets = CharTargets.cat([char_targets(m, "ocr") for m in metas]
                              + [char_targets(m, "grounding") for m in g_metas[:2]])
    return vlm, base, data, tmp_path / "ocr", pack, targets


def test_joint_loss_probes_the_merger_output_and_layer_1(ocr_pack):
    from qwen25vl.recipes.bootstrap import JointLoss

    vlm, _, _, _, pack, targets = ocr_pack
    cells = int((pack.input_ids == vlm.config.image_token_id).sum())
    assert targets.centre.numel() == cells  # one target row per image token, in pack order
    assert int((targets.centre > 0).sum()) > 0
    assert "char_loss" not in JointLoss(vlm)(pack, chars=targets)[2]  # no probes unless asked for
    loss_fn = JointLoss(vlm, chars=True)
    ce, _, stats = loss_fn(pack, chars=targets)
    assert {"char_acc_vit", "char_acc_llm"} <= set(stats)
    stats["char_loss"].backward()
    grad = vlm.visual.patch_embed.proj.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0  # the ViT learns from the letters
    assert all(p.grad is not None for head in loss_fn.char_heads for p in head.parameters())
    with torch.no_grad():
        assert "char_loss" not in loss_fn(pack, chars=targets)[2]  # training only: never in the gap's CE


def test_joint_stage_trains_the_char_probe_for_its_share_of_the_steps(ocr_pack):
    from qwen25vl.recipes.tiny import joint_stage

    vlm, base, data, ocr, _, _ = ocr_pack
    log = []
    joint_stage(vlm, base, [data, ocr], steps=20, batch=4, lr=3e-3, vision_ratio=1.0, dense_until=0.0, seed=0,
                log_every=20, log=log.append, char_until=0.5)
    probed = [e for e in log if "char_probe" in e]
    assert [e["step"] for e in log] == [10, 20] and len(probed) == 1 and probed[0]["step"] == 10


def test_measure_trains_scores_and_records_the_probes(small_run, tmp_path):
    from qwen25vl.recipes.tiny import export
    from qwen25vl.recipes.tiny_ocr import main, measure

    vlm, base, _ = small_run
    model = export(vlm, base, tmp_path / "start")
    assert main(["--model", str(tmp_path / "missing"), "--data", str(tmp_path / "d")]) == 2
    assert main(["--model", str(model), "--char-probe-until", "1.5"]) == 2
    result = measure(model, tmp_path / "data", tmp_path / "out", steps=4, batch=2, char_until=1.0, vision_ratio=1.0,
                     train=6, limit=3)
    assert result["n"] == 3 and 0.0 <= result["ocr"] <= 1.0 and math.isfinite(result["shuffled_gap"])
    assert result["char_acc_vit"] is not None and 0.0 <= result["char_acc_vit"] <= 1.0
    assert json.loads((tmp_path / "out" / "result.json").read_text())["steps"] == 4
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()
    off = measure(model, tmp_path / "data", tmp_path / "off", steps=2, batch=2, char_until=0.0, vision_ratio=0.2,
                  train=6, limit=3)
    assert off["char_acc_vit"] is None and "letter_acc" not in off  # no probes, no letter stage: nothing to report
    first = measure(model, tmp_path / "data", tmp_path / "letters", steps=2, batch=2, char_until=0.0,
                    vision_ratio=0.2, train=6, limit=3, letter_steps=3, letter_batch=2)
    assert first["letter_steps"] == 3 and 0.0 <= first["letter_acc"] <= 1.0
    logged = [json.loads(x) for x in (tmp_path / "letters" / "log.jsonl").read_text().splitlines()]
    assert logged[0]["stage"] == "letters" and logged[0]["step"] == 3  # the letter stage ran first


def test_letter_targets_of_a_pack_equal_each_records_and_are_built_once(monkeypatch):
    from qwen25vl.recipes import tiny_ocr

    metas = [_word("mom", [14, 30, 89, 50]), {"task": "detect", "truth": {"size": [56, 56]}},
             _word("Ox", [10, 30, 73, 50])]
    engines = ["ocr", "grounding", "ocr"]
    pack = tiny_ocr.LetterTargets(metas, engines)
    got = pack([2, 0, 1])
    want = CharTargets.cat([char_targets(metas[i], engines[i]) for i in (2, 0, 1)])
    assert torch.equal(got.centre, want.centre) and torch.equal(got.order, want.order)
    assert torch.equal(got.letters.nan_to_num(-1), want.letters.nan_to_num(-1))
    built = []
    monkeypatch.setattr(tiny_ocr, "char_targets", lambda m, e: built.append(e) or want)
    pack([0, 1, 2])
    assert built == []  # every record of this pack was built by the first call


def test_letter_stage_trains_the_vit_alone_on_the_word_images(ocr_pack):
    """The vision-only letter stage: the ViT + merger move and the letter loss falls on the same three words; the
    language model is untouched; a folder with fewer word records than a batch is refused."""
    from qwen25vl.recipes.tiny_ocr import letter_stage

    vlm, _, data, ocr, _, _ = ocr_pack
    before = {k: v.clone() for k, v in vlm.state_dict().items()}
    log = []
    stats = letter_stage(vlm, ocr, steps=100, batch=3, lr=3e-3, log=log.append)
    assert [e["step"] for e in log] == [50, 100] and all(e["stage"] == "letters" for e in log)
    assert log[-1]["loss"] < 0.7 * log[0]["loss"], log
    assert 0.0 <= stats["letter_acc"] <= 1.0 and stats["letter_loss"] > 0
    after = vlm.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("visual."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("visual."))
    with pytest.raises(ValueError, match="fewer than a batch"):
        letter_stage(vlm, data, steps=1, batch=3)  # the grounding folder holds no word records


def test_an_anchored_letter_stage_keeps_the_anchor_images_features_closer_to_the_start(ocr_pack):
    """With the grounding scenes as an anchor, their merged features drift less from the starting tower's than
    without (same seed, same steps), while the letters still train; the logged drift is the relative error."""
    import copy

    from qwen25vl.processing.image import process_image
    from qwen25vl.recipes.tiny_data import _image_path, read_split
    from qwen25vl.recipes.tiny_ocr import letter_stage

    vlm, _, data, ocr, _, _ = ocr_pack
    _, metas = read_split(data, "train")
    images = [process_image(data / _image_path(data, m)) for m in metas[:4]]

    def features(model):
        with torch.no_grad():
            return model.visual(torch.cat([im.pixel_values for im in images]),
                                torch.tensor([im.grid_thw for im in images]))

    start = features(vlm)

    def drift(model):
        return float((features(model) - start).pow(2).mean() / start.pow(2).mean())

    free, held = copy.deepcopy(vlm), copy.deepcopy(vlm)
    letter_stage(free, ocr, steps=40, batch=3, lr=3e-3, seed=1)
    log = []
    stats = letter_stage(held, ocr, steps=40, batch=3, lr=3e-3, seed=1, anchor=data, anchor_batch=2,
                         anchor_weight=20.0, log=log.append)
    assert drift(held) < 0.5 * drift(free), (drift(held), drift(free))
    assert 0.0 <= stats["anchor_drift"] < 1.0 and all("anchor_drift" in e for e in log)
    assert drift(held) > 0 and [e["step"] for e in log] == [40]  # the anchored tower still trains on the letters
    with pytest.raises(ValueError, match="fewer than an anchor batch"):
        letter_stage(copy.deepcopy(vlm), ocr, steps=1, batch=3, anchor=data, anchor_batch=10_000)
