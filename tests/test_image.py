"""Image preprocessing: parity with transformers' Qwen2VLImageProcessor (its PIL path), layout, limits, config, RGB."""

import io
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from qwen25vl.errors import ConfigError, InputError
from qwen25vl.processing.image import (
    ImageProcessorConfig,
    ResizeInfo,
    process_image,
    process_images,
    smart_resize,
)
from qwen25vl.processing.media import load_image

OFFICIAL = {  # the Qwen2.5-VL checkpoints' preprocessor_config.json
    "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
}


@pytest.fixture(scope="module")
def reference():
    import transformers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.Qwen2VLImageProcessor

def _ref(cls, image, **kw):
    proc = cls(**{**OFFICIAL, **kw})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = proc(images=[image], return_tensors="np")
    return out["pixel_values"], tuple(int(v) for v in out["image_grid_thw"][0])


def _random_image(h, w, seed=0):
    rng = np.random.default_rng(seed + h * 7 + w)
    # smooth + noise: bicubic overshoot and clipping both get exercised
    base = np.linspace(0, 255, w)[None, :, None] * np.linspace(0.2, 1, h)[:, None, None]
    noise = rng.integers(-60, 60, (h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


SIZES = [  # (height, width, max_pixels or None for the official value)
    (1, 1, None), (5, 7, None), (13, 27, None), (27, 13, None), (14, 14, None), (28, 28, None), (29, 31, None),
    (70, 70, None), (97, 131, None), (1, 150, None), (150, 1, None), (3, 600, None), (600, 3, None),
    (33, 1000, None), (1000, 30, None), (225, 399, None), (480, 640, None), (511, 383, None),
    (640, 480, 50_000), (777, 333, 20_000), (1200, 900, 300_000), (301, 4001, 100_000), (999, 1001, 3136),
]


@pytest.mark.parametrize("h,w,max_pixels", SIZES)
def test_matches_transformers(reference, h, w, max_pixels):
    image = _random_image(h, w)
    kw = {} if max_pixels is None else {"max_pixels": max_pixels}
    want, grid = _ref(reference, image, **kw)
    got = process_image(image, **kw)
    assert got.grid_thw == grid
    assert got.pixel_values.dtype == torch.float32 and tuple(got.pixel_values.shape) == want.shape
    np.testing.assert_allclose(got.pixel_values.numpy(), want, rtol=0, atol=1e-6)
    assert got.resize.original_size == (w, h)
    assert got.resize.resized_size == (grid[2] * 14, grid[1] * 14)


def test_matches_transformers_with_min_pixels_and_size_form(reference):
    image = _random_image(40, 90)
    want, grid = _ref(reference, image, min_pixels=200_000, max_pixels=400_000)
    config = ImageProcessorConfig.from_dict({"size": {"shortest_edge": 200_000, "longest_edge": 400_000}})
    got = process_image(image, config=config)
    assert got.grid_thw == grid and grid[1] * grid[2] * 196 >= 200_000
    np.testing.assert_allclose(got.pixel_values.numpy(), want, rtol=0, atol=1e-6)


def test_extreme_aspect_ratio_raises(reference):
    with pytest.raises(ValueError):  # the reference refuses it too
        _ref(reference, _random_image(2, 500))
    with pytest.raises(InputError, match="aspect ratio 250"):
        process_image(_random_image(2, 500))
    with pytest.raises(InputError, match="aspect ratio"):
        smart_resize(10, 2001)


def test_smart_resize_hand_checked():
    assert smart_resize(1080, 1920) == (1092, 1932)  # 2691 tokens
    assert smart_resize(480, 640) == (476, 644)
    assert smart_resize(1080, 1920, max_pixels=1_003_520) == (728, 1316)
    assert smart_resize(70, 70, min_pixels=1) == (56, 56)  # 2.5 rounds half to even
    assert smart_resize(98, 98, min_pixels=1) == (112, 112)  # 3.5 -> 4
    assert smart_resize(10, 1000) == (28, 560)  # transformers 5.x rule (qwen-vl-utils would give (28, 1008))
    h, w = smart_resize(4000, 3000, max_pixels=1_000_000)
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 1_000_000


def test_token_limits_equal_pixel_limits():
    image = _random_image(500, 700)
    a = process_image(image, max_tokens=100, min_tokens=10)
    b = process_image(image, max_pixels=100 * 784, min_pixels=10 * 784)
    assert a.grid_thw == b.grid_thw and a.num_tokens <= 100
    assert torch.equal(a.pixel_values, b.pixel_values)
    small = process_image(_random_image(30, 30), min_tokens=64)
    assert small.num_tokens >= 64
    with pytest.raises(InputError, match="max_pixels.*max_tokens"):
        process_image(image, max_pixels=5000, max_tokens=10)
    with pytest.raises(InputError, match="min_pixels 9000 is over max_pixels 5000"):
        process_image(image, min_pixels=9000, max_pixels=5000)
    with pytest.raises(InputError, match="positive"):
        process_image(image, max_tokens=0)


def test_patch_layout_is_merge_aware():
    # each pixel's value encodes its own position: row r of pixel_values must hold patch (row, col) of the grid
    h, w = 56, 84
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([yy * 3 % 256, xx * 3 % 256, (yy + xx) % 256], -1).astype(np.uint8)
    got = process_image(arr, min_pixels=1, max_pixels=h * w).pixel_values.numpy()
    cfg = ImageProcessorConfig()
    norm = ((arr.astype(np.float64) / 255).astype(np.float32) - np.float32(cfg.image_mean)) / np.float32(cfg.image_std)
    gh, gw = h // 14, w // 14
    r = 0
    for bh in range(gh // 2):
        for bw in range(gw // 2):
            for mh in range(2):
                for mw in range(2):
                    y, x = (2 * bh + mh) * 14, (2 * bw + mw) * 14
                    patch = norm[y:y + 14, x:x + 14].transpose(2, 0, 1)  # (C, 14, 14)
                    row = got[r].reshape(3, 2, 14, 14)  # (C, T, ph, pw)
                    np.testing.assert_array_equal(row[:, 0], patch)
                    np.testing.assert_array_equal(row[:, 1], patch)  # the still image fills the temporal patch
                    r += 1
    assert r == got.shape[0] == gh * gw


def test_resize_info_maps_points():
    info = process_image(_random_image(480, 640)).resize
    assert info.original_size == (640, 480) and info.resized_size == (644, 476)
    x, y = info.to_resized(320.0, 240.0)
    assert x == pytest.approx(322.0) and y == pytest.approx(238.0)
    assert info.to_original(*info.to_resized(123.0, 45.0)) == pytest.approx((123.0, 45.0))
    assert ResizeInfo((100, 50), (200, 25)).to_original(20, 20) == (10.0, 40.0)


def test_config_from_dict_and_pretrained(tmp_path):
    c = ImageProcessorConfig.from_dict(OFFICIAL)
    assert c == ImageProcessorConfig()
    c = ImageProcessorConfig.from_dict({"size": {"shortest_edge": 100, "longest_edge": 1000}, "max_pixels": 2000})
    assert (c.min_pixels, c.max_pixels) == (100, 2000)  # explicit max_pixels wins over size, as in transformers
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**OFFICIAL, "max_pixels": 1003520}))
    c = ImageProcessorConfig.from_pretrained(tmp_path)
    assert c.max_pixels == 1003520 and c.factor == 28 and c.pixels_per_token == 784
    assert process_image(_random_image(1080, 1920), config=c).grid_thw == (1, 52, 94)
    assert ImageProcessorConfig.from_pretrained(tmp_path / "nothing") == ImageProcessorConfig()
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="preprocessor_config.json"):
        ImageProcessorConfig.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="min_pixels"):
        ImageProcessorConfig.from_dict({"min_pixels": 10, "max_pixels": 5})


