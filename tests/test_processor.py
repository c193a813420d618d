"""Processor: the model inputs equal transformers' Qwen2_5_VLProcessor; batching, budgets, length cap, metadata."""

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from qwen25vl.errors import InputError
from qwen25vl.processing.chat_template import OFFICIAL_CHAT_TEMPLATE
from qwen25vl.processing.image import process_image
from qwen25vl.processing.processor import Processor
from qwen25vl.testing.tokenizer import write_preprocessor_config, write_tiny_tokenizer

import transformers

MAX_PIXELS = 28 * 28 * 48  # small images keep the test fast; the reference gets the same limits


def _image(h, w, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


IMG_A, IMG_B, IMG_C = _image(100, 150, 0), _image(300, 120, 1), _image(64, 64, 2)
CONVERSATIONS = {
    "text": [{"role": "user", "content": "Hello there! 你好"}],
    "one_image": [{"role": "user", "content": [{"type": "image", "image": IMG_A}, {"type": "text", "text": "Describe."}]}],
    "several_images": [
        {"role": "system", "content": "Be precise."},
        {"role": "user", "content": [{"type": "text", "text": "Compare"}, {"type": "image", "image": IMG_A},
                                     {"type": "image", "image": IMG_B}, {"type": "text", "text": "and"},
                                     {"type": "image", "image": IMG_C}]},
    ],  # fmt: skip
    "multi_turn_tool": [
        {"role": "user", "content": [{"type": "image", "image": IMG_B}, {"type": "text", "text": "Weather here?"}]},
        {"role": "assistant", "content": '<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>'},
        {"role": "tool", "content": '{"temperature": 21}'},
        {"role": "assistant", "content": "21 degrees."},
        {"role": "user", "content": [{"type": "text", "text": "And here?"}, {"type": "image", "image": IMG_C}]},
    ],
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = write_tiny_tokenizer(tmp_path_factory.mktemp("proc"))
    write_preprocessor_config(path, max_pixels=MAX_PIXELS)
    return path


@pytest.fixture(scope="module")
def processor(folder):
    return Processor.from_pretrained(folder)


@pytest.fixture(scope="module")
def reference(folder):
    cls = transformers.Qwen2_5_VLProcessor
    # Without torchvision there is no video processor, and the constructor's type check refuses None (ENVIRONMENT.md).
    patch = pytest.MonkeyPatch()
    patch.setattr(cls, "check_argument_for_proper_class", lambda self, *args, **kwargs: None)
    image_processor = transformers.Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=MAX_PIXELS)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    yield cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=None, chat_template=OFFICIAL_CHAT_TEMPLATE)
    patch.undo()


def _images_of(messages):
    return [p["image"] for m in messages if isinstance(m["content"], list) for p in m["content"] if "image" in p]


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_matches_transformers_processor(name, processor, reference):
    messages = CONVERSATIONS[name]
    ours = processor(messages)
    text = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    images = _images_of(messages) or None
    ref = reference(text=[text], images=images, return_tensors="pt")
    assert ours.texts == [text]
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"):
        if key in ref:
            assert torch.equal(ours[key], ref[key]), key
        else:
            assert key not in ours
    assert set(ref) <= set(ours)
    assert [item.grid_thw for item in ours.images] == [tuple(g) for g in ref.get("image_grid_thw", torch.empty(0, 3)).tolist()]


