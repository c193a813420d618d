"""Decode-time weight layout, applied from outside the model.

At batch 1 a decode step is a chain of matrix-vector products, bound by how fast the weights stream from memory.
On CPU, torch's product of x (1, in) with a wide (out >> in) weight stored as usual, (out, in) row-major, streams
far below the machine's bandwidth; stored as the transpose of an (in, out) row-major matrix it runs 1.6-2x faster
(measured at 0.5B shapes, one thread: lm_head 151936 x 896 from 10.9 to 17-19 GB/s, MLP gate/up 4864 x 896 from
17.5 to 35-48 GB/s; down 896 x 4864 and the square / narrow projections gain nothing, so they are left as they
are). Only the memory layout changes: values, shapes, parameter names and the state_dict stay the same
(`weights.save_model` writes contiguous copies).

A second finding: torch runs a one-row product on one core whatever the thread count, so at batch 1 the second core
sits idle while the first streams. `RowSplitLinear` (swapped in for those wide layers, sharing the same Parameter)
computes a few-row input as one batched product over column blocks of the transposed weight, one block per thread,
from a strided view of the same storage (no copy). Measured at 0.5B shapes with 2 threads: 10.0 -> 13.9 tokens/s;
with 1 thread it would be slower, so it falls back to the plain product there and for many-row inputs (prefill).

A split costs a hand-off between threads (a few microseconds at rest, hundreds when another process holds the other
core: a tiny model's 2-thread `bmm` went from 1.8 us to 335 us per call on a busy machine, 34 s instead of 0.4 s for
419 tokens). So only weights of at least `SPLIT_MIN_BYTES` (about 50 us of streaming) are split: a tiny model never
is, a 0.5B model's every projection is.

bf16 weights on a CPU without native bf16 take neither: torch's bf16 products stream 8-10 GB/s there, so
`use_native_bf16` swaps in `Bf16MatvecLinear`, whose few-row products run the AVX2 kernel of `model/native.py`
(each weight widened to fp32 exactly, fp32 sums, the result rounded to the activation dtype).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qwen25vl.model import native

_SPLIT_MAX_ROWS = 8  # decode batches; above this the plain GEMM already uses every core
SPLIT_MIN_BYTES = 1 << 20  # smaller weights stream in microseconds: a thread hand-off would cost more than it saves


def worth_splitting(weight: torch.Tensor) -> bool:
    """Whether a product with this weight is enough work to share between threads (see SPLIT_MIN_BYTES)."""
    return weight.numel() * weight.element_size() >= SPLIT_MIN_BYTES


class RowSplitLinear(nn.Linear):
    """nn.Linear whose few-row products are split across threads by output columns (same weight, same keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.get_num_threads()
        weight_t = self.weight.t()  # (in, out): contiguous under the decode layout
        rows = x.numel() // max(x.shape[-1], 1)
        if (parts < 2 or rows > _SPLIT_MAX_ROWS or self.out_features % parts or not weight_t.is_contiguous()
                or x.dtype != weight_t.dtype or x.device.type != "cpu" or not worth_splitting(self.weight)):
            return F.linear(x, self.weight, self.bias)
        width = self.out_features // parts
        blocks = weight_t.view(self.in_features, parts, width).permute(1, 0, 2)  # (P, in, out/P), a strided view
        x2 = x.reshape(1, rows, self.in_features).expand(parts, -1, -1)  # (P, rows, in)
        y = torch.bmm(x2, blocks).permute(1, 0, 2).reshape(*x.shape[:-1], self.out_features)  # (P, rows, out/P)
        return y if self.bias is None else y + self.bias


def largest_decode_matrix_bytes(model: nn.Module) -> int:
    """Bytes of the largest weight a decode step multiplies (language model layers and lm_head)."""
    weights = [m.weight for m in model.model.layers.modules() if isinstance(m, nn.Linear)]
    weights.append(model.lm_head.weight)
    return max(w.numel() * w.element_size() for w in weights)


class Bf16MatvecLinear(nn.Linear):
    """nn.Linear with bf16 weights whose few-row products run the native bf16 mat-vec (same weight, same keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // max(x.shape[-1], 1)
        fns = native.kernels_for(x, rows, self.weight) if self.weight.dtype == torch.bfloat16 else None
        if fns is None:
            return F.linear(x, self.weight, self.bias)
        return native.module_product(self, x, rows, None, fns)


@torch.no_grad()
def use_native_bf16(model: nn.Module) -> int:
    """Swap the language model's bf16 Linear layers (and lm_head) for `Bf16MatvecLinear`, sharing their Parameters;
    returns how many changed (0 where the native kernel is unavailable: `native.why_not()` says why)."""
    if native.matvec() is None:
        return 0
    owners = [(module, name) for layer in model.model.layers for module in layer.modules()
              for name, child in module.named_children() if type(child) is nn.Linear]
    owners.append((model, "lm_head"))
    changed = 0
    for owner, name in owners:
        module = getattr(owner, name)
        if (type(module) is nn.Linear and module.weight.dtype == torch.bfloat16 and module.weight.device.type == "cpu"
                and module.weight.is_contiguous()):
            setattr(owner, name, _same_parameters(module, Bf16MatvecLinear))
            changed += 1
    return changed


def _as_row_split(module: nn.Linear) -> RowSplitLinear:
    """The same Parameter(s) in a RowSplitLinear (tying and state_dict keys are kept: the attribute names are)."""
    return _same_parameters(module, RowSplitLinear)


def _same_parameters(module: nn.Linear, cls: type) -> nn.Linear:
    """The same Parameter(s) in an instance of `cls`, an nn.Linear subclass."""
    new = cls.__new__(cls)
    nn.Module.__init__(new)
    new.in_features, new.out_features = module.in_features, module.out_features
    new.weight = module.weight
    new.bias = module.bias
    new.train(module.training)
    return new


@torch.no_grad()
def use_decode_layout(model: nn.Module, threads: int | None = None) -> int:
    """Re-store the language model's decode-bound Linear weights transposed in memory and split their few-row
    products across threads. Returns how many changed.

    With one thread only the wide ones (MLP gate/up, lm_head) change: transposing the square and narrow ones gains
    nothing there. With two or more (`threads`, default torch's current count) the attention q/o and MLP down
    projections join them, since splitting by output columns lets every core stream (0.5B, 2 threads: 13.6 -> 15.3
    tokens/s over the wide ones alone). Leaves the vision tower alone (prefill only: GEMMs, where the usual layout
    is as good). A tied lm_head is the embedding matrix: re-laying it out keeps the lookup correct (a strided
    gather of one row per token).
    """
    threads = torch.get_num_threads() if threads is None else threads
    names = {"mlp": ("gate_proj", "up_proj") + (("down_proj",) if threads > 1 else ()),
             "self_attn": ("q_proj", "o_proj") if threads > 1 else ()}
    owners = [(getattr(layer, part), name) for layer in model.model.layers for part, group in names.items()
              for name in group]
    owners.append((model, "lm_head"))
    changed = 0
    for owner, name in owners:
        module = getattr(owner, name)
        if (isinstance(module, nn.Linear) and module.weight.is_contiguous() and module.weight.device.type == "cpu"
                and (threads > 1 or module.out_features > module.in_features)):
            module.weight.data = module.weight.data.t().contiguous().t()  # (out, in) view of (in, out) storage
            setattr(owner, name, _as_row_split(module))
            changed += 1
    return changed
