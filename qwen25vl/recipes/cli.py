"""`qwen25vl train pretrain --stage 1|2|3`, `train sft`, `train dpo` and `train clip`: a recipe, a few overrides, the
loop."""

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
    dpo = sub.add_parser("dpo", help="preference optimisation (DPO, IPO) on chosen/rejected records, ViT frozen")
    _common(dpo)
    dpo.add_argument("--beta", type=float, default=0.1, help="strength of the pull to the reference (0.1)")
    dpo.add_argument("--label-smoothing", type=float, default=0.0, help="conservative DPO: assumed label noise")
    dpo.add_argument("--loss", choices=("sigmoid", "ipo"), default="sigmoid", help="DPO's sigmoid loss or IPO")
    dpo.add_argument("--reference", help="file of the reference log-probs (default: OUT/reference.pt)")
    dpo.set_defaults(func=cmd_dpo)
    merge = sub.add_parser("merge", help="fold a LoRA adapter into its base model: a plain HF folder, shard by shard")
    merge.add_argument("--adapter", required=True, help="adapter folder (adapter_config.json + safetensors)")
    merge.add_argument("--model", "-m", help="base HF folder (default: the adapter's base_model_name_or_path)")
    merge.add_argument("--out", required=True, help="folder for the merged model")
    merge.set_defaults(func=cmd_merge)
    _clip(sub.add_parser("clip", help="contrastive image-text pretraining of the ViT from scratch (CLIP)"))
    plan = sub.add_parser("plan", help="per-rank memory of a recipe, before anything runs")
    plan.add_argument("--stage", type=int, choices=(1, 2, 3), help="a pretraining stage (default: sft)")
    plan.add_argument("--model", "-m", help="HF folder whose config.json is planned")
    plan.add_argument("--preset", help="a config preset instead: 3b, 7b, 72b, tiny")
    plan.add_argument("--world-size", type=int, default=1)
    plan.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    plan.add_argument("--tokens", type=int, help="pack size (default: the recipe's budget)")
    plan.add_argument("--vision-share", type=float, default=0.5, help="share of a pack's tokens that are image tokens")
    plan.add_argument("--checkpoint-vision", action="store_true", default=None)
    plan.add_argument("--checkpoint-llm", action="store_true", default=None)
    plan.add_argument("--memory-gib", type=float, help="also print the largest pack that fits this memory per rank")
    _lora_flags(plan)
    plan.set_defaults(func=cmd_plan)


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
    p.add_argument("--peak-tflops", type=float, help="the device's peak (bf16 dense) TFLOP/s, to log an MFU estimate")
    _lora_flags(p)
    p.add_argument("--die-after-step", type=int, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_train)


def _lora_flags(p) -> None:
    p.add_argument("--lora-rank", type=int, help="train LoRA adapters of this rank instead of the weights")
    p.add_argument("--lora-alpha", type=float, help="LoRA scale numerator: update x alpha / rank (default 2 x rank)")
    p.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the adapters' input (0)")
    p.add_argument("--lora-targets", default="llm", metavar="A,B",
                   help="modules to adapt, comma-separated: presets llm, attn, mlp, merger, vision; names such as "
                        "q_proj; globs over module paths such as 'model.layers.*.mlp.*' (default llm)")


def _clip(p) -> None:
    p.add_argument("--data", action="append", required=True, metavar="JSONL", help="records with an image + caption")
    p.add_argument("--heldout", action="append", metavar="JSONL", help="records for image->text retrieval")
    p.add_argument("--out", required=True, help="output folder: checkpoints/, log.jsonl, hf/ (trained ViT + LLM)")
    p.add_argument("--model", "-m", help="HF folder: config, tokenizer, and the LLM that hf/ carries")
    p.add_argument("--preset", help="the tiny preset instead (random LLM)")
    p.add_argument("--device", help="cpu / cuda (default: cuda when available)")
    p.add_argument("--batch", type=int, default=256, help="pairs per step (256)")
    p.add_argument("--embed-dim", type=int, default=256, help="width of the shared embedding (256)")
    p.add_argument("--text-width", type=int, default=128, help="text tower width (128)")
    p.add_argument("--text-layers", type=int, default=2, help="text tower layers (2)")
    p.add_argument("--text-heads", type=int, default=4, help="text tower heads (4)")
    for flag in ("--steps", "--warmup", "--save-every", "--seed", "--max-pixels"):
        p.add_argument(flag, type=int)
    p.add_argument("--lr", type=float, help="text tower, projections and temperature (5e-4)")
    p.add_argument("--lr-vision", type=float, help="ViT blocks (5e-4)")
    p.add_argument("--lr-merger", type=float, help="merger (5e-4)")
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints in --out")
    p.add_argument("--die-after-step", type=int, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_clip)


