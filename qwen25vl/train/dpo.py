"""Direct preference optimisation: the losses as small pure functions, preference pairs packed like SFT, and the
packed forward that returns each answer's summed log-probability.

Losses, on per-pair summed log-probs of the chosen (c) and rejected (r) answers under the policy (pi) and the frozen
reference (ref), with h = (pi_c - pi_r) - (ref_c - ref_r):

    sigmoid (DPO)        -(1 - eps) * logsigmoid(beta * h) - eps * logsigmoid(-beta * h)   eps: label smoothing
    ipo                  (h - 1 / (2 * beta)) ** 2                                          (on per-token means)
    rewards              beta * (pi_c - ref_c), beta * (pi_r - ref_r); margin = their difference; accuracy = margin > 0

With eps > 0 the sigmoid loss is conservative DPO (labels flipped with probability eps). IPO regresses h onto a
fixed target, so it is given per-token mean log-probs (as TRL does): a summed log-ratio grows with the answer's length
and the target would mean something else for every length.

A pair is one unit of packing: its chosen and rejected sequences (prompt + answer, each with its own M-RoPE ids from
0) sit side by side in one pack, so the pair's images are encoded once and their features fill both sequences' pad
tokens. Only the answer's tokens are scored: tokens of the prompt, including earlier assistant turns in `messages`,
are masked (they are the same in both sequences, and would only add noise to the logged log-probs).

    pack          c0 (prompt0 + chosen0) | r0 (prompt0 + rejected0) | c1 ... | r1 ...      cu_seqlens per sequence
    ViT input     images of pair 0, images of pair 1 (once each)
    features      f0 -> pads of c0 and r0; f1 -> pads of c1 and r1
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from qwen25vl.data.encoding import IGNORE, Sample
from qwen25vl.data.packing import PackedBatch, collate_pack
from qwen25vl.errors import InputError
from qwen25vl.model.attention import VarlenPlan
from qwen25vl.model.text import AttnSpec
from qwen25vl.train.losses import DEFAULT_CHUNK, token_mean

LOSS_TYPES = ("sigmoid", "ipo")


def preference_logits(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                      ref_rejected: torch.Tensor) -> torch.Tensor:
    """h per pair: how much more the policy prefers the chosen answer than the reference does."""
    return (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)


def sigmoid_loss(logits: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO's loss per pair; with label smoothing eps the conservative DPO loss."""
    return (-(1.0 - label_smoothing) * F.logsigmoid(beta * logits)
            - label_smoothing * F.logsigmoid(-beta * logits))


