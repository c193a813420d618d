"""M-RoPE position ids: the worked examples of REFERENCE 3.1, fps handling, padding, decode deltas, errors."""

import math
from fractions import Fraction

import pytest
import torch

from qwen25vl.errors import InputError
from qwen25vl.positions import (
    decode_position_ids, mrope_position_ids, rope_deltas_of, text_position_ids, vision_block_ids,
)

IMG, VID, VS, VE = 524, 525, 521, 522
IDS = dict(image_token_id=IMG, video_token_id=VID, vision_start_token_id=VS)


def _ids(*parts):
    return torch.tensor([[x for p in parts for x in p]])


def test_worked_example_image():
    # 3 text tokens (the last is <vision_start>), an image of grid (1, 4, 6) = 6 tokens, 2 text tokens.
    ids = _ids([1, 2, VS], [IMG] * 6, [VE, 3])
    pos, delta = mrope_position_ids(ids, image_grid_thw=torch.tensor([[1, 4, 6]]), **IDS)
    assert pos[0, 0].tolist() == [0, 1, 2, 3, 3, 3, 3, 3, 3, 6, 7]
    assert pos[1, 0].tolist() == [0, 1, 2, 3, 3, 3, 4, 4, 4, 6, 7]
    assert pos[2, 0].tolist() == [0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7]
    assert delta.tolist() == [-3]


def test_worked_example_video_text_resumes_after_time_span():
    # 2 text, a video of grid (3, 4, 4) at 2 fps (1 s per frame group) = 12 tokens, 2 text.
    ids = _ids([1, VS], [VID] * 12, [VE, 2])
    pos, delta = mrope_position_ids(ids, video_grid_thw=torch.tensor([[3, 4, 4]]),
                                    second_per_grid_ts=torch.tensor([1.0]), **IDS)
    assert pos[0, 0].tolist() == [0, 1, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6, 7, 8]
    assert pos[1, 0].tolist() == [0, 1] + [2, 2, 3, 3] * 3 + [7, 8]
    assert pos[2, 0].tolist() == [0, 1] + [2, 3, 2, 3] * 3 + [7, 8]
    assert delta.tolist() == [-7]


def test_missing_second_per_grid_defaults_to_one_second():
    ids = _ids([1, VS], [VID] * 12, [VE])
    given, _ = mrope_position_ids(ids, video_grid_thw=torch.tensor([[3, 4, 4]]),
                                  second_per_grid_ts=torch.tensor([1.0]), **IDS)
    default, _ = mrope_position_ids(ids, video_grid_thw=torch.tensor([[3, 4, 4]]), **IDS)
    assert torch.equal(given, default)


@pytest.mark.parametrize("fps,expected", [(4.0, [0, 1, 2, 3, 4, 5]), (8.0, [0, 0, 1, 1, 2, 2]),
                                          (3.0, [0, 1, 2, 4, 5, 6]), (0.5, [0, 8, 16, 24, 32, 40])])
def test_temporal_ids_in_floating_point(fps, expected):
    # second_per_grid_t = 2 / fps; id = floor(i * spg * 2). Above 2 fps the product is fractional: an integer cast
    # of spg first would give 0 everywhere.
    block = vision_block_ids(0, (6, 2, 2), 2, (2.0 / fps) * 2)
    assert block[0].tolist() == expected


def test_tokens_per_second_scales_time():
    ids = _ids([VS], [VID] * 3, [VE])
    pos, _ = mrope_position_ids(ids, video_grid_thw=torch.tensor([[3, 2, 2]]), second_per_grid_ts=[1.0],
                                tokens_per_second=4, **IDS)
    assert pos[0, 0, 1:4].tolist() == [1, 5, 9]


def test_left_padding_matches_unpadded_rows():
    a = _ids([5, 6, VS], [IMG] * 4, [VE, 7])
    b = _ids([8, VS], [VID] * 8, [VE, 9, 9, 9])
    grids = dict(image_grid_thw=torch.tensor([[1, 4, 4]]), video_grid_thw=torch.tensor([[2, 4, 4]]))
    alone_a, da = mrope_position_ids(a, image_grid_thw=grids["image_grid_thw"], **IDS)
    alone_b, db = mrope_position_ids(b, video_grid_thw=grids["video_grid_thw"], **IDS)
    length = max(a.shape[1], b.shape[1])
    ids = torch.zeros(2, length, dtype=torch.long)
    mask = torch.zeros(2, length, dtype=torch.long)
    ids[0, length - a.shape[1]:], mask[0, length - a.shape[1]:] = a[0], 1
    ids[1, length - b.shape[1]:], mask[1, length - b.shape[1]:] = b[0], 1
    pos, delta = mrope_position_ids(ids, mask, **grids, **IDS)
    assert torch.equal(pos[:, 0, length - a.shape[1]:], alone_a[:, 0])
    assert torch.equal(pos[:, 1, length - b.shape[1]:], alone_b[:, 0])
    assert (pos[:, 0, : length - a.shape[1]] == 0).all()  # padded slots hold 0
    assert delta.tolist() == [da.item(), db.item()]


