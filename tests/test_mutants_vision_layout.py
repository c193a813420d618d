"""vision_layout edges the mutation run found unguarded: the smallest window, input checks and their messages."""

import pytest
import torch

from qwen25vl.errors import InputError
from qwen25vl.vision_layout import grids_from_tensor, vision_layout


def test_one_merge_unit_windows():
    # window_size 28 px = one 2x2 merge unit per window: every unit is its own window
    layout = vision_layout(((1, 4, 6),), 2, 28, 14)
    assert layout.window_plan.cu_seqlens.tolist() == [0, 4, 8, 12, 16, 20, 24]
    assert layout.unit_order.tolist() == list(range(6))
    with pytest.raises(InputError, match=r"^window_size 14 is smaller than one merge unit \(2 x 14 px\)$"):
        vision_layout(((1, 4, 6),), 2, 14, 14)


def test_grid_checks_and_messages():
    assert grids_from_tensor(torch.tensor([[1, 2, 4], [2, 4, 2]]), 2) == ((1, 2, 4), (2, 4, 2))
    assert grids_from_tensor([(1, 2, 2)], 2) == ((1, 2, 2),)
    with pytest.raises(InputError, match=r"^grid_thw\[1\] must be \(t, h, w\), got \[1, 4\]$"):
        grids_from_tensor([(1, 2, 2), (1, 4)], 2)
    for bad in [(1, 0, 4), (1, 4, 0), (0, 2, 2), (1, 3, 4)]:
        with pytest.raises(InputError, match=r"^grid_thw\[0\] = .*multiples of the merge size 2$"):
            grids_from_tensor([bad], 2)
    with pytest.raises(InputError, match="^grid_thw is empty: the vision tower needs at least one image or video$"):
        grids_from_tensor(torch.zeros(0, 3, dtype=torch.long), 2)
