"""`qwen25vl plan`: visual tokens, prompt tokens and memory of a request, checked against hand computation (tiny and
7B configs), against the processor's own counts, and without any weights on disk."""

import json

import pytest
import torch
from PIL import Image

from qwen25vl.cli import main
from qwen25vl.config import Qwen25VLConfig
from qwen25vl.errors import InputError
from qwen25vl.plan import (kv_cache_bytes, make_plan, prefill_peak_bytes, text_parameters, vision_parameters,
                           vision_peak_bytes)

MB = 2**20


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from qwen25vl.testing.checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("plan"), generation={"max_new_tokens": 7})


@pytest.fixture(scope="module")
def seven(tmp_path_factory):
    """A 7B folder with no weights at all: config.json and a tokenizer are all plan reads."""
    from qwen25vl.testing.tokenizer import write_tiny_tokenizer

    folder = tmp_path_factory.mktemp("seven")
    Qwen25VLConfig.preset("7b").save(folder)
    write_tiny_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    import av

    root = tmp_path_factory.mktemp("plan-media")
    Image.new("RGB", (1920, 1080)).save(root / "wide.png")
    with av.open(str(root / "clip.mp4"), "w") as container:  # 8 frames at 4 fps, 64 x 64: 2 seconds
        stream = container.add_stream("libx264", rate=4)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(8):
            frame = av.VideoFrame.from_ndarray(torch.full((64, 64, 3), 30 * i, dtype=torch.uint8).numpy(), "rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return {"image": str(root / "wide.png"), "video": str(root / "clip.mp4")}


def test_parameter_counts_by_hand_and_against_the_model():
    from qwen25vl.model.vlm import Qwen25VL

    tiny = Qwen25VLConfig.preset("tiny")
    # embed 544*64; per layer q 64*64+64, k and v 64*32+32 each, o 64*64, MLP 3*64*128, 2 norms of 64; final norm
    assert text_parameters(tiny.text) == 544 * 64 + 2 * (4160 + 2 * 2080 + 4096 + 24576 + 128) + 64 == 109_120
    # patch conv 32*3*2*14*14; per block 2 norms, qkv 33*96, proj 33*32, gate+up 2*33*64, down 65*32; merger
    assert vision_parameters(tiny.vision) == 37_632 + 2 * (64 + 3168 + 1056 + 4224 + 2080) + 32 + 129 * 128 + 129 * 64
    seven = Qwen25VLConfig.preset("7b")
    assert text_parameters(seven.text) + vision_parameters(seven.vision) == 8_292_166_656  # the model card's
    assert vision_parameters(seven.vision) == 676_550_144
    for name in ("tiny", "3b", "72b"):
        config = Qwen25VLConfig.preset(name)
        with torch.device("meta"):
            model = Qwen25VL(config)
        assert text_parameters(config.text) + vision_parameters(config.vision) == sum(
            p.numel() for p in model.parameters()), name


def test_memory_formulas_by_hand():
    tiny, seven = Qwen25VLConfig.preset("tiny").text, Qwen25VLConfig.preset("7b")
    assert kv_cache_bytes(tiny, 100, 4) == 2 * 2 * 2 * 16 * 100 * 4  # layers x (k, v) x KV heads x head dim
    assert kv_cache_bytes(seven.text, 1000, 2) == 28 * 2 * 4 * 128 * 1000 * 2
    # 7B tower over 10,764 patches: float32 pixel rows, then the MLP phase (2 x 1280 + 3 x 3420 wide) in bf16
    assert vision_peak_bytes(seven.vision, 10_764, 2) == 10_764 * (1176 * 4 + (2 * 1280 + 3 * 3420) * 2)
    assert vision_peak_bytes(seven.vision, 0, 2) == 0
    # tiny prefill, 300 tokens of which 200 visual: MLP phase (4 x 64 + 3 x 128) + the image features, + the mask
    # as bool and as fp32
    assert prefill_peak_bytes(tiny, 300, 200, 4) == (300 * (4 * 64 + 3 * 128) + 200 * 64) * 4 + 300 * 300 * 5


def test_image_tokens_follow_smart_resize(tiny, media):
    item = make_plan(tiny, images=[media["image"]]).items[0]
    # 1920 x 1080 under the default budget: sides rounded to 28: 69 x 39 tokens' sides -> 1932 x 1092
    assert item.resized_size == (1932, 1092) and item.grid_thw == (1, 78, 138) and item.tokens == 2691
    item = make_plan(tiny, images=[media["image"]], max_pixels=250_000).items[0]
    # over the budget: beta = sqrt(1920 * 1080 / 250000) = 2.88; floor(1080 / 2.88 / 28) = 13, floor(666.7 / 28) = 23
    assert item.resized_size == (644, 364) and item.tokens == 26 * 46 // 4 == 299


def test_video_tokens_follow_the_sampling_rules(tiny, media):
    item = make_plan(tiny, videos=[media["video"]]).items[0]
    # 8 frames at 4 fps sampled at 2 fps: 4 frames (2 groups); per-frame floor 128 tokens of 28 x 28 px:
    # 64 x 64 scaled by sqrt(100352 / 4096) = 4.95, ceil to 28: 336 x 336 -> 24 x 24 patches per group
    assert item.frames == {"total": 8, "fps": 4.0, "sampled": 4, "sampled_fps": 2.0}
    assert item.grid_thw == (2, 24, 24) and item.tokens == 2 * 24 * 24 // 4 == 288
    fast = make_plan(tiny, videos=[media["video"]], fps=4).items[0]
    assert fast.frames["sampled"] == 8 and fast.grid_thw[0] == 4


def test_counts_equal_the_processors(tiny, media):
    from qwen25vl.processing.processor import Processor

    plan = make_plan(tiny, images=[media["image"]], videos=[media["video"]], prompt="What happens?",
                     max_pixels=300_000)
    parts = [{"type": "image", "image": media["image"], "max_pixels": 300_000},
             {"type": "video", "video": media["video"], "max_pixels": 300_000}]
    batch = Processor.from_pretrained(tiny)([{"role": "user", "content": parts + [
        {"type": "text", "text": "What happens?"}]}])
    assert [i.tokens for i in plan.items] == [batch.images[0].num_tokens, batch.videos[0].num_tokens]
    assert plan.prompt_tokens == batch["input_ids"].shape[1]


def test_tiny_plan_totals(tiny, media):
    plan = make_plan(tiny, images=[media["image"]], prompt="hi")
    m, tokens = plan.memory_mb, plan.prompt_tokens
    assert plan.dtype == "float32" and plan.max_new_tokens == 7  # the checkpoint's generation_config
    assert m["weights"] == pytest.approx(192_736 * 4 / MB)
    assert m["kv_cache"] == pytest.approx(512 * (tokens + 7) / MB)
    assert m["total_peak"] == pytest.approx(m["weights"] + m["kv_cache"] + max(m["vision_peak"], m["prefill_peak"]))


def test_seven_b_plan_reads_no_weights(seven, media, monkeypatch):
    import qwen25vl.weights

    monkeypatch.setattr(qwen25vl.weights, "load_model", lambda *a, **k: pytest.fail("plan loaded weights"))
    plan = make_plan(seven, images=[media["image"]], max_new_tokens=500, dtype="bfloat16", device="cpu")
    assert plan.parameters["total"] == 8_292_166_656
    assert plan.memory_mb["weights"] == pytest.approx(8_292_166_656 * 2 / MB)  # 15,816 MB
    assert plan.memory_mb["kv_cache"] == pytest.approx(57_344 * (plan.prompt_tokens + 500) / MB)
    assert make_plan(seven, dtype="float32", device="cpu").memory_mb["weights"] == pytest.approx(
        8_292_166_656 * 4 / MB)


def test_cli_text_and_json(seven, media, capsys):
    assert main(["plan", "-m", str(seven), "--image", media["image"], "--dtype", "bfloat16", "--device", "cpu",
                 "--max-new-tokens", "100", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["items"][0]["tokens"] == 2691 and out["max_new_tokens"] == 100 and out["dtype"] == "bfloat16"
    assert out["memory_mb"]["kv_cache"] == pytest.approx(57_344 * (out["prompt_tokens"] + 100) / MB)
    assert main(["plan", "-m", str(seven), "--image", media["image"], "--device", "cpu", "--dtype", "float16"]) == 0
    text = capsys.readouterr().out
    assert "8,292.2M parameters" in text and "2691 visual tokens" in text and "weights 15,816.1" in text


def test_cli_mistakes(tiny, tmp_path, capsys):
    assert main(["plan", "-m", str(tiny), "--image", str(tmp_path / "none.png")]) == 2
    assert "none.png" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["plan", "-m", str(tiny), "--fps", "0"])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit) as exit_:
        main(["plan", "-m", str(tiny), "--max-pixels", "0"])
    assert exit_.value.code == 2 and "--max-pixels" in capsys.readouterr().err
    with pytest.raises(InputError, match="not an image|cannot read"):
        (tmp_path / "fake.png").write_text("not a picture")
        make_plan(tiny, images=[str(tmp_path / "fake.png")])
