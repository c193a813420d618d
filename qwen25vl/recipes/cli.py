"""`qwen25vl train pretrain --stage 1|2|3` and `qwen25vl train sft`: a recipe, a few overrides, the loop."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    train = subparsers.add_parser("train", help="pretraining stages and SFT (one process or under torchrun)")
    sub = train.add_subparsers(dest="train_command", metavar="RECIPE", required=True)
    pretrain = sub.add_parser("pretrain", help="pretraining stage 1 (ViT + merger), 2 (all) or 3 (long, 32k packs)")
    pretrain.add_argument("--stage", type=int, choices=(1, 2, 3), required=True)
    _common(pretrain)
    sft = sub.add_parser("sft", help="supervised fine-tuning with the ViT frozen")
    _common(sft)


def _common(p) -> None:
    p.add_argument("--data", action="append", required=True, metavar="JSONL", help="records file (repeatable)")
    p.add_argument("--out", required=True, help="output folder: checkpoints/, log.jsonl, hf/")
    p.add_argument("--model", "-m", help="HF folder to start from")
    p.add_argument("--preset", help="random init from a config preset instead (tiny)")
    p.add_argument("--device", help="cpu / cuda (default: cuda when available)")
    p.add_argument("--steps", type=int)
    p.add_argument("--packs-per-step", type=int, help="global batch in packs (split over ranks, rest accumulated)")
    p.add_argument("--budget", type=int, help="tokens per pack (8192; stage 3: 32768)")
    p.add_argument("--lr", type=float, help="LLM learning rate")
    p.add_argument("--lr-vision", type=float)
    p.add_argument("--lr-merger", type=float)
    p.add_argument("--warmup", type=int)
    p.add_argument("--save-every", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--max-pixels", type=int, help="default per-image pixel budget (record parts override it)")
    p.add_argument("--checkpoint-vision", action="store_true", default=None, help="activation checkpointing, ViT")
    p.add_argument("--checkpoint-llm", action="store_true", default=None, help="activation checkpointing, LLM")
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints in --out")
    p.add_argument("--die-after-step", type=int, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_train)


def recipe_of(args):
    from qwen25vl.recipes.stages import PRETRAIN, SFT

    recipe = PRETRAIN[args.stage] if args.train_command == "pretrain" else SFT
    lr = dict(recipe.lr)
    for module, value in (("llm", args.lr), ("vision", args.lr_vision), ("merger", args.lr_merger)):
        if value is not None and recipe.train.get(module, True):
            lr[module] = value
    return recipe.replace(steps=args.steps, packs_per_step=args.packs_per_step, budget=args.budget, lr=lr,
                          warmup=args.warmup, save_every=args.save_every, seed=args.seed,
                          checkpoint_vision=args.checkpoint_vision, checkpoint_llm=args.checkpoint_llm)


def cmd_train(args) -> int:
    from qwen25vl.recipes.run import train

    train(recipe_of(args), data=args.data, out=args.out, model=args.model, preset=args.preset, device=args.device,
          resume=not args.no_resume, max_pixels=args.max_pixels, die_after_step=args.die_after_step)
    return 0
