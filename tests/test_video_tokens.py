"""Video token counts against an independent computation: qwen-vl-utils' published formulas written out here (frame
count, per-frame pixel budget) and transformers' own smart_resize, never our grid functions.

The count is checked where it matters: the number of `<|video_pad|>` tokens the processor puts into input_ids, and
`video_grid_thw`, for real encoded files.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from qwen25vl.processing.processor import Processor
from qwen25vl.testing.tokenizer import write_preprocessor_config, write_tiny_tokenizer

import av
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

# qwen-vl-utils' constants (SPEC section 4), written out rather than imported from our package
MIN_PIXELS, MAX_PIXELS, TOTAL_PIXELS = 128 * 28 * 28, 768 * 28 * 28, int(128000 * 28 * 28 * 0.9)
FPS, MIN_FRAMES, MAX_FRAMES = 2.0, 4, 768
VIDEO_PAD = 525  # the tiny tokenizer's <|video_pad|>


def expected_tokens(width, height, total_frames, video_fps, fps=FPS, min_pixels=None, max_pixels=None,
                    total_pixels=None):
    """(tokens, grid_thw) by qwen-vl-utils' smart_nframes / fetch_video budget and transformers' smart_resize."""
    n = total_frames / video_fps * fps
    lo_frames = math.ceil(MIN_FRAMES / 2) * 2
    hi_frames = math.floor(min(MAX_FRAMES, total_frames) / 2) * 2
    n = math.floor(min(min(max(n, lo_frames), hi_frames), total_frames) / 2) * 2
    lo = MIN_PIXELS if min_pixels is None else min_pixels
    total = TOTAL_PIXELS if total_pixels is None else total_pixels
    hi = max(min(MAX_PIXELS, total / n * 2), int(lo * 1.05))
    if max_pixels is not None:
        hi = min(hi, max_pixels)
    rh, rw = hf_smart_resize(height, width, factor=28, min_pixels=lo, max_pixels=hi)
    grid = (n // 2, rh // 14, rw // 14)
    return grid[0] * grid[1] * grid[2] // 4, grid


def _encode(path, frames, fps, width, height):
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"preset": "ultrafast"}
        for i in range(frames):
            a = np.full((height, width, 3), (i * 17) % 256, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    path = write_tiny_tokenizer(tmp_path_factory.mktemp("video_tokens"))
    write_preprocessor_config(path)
    return Processor.from_pretrained(path)


CASES = {
    # upscaled to the video min_pixels: 320x240 -> 280x392, 6 frames
    "upscaled": dict(size=(320, 240), frames=12, video_fps=4, opts={}),
    # the total budget spread over 20 frames decides (20,000 px per frame): 112x140
    "total-budget": dict(size=(320, 240), frames=40, video_fps=4, opts={"min_pixels": 3136, "total_pixels": 200_000}),
    # a user max below the budget, a wide frame, 1 fps sampling of a 10 fps clip
    "user-max-wide": dict(size=(480, 64), frames=50, video_fps=10, opts={"fps": 1.0, "max_pixels": 28 * 28 * 12}),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_video_pad_count_equals_independent_formula(case, processor, tmp_path):
    (w, h), n, vfps, opts = case["size"], case["frames"], case["video_fps"], case["opts"]
    path = _encode(tmp_path / "v.mp4", n, vfps, w, h)
    want, grid = expected_tokens(w, h, n, vfps, **opts)
    part = {"type": "video", "video": str(path), **opts}
    batch = processor([{"role": "user", "content": [part, {"type": "text", "text": "What happens?"}]}])
    assert batch["video_grid_thw"].tolist() == [list(grid)]
    assert int((batch["input_ids"] == VIDEO_PAD).sum()) == want
    assert batch["pixel_values_videos"].shape == (grid[0] * grid[1] * grid[2], 1176)


def test_independent_formula_hand_checked():
    # the reference formula itself, on the cases above and a capped long video, by hand
    assert expected_tokens(320, 240, 12, 4) == (420, (3, 20, 28))
    assert expected_tokens(320, 240, 40, 4, min_pixels=3136, total_pixels=200_000) == (200, (10, 8, 10))
    # 2 h at 30 fps: 768 frames; 90,316,800 / 768 x 2 = 235,200 px per frame; 1280x720 scaled by 1/1.9795:
    # floor(12.99) x 28 = 336, floor(23.09) x 28 = 644 (276 tokens per frame group)
    assert expected_tokens(1280, 720, 216_000, 30) == (384 * 12 * 23, (384, 24, 46))