def test_text_only_and_decode_delta():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    pos, delta = mrope_position_ids(torch.ones(2, 5, dtype=torch.long), mask, **IDS)
    assert pos[0, 0].tolist() == [0, 0, 0, 1, 2] and pos[2, 1].tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(pos, text_position_ids(mask)) and delta.tolist() == [0, 0]
    # After a prompt with an image (delta -3 over 11 valid tokens) the next token sits at 11 - 3 = 8 = max id + 1.
    nxt = decode_position_ids(torch.tensor([11]), torch.tensor([-3]), 2)
    assert nxt[:, 0].tolist() == [[8, 9]] * 3


def test_rope_deltas_of_given_positions():
    pos = torch.tensor([0, 1, 2, 2, 2, 5]).expand(3, 1, -1)
    assert rope_deltas_of(pos).tolist() == [0]
    assert rope_deltas_of(pos, torch.tensor([[0, 1, 1, 1, 1, 1]])).tolist() == [1]


def test_block_without_vision_start_and_batch_shared_grid_order():
    # Two rows, one image each: grid rows are consumed in row order across the batch.
    ids = torch.tensor([[IMG] * 4 + [1, 1, 1, 1], [2, VS] + [IMG] * 6])
    grids = torch.tensor([[1, 4, 4], [1, 4, 6]])
    pos, _ = mrope_position_ids(ids, image_grid_thw=grids, **IDS)
    assert pos[2, 0].tolist() == [0, 1, 0, 1, 2, 3, 4, 5]
    assert pos[2, 1].tolist() == [0, 1, 2, 3, 4, 2, 3, 4]


def test_errors_name_the_counts():
    ids = _ids([VS], [IMG] * 5, [VE])
    with pytest.raises(InputError, match="needs 6 consecutive image tokens but 5"):
        mrope_position_ids(ids, image_grid_thw=torch.tensor([[1, 4, 6]]), **IDS)
    with pytest.raises(InputError, match="1 image and 0 video blocks but image_grid_thw has 2"):
        mrope_position_ids(_ids([VS], [IMG] * 6, [VE]), image_grid_thw=torch.tensor([[1, 4, 6]] * 2), **IDS)
    with pytest.raises(InputError, match="more video blocks"):
        mrope_position_ids(_ids([VID] * 4), image_grid_thw=torch.tensor([[1, 4, 4]]), **IDS)
    with pytest.raises(InputError, match="second_per_grid_ts has 2 values for 1 videos"):
        mrope_position_ids(_ids([VID] * 4), video_grid_thw=torch.tensor([[1, 4, 4]]),
                           second_per_grid_ts=[1.0, 2.0], **IDS)


def _hand_temporal(frames: int, second_per_grid_t: Fraction, tokens_per_second: int = 2) -> list[int]:
    """SPEC section 3 by hand, in exact arithmetic: frame group i sits at floor(i x second_per_grid_t x tps)."""
    return [math.floor(i * second_per_grid_t * tokens_per_second) for i in range(frames)]


@pytest.mark.parametrize("frames, seconds", [(9, Fraction(2, 3)), (5, Fraction(75, 4))],
                         ids=["3fps", "capped-long-video-18.75s"])
def test_fractional_seconds_per_grid_through_mrope(frames, seconds):
    # 3 fps sampling gives 2/3 s per frame group (time scale 4/3); a long video capped at 768 frames has 18.75 s
    # (scale 37.5). Truncating the scale before multiplying by the frame index would give 0, 1, 2, 3, ... and
    # 0, 37, 74, ...: the ids must follow the exact product, and the text after the block resume at max id + 1.
    ids = _ids([1, 2, VS], [VID] * frames, [VE, 3])  # grid (frames, 2, 2): one token per frame group
    pos, delta = mrope_position_ids(ids, video_grid_thw=torch.tensor([[frames, 2, 2]]),
                                    second_per_grid_ts=torch.tensor([float(seconds)]), **IDS)
    start = 3
    temporal = [start + t for t in _hand_temporal(frames, seconds)]
    assert pos[0, 0, start : start + frames].tolist() == temporal
    assert pos[1, 0, start : start + frames].tolist() == [start] * frames  # h and w stay at the block start
    assert pos[2, 0, start : start + frames].tolist() == [start] * frames
    after = temporal[-1] + 1
    assert pos[:, 0, start + frames :].tolist() == [[after, after + 1]] * 3
    assert delta.tolist() == [after + 2 - ids.shape[1]]