def test_video_expansion_matches_reference(processor, reference):
    rng = np.random.default_rng(3)
    frames = [Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)) for _ in range(4)]
    messages = [{"role": "user", "content": [{"type": "video", "video": frames, "fps": 2.0},
                                             {"type": "text", "text": "What happens?"}]}]  # fmt: skip
    ours = processor(messages)
    grid = ours["video_grid_thw"]
    assert grid.shape == (1, 3) and grid[0, 0].item() == 2  # 4 frames -> 2 temporal groups
    n = int(grid.prod()) // 4
    # The reference cannot run its video processor here: expand its template text with our grid and tokenize.
    text = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    expanded = text.replace("<|video_pad|>", "<|video_pad|>" * n)
    ids = reference.tokenizer(expanded, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert torch.equal(ours["input_ids"], ids)
    assert ours["pixel_values_videos"].shape == (int(grid.prod()), 1176)
    assert torch.allclose(ours["second_per_grid_ts"], torch.tensor([1.0]))  # temporal patch 2 / 2 fps
    assert int((ours["mm_token_type_ids"] == 2).sum()) == n and int((ours["mm_token_type_ids"] == 1).sum()) == 0
    video = ours.videos[0]
    assert video.num_tokens == n and video.second_per_grid_t == pytest.approx(1.0) and len(video.timestamps) == 2


def test_batch_is_left_padded_and_equals_single_calls(processor):
    short, long = CONVERSATIONS["text"], CONVERSATIONS["several_images"]
    batch = processor([short, long])
    singles = [processor(short), processor(long)]
    width = batch["input_ids"].shape[1]
    assert width == singles[1]["input_ids"].shape[1]
    n_short = singles[0]["input_ids"].shape[1]
    pad = processor.tokenizer.pad_token_id
    assert pad == processor.tokenizer.token_to_id("<|endoftext|>")
    assert torch.equal(batch["input_ids"][0, width - n_short :], singles[0]["input_ids"][0])
    assert (batch["input_ids"][0, : width - n_short] == pad).all()
    assert batch["attention_mask"][0].tolist() == [0] * (width - n_short) + [1] * n_short
    assert torch.equal(batch["input_ids"][1], singles[1]["input_ids"][0])
    assert torch.equal(batch["pixel_values"], singles[1]["pixel_values"])
    assert [item.conversation for item in batch.images] == [1, 1, 1]
    assert (batch["mm_token_type_ids"][0] == 0).all()


def test_per_item_and_call_budgets(processor):
    big = _image(560, 560, 4)
    messages = [{"role": "user", "content": [
        {"type": "image", "image": big},
        {"type": "image", "image": big, "max_pixels": 28 * 28 * 4},
        {"type": "image", "image": big, "max_tokens": 9},
    ]}]  # fmt: skip
    out = processor(messages, max_pixels=28 * 28 * 16)
    grids = [item.grid_thw for item in out.images]
    assert grids[0] == process_image(big, min_pixels=3136, max_pixels=28 * 28 * 16).grid_thw == (1, 8, 8)
    assert grids[1] == (1, 4, 4) and grids[2] == (1, 6, 6)
    assert out.images[0].resize.resized_size == (112, 112) and out.images[0].resize.original_size == (560, 560)
    assert int((out["input_ids"] == processor.tokenizer.special.image_pad).sum()) == 16 + 4 + 9
    # Without a call-level budget the checkpoint's preprocessor_config.json max_pixels applies.
    assert processor(messages[:1]).images[0].grid_thw == (1, 12, 12)  # 48 tokens' worth, rounded to 28 px


def test_max_length_raises_instead_of_truncating(processor):
    messages = CONVERSATIONS["one_image"]
    n = processor(messages)["input_ids"].shape[1]
    assert processor(messages, max_length=n)["input_ids"].shape[1] == n
    with pytest.raises(InputError, match=rf"conversation 0 is {n} tokens long .* over max_length={n - 1}"):
        processor(messages, max_length=n - 1)


def test_openai_image_url_forms_and_passthroughs(processor):
    buffer = io.BytesIO()
    IMG_A.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    openai = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Describe."}]}]
    a, b = processor(openai), processor(CONVERSATIONS["one_image"])
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])
    ids = a["input_ids"][0]
    assert processor.decode(ids) == processor.tokenizer.decode(ids.tolist())
    plain = processor.batch_decode(a["input_ids"], skip_special_tokens=True)[0]
    assert plain == "system\nYou are a helpful assistant.\nuser\nDescribe.\nassistant\n"
    assert a.to(dtype=torch.float16)["pixel_values"].dtype == torch.float16 and a.to(dtype=torch.float16)["input_ids"].dtype == torch.long


def test_bad_inputs_name_the_item(processor):
    with pytest.raises(InputError, match="conversation 0: a image part without a source"):
        processor([{"role": "user", "content": [{"type": "image"}]}])
    with pytest.raises(InputError, match="conversation 1 has no messages"):
        processor([CONVERSATIONS["text"], []])
    with pytest.raises(InputError, match="list of messages"):
        processor("hello")


