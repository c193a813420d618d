"""The parts together: a checkpoint folder -> our processor -> our model, against transformers on the same folder."""

import numpy as np
import pytest
import torch
from PIL import Image

from qwen25vl import Processor, Qwen25VL
from qwen25vl.testing.checkpoint import make_tiny_checkpoint

import transformers


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=3)


def _image(width, height, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_processor_output_feeds_both_models_with_equal_logits(folder):
    messages = [
        [{"role": "user", "content": [{"type": "image", "image": _image(252, 364, 0)},
                                      {"type": "text", "text": "What is in the picture?"}]}],
        [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
    ]
    inputs = Processor.from_pretrained(folder)(messages)
    assert inputs["attention_mask"][1].sum() < inputs["attention_mask"].shape[1]  # row 2 is left-padded
    ours = Qwen25VL.from_pretrained(folder, progress=False).eval()
    ref = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        got = ours(**inputs).logits
        want = ref(**inputs).logits
    valid = inputs["attention_mask"].bool()
    assert got.shape == want.shape
    # The tiny checkpoint's weights are drawn large (embedding std 1, layer gain 2) so greedy tests see clear margins;
    # its logits reach ~30, so fp32 summation-order noise is judged relative to that scale.
    tol = 1e-4 * want[valid].abs().max().item()
    assert (got[valid] - want[valid]).abs().max().item() <= tol
    # mm_token_type_ids changes nothing for us (types follow from the ids) but is what makes transformers use 3D ids
    without = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    with torch.no_grad():
        assert torch.equal(ours(**without).logits, got)
        flat = ref(**without).logits
    assert (flat[valid] - want[valid]).abs().max().item() > 10 * tol


def test_video_frames_through_both_models(folder):
    # 4 frames of 112x112 at 2 fps: grid (2, 8, 8), a short video whose spatial span (4 merged rows) covers its
    # temporal span (ids 0 and 2), the case where transformers 5.24's text-after-video rule agrees with the original.
    frames = [_image(112, 112, 10 + i) for i in range(4)]
    messages = [{"role": "user", "content": [{"type": "video", "video": frames, "fps": 2.0,
                                              "min_pixels": 56 * 56, "max_pixels": 112 * 112},
                                             {"type": "text", "text": "What happens?"}]}]
    inputs = Processor.from_pretrained(folder)(messages)
    assert inputs["video_grid_thw"].tolist() == [[2, 8, 8]]
    assert inputs["second_per_grid_ts"].tolist() == [1.0]
    ours = Qwen25VL.from_pretrained(folder, progress=False).eval()
    ref = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        got = ours(**inputs).logits
        want = ref(**inputs).logits
    tol = 1e-4 * want.abs().max().item()
    assert (got - want).abs().max().item() <= tol