def ipo_loss(logits: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO's loss per pair: the squared distance of h from 1 / (2 beta)."""
    return (logits - 1.0 / (2.0 * beta)) ** 2


def rewards(policy: torch.Tensor, ref: torch.Tensor, beta: float) -> torch.Tensor:
    """The implicit reward beta * log(pi / ref) of each answer (no gradient: it is only logged)."""
    return beta * (policy - ref).detach()


@dataclass
class PairStats:
    """Per-pair values of one micro-batch: losses (with gradient) and the logged rewards and log-probs."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor

    @property
    def margins(self) -> torch.Tensor:
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracies(self) -> torch.Tensor:
        return (self.chosen_rewards > self.rejected_rewards).float()


def preference_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                    ref_rejected: torch.Tensor, *, beta: float = 0.1, label_smoothing: float = 0.0,
                    loss_type: str = "sigmoid") -> PairStats:
    """The chosen loss of each pair, with its rewards. Inputs are (P,) log-probs (summed for sigmoid, per-token
    means for IPO: the caller decides, see the module's docstring)."""
    check_options(beta, label_smoothing, loss_type)
    logits = preference_logits(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    losses = sigmoid_loss(logits, beta, label_smoothing) if loss_type == "sigmoid" else ipo_loss(logits, beta)
    return PairStats(losses, rewards(policy_chosen, ref_chosen, beta), rewards(policy_rejected, ref_rejected, beta),
                     policy_chosen.detach(), policy_rejected.detach())


def check_options(beta: float, label_smoothing: float, loss_type: str) -> None:
    from qwen25vl.errors import ConfigError

    if loss_type not in LOSS_TYPES:
        raise ConfigError(f"unknown DPO loss {loss_type!r}; choose among {list(LOSS_TYPES)}")
    if not (beta > 0 and math.isfinite(beta)):
        raise ConfigError(f"beta must be a positive number, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ConfigError(f"label smoothing must be in [0, 0.5), got {label_smoothing}")
    if loss_type == "ipo" and label_smoothing:
        raise ConfigError("label smoothing applies to the sigmoid loss only, not to IPO")


# --- preference pairs: encoding and packing -------------------------------------------------------------------------
@dataclass
class PairSample:
    """A record's two sequences, prompt + chosen and prompt + rejected, with only the answers' tokens labelled.
    Packed as one unit: `length` is both sequences' tokens; `num_targets` is 1, so a step's "targets" are its pairs
    and the loss is a mean over pairs (the loader's global count does the normalisation, as for SFT's tokens)."""

    chosen: Sample
    rejected: Sample
    where: str = "record"

    @property
    def length(self) -> int:
        return self.chosen.length + self.rejected.length

    @property
    def num_targets(self) -> int:
        return 1


def encode_pair(encoder, record) -> PairSample:
    """Record with `chosen` / `rejected` -> PairSample, or InputError naming the record and field."""
    where = record.where
    if record.chosen is None or record.rejected is None:
        raise InputError(f"{where}: not a preference record (DPO needs chosen and rejected)")
    samples = []
    for name in ("chosen", "rejected"):
        answer = getattr(record, name)
        _check_text_only(answer, f"{where}: {name}")
        sample = encoder.encode_messages(record.messages + answer, record.root, f"{where} ({name})")
        turns = sum(1 for m in answer if m["role"] == "assistant")
        sample.labels = _answer_labels(sample.labels, turns, f"{where}: {name}")
        samples.append(sample)
    chosen, rejected = samples
    for name in ("image_grid_thw", "video_grid_thw"):
        a, b = getattr(chosen, name), getattr(rejected, name)
        if (a is None) != (b is None) or (a is not None and not torch.equal(a, b)):
            raise InputError(f"{where}: chosen and rejected see different media ({name})")
    return PairSample(chosen, rejected, where)


def _check_text_only(messages: list[dict], where: str) -> None:
    """The pair's media live in `messages`, shared by both answers; an image inside one answer would not be."""
    for m, message in enumerate(messages):
        content = message.get("content")
        for p, part in enumerate(content if isinstance(content, list) else []):
            if part.get("type") != "text":
                raise InputError(f"{where}[{m}].content[{p}]: a {part.get('type')} inside an answer; put the "
                                 "pair's media in messages, where both answers share them")


def _answer_labels(labels: torch.Tensor, turns: int, where: str) -> torch.Tensor:
    """Keep the labels of the last `turns` assistant spans (the answer), drop those of the prompt's own turns.

    The renderer's loss mask gives one supervised run of labels per assistant message, and two runs are always
    apart (the next turn's `<|im_start|>` is never trained on), so the runs are the messages, counted from the end."""
    supervised = labels != IGNORE
    starts = torch.nonzero(supervised & ~torch.cat([supervised.new_zeros(1), supervised[:-1]])).flatten()
    if starts.numel() < turns:
        raise InputError(f"{where}: the answer has {turns} assistant turn(s) but {starts.numel()} were rendered")
    labels = labels.clone()
    labels[:int(starts[-turns])] = IGNORE
    return labels


@dataclass
class PairBatch:
    """One pack of pairs. `batch` holds the sequences c0 r0 c1 r1 ... and each pair's media once, pair by pair;
    `images` / `videos` (P,): media items per pair; `tokens` (P, 2): answer tokens of chosen / rejected;
    `index` (P,): the pairs' record indices (to look up their reference log-probs)."""

    batch: PackedBatch
    images: torch.Tensor
    videos: torch.Tensor
    tokens: torch.Tensor
    index: torch.Tensor

    @property
    def num_pairs(self) -> int:
        return int(self.index.numel())

    def to(self, device) -> PairBatch:
        return PairBatch(self.batch.to(device), self.images, self.videos, self.tokens, self.index)


def collate_pairs(pairs: list[PairSample], index: list[int] | None = None) -> PairBatch:
    """Pairs -> one packed row (each sequence its own segment), with the vision inputs of each pair taken once."""
    samples = [s for pair in pairs for s in (pair.chosen, pair.rejected)]
    batch = collate_pack(samples)  # ids, labels, positions, cu_seqlens of the 2P sequences
    for name in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
        parts = [getattr(p.chosen, name) for p in pairs if getattr(p.chosen, name) is not None]
        setattr(batch, name, torch.cat(parts) if parts else None)  # the rejected copies are the same media

    def items(grid):
        return 0 if grid is None else int(grid.shape[0])

    images = torch.tensor([items(p.chosen.image_grid_thw) for p in pairs])
    videos = torch.tensor([items(p.chosen.video_grid_thw) for p in pairs])
    tokens = torch.tensor([[p.chosen.num_targets, p.rejected.num_targets] for p in pairs])
    index = torch.tensor(list(range(len(pairs))) if index is None else index)
    return PairBatch(batch, images, videos, tokens, index)


# --- the packed forward: each answer's summed log-probability -------------------------------------------------------
class PairLogps(nn.Module):
    """`PairLogps(model)(pairs)` -> (P, 2) summed log-probs of each pair's chosen and rejected answer.

    The vision tower (ViT and merger) is frozen in DPO and runs under no_grad, once per pack, on each pair's media
    once; the features fill the pads of both sequences of their pair. Since the tower is frozen, the reference model's
    features are these same features (the reference is the starting policy), so one call also serves a reference
    pass over the same pack. The wrapper is the FSDP root, as `PackedLoss` is."""

    def __init__(self, model: nn.Module, chunk: int = DEFAULT_CHUNK):
        super().__init__()
        self.vlm = model
        self.chunk = chunk

    def forward(self, pairs: PairBatch) -> torch.Tensor:
        vlm, cfg, batch = self.vlm, self.vlm.config, pairs.batch
        input_ids = batch.input_ids
        embeds = vlm.model.embed_tokens(input_ids)  # (1, T, C)
        image, video = self.features(pairs)
        for token_id, features in ((cfg.image_token_id, image), (cfg.video_token_id, video)):
            if features is not None:
                embeds = embeds.masked_scatter((input_ids == token_id)[..., None], features.to(embeds.dtype))
        spec = AttnSpec(plan=VarlenPlan.build(batch.cu_seqlens, input_ids.device))
        hidden = vlm.model(embeds, batch.position_ids, spec)  # (1, T, C)
        logps = sequence_logps(hidden[0], vlm.lm_head.weight, batch.labels[0], batch.cu_seqlens, self.chunk)
        return logps.view(-1, 2)  # (2P,) -> (P, 2): sequences alternate chosen, rejected

    def features(self, pairs: PairBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(image features, video features) in the pack's token order: each pair's rows twice (chosen, rejected)."""
        batch, visual = pairs.batch, self.vlm.visual
        weight = visual.patch_embed.proj.weight
        pixels = [p for p in (batch.pixel_values, batch.pixel_values_videos) if p is not None]
        grids = [g for g in (batch.image_grid_thw, batch.video_grid_thw) if g is not None]
        with torch.no_grad():
            if not pixels:
                if dist.is_initialized() and dist.get_world_size() > 1:  # FSDP: every rank joins the tower's gathers
                    visual(torch.zeros(4, weight.shape[1:].numel(), dtype=weight.dtype, device=weight.device),
                           torch.tensor([[1, 2, 2]], device=weight.device))
                return None, None
            grid = torch.cat(grids).to(weight.device)
            features = visual(torch.cat(pixels).to(weight.device, weight.dtype), grid)
        rows = (grid.prod(-1) // self.vlm.config.vision.spatial_merge_size ** 2).tolist()  # features per item
        n_images = int(pairs.images.sum())
        per_pair_images = _per_pair(rows[:n_images], pairs.images.tolist())
        per_pair_videos = _per_pair(rows[n_images:], pairs.videos.tolist())
        n_image_rows = sum(per_pair_images)
        image = _twice(features[:n_image_rows], per_pair_images) if n_images else None
        video = _twice(features[n_image_rows:], per_pair_videos) if int(pairs.videos.sum()) else None
        return image, video


def _per_pair(rows: list[int], items: list[int]) -> list[int]:
    """Feature rows per pair, from the rows of each media item and the items of each pair."""
    out, start = [], 0
    for n in items:
        out.append(sum(rows[start:start + n]))
        start += n
    return out


def _twice(features: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """(N, C) rows of the pairs in order -> each pair's rows twice in a row: (2N, C)."""
    parts = features.split(rows)
    return torch.cat([part for part in parts for _ in range(2)])


def sequence_logps(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, cu_seqlens: torch.Tensor,
                   chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Summed log-probs of the supervised targets of each packed sequence: hidden (T, C), weight (V, C), labels (T,),
    cu_seqlens (S + 1,) -> (S,). Only supervised rows get logits, a chunk at a time; each chunk is checkpointed, so
    backward recomputes its logits instead of keeping (T x vocab) of them."""
    rows = torch.nonzero(labels != IGNORE).flatten()
    sequence = torch.searchsorted(cu_seqlens[1:].to(rows.device, torch.long), rows, right=True)
    total = torch.zeros(cu_seqlens.numel() - 1, dtype=torch.float32, device=hidden.device)
    for start in range(0, rows.numel(), chunk):
        idx = rows[start:start + chunk]
        logps = checkpoint(_token_logps, hidden[idx], weight, labels[idx], use_reentrant=False)
        total = total.index_add(0, sequence[start:start + chunk], logps)
    return total


def _token_logps(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = (hidden @ weight.T).float()  # (n, V); fp32 so that long answers' sums keep their precision
    return -F.cross_entropy(logits, targets, reduction="none")


# --- one optimizer step -----------------------------------------------------------------------------------------------
LOGGED = ("loss", "margin", "accuracy", "chosen_reward", "rejected_reward", "chosen_logps", "rejected_logps")


def dpo_step(loss_fn, optimizer, scheduler, micro_batches: list[PairBatch], reference: torch.Tensor, *,
             global_pairs: int, world_size: int = 1, beta: float = 0.1, label_smoothing: float = 0.0,
             loss_type: str = "sigmoid", max_grad_norm: float | None = 1.0) -> dict:
    """Forward + backward of each pack, clip, step. `reference` (records, 2): the starting policy's summed
    log-probs by record index. Returns the step's means over its pairs (all ranks) of `LOGGED`, grad norm and lr.

    Each pack contributes its summed pair losses / global_pairs (scaled by the world size, as `token_mean` does for
    SFT's tokens), so the gradient is that of the mean over the step's pairs however they were packed."""
    sums = torch.zeros(len(LOGGED), dtype=torch.float64)
    sync = hasattr(loss_fn, "set_requires_gradient_sync")
    for i, pairs in enumerate(micro_batches):
        if sync:  # FSDP: reduce-scatter the gradients only once, after the last micro-batch
            loss_fn.set_requires_gradient_sync(i == len(micro_batches) - 1)
        logps = loss_fn(pairs)  # (P, 2)
        ref = reference[pairs.index].to(logps.device, logps.dtype)
        scale = pairs.tokens.to(logps.device, logps.dtype) if loss_type == "ipo" else torch.ones_like(ref)
        stats = preference_loss(logps[:, 0] / scale[:, 0], logps[:, 1] / scale[:, 1], ref[:, 0] / scale[:, 0],
                                ref[:, 1] / scale[:, 1], beta=beta, label_smoothing=label_smoothing,
                                loss_type=loss_type)
        token_mean(stats.losses.sum(), global_pairs, world_size).backward()
        values = (stats.losses, stats.margins, stats.accuracies, stats.chosen_rewards, stats.rejected_rewards,
                  logps[:, 0], logps[:, 1])  # the logged log-probs are sums, for either loss
        sums += torch.stack([v.detach().double().sum().cpu() for v in values])
    params = [p for group in optimizer.param_groups for p in group["params"]]
    norm = None
    if max_grad_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    lr = max(group["lr"] for group in optimizer.param_groups)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if world_size > 1:
        dist.all_reduce(sums)
    return {**{k: float(v) / global_pairs for k, v in zip(LOGGED, sums)}, "grad_norm": norm, "lr": lr}
