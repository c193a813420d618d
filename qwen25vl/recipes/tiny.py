"""The embedded tiny model's recipe, top to bottom: data -> tokenizer -> vision bootstrap -> joint training -> export
-> held-out evaluation. `make tiny-model` runs `python -m qwen25vl.recipes.tiny --out build/tiny`.

1. The grounding engine at 224 px (detect, refer, point, count, absent); the tiny tokenizer on its train split.
2. Vision-only stage: ViT + merger with a throwaway head on every merged token (`bootstrap.DenseHead`).
3. Joint training from that ViT (ViT lr 0.2x), the dense losses (merger output and LLM layer 1) on for the first
   half, the default system prompt before the image (the chat template adds it). Every `--log-every` steps the log
   holds the shuffled-image gap: CE with images rolled across a pack minus CE with the right ones (> 0: not blind).
4. Export a plain Qwen2.5-VL folder (bf16) through `save_pretrained` to `model-joint/`; the heads are dropped.
5. Presence stage: that exported folder trained on new scenes with three records per image (a present and an absent
   category on the same picture, then count / refer / point), the decision tokens' CE (empty list or not, one more
   box or the end) counted `--decision-weight` times, and for the first `--count-probe-until` of the steps a
   training-only probe on LLM layer 1 at the position that opens the answer's list, predicting how many entries
   follow (0 for an absent category), and a probe on every image token after layer 1 predicting whether its cell lies
   on an object of the queried category (the question comes first, so the image tokens can read it); exported to
   `model-presence/`.
6. Refine stage: that folder on fresh scenes of the same mix at half the peak rate, no probes; exported to
   `model-refine/`.
7. Skills stage: that folder on the OCR and video engines' data (`SKILL_OPTIONS`: large upright Latin words; one
   object per clip, its span or disappearance asked in seconds at 1-4 fps) beside fresh presence scenes as a
   grounding replay; exported to `model-skills/`.
8. Reading stage: that folder's ViT + merger first trained alone on stage 5's word images with a throwaway head on
   every merged cell naming the letters under it (`tiny_ocr.letter_stage`) while stage 5's grounding scenes are
   held to the starting tower's features, then the whole model on the words alone with the character probes on,
   then on stage 5's mix again at a lower peak rate (grounding comes back); exported to `model/`. With
   `--evaluate`, held-out scores of every engine (`tiny_eval`, `tiny_skills`) land in `model/scores.json`.
Each stage is skipped when its output exists, so a stopped run continues from the last finished stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
import sys
import time
from pathlib import Path

import torch

from qwen25vl.config import Qwen25VLConfig
from qwen25vl.data.packing import collate_pack
from qwen25vl.recipes.bootstrap import DenseHead, DenseTargets, JointLoss, dense_loss, match_targets, shuffled_gap
from qwen25vl.recipes.tiny_ocr import LetterTargets
from qwen25vl.train.optim import build_optimizer, warmup_cosine
from qwen25vl.recipes.tiny_data import (  # noqa: F401  (re-exported: the recipe's names in one place)
    DATA_OPTIONS, GAP_RECORDS, PRESENCE_OPTIONS, PRESENCE_SEED, REFINE_SEED, SKILL_COUNTS, SKILL_OPTIONS, SKILLS_SEED,
    Targets, _image_path, count_probe_ids, data_options, decision_token_ids, gap_packs, make_base, make_data,
    read_split)

ANCHOR_BATCH = 8  # stage 6: grounding scenes a letter step holds to the starting tower's features


def tiny_config() -> Qwen25VLConfig:
    """ViT 64 wide x 4 blocks (windows of 112 px, block 3 full attention), LLM 128 x 3, the tiny vocabulary: the
    tiny preset (its token ids and head counts) made wider and deeper."""
    preset = Qwen25VLConfig.preset("tiny")
    text = dataclasses.replace(preset.text, hidden_size=128, intermediate_size=384, num_hidden_layers=3,
                               mrope_section=(4, 6, 6))
    vision = dataclasses.replace(preset.vision, depth=4, hidden_size=64, intermediate_size=192,
                                 fullatt_block_indexes=(3,), out_hidden_size=128)
    return dataclasses.replace(preset, text=text, vision=vision, torch_dtype="bfloat16")


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --- 2. vision-only stage ------------------------------------------------------------------------------------------

def vision_stage(vlm, data: Path, *, steps: int, batch: int, lr: float, seed: int, log) -> DenseHead:
    from qwen25vl.processing.image import process_image

    _, metas = read_split(data, "train")
    targets = Targets(data_options(data))
    head = DenseHead(vlm.config.vision.out_hidden_size)
    params = [p for n, p in vlm.named_parameters() if n.startswith("visual.")] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    stats = {}
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * warmup_cosine(step, max(1, steps // 20), steps, 0.1)
        chosen = rng.sample(metas, batch)
        images = [process_image(data / _image_path(data, m)) for m in chosen]
        pixels = torch.cat([im.pixel_values for im in images])
        grids = torch.tensor([im.grid_thw for im in images])
        loss, stats = dense_loss(head(vlm.visual(pixels, grids)), DenseTargets.cat([targets(m["seed"]) for m in chosen]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 10 == 0 or step == steps - 1:
            log({"stage": "vision", "step": step + 1, "loss": float(loss.detach()), **stats})
    return head


# --- 3. joint training -----------------------------------------------------------------------------------------------

def joint_stage(vlm, base: Path, data: Path, *, steps: int, batch: int, lr: float, vision_ratio: float,
                dense_until: float, seed: int, log_every: int, log, head: DenseHead | None = None,
                save=None, save_every: int = 200, decision_weight: float = 1.0, warmup: float = 0.02,
                count_until: float = 0.0, stage: str = "joint", match_until: float = 0.0,
                char_until: float = 0.0) -> dict:
    """Joint training on `data`. `decision_weight` > 1 counts the decision tokens' CE that many times in the loss
    (the logged CE and the gap stay plain); `warmup` is the warm-up's share of the steps; `count_until` > 0 trains
    the entry-count probe (`bootstrap.JointLoss`) for that share of the steps; `char_until` > 0 the character
    probes on the OCR words' cells (`tiny_ocr`)."""
    from qwen25vl.data.encoding import Encoder

    encoder = Encoder.from_pretrained(base, config=vlm.config)
    folders = [data] if isinstance(data, Path) else list(data)
    data = folders[0]  # the grounding folder: its held-out packs measure the gap, its scenes give dense targets
    records, metas, engines = [], [], []
    for folder in folders:  # a mix: every folder's train records, shuffled together
        more_records, more_metas = read_split(folder, "train")
        records += more_records
        metas += more_metas
        engines += [json.loads((folder / "manifest.json").read_text())["engine"]] * len(more_records)
    held_records, held_metas = read_split(data, "heldout")
    gap_set = gap_packs(encoder, held_records, held_metas, GAP_RECORDS)
    targets = Targets(data_options(data))
    loss_fn = JointLoss(vlm, head=head, decision_ids=decision_token_ids(base) if decision_weight != 1.0 else (),
                        decision_weight=decision_weight, count_probe=count_probe_ids(base) if count_until else None,
                        chars=char_until > 0)
    rates = {"vision": lr * vision_ratio, "merger": lr, "llm": lr}
    opt = build_optimizer(loss_fn, rates, weight_decay=0.01)
    for g in opt.param_groups:
        g["base_lr"] = g["lr"]
    order = list(range(len(records)))
    rng = random.Random(seed)
    rng.shuffle(order)
    letters = LetterTargets(metas, engines)
    pos, last = 0, {}
    t0 = time.perf_counter()
    for step in range(steps):
        factor = warmup_cosine(step, max(1, int(steps * warmup + 1e-9)), steps, 0.1)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * factor
        if pos + batch > len(order):
            rng.shuffle(order)
            pos = 0
        chosen, pos = order[pos:pos + batch], pos + batch
        pack = collate_pack([encoder(records[i]) for i in chosen])
        dense_on = step < dense_until * steps
        want = DenseTargets.cat([targets(metas[i]["seed"]) for i in chosen]) if dense_on else None
        loss_fn.count_head_on = step < count_until * steps
        match = (match_targets([targets(metas[i]["seed"]) for i in chosen], [metas[i] for i in chosen])
                 if step < match_until * steps else None)
        chars = letters(chosen) if step < char_until * steps else None
        ce, dense, stats = loss_fn(pack, want, match=match, chars=chars)
        extra = stats.pop("decision_extra", None)
        loss = (ce if extra is None else ce + extra) / pack.num_targets + (dense if dense is not None else 0)
        for key in ("count", "match", "char"):  # the training-only probes' losses, when on
            probed = stats.pop(f"{key}_loss", None)
            if probed is not None:
                loss = loss + probed
                stats[f"{key}_probe"] = float(probed.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(loss_fn.parameters(), 1.0)
        opt.step()
        entry = {"stage": stage, "step": step + 1, "ce": float(ce.detach()) / pack.num_targets,
                 "dense": float(dense.detach()) if dense is not None else None, "grad_norm": float(norm),
                 "lr": opt.param_groups[0]["lr"], "elapsed_s": round(time.perf_counter() - t0, 1), **stats}
        if (step + 1) % log_every == 0 or step == steps - 1:
            right, wrong = shuffled_gap(loss_fn, gap_set)
            entry.update(heldout_ce=right, shuffled_ce=wrong, shuffled_gap=wrong - right)
            last = entry
        if (step + 1) % 10 == 0 or "shuffled_gap" in entry:
            log(entry)
        if save is not None and (step + 1) % save_every == 0:
            save(step + 1)  # an exported model at hand if the run is stopped
    return last


# --- 4. export -------------------------------------------------------------------------------------------------------

def export(vlm, base: Path, out: Path) -> Path:
    """A plain Qwen2.5-VL folder in bf16: weights through save_pretrained, the base folder's other files."""
    import copy

    out.mkdir(parents=True, exist_ok=True)
    copy.deepcopy(vlm).to(torch.bfloat16).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.json", "preprocessor_config.json",
                 "generation_config.json"):
        if (base / name).is_file():
            shutil.copy(base / name, out / name)
    return out


