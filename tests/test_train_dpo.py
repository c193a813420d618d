"""DPO: the losses against hand computations, packed per-answer log-probs against the model's own unpacked forward,
one ViT call per pack with each pair's images once, a frozen ViT, and a toy run whose margin rises."""

import math

import pytest
import torch

from qwen25vl.errors import ConfigError
from qwen25vl.train.dpo import preference_loss


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny-model training: see conftest.one_thread


# fixed log-probs of three pairs: policy chosen / rejected, reference chosen / rejected
PC, PR = torch.tensor([-5.0, -7.0, -2.0]), torch.tensor([-6.0, -4.0, -2.5])
RC, RR = torch.tensor([-5.5, -6.0, -3.0]), torch.tensor([-5.0, -5.0, -2.0])


def _logsig(x):
    return -math.log1p(math.exp(-x))


def test_sigmoid_loss_rewards_margins_and_accuracy_by_hand():
    beta = 0.5
    stats = preference_loss(PC, PR, RC, RR, beta=beta)
    # h = (pc - pr) - (rc - rr): (1 - (-0.5)) = 1.5, (-3 - (-1)) = -2, (0.5 - (-1)) = 1.5
    hs = [1.5, -2.0, 1.5]
    assert stats.losses.tolist() == pytest.approx([-_logsig(beta * h) for h in hs], rel=1e-6)
    assert stats.chosen_rewards.tolist() == pytest.approx([0.25, -0.5, 0.5])  # 0.5 * (pc - rc)
    assert stats.rejected_rewards.tolist() == pytest.approx([-0.5, 0.5, -0.25])  # 0.5 * (pr - rr)
    assert stats.margins.tolist() == pytest.approx([0.75, -1.0, 0.75])
    assert stats.accuracies.tolist() == [1.0, 0.0, 1.0]
    assert stats.chosen_logps.tolist() == PC.tolist() and stats.rejected_logps.tolist() == PR.tolist()


def test_label_smoothing_is_conservative_dpo_by_hand():
    beta, eps = 0.5, 0.2
    stats = preference_loss(PC, PR, RC, RR, beta=beta, label_smoothing=eps)
    want = [-(1 - eps) * _logsig(beta * h) - eps * _logsig(-beta * h) for h in (1.5, -2.0, 1.5)]
    assert stats.losses.tolist() == pytest.approx(want, rel=1e-6)
    # the smoothed loss of a well-ranked pair is larger than the plain one: it does not push h to infinity
    assert stats.losses[0] > preference_loss(PC, PR, RC, RR, beta=beta).losses[0]


def test_ipo_loss_by_hand():
    beta = 0.25  # target 1 / (2 beta) = 2
    stats = preference_loss(PC, PR, RC, RR, beta=beta, loss_type="ipo")
    assert stats.losses.tolist() == pytest.approx([(1.5 - 2) ** 2, (-2 - 2) ** 2, (1.5 - 2) ** 2])
    assert stats.margins.tolist() == pytest.approx([0.25 * h for h in (1.5, -2.0, 1.5)])


def test_equal_policy_and_reference_give_log_2_and_no_margin():
    for beta in (0.1, 1.0, 1e3):
        for eps in (0.0, 0.3):
            stats = preference_loss(PC, PR, PC, PR, beta=beta, label_smoothing=eps)
            assert stats.losses.tolist() == pytest.approx([math.log(2)] * 3, rel=1e-6)
            assert stats.margins.abs().max() == 0 and stats.accuracies.sum() == 0


def test_gradient_raises_the_chosen_and_lowers_the_rejected():
    pc, pr = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    preference_loss(pc, pr, RC, RR, beta=0.1).losses.sum().backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()  # descent raises pi_c and lowers pi_r


@pytest.mark.parametrize("options", [dict(beta=0.0), dict(beta=-1.0), dict(label_smoothing=0.5),
                                     dict(loss_type="kto"), dict(loss_type="ipo", label_smoothing=0.1)])
def test_bad_options_are_config_errors(options):
    with pytest.raises(ConfigError):
        preference_loss(PC, PR, RC, RR, **options)


# --- packed pairs on a tiny random model ----------------------------------------------------------------------------
from qwen25vl.data.records import parse_record  # noqa: E402
from qwen25vl.data.toy import toy_records  # noqa: E402
from qwen25vl.errors import InputError  # noqa: E402
from qwen25vl.train.dpo import IGNORE, PairLogps, collate_pairs, encode_pair  # noqa: E402


