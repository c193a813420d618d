"""The training loop every recipe runs, top to bottom: set up, resume, step, log, checkpoint, export.

One process or many (`torchrun --nproc_per_node N`, FSDP2): the same code; the world decides the sharding and
which packs this rank gets. Output folder layout: `checkpoints/step-*/` (resume state), `log.jsonl` (one line per
step), `tensorboard/` (when the package is installed), `hf/` (the exported model).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch

from qwen25vl.data.encoding import Encoder
from qwen25vl.data.loader import PackLoader
from qwen25vl.data.records import iter_records
from qwen25vl.errors import ConfigError
from qwen25vl.recipes.stages import Recipe
from qwen25vl.train import checkpoint as ckpt
from qwen25vl.train import lora
from qwen25vl.train.activations import checkpoint_blocks
from qwen25vl.train.distributed import close, init_distributed, shard
from qwen25vl.train.forward import PackedLoss
from qwen25vl.train.optim import build_optimizer, build_scheduler, set_trainable
from qwen25vl.train.plan import step_flops
from qwen25vl.train.step import train_step


def train(recipe: Recipe, *, data: list[str], out: str, model: str | None = None, preset: str | None = None,
          device: str | None = None, resume: bool = True, max_pixels: int | None = None,
          die_after_step: int | None = None, quiet: bool = False, peak_tflops: float | None = None) -> list[dict]:
    """Run `recipe`; returns the per-step log records (this rank's view of the global loss)."""
    world = init_distributed(device)
    torch.manual_seed(recipe.seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = _printer(world.is_main and not quiet)

    # --- model, trainable modules, sharding, optimizer --------------------------------------------------------
    vlm, source = _load_model(model, preset, out, recipe.seed, world.is_main, resume)
    counts = set_trainable(vlm, recipe.train)
    if recipe.lora is not None:
        counts = lora.setup_recipe(vlm, recipe.lora, source, is_main=world.is_main)
    if recipe.checkpoint_vision:
        checkpoint_blocks(vlm.visual.blocks)
    if recipe.checkpoint_llm:
        checkpoint_blocks(vlm.model.layers)
    loss_fn = PackedLoss(vlm.to(world.device))
    if world.world_size > 1:
        shard(loss_fn, bf16=world.device.type == "cuda")
    optimizer = build_optimizer(loss_fn, recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = build_scheduler(optimizer, warmup=recipe.warmup, total=recipe.steps, min_ratio=recipe.min_lr_ratio)
    say(f"{recipe.name}: trainable {_millions(counts)}; world {world.world_size}; device {world.device}")

    # --- data ---------------------------------------------------------------------------------------------------
    encoder = Encoder.from_pretrained(source, config=vlm.config, max_pixels=max_pixels)
    records = [item for path in data for item in iter_records(path)]
    loader = PackLoader(records, encoder, budget=recipe.budget, packs_per_step=recipe.packs_per_step,
                        world_size=world.world_size, rank=world.rank, seed=recipe.seed, window=recipe.window,
                        log=say if not quiet else None)
    say(f"data: {len(loader.records)} records, {loader.steps_per_epoch()} steps per epoch, "
        f"skipped {dict(loader.skipped) or 0}")

    # --- resume ---------------------------------------------------------------------------------------------------
    start = resume_latest(out, loss_fn, optimizer, scheduler, loader, say, base=source) if resume else 0

    # --- the loop ---------------------------------------------------------------------------------------------------
    log, writer = [], _tensorboard(out, world.is_main)
    log_file = (out / "log.jsonl").open("a") if world.is_main else None
    steps = iter(loader)
    for step in range(start + 1, recipe.steps + 1):
        t0 = time.perf_counter()
        work = next(steps)
        with _autocast(world):
            stats = train_step(loss_fn, optimizer, scheduler, [b.to(world.device) for b in work.micro_batches],
                               global_targets=work.global_targets, world_size=world.world_size,
                               max_grad_norm=recipe.max_grad_norm)
        seconds = time.perf_counter() - t0
        tflops = step_flops(vlm.config, recipe.train, work.micro_batches) / seconds / 1e12  # this rank's
        entry = {"step": step, "loss": stats["loss"], "lr": stats["lr"], "grad_norm": stats["grad_norm"],
                 "tokens_per_s": work.global_tokens / seconds, "targets": work.global_targets,
                 "packing": work.global_tokens / work.global_capacity, "tflops": tflops,
                 "mfu": tflops / peak_tflops if peak_tflops else None, "epoch": work.epoch, "seconds": seconds}
        log.append(entry)
        if log_file is not None:
            log_file.write(json.dumps(entry) + "\n")
            log_file.flush()
        if writer is not None:
            for key in ("loss", "lr", "tokens_per_s", "packing"):
                writer.add_scalar(f"train/{key}", entry[key], step)
        say(f"step {step}/{recipe.steps}  loss {entry['loss']:.4f}  lr {entry['lr']:.2e}  "
            f"{entry['tokens_per_s']:.0f} tok/s  packing {entry['packing']:.0%}  {tflops:.3g} TFLOP/s"
            + (f"  MFU {entry['mfu']:.1%}" if peak_tflops else ""))
        end_step(step, recipe, out, loss_fn, optimizer, scheduler, loader, world, die_after_step, base=source)

    # --- export ---------------------------------------------------------------------------------------------------
    finish(out, loss_fn, source, world, say, log_file, writer)
    return log


def end_step(step, recipe, out: Path, loss_fn, optimizer, scheduler, loader, world, die_after_step,
             base=None) -> None:
    """Save a checkpoint when the recipe says (a LoRA run's: the adapters and a reference to `base`, the folder of
    its frozen weights); `die_after_step` (tests) kills the process for real, no cleanup."""
    if step % recipe.save_every == 0 or step == recipe.steps:
        trainer = {"scheduler": scheduler.state_dict(), "loader": loader.state_dict(), "rng": ckpt.rng_state()}
        ckpt.save_checkpoint(out / "checkpoints", step, loss_fn, optimizer, trainer, keep=recipe.keep,
                             is_main=world.is_main, base=base)
    if die_after_step == step:
        os.kill(os.getpid(), signal.SIGKILL)


def finish(out: Path, loss_fn, source, world, say, log_file, writer) -> None:
    """Export the HF folder (a LoRA run: the adapter, PEFT's format), close the logs, leave the process group."""
    if lora.lora_modules(loss_fn):
        lora.save_adapter(loss_fn, out / "adapter", base=Path(source).resolve(), is_main=world.is_main)
        say(f"wrote {out / 'adapter'} (merge: qwen25vl train merge --adapter {out / 'adapter'} --out FOLDER)")
    else:
        ckpt.export_hf(loss_fn, out / "hf", source=source, is_main=world.is_main)
        say(f"wrote {out / 'hf'}")
    if log_file is not None:
        log_file.close()
    if writer is not None:
        writer.close()
    close()


INIT_FILE = "init.json"  # in OUT/init of a --preset run: the preset and seed its random base was drawn with


def _load_model(model: str | None, preset: str | None, out: Path, seed: int, is_main: bool, resume: bool = True):
    """(Qwen25VL in fp32, the folder holding its tokenizer and processor files). A --preset run's random base is a
    function of its seed; a LoRA run writes it to OUT/init (its adapters name it), and a resumed run loads it from
    there, refusing another --seed rather than resuming the adapters on a different base."""
    from qwen25vl.model.vlm import Qwen25VL

    if (model is None) == (preset is None):
        raise ConfigError("give exactly one of --model FOLDER (an HF checkpoint) or --preset NAME (random init)")
    if model is not None:
        return Qwen25VL.from_pretrained(model, dtype=torch.float32, progress=False), Path(model)
    from qwen25vl.config import Qwen25VLConfig

    if preset != "tiny":
        raise ConfigError(f"random init is offered for the tiny preset only here (got {preset!r}); "
                          "start larger runs from an HF folder")
    from qwen25vl.testing.checkpoint import init_random_weights
    from qwen25vl.testing.tokenizer import write_preprocessor_config, write_tiny_tokenizer
    from qwen25vl.train.distributed import barrier

    source = out / "init"
    drawn = {"preset": preset, "seed": seed}
    stored = json.loads((source / INIT_FILE).read_text()) if (source / INIT_FILE).is_file() else None
    saved = (source / "model.safetensors").is_file()
    resuming = resume and bool(ckpt.list_checkpoints(out / "checkpoints"))
    if saved and resuming and stored not in (None, drawn):
        raise ConfigError(f"{out}'s checkpoints were trained on the random base in {source} (--preset "
                          f"{stored['preset']} --seed {stored['seed']}), not on --preset {preset} --seed {seed}: "
                          "resume with the same --seed, or pass --no-resume or a new --out")
    if saved and (stored == drawn or resuming):  # the base the adapters name (a run before init.json: as saved)
        return Qwen25VL.from_pretrained(source, dtype=torch.float32, progress=False), source
    vlm = Qwen25VL(Qwen25VLConfig.preset(preset))
    init_random_weights(vlm, seed, embed_std=1.0, gain=1.0)
    if is_main:
        for name in ("model.safetensors", "config.json"):  # a stale base of another seed: the new one replaces it
            (source / name).unlink(missing_ok=True)
        write_tiny_tokenizer(source)
        write_preprocessor_config(source)
        (source / INIT_FILE).write_text(json.dumps(drawn) + "\n")
    barrier()
    return vlm, source


def resume_latest(out: Path, loss_fn, optimizer, scheduler, loader, say, base=None) -> int:
    """Restore the newest checkpoint under OUT/checkpoints (model, optimizer, schedule, data position, RNG); the
    step it was taken after, or 0 when there is none. A LoRA run's checkpoint must name `base` as its base."""
    found = ckpt.list_checkpoints(out / "checkpoints")
    if not found:
        return 0
    state = ckpt.load_checkpoint(found[-1], loss_fn, optimizer, base=base)
    scheduler.load_state_dict(state["scheduler"])
    loader.load_state_dict(state["loader"])
    ckpt.set_rng_state(state["rng"])
    say(f"resumed from {found[-1]} at step {state['step']}")
    return state["step"]


def _autocast(world):
    """bf16 compute on one GPU (FSDP's mixed-precision policy does it on several); fp32 on CPU."""
    if world.device.type == "cuda" and world.world_size == 1:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _tensorboard(out: Path, is_main: bool):
    if not is_main:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the optional `tensorboard` package
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _millions(counts: dict) -> str:
    return ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items())


def _printer(enabled: bool):
    def say(text: str) -> None:
        if enabled:
            print(text, file=sys.stderr, flush=True)

    return say