def test_image_temporal_id_is_constant_even_with_two_frames():
    # An image block's temporal row never advances (SPEC 3: "for images the temporal id is constant").
    ids = _ids([VS], [IMG] * 8, [VE])
    pos, _ = mrope_position_ids(ids, image_grid_thw=torch.tensor([[2, 4, 4]]), **IDS)
    assert pos[0, 0, 1:9].tolist() == [1] * 8
    assert pos[1, 0, 1:9].tolist() == [1, 1, 2, 2] * 2 and pos[2, 0, 1:9].tolist() == [1, 2, 1, 2] * 2


def test_two_blocks_with_text_between_and_adjacent_blocks():
    # text, image (2x2 units), text, image (1x3 units, an odd count), image right after it with no text between.
    ids = _ids([7, VS], [IMG] * 4, [VE, 8, VS], [IMG] * 3, [IMG] * 4, [VE, 9])
    grids = torch.tensor([[1, 4, 4], [1, 2, 6], [1, 4, 4]])
    pos, delta = mrope_position_ids(ids, image_grid_thw=grids, **IDS)
    t, h, w = pos[:, 0].tolist()
    assert t == [0, 1] + [2] * 4 + [4, 5, 6] + [7] * 3 + [10] * 4 + [12, 13]
    assert h == [0, 1] + [2, 2, 3, 3] + [4, 5, 6] + [7] * 3 + [10, 10, 11, 11] + [12, 13]
    assert w == [0, 1] + [2, 3, 2, 3] + [4, 5, 6] + [7, 8, 9] + [10, 11, 10, 11] + [12, 13]
    assert delta.tolist() == [14 - ids.shape[1]]


def test_fully_padded_row_beside_a_vision_row():
    ids = torch.tensor([[0, 0, 0, 0, 0, 0], [VS, IMG, IMG, IMG, IMG, VE]])
    mask = torch.tensor([[0] * 6, [1] * 6])
    pos, delta = mrope_position_ids(ids, mask, image_grid_thw=torch.tensor([[1, 4, 4]]), **IDS)
    assert pos.shape == (3, 2, 6) and (pos[:, 0] == 0).all()
    assert pos[:, 1].tolist() == [[0, 1, 1, 1, 1, 3], [0, 1, 1, 2, 2, 3], [0, 1, 2, 1, 2, 3]]
    assert delta.tolist() == [0, 4 - 6]


def test_text_positions_shape_and_batch_of_two_decode():
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    pos = text_position_ids(mask)
    assert pos.shape == (3, 2, 3) and pos[:, 0].tolist() == [[0, 0, 1]] * 3
    nxt = decode_position_ids(torch.tensor([2, 3]), torch.tensor([5, -1]), 2)
    assert nxt.shape == (3, 2, 2)
    assert nxt[:, 0].tolist() == [[7, 8]] * 3 and nxt[:, 1].tolist() == [[2, 3]] * 3


def test_rope_deltas_per_row_and_single_token_rows():
    # no mask: each row's own max (not the batch's)
    pos = torch.tensor([[0, 1, 2, 3], [0, 1, 9, 9]]).expand(3, -1, -1)
    assert rope_deltas_of(pos).tolist() == [0, 6]
    # one valid token beside padding: its id alone decides (padding must not count as an id)
    pos = torch.tensor([[0, 0, 0], [0, 0, 5]]).expand(3, -1, -1)
    mask = torch.tensor([[0, 0, 1], [0, 0, 1]])
    assert rope_deltas_of(pos, mask).tolist() == [0, 5]
    assert rope_deltas_of(pos, torch.zeros(2, 3, dtype=torch.long)).tolist() == [0, 0]  # nothing valid: 0


def test_shape_errors_name_the_argument():
    with pytest.raises(InputError, match=r"input_ids must be \(batch, tokens\), got shape \(4,\)"):
        mrope_position_ids(torch.tensor([1, 2, 3, 4]), **IDS)
    with pytest.raises(InputError, match=r"attention_mask shape \(1, 3\) differs from input_ids \(1, 4\)"):
        mrope_position_ids(_ids([1, 2, 3, 4]), torch.ones(1, 3), **IDS)
    with pytest.raises(InputError, match=r"image_grid_thw must be \(count, 3\), got shape \(1, 4\)"):
        mrope_position_ids(_ids([VS], [IMG] * 4, [VE]), image_grid_thw=torch.tensor([[1, 4, 4, 1]]), **IDS)
    with pytest.raises(InputError, match=r"video_grid_thw must be \(count, 3\), got shape \(3,\)"):
        mrope_position_ids(_ids([VID] * 4), video_grid_thw=torch.tensor([1, 4, 4]), **IDS)
    with pytest.raises(InputError, match=r"row 1: a image block"):
        mrope_position_ids(torch.tensor([[IMG] * 4, [IMG] * 3 + [1]]),
                           image_grid_thw=torch.tensor([[1, 4, 4], [1, 4, 4]]), **IDS)
