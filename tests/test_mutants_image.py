"""Resize math edges the mutation run found unguarded: the cap's equality, zero sides, limit messages, and the
call-level budget shared over images (hand-computed)."""

import numpy as np
import pytest
from PIL import Image

from qwen25vl.errors import InputError
from qwen25vl.processing.image import process_images, resolve_pixel_limits, smart_resize


def test_area_exactly_at_the_cap_is_kept():
    # 290 x 560 rounds to 280 x 560 = 156,800 = max_pixels: not over the cap, so no rescale (a rescale would give
    # 280 x 532); transformers compares with `>` too
    assert smart_resize(290, 560, min_pixels=1, max_pixels=156_800) == (280, 560)
    # and at the floor: 60 x 50 rounds to 56 x 56 = 3,136 = min_pixels, kept (a rescale would give 84 x 56)
    assert smart_resize(60, 50, min_pixels=3136) == (56, 56)


@pytest.mark.parametrize("h, w", [(0, 10), (10, 0), (-5, 10)])
def test_zero_or_negative_sides(h, w):
    with pytest.raises(InputError, match=rf"^image size {w}x{h}: both sides must be positive$"):
        smart_resize(h, w)


def test_limit_messages_name_the_bound_and_the_value():
    cases = [
        (dict(min_pixels=-1), r"^image: min_pixels / min_tokens must be a positive number, got -1$"),
        (dict(min_tokens=-2), r"^image: min_pixels / min_tokens must be a positive number, got -2$"),
        (dict(max_pixels=True), r"^image: max_pixels / max_tokens must be a positive number, got True$"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=message):
            resolve_pixel_limits(**kwargs, default_min=10, default_max=100)


def test_total_budget_is_shared_by_resized_area():
    # 560 x 280 and 280 x 280 (w x h) resize to themselves: 156,800 + 78,400 px. A total of 117,600 halves each
    # item's max (shares in proportion to the resized areas): sqrt(2) smaller, floored to 28 -> 392 x 196 and
    # 196 x 196
    images = [Image.fromarray(np.zeros((280, w, 3), np.uint8)) for w in (560, 280)]
    out = process_images(images, total_pixels=117_600, max_workers=1)
    assert [o.grid_thw for o in out] == [(1, 14, 28), (1, 14, 14)]
    # a budget the items exactly fit changes nothing
    out = process_images(images, total_pixels=235_200, max_workers=1)
    assert [o.grid_thw for o in out] == [(1, 20, 40), (1, 20, 20)]
    # an item's own cap counts in its share: 392 x 196 capped at 78,400 -> 76,832 px; shares of 117,600 over
    # 76,832 + 78,400: max 58,206 -> 336 x 168, and max 59,396 -> 224 x 224
    out = process_images(images, total_pixels=117_600, options=[{"max_pixels": 78_400}, None], max_workers=1)
    assert [o.grid_thw for o in out] == [(1, 12, 24), (1, 16, 16)]
    # small images held up by their own min_pixels: over the budget their min follows the shrunk share too.
    # 20 x 20 with min 12,544 -> 112 x 112 each; a total of 12,544 gives each 6,272 px -> 84 x 84 (not 112 x 112)
    small = [Image.fromarray(np.zeros((20, 20, 3), np.uint8)) for _ in range(2)]
    out = process_images(small, total_pixels=12_544, options=[{"min_pixels": 12_544}] * 2, max_workers=1)
    assert [o.grid_thw for o in out] == [(1, 6, 6)] * 2