# --- the chain ---------------------------------------------------------------------------------------------------------

def build(out: Path, *, train: int, heldout: int, vision_steps: int, vision_batch: int, joint_steps: int,
          joint_batch: int, lr: float, seed: int = 0, log_every: int = 50, threads: int = 1,
          presence_images: int = 8000, presence_steps: int = 5000, presence_lr: float = 1e-3,
          decision_weight: float = 4.0, count_until: float = 0.6, match_until: float = 0.6,
          refine_steps: int = 3000, refine_lr: float = 5e-4, refine_images: int = 8000,
          skills_steps: int = 4000, skills_lr: float = 8e-4, skills_counts: dict | None = None,
          letter_steps: int = 4000, letter_lr: float = 2e-3, letter_anchor: float = 10.0,
          words_steps: int = 1200, words_lr: float = 8e-4, reading_steps: int = 1500, reading_lr: float = 5e-4,
          reading_probe: float = 0.6) -> Path:
    """The whole chain into `out`. Stages 1-2 end in `out/model-joint` (skipped when it exists); stage 3 loads that
    exported folder (bf16, as it ships) and trains on the presence mix into `out/model-presence`; stage 4 into
    `out/model-refine`, stage 5 into `out/model-skills`, stage 6 into `out/model`. Returns the last stage's folder."""
    from qwen25vl.model.vlm import Qwen25VL
    from qwen25vl.testing.checkpoint import init_random_weights

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "log.jsonl"

    def log(entry: dict) -> None:
        with log_path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
        say(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items()))

    times_path = out / "times.json"
    times = json.loads(times_path.read_text()) if times_path.is_file() else {}

    def save_times() -> None:
        times_path.write_text(json.dumps({k: round(v, 1) for k, v in times.items()}, indent=2))

    def later(stage: str, time_key: str, folder: Path, settings: dict, train) -> Path:
        """Run a later stage unless `folder` holds its model: its settings to `<stage>.json` and its time to
        times.json only when it runs (a stage found done keeps what its own run recorded)."""
        if (folder / "model.safetensors").is_file():
            return train()
        t = time.perf_counter()
        (out / f"{stage}.json").write_text(json.dumps(settings, indent=2))
        result = train()
        times[time_key] = time.perf_counter() - t
        save_times()
        return result

    def refine(start: Path) -> Path:
        folder = later("stage4", "refine_s", out / "model-refine", {
            "steps": refine_steps, "batch": joint_batch, "lr": refine_lr, "decision_weight": decision_weight,
            "images": refine_images}, lambda: refine_stage(
                out, base, start, steps=refine_steps, batch=joint_batch, lr=refine_lr, images=refine_images,
                decision_weight=decision_weight, seed=seed, log_every=log_every, log=log))
        return skills(folder)

    def skills(start: Path) -> Path:
        if skills_steps <= 0:
            return start
        counts = {**SKILL_COUNTS, **(skills_counts or {})}
        folder = later("stage5", "skills_s", out / "model-skills", {
            "steps": skills_steps, "batch": joint_batch, "lr": skills_lr, "decision_weight": decision_weight,
            "records": counts, "options": SKILL_OPTIONS, "threads": threads}, lambda: skills_stage(
                out, base, start, steps=skills_steps, batch=joint_batch, lr=skills_lr, counts=counts,
                decision_weight=decision_weight, seed=seed, log_every=log_every, log=log))
        return reading(folder)

    def reading(start: Path) -> Path:
        if reading_steps <= 0:
            return start
        return later("stage6", "reading_s", out / "model", {
            "letter_steps": letter_steps, "letter_lr": letter_lr, "letter_anchor": letter_anchor,
            "anchor_batch": ANCHOR_BATCH, "words_steps": words_steps, "words_lr": words_lr, "steps": reading_steps,
            "batch": joint_batch, "lr": reading_lr, "char_until": reading_probe, "decision_weight": decision_weight,
            "threads": threads}, lambda: reading_stage(
                out, base, start, letter_steps=letter_steps, letter_lr=letter_lr, letter_anchor=letter_anchor,
                words_steps=words_steps, words_lr=words_lr, steps=reading_steps, char_until=reading_probe,
                batch=joint_batch, lr=reading_lr, decision_weight=decision_weight, seed=seed, log_every=log_every,
                log=log))

    t = time.perf_counter()
    data = make_data(out / "data" / "grounding", train, heldout, seed)
    config = tiny_config()
    base = make_base(data, out / "base", config)
    times.setdefault("data_and_tokenizer_s", time.perf_counter() - t)
    joint = out / "model-joint"
    if not (joint / "model.safetensors").is_file():
        vlm = Qwen25VL(config)
        if any(p.is_meta for p in vlm.parameters()):
            vlm = vlm.to_empty(device="cpu")
        init_random_weights(vlm, seed, embed_std=1.0, gain=1.0)
        vlm.float()
        say(f"model: {sum(p.numel() for p in vlm.parameters()) / 1e6:.2f}M parameters")
        t = time.perf_counter()
        head = vision_stage(vlm, data, steps=vision_steps, batch=vision_batch, lr=2e-3, seed=seed, log=log)
        times["vision_s"] = time.perf_counter() - t
        t = time.perf_counter()
        joint_stage(vlm, base, data, steps=joint_steps, batch=joint_batch, lr=lr, vision_ratio=0.2, dense_until=0.5,
                    seed=seed, log_every=log_every, log=log, head=head,
                    save=lambda step: export(vlm, base, out / "model-partial"))
        times["joint_s"] = time.perf_counter() - t
        export(vlm, base, joint)
        save_times()
    folder = out / "model-presence"
    if presence_steps <= 0:
        return joint
    if (folder / "model.safetensors").is_file():
        say(f"{folder} exists: stage 3 is done")
        return refine(folder) if refine_steps > 0 else skills(folder)
    t = time.perf_counter()
    presence = make_data(out / "data" / "grounding-presence", presence_images, max(2, GAP_RECORDS // 3),
                         PRESENCE_SEED, PRESENCE_OPTIONS)
    times["presence_data_s"] = time.perf_counter() - t
    vlm = Qwen25VL.from_pretrained(joint, dtype=torch.float32, progress=False)
    say(f"stage 3 from {joint}: {presence_steps} steps on {presence}")
    (out / "stage3.json").write_text(json.dumps({"steps": presence_steps, "batch": joint_batch, "lr": presence_lr,
                                                 "decision_weight": decision_weight, "count_until": count_until,
                                                 "match_until": match_until,
                                                 "images": presence_images}, indent=2))
    t = time.perf_counter()
    joint_stage(vlm, base, presence, steps=presence_steps, batch=joint_batch, lr=presence_lr, vision_ratio=0.2,
                dense_until=0.0, seed=seed + 3, log_every=log_every, log=log, decision_weight=decision_weight,
                warmup=0.05, count_until=count_until, match_until=match_until, stage="presence",
                save=lambda step: export(vlm, base, out / "model-partial"))
    times["presence_s"] = time.perf_counter() - t
    export(vlm, base, folder)
    save_times()
    say(f"wrote {folder}; times {times}")
    return refine(folder) if refine_steps > 0 else skills(folder)


def refine_stage(out: Path, base: Path, start: Path, *, steps: int, batch: int, lr: float, images: int,
                 decision_weight: float, seed: int, log_every: int, log) -> Path:
    """Stage 4: the stage-3 folder trained on fresh presence scenes (engine seed `REFINE_SEED`) at a lower peak
    rate, without probes: a second cosine cycle (stage 3's figures were still rising at its learning-rate floor).
    Exported to `out/model-refine`."""
    folder = out / "model-refine"
    if (folder / "model.safetensors").is_file():
        say(f"{folder} exists: stage 4 is done")
        return folder
    data = make_data(out / "data" / "grounding-refine", images, max(2, GAP_RECORDS // 3), REFINE_SEED,
                     PRESENCE_OPTIONS)
    return _continue(out, base, start, data, folder, "refine", steps=steps, batch=batch, lr=lr, seed=seed + 4,
                     log_every=log_every, log=log, decision_weight=decision_weight)


def _continue(out: Path, base: Path, start: Path, data, folder: Path, stage: str, **train) -> Path:
    """A later stage: `start` loaded in fp32, trained on `data` (no dense loss, no probes, 5% warm-up), exported to
    `folder` (and to `out/model-partial` every 200 steps)."""
    from qwen25vl.model.vlm import Qwen25VL

    vlm = Qwen25VL.from_pretrained(start, dtype=torch.float32, progress=False)
    say(f"stage {stage} from {start}: {train['steps']} steps on {data}")
    joint_stage(vlm, base, data, vision_ratio=0.2, dense_until=0.0, warmup=0.05, stage=stage,
                save=lambda step: export(vlm, base, out / "model-partial"), **train)
    export(vlm, base, folder)
    return folder


def skills_stage(out: Path, base: Path, start: Path, *, steps: int, batch: int, lr: float, counts: dict,
                 decision_weight: float, seed: int, log_every: int, log) -> Path:
    """Stage 5: the stage-4 folder on a mix of the OCR and video engines' data (`SKILL_OPTIONS`) and fresh presence
    scenes (a replay, so grounding is kept), at `lr` peak, no probes. `counts`: train records per engine (grounding:
    scenes, three records each). Exported to `out/model-skills`."""
    folder = out / "model-skills"
    if (folder / "model.safetensors").is_file():
        say(f"{folder} exists: stage 5 is done")
        return folder
    root = out / "data"
    mix = [make_data(root / "grounding-skills", counts["grounding"], max(2, GAP_RECORDS // 3), SKILLS_SEED,
                     PRESENCE_OPTIONS)]
    for kind in ("ocr", "video"):
        mix.append(make_data(root / f"{kind}-skills", counts[kind], 64, SKILLS_SEED, SKILL_OPTIONS[kind], kind))
    return _continue(out, base, start, mix, folder, "skills", steps=steps, batch=batch, lr=lr, seed=seed + 5,
                     log_every=log_every, log=log, decision_weight=decision_weight)


def reading_stage(out: Path, base: Path, start: Path, *, letter_steps: int, letter_lr: float, steps: int,
                  batch: int, lr: float, decision_weight: float, seed: int, log_every: int, log,
                  letter_anchor: float = 10.0, anchor_batch: int = ANCHOR_BATCH, char_until: float = 0.6,
                  words_steps: int = 0, words_lr: float = 8e-4) -> Path:
    """Stage 6: the stage-5 folder's ViT + merger trained alone for `letter_steps` on stage 5's word images, each
    merged cell's letters as targets (`tiny_ocr.letter_stage`, lr `letter_lr`), with `anchor_batch` of stage 5's
    grounding scenes a step held to the starting tower's features (`letter_anchor`: the weight of their relative
    error; 0: no anchor); then the whole model on stage 5's words alone for `words_steps` at `words_lr` peak, the
    character probes (`tiny_ocr`) on throughout; then on stage 5's mix (its grounding, OCR and video train sets)
    for `steps` at `lr` peak, the probes on for the first `char_until` of them. Exported to `out/model`.

    Why (measured on 2026-12-06 from the stage-5 weights, figures in the model card): through the LLM alone the ViT
    never learned to tell letters apart (OCR 2%); letters alone overwrite the features the LLM reads objects from
    unless the grounding scenes are anchored; the mix alone after the letters leaves OCR at 4-5%, words alone read
    a third of the held-out words but forget grounding, and the mix after the words brings grounding back."""
    from qwen25vl.model.vlm import Qwen25VL
    from qwen25vl.recipes.tiny_ocr import letter_stage

    folder = out / "model"
    if (folder / "model.safetensors").is_file():
        say(f"{folder} exists: stage 6 is done")
        return folder
    root = out / "data"
    mix = [root / "grounding-skills", root / "ocr-skills", root / "video-skills"]
    missing = [m for m in mix if not (m / "manifest.json").is_file()]
    if missing:
        raise FileNotFoundError(f"stage 6 trains on stage 5's sets, and {missing[0]} holds none: run stage 5 first "
                                "(or pass --reading-steps 0)")
    vlm = Qwen25VL.from_pretrained(start, dtype=torch.float32, progress=False)
    say(f"stage 6 from {start}: {letter_steps} letter steps, {words_steps} steps on the words, then {steps} steps "
        "on stage 5's mix")
    if letter_steps > 0:
        stats = letter_stage(vlm, mix[1], steps=letter_steps, lr=letter_lr, seed=seed + 6, log=log,
                             anchor=mix[0] if letter_anchor > 0 else None, anchor_batch=anchor_batch,
                             anchor_weight=letter_anchor)
        say(f"letter stage: centre-letter accuracy {stats['letter_acc']:.3f} over its last 100 steps")
    if words_steps > 0:
        joint_stage(vlm, base, mix[1], steps=words_steps, batch=batch, lr=words_lr, vision_ratio=0.2, dense_until=0.0,
                    warmup=0.05, stage="reading-words", seed=seed + 7, log_every=log_every, log=log, char_until=1.0,
                    save=lambda step: export(vlm, base, out / "model-partial"))
    joint_stage(vlm, base, mix, steps=steps, batch=batch, lr=lr, vision_ratio=0.2, dense_until=0.0, warmup=0.05,
                stage="reading", seed=seed + 6, log_every=log_every, log=log, decision_weight=decision_weight,
                char_until=char_until, save=lambda step: export(vlm, base, out / "model-partial"))
    export(vlm, base, folder)
    return folder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m qwen25vl.recipes.tiny", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="build/tiny")
    p.add_argument("--train", type=int, default=16000)
    p.add_argument("--heldout", type=int, default=600)
    p.add_argument("--vision-steps", type=int, default=600)
    p.add_argument("--vision-batch", type=int, default=24)
    p.add_argument("--joint-steps", type=int, default=4000)
    p.add_argument("--joint-batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--presence-images", type=int, default=8000, help="stage 3: scenes (three records each)")
    p.add_argument("--presence-steps", type=int, default=5000, help="stage 3 steps (0: stop after stage 2)")
    p.add_argument("--presence-lr", type=float, default=1e-3)
    p.add_argument("--decision-weight", type=float, default=4.0,
                   help="stage 3: times the decision tokens' CE counts in the loss")
    p.add_argument("--count-probe-until", type=float, default=0.6,
                   help="stage 3: the entry-count probe's share of the steps (0: off)")
    p.add_argument("--match-probe-until", type=float, default=0.6,
                   help="stage 3: the per-cell query-match probe's share of the steps (0: off)")
    p.add_argument("--refine-steps", type=int, default=3000, help="stage 4 steps on fresh scenes (0: none)")
    p.add_argument("--refine-lr", type=float, default=5e-4)
    p.add_argument("--skills-steps", type=int, default=4000,
                   help="stage 5 steps on the OCR + video + grounding mix (0: none)")
    p.add_argument("--skills-lr", type=float, default=8e-4)
    p.add_argument("--letter-steps", type=int, default=4000,
                   help="stage 6: vision-only letter steps on stage 5's word images (0: none)")
    p.add_argument("--letter-lr", type=float, default=2e-3)
    p.add_argument("--letter-anchor", type=float, default=10.0,
                   help="stage 6: weight of the grounding scenes' feature drift in the letter stage (0: no anchor)")
    p.add_argument("--words-steps", type=int, default=1200, help="stage 6: then steps on stage 5's words alone")
    p.add_argument("--words-lr", type=float, default=8e-4)
    p.add_argument("--reading-steps", type=int, default=1500,
                   help="stage 6: then steps on stage 5's mix (0: no stage 6)")
    p.add_argument("--reading-lr", type=float, default=5e-4)
    p.add_argument("--reading-probe", type=float, default=0.6,
                   help="stage 6: the character probes' share of the mix steps (0: off)")
    p.add_argument("--evaluate", action="store_true", help="then score the held-out split (tiny_eval)")
    p.add_argument("--install", help="then copy the model, its scores and model card to this folder")
    args = p.parse_args(argv)
    folder = build(Path(args.out), train=args.train, heldout=args.heldout, vision_steps=args.vision_steps,
                   vision_batch=args.vision_batch, joint_steps=args.joint_steps, joint_batch=args.joint_batch,
                   lr=args.lr, seed=args.seed, log_every=args.log_every, threads=args.threads,
                   presence_images=args.presence_images, presence_steps=args.presence_steps,
                   presence_lr=args.presence_lr, decision_weight=args.decision_weight,
                   count_until=args.count_probe_until, match_until=args.match_probe_until,
                   refine_steps=args.refine_steps, refine_lr=args.refine_lr, skills_steps=args.skills_steps,
                   skills_lr=args.skills_lr, letter_steps=args.letter_steps, letter_lr=args.letter_lr,
                   letter_anchor=args.letter_anchor, words_steps=args.words_steps, words_lr=args.words_lr,
                   reading_steps=args.reading_steps, reading_lr=args.reading_lr, reading_probe=args.reading_probe)
    if args.evaluate:
        from qwen25vl.recipes.tiny_eval import full_scores

        t = time.perf_counter()
        first_text = args.presence_steps > 0 and PRESENCE_OPTIONS["text_first"]
        scores = full_scores(folder, Path(args.out) / "data", first_text)
        (folder / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
        times_path = Path(args.out) / "times.json"
        times = json.loads(times_path.read_text())
        times_path.write_text(json.dumps({**times, "heldout_eval_s": round(time.perf_counter() - t, 1)}, indent=2))
    if args.install:
        from qwen25vl.recipes.tiny_card import install

        install(folder, Path(args.out), Path(args.install))
    return 0


if __name__ == "__main__":
    sys.exit(main())
