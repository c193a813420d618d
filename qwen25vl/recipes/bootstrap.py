"""The vision bootstrap of the tiny model: dense per-cell targets, the throwaway heads that read them, and the packed
forward of joint training with those heads and the shuffled-image loss gap.

Why: a from-scratch tiny Qwen2.5-VL trained jointly from the start learns to ignore the image (the merger output
collapses, the shuffled-image gap stays at 0). A ViT that first learns, for every merged token (a 28 px cell), what
lies there, where that object's box edges are and where the cell is, hands the LLM features it can use.

Dense targets of one image (`dense_targets`), per merged cell in the processor's token order (row-major):
    kind     0 background, 1 + shape index of the object whose box holds the cell's centre
    colour   0 background, 1 + colour index
    offsets  (cx - x1, cy - y1, x2 - cx, y2 - cy) / frame side, object cells only (NaN elsewhere)
    row, col the cell's absolute grid position
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qwen25vl.data.packing import PackedBatch
from qwen25vl.data.synth.draw import COLOURS, frame_size
from qwen25vl.data.synth.grounding import make_scene
from qwen25vl.data.synth.shapes import SHAPES
from qwen25vl.model.attention import VarlenPlan
from qwen25vl.model.text import AttnSpec, mrope_cos_sin
from qwen25vl.recipes.tiny_ocr import CharHead, CharTargets, char_loss
from qwen25vl.train.losses import chunked_cross_entropy

CELL = 28  # one merged token: 2x2 patches of 14 px
MAX_CELLS = 16  # rows / columns the position heads can name (448 px)
COLOUR_NAMES = tuple(COLOURS)
HEAD_SIZES = {"kind": 1 + len(SHAPES), "colour": 1 + len(COLOUR_NAMES), "offsets": 4, "row": MAX_CELLS,
              "col": MAX_CELLS}


@dataclass
class DenseTargets:
    kind: torch.Tensor  # (cells,) long
    colour: torch.Tensor  # (cells,) long
    offsets: torch.Tensor  # (cells, 4) float, NaN on background cells
    row: torch.Tensor  # (cells,) long
    col: torch.Tensor  # (cells,) long

    @staticmethod
    def cat(items: list[DenseTargets]) -> DenseTargets:
        return DenseTargets(*(torch.cat([getattr(t, f) for t in items]) for f in
                              ("kind", "colour", "offsets", "row", "col")))


def dense_targets(things, size: tuple[int, int]) -> DenseTargets:
    """Per-cell targets of a scene of `things` (objects with .shape, .colour, .box) in a (width, height) frame."""
    width, height = size
    rows, cols = height // CELL, width // CELL
    n = rows * cols
    kind, colour = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    offsets = torch.full((n, 4), float("nan"))
    scale = float(max(width, height))
    for i in range(n):
        r, c = divmod(i, cols)
        cx, cy = c * CELL + CELL / 2, r * CELL + CELL / 2
        for t in things:
            x1, y1, x2, y2 = t.box
            if x1 <= cx <= x2 and y1 <= cy <= y2:
                kind[i], colour[i] = 1 + SHAPES.index(t.shape), 1 + COLOUR_NAMES.index(t.colour)
                offsets[i] = torch.tensor([cx - x1, cy - y1, x2 - cx, y2 - cy]) / scale
                break
    index = torch.arange(n)
    return DenseTargets(kind, colour, offsets, index // cols, index % cols)


def scene_of(seed: int, options: dict):
    """(image, things) of the grounding engine's sample `seed`, replayed: the engine draws the frame size and then
    the scene first from `random.Random(seed)` (see `grounding.make_sample`)."""
    rng = random.Random(seed)
    size = frame_size(rng, options["size"])
    return make_scene(rng, size, options["max_objects"])


class DenseHead(nn.Module):
    """A throwaway linear read-out of every merged token: kind, colour, box offsets, row, column."""

    def __init__(self, width: int):
        super().__init__()
        self.proj = nn.Linear(width, sum(HEAD_SIZES.values()))

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(HEAD_SIZES, self.proj(features).split(list(HEAD_SIZES.values()), dim=-1)))


def dense_loss(out: dict[str, torch.Tensor], target: DenseTargets) -> tuple[torch.Tensor, dict]:
    """Sum of the heads' losses (CE for classes, L1 x 10 for offsets on object cells) and their accuracies."""
    losses = {name: F.cross_entropy(out[name], getattr(target, name)) for name in ("kind", "colour", "row", "col")}
    on = ~torch.isnan(target.offsets[:, 0])
    if bool(on.any()):
        losses["offsets"] = 10 * F.l1_loss(out["offsets"][on], target.offsets[on])
    with torch.no_grad():
        stats = {f"{name}_acc": float((out[name].argmax(-1) == getattr(target, name)).float().mean())
                 for name in ("kind", "row", "col")}
        if bool(on.any()):
            stats["edge_err"] = float((out["offsets"][on] - target.offsets[on]).abs().mean())
    return sum(losses.values()), stats