def test_loss_mask_for_training_batches(processor):
    from qwen25vl.processing.chat_template import render

    convs = [CONVERSATIONS["multi_turn_tool"][:4], CONVERSATIONS["text"] + [{"role": "assistant", "content": "Hi!"}]]
    out = processor(convs, add_generation_prompt=False, return_loss_mask=True)
    mask = out["loss_mask"]
    assert mask.shape == out["input_ids"].shape and (mask[out["attention_mask"] == 0] == 0).all()
    assert (mask[out["mm_token_type_ids"] != 0] == 0).all()
    n = int(out["attention_mask"][1].sum())
    assert mask[1, -n:].tolist() == render(convs[1], tokenizer=processor.tokenizer).loss_mask
    trained = processor.decode(out["input_ids"][1][mask[1].bool()])
    assert trained == "Hi!<|im_end|>\n"
    assert "loss_mask" not in processor(convs)


def _clip(path, n=40, fps=4, w=56, h=56):
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            a = np.full((h, w, 3), i * 6, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _video_turn(video, **options):
    return [{"role": "user", "content": [{"type": "video", "video": video, **options}, {"type": "text", "text": "?"}]}]


@pytest.mark.parametrize("as_list", [False, True], ids=["file", "frame list"])
def test_video_cut_through_the_processor(processor, tmp_path, as_list):
    # qwen-vl-utils' names video_start / video_end: the cut must reach the sampler for files and frame lists alike
    path = _clip(tmp_path / "clip.mp4")  # 10 s at 4 fps
    source = [np.full((56, 56, 3), i * 6, np.uint8) for i in range(40)] if as_list else str(path)
    rate = {"fps": 4.0} if as_list else {"fps": 2.0}
    whole = processor(_video_turn(source, **rate)).videos[0]
    cut = processor(_video_turn(source, **rate, video_start=4.0, video_end=8.0)).videos[0]
    assert whole.frame_indices[0] == 0 and whole.timestamps[0] == 0.0
    assert cut.frame_indices[0] == 16 and cut.frame_indices[-1] == 32 and cut.timestamps[0] == 4.0
    call = processor(_video_turn(source, **rate), video_options={"video_start": 4.0, "video_end": 8.0}).videos[0]
    assert call.frame_indices == cut.frame_indices
    short = processor(_video_turn(source, fps=4.0, max_frames=6)).videos[0]
    assert len(short.frame_indices) == 6


def test_unknown_option_keys_are_refused(processor):
    frames = [np.zeros((56, 56, 3), np.uint8)] * 4
    with pytest.raises(InputError, match=r"conversation 0 video 0: unknown option 'fsp'.*accepted: fps, min_frames"):
        processor(_video_turn(frames, fsp=4.0))
    with pytest.raises(InputError, match=r"video_options: unknown option 'fsp'"):
        processor(_video_turn(frames), video_options={"fsp": 4.0})
    with pytest.raises(InputError, match=r"image 0: unknown option 'max_pixel'.*accepted: min_pixels"):
        processor([{"role": "user", "content": [{"type": "image", "image": IMG_C, "max_pixel": 10}]}])
    with pytest.raises(InputError, match="'start' is given twice"):
        processor(_video_turn(frames, fps=1.0, start=1.0, video_start=1.0))


def test_text_that_is_not_unicode_names_the_message(processor):
    messages = [{"role": "system", "content": "ok"},
                {"role": "user", "content": [{"type": "image", "image": IMG_C}, {"type": "text", "text": "x\ud800"}]}]
    with pytest.raises(InputError, match=r"conversation 0 messages\[1\]\.content\[1\]: invalid Unicode at character 1"):
        processor(messages)
    with pytest.raises(InputError, match=r"messages\[0\]\.content: invalid Unicode at character 0"):
        processor([{"role": "user", "content": "\udcff"}])


def test_decode_caps_reach_images_and_video_frames(folder):
    capped = Processor.from_pretrained(folder, max_image_pixels=64 * 64 - 1, max_frame_pixels=56 * 56 - 1)
    with pytest.raises(InputError, match="image 0: image <PIL image RGB 64x64>: 64x64 = 4096 pixels is over the cap"):
        capped([{"role": "user", "content": [{"type": "image", "image": IMG_C}]}])
    frames = [np.zeros((56, 56, 3), np.uint8)] * 2
    with pytest.raises(InputError, match="video frame 0: .*3136 pixels is over the cap 3135"):
        capped(_video_turn(frames, fps=1.0))
    assert Processor.from_pretrained(folder)(_video_turn(frames, fps=1.0)).videos[0].frame_indices == [0, 1]