def preference_records(folder, count=5, seed=0):
    """Toy records (text, one image, two images, a grounding answer, a video) as pairs: the last answer is chosen,
    a shuffled one rejected; earlier turns stay in the prompt."""
    out = []
    for i, obj in enumerate(toy_records(folder, count, seed)):
        *prompt, answer = obj["messages"]
        words = answer["content"].split()
        rejected = " ".join(reversed(words)) + " no" if len(words) > 1 else "no " + answer["content"]
        out.append(parse_record({"messages": prompt, "chosen": answer["content"], "rejected": rejected},
                                where=f"pairs.jsonl:{i + 1}", root=folder))
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from qwen25vl.data.encoding import Encoder
    from qwen25vl.model.vlm import Qwen25VL
    from qwen25vl.testing.checkpoint import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("dpo")
    folder = make_tiny_checkpoint(root / "model", seed=3)
    torch.manual_seed(0)
    vlm = Qwen25VL.from_pretrained(folder, dtype=torch.float32, progress=False)
    encoder = Encoder.from_pretrained(folder, config=vlm.config)
    return vlm, encoder, preference_records(root / "data")


def _unpacked_logps(vlm, sample):
    """The model's own forward on one sequence (it computes its positions itself): summed log-probs of the labels."""
    out = vlm(sample.input_ids[None], pixel_values=sample.pixel_values, image_grid_thw=sample.image_grid_thw,
              pixel_values_videos=sample.pixel_values_videos, video_grid_thw=sample.video_grid_thw,
              second_per_grid_ts=sample.second_per_grid_ts)
    logps = torch.log_softmax(out.logits[0].float(), -1)
    keep = sample.labels != IGNORE
    return logps[keep].gather(1, sample.labels[keep][:, None]).sum()


def test_only_the_answer_is_labelled(tiny):
    vlm, encoder, records = tiny
    two_turns = next(r for r in records if sum(m["role"] == "assistant" for m in r.messages))
    pair = encode_pair(encoder, two_turns)
    whole = encoder(two_turns)  # SFT's labels: every assistant turn, the earlier one included
    assert 0 < pair.chosen.num_targets < whole.num_targets
    answer = encoder.tokenizer.encode(two_turns.chosen[0]["content"])
    kept = pair.chosen.labels[pair.chosen.labels != IGNORE].tolist()
    assert kept[:len(answer)] == answer and len(kept) == len(answer) + 2  # the answer, <|im_end|>, "\n"


def test_packed_logps_equal_one_by_one(tiny):
    vlm, encoder, records = tiny
    pairs = [encode_pair(encoder, r) for r in records]
    assert sum(p.chosen.pixel_values is not None for p in pairs) >= 3 and any(p.chosen.pixel_values_videos
                                                                            is not None for p in pairs)
    with torch.no_grad():
        packed = PairLogps(vlm)(collate_pairs(pairs))
        alone = torch.stack([PairLogps(vlm)(collate_pairs([p]))[0] for p in pairs])
        plain = torch.tensor([[_unpacked_logps(vlm, p.chosen), _unpacked_logps(vlm, p.rejected)] for p in pairs])
    assert packed.shape == (len(pairs), 2) and (packed < 0).all()
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(packed, plain, rtol=1e-5, atol=1e-4)
    assert (packed[:, 0] != packed[:, 1]).all()  # chosen and rejected are told apart


def test_each_pairs_images_go_through_the_vit_once_per_pack(tiny):
    vlm, encoder, records = tiny
    pairs = [encode_pair(encoder, r) for r in records]
    calls = []
    hook = vlm.visual.register_forward_hook(lambda module, args, out: calls.append(int(args[0].shape[0])))
    try:
        with torch.no_grad():
            PairLogps(vlm)(collate_pairs(pairs))
            PairLogps(vlm)(collate_pairs([pairs[0]]))  # text only: no ViT call at all on one process
    finally:
        hook.remove()
    once = sum(int(m.shape[0]) for p in pairs for m in (p.chosen.pixel_values, p.chosen.pixel_values_videos)
               if m is not None)
    assert calls == [once]  # one call, each pair's patches once (not once per answer)


def test_answers_with_media_or_missing_pairs_are_input_errors(tiny):
    _, encoder, records = tiny
    sft = parse_record({"messages": records[0].messages + [{"role": "assistant", "content": "x"}]}, where="d:7")
    with pytest.raises(InputError, match="d:7: not a preference record"):
        encode_pair(encoder, sft)
    image_answer = [{"role": "user", "content": [{"type": "image", "image": "a.png"}, {"type": "text", "text": "q"}]},
                    {"role": "assistant", "content": "a"}]
    bad = parse_record({"messages": records[0].messages, "chosen": image_answer, "rejected": "b"}, where="d:9")
    with pytest.raises(InputError, match=r"d:9: chosen\[0\].content\[0\]: a image inside an answer"):
        encode_pair(encoder, bad)


