"""The CPU decode layout: wide weights stored transposed and few-row products split across threads."""

import torch
import torch.nn.functional as F
from torch import nn

from qwen25vl.generation.layout import RowSplitLinear, _as_row_split


def _split(out_features=96, in_features=40, bias=True):
    base = nn.Linear(in_features, out_features, bias=bias)
    base.weight.data = base.weight.data.t().contiguous().t()  # the decode layout: (out, in) view of (in, out)
    return base, _as_row_split(base)


def test_split_product_equals_linear_and_shares_the_parameter():
    base, split = _split()
    assert isinstance(split, RowSplitLinear) and split.weight is base.weight and split.bias is base.bias
    assert set(split.state_dict()) == {"weight", "bias"}
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            for shape in ((1, 40), (2, 1, 40), (3, 2, 40), (64, 40)):  # decode rows, batches, and a prefill-sized input
                x = torch.randn(*shape)
                torch.testing.assert_close(split(x), F.linear(x, base.weight, base.bias), rtol=1e-5, atol=1e-6)
    finally:
        torch.set_num_threads(previous)


def test_split_takes_the_batched_path_only_where_it_pays(monkeypatch):
    _, split = _split(bias=False)
    calls = []
    real_bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda *a: calls.append(1) or real_bmm(*a))
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        split(torch.randn(1, 40))
        assert calls == [1]  # one row, 2 threads: split
        split(torch.randn(64, 40))
        torch.set_num_threads(1)
        split(torch.randn(1, 40))
        assert calls == [1]  # many rows, or a single thread: the plain product
    finally:
        torch.set_num_threads(previous)
