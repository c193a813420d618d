"""Packing edges the mutation run found unguarded: budget boundaries, the exact error messages, every field of a
truncated sample, and moving a packed batch to another device."""

import pytest
import torch

from qwen25vl.data.encoding import IGNORE, Sample
from qwen25vl.data.packing import PackedBatch, collate_pack, first_fit_decreasing, fit_to_budget
from qwen25vl.errors import InputError


def test_an_item_exactly_the_budget_fits_alone():
    assert first_fit_decreasing([4, 3, 4], 4) == [[0], [2], [1]]
    assert first_fit_decreasing([1, 1], 1) == [[0], [1]]  # the smallest valid budget


@pytest.mark.parametrize("budget", [0, -3])
def test_a_budget_must_be_positive_even_with_nothing_to_pack(budget):
    with pytest.raises(InputError, match=rf"^the pack budget must be positive, got {budget}$"):
        first_fit_decreasing([], budget)


def test_empty_pack_message_is_exact():
    with pytest.raises(InputError, match=r"^cannot collate an empty pack$"):
        collate_pack([])


def _sample(length=10, vision_end=6, first_target=1):
    """A hand-made two-turn sample: an answered text turn, then an image (its block ends at `vision_end`)."""
    labels = torch.full((length,), IGNORE)
    labels[first_target] = 7
    labels[-2] = 8
    return Sample(
        input_ids=torch.arange(100, 100 + length),
        labels=labels,
        position_ids=torch.arange(3 * length).reshape(3, length),
        pixel_values=torch.randn(4, 1176, generator=torch.Generator().manual_seed(0)),
        image_grid_thw=torch.tensor([[1, 2, 2]]),
        pixel_values_videos=torch.randn(8, 1176, generator=torch.Generator().manual_seed(1)),
        video_grid_thw=torch.tensor([[2, 2, 2]]),
        second_per_grid_ts=torch.tensor([1.5]),
        where="set.jsonl:3",
        vision_end=vision_end,
    )


def test_truncation_keeps_every_vision_input_and_the_metadata():
    s = _sample()
    cut = fit_to_budget(s, 8)
    assert cut.length == 8
    assert torch.equal(cut.input_ids, s.input_ids[:8])
    assert torch.equal(cut.labels, s.labels[:8]) and cut.num_targets == 1
    assert torch.equal(cut.position_ids, s.position_ids[:, :8])
    # text only is lost: the vision inputs travel whole, each in its own field
    assert cut.pixel_values is s.pixel_values
    assert cut.image_grid_thw is s.image_grid_thw
    assert cut.pixel_values_videos is s.pixel_values_videos
    assert cut.video_grid_thw is s.video_grid_thw
    assert cut.second_per_grid_ts is s.second_per_grid_ts
    assert cut.where == "set.jsonl:3"
    assert cut.vision_end == 6


def test_a_cut_right_after_the_last_vision_block_is_allowed():
    s = _sample(vision_end=6)
    cut = fit_to_budget(s, 6)  # keeps the whole block (and the first turn's answer)
    assert cut.length == 6 and cut.vision_end == 6 and cut.num_targets == 1
    with pytest.raises(InputError, match=r"^set.jsonl:3: over-long \(10 tokens > budget 5\)"):
        fit_to_budget(s, 5)  # through the block


def test_a_cut_needs_a_target_before_the_budget():
    s = _sample(vision_end=0, first_target=4)
    assert fit_to_budget(s, 5).num_targets == 1
    with pytest.raises(InputError, match="over-long"):
        fit_to_budget(s, 4)


def test_to_moves_every_tensor_and_keeps_the_missing_ones():
    a, b = _sample(), _sample(length=5, vision_end=0)
    b.pixel_values = b.image_grid_thw = None
    batch = collate_pack([a, b])
    batch.pixel_values_videos = batch.video_grid_thw = batch.second_per_grid_ts = None
    moved = batch.to("meta")  # a device every build has: the move is visible without a GPU
    assert isinstance(moved, PackedBatch) and moved is not batch
    for name in ("input_ids", "labels", "position_ids", "cu_seqlens", "pixel_values", "image_grid_thw"):
        value = getattr(moved, name)
        assert value.device.type == "meta", name
        assert value.shape == getattr(batch, name).shape and value.dtype == getattr(batch, name).dtype, name
    assert moved.pixel_values_videos is None and moved.video_grid_thw is None and moved.second_per_grid_ts is None
    assert batch.input_ids.device.type == "cpu"  # the original is left where it was
    back = batch.to("cpu")
    assert torch.equal(back.labels, batch.labels) and back.num_targets == 4 and back.num_tokens == 15