# --- steps and the recipe -------------------------------------------------------------------------------------------
import copy  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from qwen25vl.recipes.dpo import DPO, PairLoader, reference_logps, train_dpo  # noqa: E402
from qwen25vl.train.dpo import dpo_step  # noqa: E402
from qwen25vl.train.optim import build_optimizer, build_scheduler, set_trainable  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_policy_equal_to_reference_gives_log_2_and_steps_leave_the_vit_alone(tiny):
    vlm, encoder, records = tiny
    vlm = copy.deepcopy(vlm)
    set_trainable(vlm, DPO.train)
    loss_fn = PairLogps(vlm)
    loader = PairLoader(records, encoder, budget=2048, packs_per_step=1)
    table = reference_logps(loss_fn, loader, "cpu")
    optimizer = build_optimizer(loss_fn, {"llm": 1e-3})
    scheduler = build_scheduler(optimizer, warmup=0, total=10)
    visual = {k: v.clone() for k, v in vlm.visual.state_dict().items()}
    llm = vlm.model.layers[0].mlp.up_proj.weight.clone()
    steps = iter(loader)
    first = dpo_step(loss_fn, optimizer, scheduler, next(steps).micro_batches, table, global_pairs=len(records))
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5) and abs(first["margin"]) < 1e-5
    assert first["accuracy"] == 0 and first["chosen_logps"] < 0 and first["grad_norm"] > 0
    dpo_step(loss_fn, optimizer, scheduler, next(steps).micro_batches, table, global_pairs=len(records))
    assert all(p.grad is None and not p.requires_grad for p in vlm.visual.parameters())
    assert all(torch.equal(v, visual[k]) for k, v in vlm.visual.state_dict().items())  # merger included
    assert not torch.equal(llm, vlm.model.layers[0].mlp.up_proj.weight)


def _write_pairs(folder, count):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pairs.jsonl"
    with path.open("w") as f:
        for record in preference_records(folder, count, seed=1):
            f.write(json.dumps(record.to_json()) + "\n")
    return path


def test_toy_run_raises_the_margin_and_a_killed_run_resumes_with_the_stored_reference(tmp_path, tiny):
    from qwen25vl.cli import main
    from qwen25vl.model.vlm import Qwen25VL
    from qwen25vl.testing.checkpoint import make_tiny_checkpoint

    start = make_tiny_checkpoint(tmp_path / "start", seed=5)
    data = _write_pairs(tmp_path / "data", 8)
    out = tmp_path / "run"
    args = ["train", "dpo", "--model", str(start), "--data", str(data), "--out", str(out), "--steps", "6",
            "--packs-per-step", "2", "--budget", "1024", "--lr", "2e-3", "--warmup", "0", "--save-every", "3",
            "--beta", "0.5"]
    assert main(args) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3, 4, 5, 6]
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-4) and abs(log[0]["margin"]) < 1e-4
    assert log[-1]["margin"] > 0.5 and log[-1]["loss"] < 0.5 and log[-1]["accuracy"] == 1.0
    assert log[-1]["chosen_logps"] > log[-1]["rejected_logps"]
    before = Qwen25VL.from_pretrained(start, dtype=torch.float32, progress=False)
    after = Qwen25VL.from_pretrained(out / "hf", dtype=torch.float32, progress=False)
    assert all(torch.equal(v, before.visual.state_dict()[k]) for k, v in after.visual.state_dict().items())
    assert not torch.equal(before.model.norm.weight, after.model.norm.weight)
    # killed after step 4 (checkpoint at 3), resumed: the stored table (the starting policy's) is read again, not
    # recomputed from the checkpoint, and the steps continue the uninterrupted run's losses
    run = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, "-m", "qwen25vl", *args[:7], str(run), *args[8:], "--die-after-step",
                             "4"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    stamp = (run / "reference.pt").stat().st_mtime_ns
    resumed = train_dpo(DPO.replace(steps=6, packs_per_step=2, budget=1024, lr={"llm": 2e-3}, warmup=0,
                                    save_every=3), data=[str(data)], out=str(run), model=str(start), beta=0.5,
                        quiet=True)
    assert [e["step"] for e in resumed] == [4, 5, 6]
    assert [e["loss"] for e in resumed] == pytest.approx([e["loss"] for e in log[3:]], rel=1e-4)
    assert (run / "reference.pt").stat().st_mtime_ns == stamp
    assert torch.equal(torch.load(run / "reference.pt")["logps"], torch.load(out / "reference.pt")["logps"])
