"""CLIP pretraining of the ViT: the loss against a hand computation, packed towers equal one pair at a time, retrieval
that rises far above chance on captioned synthetic scenes, kill -9 and resume, and the hand-over to stage 1."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qwen25vl.config import Qwen25VLConfig
from qwen25vl.data.records import read_records
from qwen25vl.data.synth.captions import write_captions
from qwen25vl.errors import ConfigError, InputError
from qwen25vl.recipes.clip import CLIP, ClipLoader, _init_weights, _processing, evaluate, pair_of, train_clip
from qwen25vl.train.clip import (
    LOGIT_SCALE_MAX, CLIPModel, TextTowerConfig, clamp_logit_scale, clip_loss, retrieval_accuracy,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny-model training: see conftest.one_thread

ROOT = Path(__file__).resolve().parents[1]
COLOURS, SHAPES = ("red", "green", "blue", "yellow"), ("circle", "square", "triangle", "star")
TEXT = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64}


def _ce(row: list[float], target: int) -> float:
    return math.log(sum(math.exp(v) for v in row)) - row[target]


def test_clip_loss_equals_a_hand_computation_in_both_directions():
    image = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, -2.0]])
    text = torch.tensor([[1.0, 1.0], [0.0, 5.0], [-1.0, 0.0]])
    scale = 2.5
    unit = lambda v: [x / math.hypot(*v) for x in v]  # noqa: E731
    sims = [[scale * sum(a * b for a, b in zip(unit(i), unit(t))) for t in text.tolist()] for i in image.tolist()]
    image_to_text = sum(_ce(sims[i], i) for i in range(3)) / 3
    text_to_image = sum(_ce([sims[i][j] for i in range(3)], j) for j in range(3)) / 3
    assert abs(image_to_text - text_to_image) > 0.05  # the two directions differ here: both must be averaged
    loss, logits = clip_loss(image, text, torch.tensor(math.log(scale)))
    assert float(loss) == pytest.approx((image_to_text + text_to_image) / 2, rel=1e-6)
    assert torch.allclose(logits, torch.tensor(sims), rtol=1e-6, atol=1e-6)
    hotter, _ = clip_loss(image, text, torch.tensor(math.log(10.0)))  # the temperature enters the loss
    assert abs(float(hotter) - float(loss)) > 0.1


def test_the_temperature_is_learned_and_clamped_as_clip_does():
    cfg = Qwen25VLConfig.preset("tiny")
    clip = CLIPModel(cfg.vision, TextTowerConfig(vocab_size=544, **TEXT), embed_dim=16)
    assert clip.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    image, text = torch.randn(4, 16), torch.randn(4, 16)
    loss, _ = clip_loss(image, text, clip.logit_scale)
    loss.backward()
    assert clip.logit_scale.grad is not None and float(clip.logit_scale.grad) != 0
    with torch.no_grad():
        clip.logit_scale.fill_(7.0)
    clamp_logit_scale(clip)
    assert clip.logit_scale.item() == pytest.approx(math.log(100)) == pytest.approx(LOGIT_SCALE_MAX)
    with torch.no_grad():
        clip.logit_scale.fill_(-0.5)
    clamp_logit_scale(clip)
    assert clip.logit_scale.item() == 0.0


def test_a_step_clamps_the_temperature_and_reports_it():
    from qwen25vl.train.clip import ClipBatch, clip_step
    from qwen25vl.train.optim import build_optimizer, build_scheduler

    cfg = Qwen25VLConfig.preset("tiny")
    clip = CLIPModel(cfg.vision, TextTowerConfig(vocab_size=544, **TEXT), embed_dim=16)
    grids = torch.tensor([[1, 4, 4], [1, 4, 8]])
    ids, cu_seqlens = torch.tensor([5, 6, 7, 8, 9]), torch.tensor([0, 2, 5], dtype=torch.int32)  # captions of 2, 3
    batch = ClipBatch(torch.randn(48, 1176), grids, ids, cu_seqlens, [0, 1], ["a", "b"])
    with torch.no_grad():
        clip.logit_scale.fill_(7.0)  # above CLIP's ceiling, as a large step could push it
    optimizer = build_optimizer(clip, {"vision": 0.0, "merger": 0.0, "llm": 0.0})
    before = clip.visual.merger.mlp[0].weight.clone()
    stats = clip_step(clip, optimizer, build_scheduler(optimizer, warmup=0, total=1), batch)
    assert clip.logit_scale.item() == pytest.approx(LOGIT_SCALE_MAX)
    assert stats["temperature"] == pytest.approx(0.01) and stats["grad_norm"] > 0 and stats["accuracy"] in (0, 0.5, 1)
    assert torch.equal(before, clip.visual.merger.mlp[0].weight)  # rate 0: only the clamp moved anything


def test_retrieval_counts_an_equal_caption_as_a_hit_and_knows_its_chance():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [-1.0, 0.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    texts = ["a", "b", "b", "c"]
    # image 0 -> text 0 ("a", hit); 1 -> text 1 ("b", hit); 2 -> text 0 ("a" for "b", miss); 3 -> text 1 (miss)
    accuracy, chance = retrieval_accuracy(image, text, texts)
    assert accuracy == 0.5
    assert chance == pytest.approx((1 + 2 + 2 + 1) / 16)
    with pytest.raises(ValueError, match="3 texts"):
        retrieval_accuracy(image, text, texts[:3])


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    folder = tmp_path_factory.mktemp("captions")
    train = write_captions(folder, 96, seed=0, colours=COLOURS, shapes=SHAPES, size=84, name="train")
    heldout = write_captions(folder, 64, seed=1, colours=COLOURS, shapes=SHAPES, size=84, name="heldout")
    return folder, train, heldout


def test_packed_towers_equal_one_pair_at_a_time(captions, tmp_path):
    from qwen25vl.testing.tokenizer import write_preprocessor_config, write_tiny_tokenizer

    write_tiny_tokenizer(tmp_path)
    write_preprocessor_config(tmp_path)
    tokenizer, image_config = _processing(tmp_path)
    loader = ClipLoader(read_records(captions[1]), tokenizer=tokenizer, image_config=image_config, batch=5)
    cfg = Qwen25VLConfig.preset("tiny")
    clip = CLIPModel(cfg.vision, TextTowerConfig(vocab_size=544, **TEXT), embed_dim=16)
    _init_weights(clip, 0)
    batch = loader.collate([0, 1, 2, 3, 4])
    assert len({tuple(g) for g in batch.image_grid_thw.tolist()}) > 1  # native resolution: several grids
    assert len(set(torch.diff(batch.cu_seqlens).tolist())) > 1  # captions of several lengths
    with torch.no_grad():
        images = clip.encode_images(batch.pixel_values, batch.image_grid_thw)
        texts = clip.encode_texts(batch.input_ids, batch.cu_seqlens)
        for i in range(5):
            one = loader.collate([i])
            assert torch.allclose(images[i], clip.encode_images(one.pixel_values, one.image_grid_thw)[0], atol=1e-5)
            assert torch.allclose(texts[i], clip.encode_texts(one.input_ids, one.cu_seqlens)[0], atol=1e-5)
    assert batch.texts[0] == pair_of(loader.pairs[0][0])[1] and batch.texts[0].startswith("a ")


def _binomial_tail(n: int, p: float, k: int) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


@pytest.fixture(scope="module")
def trained(captions, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("clip") / "run"
    recipe = CLIP.replace(steps=80, warmup=5, save_every=80, lr={"vision": 3e-3, "merger": 3e-3, "llm": 3e-3})
    log = train_clip(recipe, data=[str(captions[1])], out=str(out), preset="tiny", batch=32,
                     heldout=[str(captions[2])], text=TEXT, embed_dim=32, quiet=True)
    torch.set_num_threads(threads)
    return out, log


def test_heldout_retrieval_rises_far_above_chance(trained):
    out, log = trained
    before, after = [e for e in log if "eval" in e]
    steps = [e for e in log if "eval" not in e]
    assert [e["step"] for e in steps] == list(range(1, 81)) and before["step"] == 0 and after["step"] == 80
    assert before["pairs"] == after["pairs"] == 64
    assert before["retrieval"] < before["chance"] + 0.1  # random towers retrieve at chance
    assert after["retrieval"] >= 0.3 and after["retrieval"] - before["retrieval"] >= 0.2
    # a retriever guessing at chance would score this well with probability below one in a million
    assert _binomial_tail(64, after["chance"], round(after["retrieval"] * 64)) < 1e-6
    assert sum(e["loss"] for e in steps[-10:]) < sum(e["loss"] for e in steps[:10]) - 2.0
    assert all(0.01 - 1e-6 <= e["temperature"] <= 1.0 for e in steps)
    assert json.loads((out / "log.jsonl").read_text().splitlines()[-1]) == after


def test_exported_vision_weights_are_the_trained_ones(trained, captions):
    from qwen25vl.model.vlm import Qwen25VL
    from qwen25vl.recipes.run import _load_model
    from qwen25vl.train import checkpoint as ckpt
    from qwen25vl.train.distributed import init_distributed
    from qwen25vl.train.optim import build_optimizer

    out, log = trained
    exported = Qwen25VL.from_pretrained(out / "hf", dtype=torch.float32, progress=False)
    cfg = exported.config
    clip = CLIPModel(cfg.vision, TextTowerConfig(vocab_size=cfg.text.vocab_size, **TEXT), embed_dim=32)
    _init_weights(clip, 0)
    random_visual = {k: v.clone() for k, v in clip.visual.state_dict().items()}
    last = ckpt.list_checkpoints(out / "checkpoints")[-1]
    assert last.name.endswith("80")
    ckpt.load_checkpoint(last, clip, build_optimizer(clip, CLIP.lr))
    state = exported.visual.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in clip.visual.state_dict().items())
    assert not torch.equal(state["merger.mlp.2.weight"], random_visual["merger.mlp.2.weight"])
    llm, _ = _load_model(None, "tiny", out / "again", 0, True)  # the preset's seeded LLM rides along unchanged
    assert all(torch.equal(v, exported.model.state_dict()[k]) for k, v in llm.model.state_dict().items())
    # the checkpoint's towers reproduce the logged held-out retrieval
    tokenizer, image_config = _processing(out / "hf")
    heldout = ClipLoader(read_records(captions[2]), tokenizer=tokenizer, image_config=image_config, batch=64)
    assert evaluate(clip, heldout, init_distributed("cpu"), 80)["retrieval"] == log[-1]["retrieval"]


def test_stage_1_starts_from_the_clip_vision_weights(trained, captions, tmp_path):
    from qwen25vl.cli import main
    from qwen25vl.model.vlm import Qwen25VL

    out, _ = trained
    stage1 = tmp_path / "stage1"
    # rates of zero: what stage 1 exports is exactly what it started from
    assert main(["train", "pretrain", "--stage", "1", "--model", str(out / "hf"), "--data", str(captions[1]),
                 "--out", str(stage1), "--steps", "1", "--budget", "1024", "--lr-vision", "0", "--lr-merger", "0",
                 "--warmup", "0"]) == 0
    step = json.loads((stage1 / "log.jsonl").read_text().splitlines()[0])
    assert step["loss"] > 0 and step["grad_norm"] > 0  # the tower was in the graph and received gradients
    clip_vlm = Qwen25VL.from_pretrained(out / "hf", dtype=torch.float32, progress=False)
    after = Qwen25VL.from_pretrained(stage1 / "hf", dtype=torch.float32, progress=False).state_dict()
    assert all(torch.equal(v, after[k]) for k, v in clip_vlm.state_dict().items())


def test_a_killed_run_resumes_with_the_uninterrupted_losses(captions, tmp_path):
    data = str(captions[2])  # 64 pairs, batch 16: 4 steps per epoch, so the resume crosses an epoch boundary
    args = ["train", "clip", "--preset", "tiny", "--data", data, "--out", str(tmp_path / "whole"), "--steps", "6",
            "--batch", "16", "--save-every", "3", "--warmup", "1", "--text-width", "32", "--text-layers", "1",
            "--text-heads", "2", "--embed-dim", "16", "--lr", "3e-3", "--lr-vision", "3e-3", "--lr-merger", "3e-3"]
    from qwen25vl.cli import main

    assert main(args) == 0
    whole = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in whole] == [1, 2, 3, 4, 5, 6] and whole[4]["epoch"] == 1
    killed_out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, "-m", "qwen25vl", *args[:7], str(killed_out), *args[8:],
                             "--die-after-step", "4"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (killed_out / "hf").exists()
    resumed = train_clip(CLIP.replace(steps=6, save_every=3, warmup=1, lr={m: 3e-3 for m in CLIP.lr}), data=[data],
                         out=str(killed_out), preset="tiny", batch=16, text=TEXT | {"intermediate_size": 128},
                         embed_dim=16, quiet=True)
    assert [e["step"] for e in resumed] == [4, 5, 6]
    assert [e["loss"] for e in resumed] == pytest.approx([e["loss"] for e in whole[3:]], rel=1e-5)
    assert (killed_out / "hf" / "model.safetensors").is_file()


def test_records_without_an_image_or_caption_are_skipped_and_counted(captions, tmp_path):
    from qwen25vl.data.records import parse_record
    from qwen25vl.testing.tokenizer import write_preprocessor_config, write_tiny_tokenizer

    write_tiny_tokenizer(tmp_path)
    write_preprocessor_config(tmp_path)
    tokenizer, image_config = _processing(tmp_path)
    good = list(read_records(captions[2]))[:3]
    text_only = parse_record({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}]},
                             where="x.jsonl:9")
    with pytest.raises(InputError, match="x.jsonl:9: a CLIP pair needs an image part"):
        pair_of(text_only)
    loader = ClipLoader(good + [text_only, InputError("x.jsonl:10: not valid JSON")], tokenizer=tokenizer,
                        image_config=image_config, batch=2)
    assert len(loader.pairs) == 3 and loader.steps_per_epoch() == 1
    assert dict(loader.skipped) == {"no image or caption": 1, "invalid record": 1}
    with pytest.raises(InputError, match="make no batch of 4"):
        ClipLoader(good, tokenizer=tokenizer, image_config=image_config, batch=4)
    with pytest.raises(InputError, match="at least 2 pairs"):
        ClipLoader(good, tokenizer=tokenizer, image_config=image_config, batch=1)
    with pytest.raises(InputError, match="unknown colour"):
        write_captions(tmp_path, 1, colours=["mauve"])


def test_the_caption_command_writes_records_of_the_chosen_vocabulary(tmp_path, capsys):
    from qwen25vl.data.synth.captions import main

    assert main([str(tmp_path), "--count", "6", "--max-objects", "2", "--colours", "red", "--shapes", "star,ring"]) == 0
    texts = [pair_of(r)[1] for r in read_records(tmp_path / "captions.jsonl")]
    assert len(texts) == 6 and any(" and " in t for t in texts)
    assert all(set(t.replace(" and ", " ").split()) <= {"a", "red", "star", "ring"} for t in texts)
    assert main([str(tmp_path), "--count", "1", "--shapes", "blob"]) == 2
    assert "['blob']" in capsys.readouterr().err


def test_from_a_model_folder_the_export_keeps_its_llm_and_tokenizer(captions, tmp_path):
    from qwen25vl.model.vlm import Qwen25VL
    from qwen25vl.testing.checkpoint import make_tiny_checkpoint

    base = make_tiny_checkpoint(tmp_path / "base", seed=4)
    out = tmp_path / "run"
    log = train_clip(CLIP.replace(steps=2, warmup=0), data=[str(captions[2])], out=str(out), model=str(base), batch=8,
                     text=TEXT, embed_dim=16, quiet=True)
    assert [e["step"] for e in log] == [1, 2]
    before = Qwen25VL.from_pretrained(base, dtype=torch.float32, progress=False).state_dict()
    after = Qwen25VL.from_pretrained(out / "hf", dtype=torch.float32, progress=False).state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items() if not k.startswith("visual."))
    assert not torch.equal(before["visual.blocks.0.attn.qkv.weight"], after["visual.blocks.0.attn.qkv.weight"])
    assert (out / "hf" / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()
    with pytest.raises(ConfigError, match="exactly one of"):
        train_clip(CLIP, data=[str(captions[2])], out=str(tmp_path / "x"), model=str(base), preset="tiny")


def test_two_process_fsdp_equals_one_process(captions, tmp_path):
    """torchrun with 2 ranks (gloo, FSDP2): each rank embeds half of every batch of 16 and the loss gathers both
    halves, so every step's loss and in-batch accuracy, the held-out retrieval before and after, and the exported
    ViT equal one process on the same batches;
    a global batch that does not divide among the ranks is refused before any step."""
    import shutil

    from safetensors.torch import load_file

    from qwen25vl.cli import main

    data = str(captions[2])
    args = ["train", "clip", "--preset", "tiny", "--data", data, "--steps", "4", "--batch", "16", "--save-every",
            "2", "--heldout", str(captions[1]), "--warmup", "1", "--text-width", "32", "--text-layers", "1", "--text-heads", "2", "--embed-dim",
            "16", "--lr", "3e-3", "--lr-vision", "3e-3", "--lr-merger", "3e-3"]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    launch = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "qwen25vl"]
    two = subprocess.run([*launch, *args, "--out", str(tmp_path / "two")], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=240)
    assert two.returncode == 0, two.stderr[-3000:]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    logs = {name: [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
            for name in ("one", "two")}
    steps = {name: [e for e in log if "loss" in e] for name, log in logs.items()}
    evals = {name: [e for e in log if e.get("eval") == "heldout"] for name, log in logs.items()}
    assert [e["step"] for e in evals["two"]] == [0, 4] and evals["two"][0]["pairs"] == 96  # every held-out pair
    assert [e["retrieval"] for e in evals["two"]] == [e["retrieval"] for e in evals["one"]]
    assert [e["step"] for e in steps["two"]] == [1, 2, 3, 4] and all(e["pairs"] == 16 for e in steps["two"])
    assert steps["one"][0]["loss"] - steps["one"][-1]["loss"] > 0.05  # it learns
    for a, b in zip(steps["two"], steps["one"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), (a, b)
        assert a["accuracy"] == b["accuracy"] and a["temperature"] == pytest.approx(b["temperature"], rel=1e-4)
    w2, w1 = (load_file(tmp_path / name / "hf" / "model.safetensors") for name in ("two", "one"))
    assert w2.keys() == w1.keys()
    for key in w1:
        assert torch.allclose(w2[key], w1[key], rtol=1e-4, atol=1e-5), key
    odd = subprocess.run([*launch, *args[:8], "--batch", "15", *args[10:], "--out", str(tmp_path / "odd")], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=240)
    assert odd.returncode != 0 and "does not divide among 2 ranks" in odd.stderr
    assert not (tmp_path / "odd" / "log.jsonl").exists()