def test_process_images_pool_equals_one_by_one():
    images = [_random_image(h, w) for h, w in [(50, 60), (300, 200), (20, 700), (128, 128)]]
    batch = process_images(images, max_workers=2, max_pixels=40_000)
    for image, got in zip(images, batch):
        one = process_image(image, max_pixels=40_000)
        assert got.grid_thw == one.grid_thw and torch.equal(got.pixel_values, one.pixel_values)
    # per-item options override the call's limits, in either unit
    out = process_images(images[:2], max_pixels=40_000, options=[None, {"max_tokens": 20}])
    assert out[0].grid_thw == batch[0].grid_thw and out[1].num_tokens <= 20
    with pytest.raises(InputError, match="unknown options"):
        process_images(images[:1], options=[{"max_pixel": 5}])


def test_process_images_total_budget():
    images = [_random_image(400, 400), _random_image(200, 600), _random_image(300, 300)]
    free = process_images(images)
    assert sum(p.num_tokens for p in free) > 300
    capped = process_images(images, total_tokens=300)
    assert sum(p.num_tokens for p in capped) <= 300
    assert all(c.num_tokens < f.num_tokens for c, f in zip(capped, free))
    assert process_images(images, total_tokens=10_000)[0].grid_thw == free[0].grid_thw  # under budget: untouched