def recipe_of(args, base=None):
    from qwen25vl.recipes.stages import PRETRAIN, SFT

    recipe = base or (PRETRAIN[args.stage] if args.train_command == "pretrain" else SFT)
    adapters = _lora_of(args)
    lr = dict(recipe.lr)
    if adapters is not None:  # any module may hold adapters, frozen or not; they take a larger rate
        from qwen25vl.train.lora import DEFAULT_LR

        lr = {module: DEFAULT_LR for module in ("vision", "merger", "llm")}
    for module, value in (("llm", args.lr), ("vision", args.lr_vision), ("merger", args.lr_merger)):
        if value is not None and (adapters is not None or recipe.train.get(module, True)):
            lr[module] = value
    return recipe.replace(steps=args.steps, packs_per_step=args.packs_per_step, budget=args.budget, lr=lr,
                          warmup=args.warmup, save_every=args.save_every, seed=args.seed,
                          checkpoint_vision=args.checkpoint_vision, checkpoint_llm=args.checkpoint_llm,
                          lora=adapters)


def _lora_of(args):
    """The LoRA spec the --lora-* flags ask for; None without --lora-rank."""
    if args.lora_rank is None:
        if args.lora_alpha is not None or args.lora_dropout or args.lora_targets != "llm":
            from qwen25vl.errors import ConfigError

            raise ConfigError("--lora-alpha, --lora-dropout and --lora-targets need --lora-rank R (LoRA is off)")
        return None
    from qwen25vl.train.lora import LoraSpec

    targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    alpha = args.lora_alpha if args.lora_alpha is not None else 2.0 * args.lora_rank
    return LoraSpec(rank=args.lora_rank, alpha=alpha, dropout=args.lora_dropout, targets=targets)


def cmd_train(args) -> int:
    from qwen25vl.recipes.run import train

    train(recipe_of(args), data=args.data, out=args.out, model=args.model, preset=args.preset, device=args.device,
          resume=not args.no_resume, max_pixels=args.max_pixels, die_after_step=args.die_after_step,
          peak_tflops=args.peak_tflops)
    return _done()


def _done() -> int:
    """Exit status 0; under torchrun, leave now: everything is written and the group is closed, yet gloo's threads
    can still abort the process in C++ static destructors at interpreter exit (seen: SIGABRT on rank 1, about 1 run
    in 20), so they are skipped."""
    import os
    import sys

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def cmd_dpo(args) -> int:
    from qwen25vl.recipes.dpo import DPO, train_dpo

    train_dpo(recipe_of(args, DPO), data=args.data, out=args.out, model=args.model, preset=args.preset,
              device=args.device, resume=not args.no_resume, max_pixels=args.max_pixels, beta=args.beta,
              label_smoothing=args.label_smoothing, loss_type=args.loss, reference=args.reference,
              die_after_step=args.die_after_step)
    return _done()


def cmd_merge(args) -> int:
    from qwen25vl.train.merge import merge_adapter

    out = merge_adapter(args.adapter, args.out, base=args.model)
    print(f"wrote {out}")
    return 0


def cmd_clip(args) -> int:
    from qwen25vl.recipes.clip import CLIP, train_clip

    lr = {module: value if value is not None else CLIP.lr[module]
          for module, value in (("vision", args.lr_vision), ("merger", args.lr_merger), ("llm", args.lr))}
    recipe = CLIP.replace(steps=args.steps, warmup=args.warmup, save_every=args.save_every, seed=args.seed, lr=lr)
    text = {"hidden_size": args.text_width, "num_layers": args.text_layers, "num_heads": args.text_heads,
            "intermediate_size": 4 * args.text_width}
    train_clip(recipe, data=args.data, out=args.out, model=args.model, preset=args.preset, device=args.device,
               resume=not args.no_resume, max_pixels=args.max_pixels, batch=args.batch, heldout=args.heldout,
               text=text, embed_dim=args.embed_dim, die_after_step=args.die_after_step)
    return 0


def cmd_plan(args) -> int:
    import torch

    from qwen25vl.config import Qwen25VLConfig
    from qwen25vl.errors import ConfigError
    from qwen25vl.recipes.stages import PRETRAIN, SFT
    from qwen25vl.train.plan import activation_costs, largest_pack, plan_memory

    if (args.model is None) == (args.preset is None):
        raise ConfigError("give exactly one of --model FOLDER or --preset NAME")
    config = Qwen25VLConfig.from_pretrained(args.model) if args.model else Qwen25VLConfig.preset(args.preset)
    recipe = (PRETRAIN[args.stage] if args.stage else SFT).replace(
        checkpoint_vision=args.checkpoint_vision, checkpoint_llm=args.checkpoint_llm, lora=_lora_of(args))
    dtype = getattr(torch, args.dtype)
    costs = activation_costs(config, recipe.train, dtype=dtype, lora=recipe.lora)
    options = dict(vision_share=args.vision_share, world_size=args.world_size, dtype=dtype, costs=costs)
    adapters = "" if recipe.lora is None else f", LoRA rank {recipe.lora.rank} on {','.join(recipe.lora.targets)}"
    print(f"{recipe.name}{adapters}, world size {args.world_size}, {args.dtype}")
    print(plan_memory(config, recipe, tokens=args.tokens, **options).table())
    if args.memory_gib:
        tokens = largest_pack(config, recipe, int(args.memory_gib * 2**30), **options)
        print(f"largest pack within {args.memory_gib:g} GiB per rank: {tokens} tokens"
              + ("" if tokens else " (none fits: shard over more ranks or turn on activation checkpointing)"))
    return 0