MATCH_TASKS = ("detect", "count", "absent")  # their query is a bare category: every object of it matches
_CATEGORIES = {f"{c} {s}": (1 + i, 1 + j) for i, c in enumerate(COLOUR_NAMES) for j, s in enumerate(SHAPES)}


def match_targets(targets: list[DenseTargets], metas: list[dict]) -> torch.Tensor:
    """Per merged cell of each sample's image: 1 where the cell lies on an object of the queried category, 0 where
    not, NaN for samples whose query is not a bare category (refer / point: left out). Concatenated in pack order."""
    out = []
    for t, meta in zip(targets, metas):
        query = meta["truth"].get("query")
        if meta["task"] not in MATCH_TASKS or query not in _CATEGORIES:
            out.append(torch.full(t.kind.shape, float("nan")))
            continue
        colour, kind = _CATEGORIES[query]
        out.append(((t.kind == kind) & (t.colour == colour)).float())
    return torch.cat(out)


MAX_ENTRIES = 8  # the entry-count probe's classes: 0..7 entries (more are clipped to 7)


def entry_counts(labels: torch.Tensor, cu_seqlens: torch.Tensor, start_ids: torch.Tensor,
                 entry_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, counts): in each packed sample, the first position whose label opens a JSON list (`start_ids`:
    '[]\\n' or '[\\n') and the number of entries the answer then lists (labels equal to `entry_id`, the tab that
    opens each entry). Samples without such a label are left out. labels (T,), cu_seqlens (S + 1,)."""
    positions, counts = [], []
    bounds = cu_seqlens.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        seg = labels[a:b]
        starts = torch.nonzero(torch.isin(seg, start_ids)).flatten()
        if starts.numel():
            positions.append(a + int(starts[0]))
            counts.append(min(int((seg == entry_id).sum()), MAX_ENTRIES - 1))
    return torch.tensor(positions, dtype=torch.long), torch.tensor(counts, dtype=torch.long)


class JointLoss(nn.Module):
    """Joint training's packed forward: summed CE of the answers, plus (when targets are given) the dense loss on the
    merger output and on the image tokens' hidden state after LLM layer `probe_layer`."""

    def __init__(self, vlm: nn.Module, probe_layer: int = 1, head: DenseHead | None = None,
                 decision_ids: tuple[int, ...] = (), decision_weight: float = 1.0,
                 count_probe: tuple[tuple[int, ...], int] | None = None, chars: bool = False):
        super().__init__()
        self.vlm = vlm
        # the entry-count probe ((list-opening token ids, entry token id) or None): a training-only linear read-out
        # of the hidden state after layer `probe_layer` at the position that opens the answer's JSON list,
        # predicting how many entries follow (0: an absent category). It asks the early layers to match the query
        # against the image where the answer decides, not only at the last layer.
        self.count_head = nn.Linear(vlm.config.text.hidden_size, MAX_ENTRIES) if count_probe else None
        self.register_buffer("count_start_ids", torch.tensor(count_probe[0] if count_probe else (), dtype=torch.long),
                             persistent=False)
        self.count_entry_id = count_probe[1] if count_probe else None
        self.count_head_on = True  # the training loop switches the probe off for the rest of the run
        # the match probe (with `match=` targets): a training-only read-out of each image token after layer
        # `probe_layer`: does this cell lie on an object of the queried category? Only possible with the question
        # before the image (causal attention: the image tokens must see the query)
        self.match_head = nn.Linear(vlm.config.text.hidden_size, 1)
        # answer tokens that carry a decision (empty list or not, one more entry or the end): their CE counts
        # `decision_weight` times in the training loss (never in the returned CE, which the gap and logs read)
        self.register_buffer("decision_ids", torch.tensor(decision_ids, dtype=torch.long), persistent=False)
        self.decision_weight = decision_weight
        width = vlm.config.text.hidden_size
        self.head = head or DenseHead(width)  # the vision stage's head, trained on, when given
        self.probe = DenseHead(width)
        self.probe_layer = min(probe_layer, vlm.config.text.num_hidden_layers - 1)
        # the character probes (with `chars=` targets, `tiny_ocr`): which letters lie under each merged cell, read
        # from the merger output and from the image tokens after layer `probe_layer`
        self.char_heads = nn.ModuleList([CharHead(width), CharHead(width)]) if chars else None

    def features(self, batch: PackedBatch) -> torch.Tensor | None:
        """The images' merged tokens (N / 4, C) in token order, or None for a pack without images."""
        if batch.pixel_values is None:
            return None
        return self.vlm.visual(batch.pixel_values, batch.image_grid_thw)

    def embed(self, batch: PackedBatch, features: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with the image features (and the videos', encoded here) in their placeholders."""
        cfg = self.vlm.config
        embeds = self.vlm.model.embed_tokens(batch.input_ids)
        if features is not None:
            embeds = embeds.masked_scatter((batch.input_ids == cfg.image_token_id)[..., None], features)
        if batch.pixel_values_videos is not None:
            frames = self.vlm.visual(batch.pixel_values_videos, batch.video_grid_thw)
            embeds = embeds.masked_scatter((batch.input_ids == cfg.video_token_id)[..., None], frames)
        return embeds

    def decision_extra(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """(decision_weight - 1) x the summed CE of the decision tokens, or None when there is no weighting."""
        if self.decision_weight == 1.0 or self.decision_ids.numel() == 0:
            return None
        where = torch.isin(labels, self.decision_ids)
        if not bool(where.any()):
            return None
        ce = chunked_cross_entropy(hidden[where], self.vlm.lm_head.weight, labels[where])
        return (self.decision_weight - 1.0) * ce

    def forward(self, batch: PackedBatch, targets: DenseTargets | None = None, features=None,
                match: torch.Tensor | None = None, chars: CharTargets | None = None):
        """(summed CE, dense loss or None, stats). `features` replaces the tower's output (the shuffled gap). With
        gradients on and decision weighting, stats["decision_extra"] holds the extra summed CE to add; with `chars`
        targets, stats["char_loss"] the character probes' loss."""
        vlm = self.vlm
        cfg = vlm.config
        features = self.features(batch) if features is None else features
        is_image = batch.input_ids == cfg.image_token_id  # (1, T)
        embeds = self.embed(batch, features)
        text = vlm.model
        cos, sin = mrope_cos_sin(batch.position_ids, cfg.text.head_dim, cfg.text.rope_theta,
                                 cfg.text.mrope_section, embeds.dtype)
        spec = AttnSpec(plan=VarlenPlan.build(batch.cu_seqlens, embeds.device))
        x, probe = embeds, None
        for i, layer in enumerate(text.layers):
            x = layer(x, cos, sin, spec, i)
            if i == self.probe_layer:
                probe = x[0][is_image[0]]  # (image tokens, C)
                opened = x[0]
        hidden = text.norm(x)
        ce = chunked_cross_entropy(hidden[0], vlm.lm_head.weight, batch.labels[0])
        extra = self.decision_extra(hidden[0], batch.labels[0]) if torch.is_grad_enabled() else None
        more = {} if extra is None else {"decision_extra": extra}
        if self.count_head is not None and self.count_head_on and torch.is_grad_enabled():
            where, counts = entry_counts(batch.labels[0], batch.cu_seqlens, self.count_start_ids, self.count_entry_id)
            if where.numel():
                logits = self.count_head(opened[where])
                more["count_loss"] = F.cross_entropy(logits, counts)
                more["count_acc"] = float((logits.argmax(-1) == counts).float().mean())
        if match is not None and torch.is_grad_enabled():
            on = ~torch.isnan(match)
            if bool(on.any()):
                logits = self.match_head(probe[on]).squeeze(-1)
                want = match[on]
                positives = want.sum().clamp(min=1.0)
                weight = ((want.numel() - positives) / positives).clamp(max=20.0)  # balance the few object cells
                more["match_loss"] = F.binary_cross_entropy_with_logits(logits, want, pos_weight=weight)
                hit = (logits > 0).float()
                more["match_recall"] = float((hit * want).sum() / positives)
                more["match_precision"] = float((hit * want).sum() / hit.sum().clamp(min=1.0))
        if chars is not None and self.char_heads is not None and torch.is_grad_enabled() and features is not None:
            losses = []
            for name, head, source in zip(("vit", "llm"), self.char_heads, (features, probe)):
                loss, stats = char_loss(head(source), chars)
                if loss is not None:
                    losses.append(loss)
                    more[f"char_acc_{name}"] = stats["char_acc"]
            if losses:
                more["char_loss"] = sum(losses)
        if targets is None or features is None:
            return ce, None, more
        dense, stats = dense_loss(self.head(features), targets)
        probed, _ = dense_loss(self.probe(probe), targets)
        return ce, dense + probed, {**stats, **more}


@torch.no_grad()
def shuffled_gap(loss_fn: JointLoss, groups: list[PackedBatch]) -> tuple[float, float]:
    """(mean CE with the right images, mean CE with images rolled by one across each pack). Each pack holds
    samples whose images share one grid, so a rolled image has the same token count. NaN for both when there are
    no packs (a held-out split with no two images of one size)."""
    if not groups:
        return float("nan"), float("nan")
    right = wrong = targets = 0.0
    for batch in groups:
        features = loss_fn.features(batch)
        k = batch.image_grid_thw.shape[0]
        rolled = features.view(k, -1, features.shape[-1]).roll(1, dims=0).reshape_as(features)
        right += float(loss_fn(batch, features=features)[0])
        wrong += float(loss_fn(batch, features=rolled)[0])
        targets += batch.num_targets
    return right / targets, wrong / targets
