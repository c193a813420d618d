"""The CPU decode layout: wide weights stored transposed and few-row products split across threads."""

import torch
import torch.nn.functional as F
from torch import nn

from qwen25vl.generation.layout import SPLIT_MIN_BYTES, RowSplitLinear, _as_row_split, largest_decode_matrix_bytes


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
    _, split = _split(out_features=6554, bias=False)  # 6554 x 40 fp32: just above the split size
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


def test_small_weights_are_never_split(monkeypatch):
    # a tiny model's products take microseconds: a thread hand-off would cost more (and far more on a busy machine)
    _, split = _split(out_features=6552, bias=False)  # just below the split size
    calls = []
    real_bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda *a: calls.append(1) or real_bmm(*a))
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        x = torch.randn(1, 40)
        torch.testing.assert_close(split(x), F.linear(x, split.weight), rtol=1e-5, atol=1e-6)
        assert calls == []
    finally:
        torch.set_num_threads(previous)


def test_largest_decode_matrix_is_the_biggest_llm_weight():
    from qwen25vl.config import Qwen25VLConfig
    from qwen25vl.model.vlm import Qwen25VL

    with torch.device("meta"):
        tiny = Qwen25VL(Qwen25VLConfig.preset("tiny"))
        seven = Qwen25VL(Qwen25VLConfig.preset("7b"))
    assert largest_decode_matrix_bytes(tiny) == 544 * 64 * 4  # the tied head, vocab x hidden, fp32
    assert largest_decode_matrix_bytes(tiny) < SPLIT_MIN_BYTES
    assert largest_decode_matrix_bytes(seven) == 152064 * 3584 * 4  # lm_head (the vision tower is not counted)