def test_sources_all_agree(tmp_path):
    image = _random_image(60, 90)
    path = tmp_path / "a.png"
    image.save(path)
    raw = path.read_bytes()
    import base64

    url = "data:image/png;base64," + base64.b64encode(raw).decode()
    want = process_image(image).pixel_values
    for src in (str(path), path, f"file://{path}", raw, url, np.asarray(image), np.asarray(image).transpose(2, 0, 1)):
        assert torch.equal(process_image(src).pixel_values, want), type(src)


def test_rgb_conversion_follows_qwen_vl_utils():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (0, 0, 255, 0)  # fully transparent -> white
    rgba[0, 2] = (0, 0, 0, 128)  # half black over white -> grey
    out = np.asarray(load_image(Image.fromarray(rgba, "RGBA")))
    assert out.shape == (4, 4, 3)
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[0, 1]) == (255, 255, 255)
    assert 120 <= out[0, 2, 0] <= 135 and len(set(out[0, 2])) == 1
    assert tuple(np.asarray(load_image(rgba))[0, 1]) == (255, 255, 255)  # arrays with alpha too
    la = Image.fromarray(rgba[..., [0, 3]].copy(), "LA")
    assert tuple(np.asarray(load_image(la))[0, 1]) == (255, 255, 255)
    p = Image.new("P", (2, 2), 0)
    p.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    p.putpixel((1, 1), 1)
    p.info["transparency"] = 0
    pout = np.asarray(load_image(p))
    assert tuple(pout[0, 0]) == (255, 255, 255) and tuple(pout[1, 1]) == (200, 100, 50)
    grey16 = Image.fromarray(np.full((3, 3), 128 * 257, np.uint16))
    assert grey16.mode.startswith("I")
    assert tuple(np.asarray(load_image(grey16))[0, 0]) == (128, 128, 128)  # scaled, not clipped to 255
    assert tuple(np.asarray(load_image(np.full((2, 2), 0.5, np.float32)))[0, 0]) == (128, 128, 128)
    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))
    assert tuple(np.asarray(load_image(cmyk))[0, 0]) == (255, 0, 0)
    assert np.asarray(load_image(Image.new("L", (2, 2), 77))).tolist()[0][0] == [77, 77, 77]


def test_exif_orientation_applied():
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", exif=exif.tobytes())
    out = load_image(buf.getvalue())
    assert out.size == (20, 40)  # width and height swapped
    top = np.asarray(out)[2, 10]
    assert top[0] > 200 and top[1] < 50  # the red half is now on top



def test_min_pixels_cannot_upscale_past_the_ceiling():
    from qwen25vl.processing.image import MAX_RESIZED_PIXELS

    tiny = np.zeros((30, 40, 3), np.uint8)
    with pytest.raises(InputError, match=rf"over the ceiling of {MAX_RESIZED_PIXELS}"):
        process_image(tiny, min_pixels=10**9, max_pixels=2 * 10**9)  # 1e9 px: 24 GB of pixel_values
    assert process_image(tiny, min_pixels=28 * 28 * 100, max_pixels=10**9).num_tokens >= 100  # upscaling itself works
