"""Weight-only int8 for the language model's linear layers, applied from outside the model.

Each weight (out, in) becomes int8 values q and one fp32 scale per output channel, s = max|w_row| / 127, so that
w ~= q * s (symmetric, round to nearest; a row of zeros keeps scale 1). Activations stay floating point.

Two ways to multiply, picked by measurement (0.5B shapes, 1 thread, AMD EPYC with AVX2, weights cycled so none sits in
cache; benchmarks/results/quant.md): for a few rows (decode) torch's `_weight_int8pack_mm` with bf16 activations
(4864 x 896: 0.97-1.18 ms against fp32 `F.linear`'s 1.46-1.92 ms and 3.2 ms to dequantise then multiply; with fp32 or
fp16 activations it is 5-25x slower, so the row is rounded to bf16 for the product and the result cast back); for many
rows (prefill, compute-bound) dequantise to the activation dtype then one GEMM (512 rows: 99 ms against 136 ms).
Elsewhere (CUDA, or a torch without the kernel) the dequantise path serves every size. The packed kernel splits
its work across torch's threads: with another process holding the second of 2 cores, 2 threads took 15.5-15.9 ms
for the product above against 1.1-1.5 ms on 1 (the automatic thread count leaves a busy core alone).

A quantised folder is an ordinary checkpoint whose quantised modules store `<name>.weight` (int8) and
`<name>.weight_scale` (fp32), plus `quantization.json` naming the method and the modules (`model.quantization`);
`qwen25vl.weights` reads and writes it (this module does no I/O).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qwen25vl.errors import CheckpointError
from qwen25vl.model import native

METHOD = "int8-weight-only-per-channel"
USE_NATIVE = True  # False: torch's kernels even where the native one builds (benchmarks compare the two)
_PACK_MAX_ROWS = native.MAX_ROWS  # above this the product is compute-bound and one dequantised GEMM is faster
_TEXT_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float -> (int8 values (out, in), fp32 scales (out,)); computed in fp32 from any float dtype."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    values = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return values.contiguous(), scale


class Int8Linear(nn.Module):
    """y = x @ (q * s).T + b with int8 q (out, in) and fp32 s (out,); keys `weight`, `weight_scale`, `bias`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 bias_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=torch.int8, device=device),
                                   requires_grad=False)
        self.weight_scale = nn.Parameter(torch.ones(out_features, dtype=torch.float32, device=device),
                                         requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=bias_dtype, device=device),
                                 requires_grad=False) if bias else None
        self._act_scale: tuple | None = None  # (key, the scales in the activation dtype), rebuilt when stale

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        out = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device=linear.weight.device,
                  bias_dtype=linear.weight.dtype)
        values, scale = quantize_weight(linear.weight)
        out.weight.data = values
        out.weight_scale.data = scale
        if linear.bias is not None:
            out.bias.data = linear.bias.detach().clone()
        return out

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight these values stand for, (out, in) in `dtype`."""
        return (self.weight.to(torch.float32) * self.weight_scale[:, None]).to(dtype)

    def _scale_in(self, dtype: torch.dtype) -> torch.Tensor:
        key = (dtype, self.weight_scale.data_ptr(), self.weight_scale._version)
        if self._act_scale is None or self._act_scale[0] != key:
            self._act_scale = (key, self.weight_scale.detach().to(dtype))
        return self._act_scale[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // max(x.shape[-1], 1)
        kernels = native.kernels_for(x, rows, self.weight) if USE_NATIVE else None
        if kernels is not None:
            return native.module_product(self, x, rows, self.weight_scale, kernels)
        if _packed_kernel_applies(x, rows):
            act = x.dtype if x.dtype == torch.bfloat16 else torch.bfloat16
            flat = x.reshape(rows, self.in_features).to(act)
            y = torch._weight_int8pack_mm(flat, self.weight, self._scale_in(act)).to(x.dtype)
            y = y.view(*x.shape[:-1], self.out_features)
        else:
            # scale after the product: one multiply per output instead of one per weight
            y = F.linear(x, self.weight.to(x.dtype)) * self.weight_scale.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


def _packed_kernel_applies(x: torch.Tensor, rows: int) -> bool:
    return (x.device.type == "cpu" and rows <= _PACK_MAX_ROWS and hasattr(torch, "_weight_int8pack_mm")
            and x.dtype in (torch.float32, torch.bfloat16) and not x.requires_grad)


def target_names(model: nn.Module, include_lm_head: bool = True) -> list[str]:
    """Module paths quantised by `quantize_model`: every LLM decoder linear, and lm_head."""
    names = [f"model.layers.{i}.{leaf}" for i in range(len(model.model.layers)) for leaf in _TEXT_LINEARS]
    return names + (["lm_head"] if include_lm_head else [])


def _swap(model: nn.Module, name: str, module: nn.Module) -> None:
    owner_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(owner_name) if owner_name else model, leaf, module)


@torch.no_grad()
def quantize_model(model: nn.Module, include_lm_head: bool = True) -> list[str]:
    """Replace the LLM's linear layers (and lm_head) by `Int8Linear` in place; returns the names changed.

    A tied lm_head gets its own int8 copy: the embedding stays floating point (a lookup reads one row per token).
    """
    names = target_names(model, include_lm_head)
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, Int8Linear):
            continue
        if not isinstance(module, nn.Linear):
            raise TypeError(f"{name} is a {type(module).__name__}, not a Linear to quantise")
        _swap(model, name, Int8Linear.from_linear(module))
    model.quantization = {"method": METHOD, "modules": names}
    return names


def is_quantized(model: nn.Module) -> bool:
    return getattr(model, "quantization", None) is not None


def prepare_quantized(model: nn.Module, spec: dict) -> None:
    """Swap in empty `Int8Linear`s where `spec` (a quantization.json) says, before a checkpoint's tensors load."""
    if spec.get("method") != METHOD:
        raise CheckpointError(f"quantization.json: method {spec.get('method')!r} is not {METHOD!r}")
    for name in spec.get("modules", []):
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"quantization.json names module {name!r}, which the model does not have") from None
        device = module.weight.device
        _swap(model, name, Int8Linear(module.in_features, module.out_features, bias=module.bias is not None,
                                      device=device, bias_dtype=module.weight.dtype))
    model.quantization = {"method": METHOD, "modules": list(spec.get("modules", []))}
