"""Vision index math: rotary ids, window index and cu_seqlens on odd grids, against transformers' own functions and
hand-checked small cases."""

import pytest
import torch

from qwen25vl.errors import InputError
from qwen25vl.vision_layout import full_cu_seqlens, grids_from_tensor, rotary_ids, vision_layout, window_index

import transformers.vision_utils as vision_utils

# odd grids: partial windows on one or both sides, exact multiples of the window (where the reference pads a whole
# empty window row), a single merge unit, videos, several items in one call
GRIDS = [
    [(1, 18, 26)],
    [(1, 16, 24)],
    [(1, 2, 2)],
    [(3, 10, 14)],
    [(1, 16, 24), (1, 10, 14), (2, 4, 6), (1, 2, 30)],
]


@pytest.mark.parametrize("grids", GRIDS)
def test_rotary_ids_equal_transformers(grids):
    want = vision_utils.get_vision_position_ids(torch.tensor(grids), 2)
    assert torch.equal(rotary_ids(tuple(grids), 2), want)


@pytest.mark.parametrize("grids", GRIDS)
def test_window_index_and_cu_equal_transformers(grids):
    want_index, want_cu = vision_utils.get_vision_window_index(
        torch.tensor(grids), spatial_merge_size=2, window_size=112, patch_size=14
    )
    index, cu = window_index(tuple(grids), 2, 4)
    assert torch.equal(index, want_index)
    assert cu == want_cu.tolist()  # theirs is deduplicated from padded windows; ours never makes empty ones


@pytest.mark.parametrize("grids", GRIDS)
def test_full_cu_seqlens_equal_transformers(grids):
    assert full_cu_seqlens(tuple(grids)) == vision_utils.get_vision_cu_seqlens(torch.tensor(grids)).tolist()


def test_hand_checked_windows():
    # merged 8 x 12 = two rows of three full 4x4 windows (64 patches each)
    index, cu = window_index(((1, 16, 24),), 2, 4)
    assert cu == [0, 64, 128, 192, 256, 320, 384]
    assert index[:9].tolist() == [0, 1, 2, 3, 12, 13, 14, 15, 24]
    # merged 5 x 7: windows of 4x4, 4x3, 1x4, 1x3 merge units
    _, cu = window_index(((1, 10, 14),), 2, 4)
    assert cu == [0, 64, 112, 128, 140]
    # two frames of merged 1 x 2, then an item of merged 1 x 1: one window per frame, ids continue across items
    index, cu = window_index(((2, 2, 4), (1, 2, 2)), 2, 4)
    assert index.tolist() == [0, 1, 2, 3, 4] and cu == [0, 8, 16, 20]


def test_full_cu_is_per_frame():
    assert full_cu_seqlens(((2, 4, 6), (1, 2, 2))) == [0, 24, 48, 52]


def test_layout_is_cached_and_consistent():
    grids = ((1, 18, 26), (2, 4, 6))
    layout = vision_layout(grids, 2, 112, 14)
    assert vision_layout(grids, 2, 112, 14) is layout
    n_units = layout.num_patches // 4
    assert torch.equal(layout.unit_order[layout.unit_restore], torch.arange(n_units))
    # the rotary ids travel with their merge units into window order
    ids = rotary_ids(grids, 2).view(n_units, 4, 2)
    assert torch.equal(layout.rotary_ids.view(n_units, 4, 2), ids[layout.unit_order])
    # full plan: one segment per frame; window plan: few distinct lengths whatever the number of windows
    assert layout.full_plan.cu_seqlens.tolist() == [0, 468, 492, 516]
    assert layout.window_plan.total == layout.num_patches == 516
    assert len(layout.window_plan.groups) <= 5


def test_bad_grids_raise_naming_the_grid():
    with pytest.raises(InputError, match=r"grid_thw\[1\] = \(1, 5, 4\)"):
        grids_from_tensor(torch.tensor([[1, 4, 4], [1, 5, 4]]), 2)
    with pytest.raises(InputError, match=r"\(0, 4, 4\)"):
        grids_from_tensor([[0, 4, 4]], 2)
    with pytest.raises(InputError, match="empty"):
        grids_from_tensor(torch.zeros(0, 3, dtype=torch.long), 2)
    assert grids_from_tensor(torch.tensor([[1, 4, 6]]), 2) == ((1, 4, 6),)
