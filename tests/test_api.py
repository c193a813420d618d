"""The Python API on a tiny checkpoint folder written in the test: load, chat (plain, streamed, batched), defaults."""

import pytest
import torch
from PIL import Image

import qwen25vl
from qwen25vl.api import NO_EMBEDDED_MODEL, EMBEDDED_MODEL_DIR, resolve_device_dtype
from qwen25vl.errors import CheckpointError, InputError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from qwen25vl.testing.checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("api"), seed=1, generation={"max_new_tokens": 5})


@pytest.fixture(scope="module")
def vlm(folder):
    return qwen25vl.load(folder)


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "pic.png"
    g = torch.Generator().manual_seed(0)
    Image.fromarray(torch.randint(0, 256, (60, 90, 3), generator=g, dtype=torch.uint8).numpy()).save(path)
    return str(path)


GREEDY = dict(temperature=0, repetition_penalty=1.0, max_new_tokens=10, stop_token_ids=())


def test_load_defaults(vlm):
    assert vlm.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert next(vlm.model.parameters()).dtype == (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    # generation_config.json: near-greedy, repetition penalty, max_new_tokens, EOS ids
    assert vlm.defaults.greedy and vlm.defaults.repetition_penalty == 1.05
    assert vlm.defaults.max_new_tokens == 5 and vlm.defaults.stop_token_ids == (514, 512)


def test_chat_text_equals_generate_and_stream(vlm):
    messages = [{"role": "user", "content": "Write a poem about the sea."}]
    done = vlm.generate(messages, **GREEDY)[0]
    assert done.text == vlm.tokenizer.decode(done.token_ids, skip_special_tokens=True)
    assert len(done.token_ids) == 10 and done.finish_reason == "length"
    assert vlm.chat(messages, **GREEDY) == done.text
    deltas = list(vlm.chat(messages, stream=True, **GREEDY))
    assert "".join(deltas) == done.text and all(deltas)
    # the checkpoint's default max_new_tokens (5) applies when not overridden
    assert len(vlm.generate(messages, **{**GREEDY, "max_new_tokens": None})[0].token_ids) <= 5


def test_string_prompt_with_images_equals_messages(vlm, image_path):
    messages = [{"role": "user", "content": [{"type": "image", "image": image_path},
                                             {"type": "text", "text": "What is this?"}]}]
    assert vlm.chat("What is this?", images=[image_path], **GREEDY) == vlm.chat(messages, **GREEDY)
    with pytest.raises(InputError, match="images="):
        vlm.chat(messages, images=[image_path])


def test_batch_of_conversations_equals_one_by_one(vlm, image_path):
    convs = [
        [{"role": "user", "content": "hi"}],
        [{"role": "user", "content": [{"type": "image", "image": image_path}, {"type": "text", "text": "describe"}]}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "A longer question about things?"}],
    ]
    alone = [vlm.chat(c, **GREEDY) for c in convs]
    assert vlm.chat(convs, **GREEDY) == alone
    events = list(vlm.chat(convs, stream=True, **GREEDY))
    assert ["".join(e.text for e in events if e.index == i) for i in range(3)] == alone
    assert sorted(e.index for e in events if e.finish_reason) == [0, 1, 2]


def test_vision_cache_across_calls(vlm, image_path):
    vlm.vision_cache.clear()
    hits = vlm.vision_cache.hits
    first = vlm.chat("Describe.", images=[image_path], **GREEDY)
    assert vlm.chat("Describe.", images=[image_path], **GREEDY) == first
    assert vlm.vision_cache.hits == hits + 1


def test_sampling_overrides_are_checked(vlm):
    with pytest.raises(InputError, match="temprature"):
        vlm.chat("hi", temprature=0.5)
    with pytest.raises(InputError, match="top_p"):
        vlm.chat("hi", top_p=2.0)


def test_device_and_dtype_choice():
    device, dtype = resolve_device_dtype()
    assert (device.type, dtype) == (("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32))
    assert resolve_device_dtype("cpu", "bf16") == (torch.device("cpu"), torch.bfloat16)
    with pytest.raises(InputError, match="float8"):
        resolve_device_dtype("cpu", "float8")
    with pytest.raises(InputError, match="nonsense"):
        resolve_device_dtype("nonsense")


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere"):
        qwen25vl.load(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="config.json"):
        qwen25vl.load(tmp_path)
    if not (EMBEDDED_MODEL_DIR / "config.json").exists():
        with pytest.raises(InputError, match=NO_EMBEDDED_MODEL):
            qwen25vl.load()


@pytest.mark.parametrize("device", ["mps", "xpu", "meta"])
def test_devices_we_do_not_run_on_are_input_errors(folder, device):
    with pytest.raises(InputError, match=f"device '{device}' is not supported"):
        qwen25vl.load(folder, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_only_torch_is_an_input_error(folder):
    for device in ("cuda", "cuda:0", torch.device("cuda", 1)):
        with pytest.raises(InputError, match="CUDA is not available"):
            qwen25vl.load(folder, device=device)


def test_auto_dtype_on_cpu_follows_the_checkpoint_and_the_cpu(monkeypatch):
    from qwen25vl import api

    cpu = torch.device("cpu")
    monkeypatch.setattr(api, "cpu_has_bf16", lambda: True)
    assert resolve_device_dtype("cpu", "auto", stored="bfloat16") == (cpu, torch.bfloat16)  # as released, natively
    assert resolve_device_dtype("cpu", None, stored="float32") == (cpu, torch.float32)  # tiny test checkpoints
    assert resolve_device_dtype("cpu", None, stored=None) == (cpu, torch.float32)
    assert resolve_device_dtype("cpu", "float32", stored="bfloat16") == (cpu, torch.float32)  # asked for
    monkeypatch.setattr(api, "cpu_has_bf16", lambda: False)  # emulated bf16 would be slow: keep fp32
    assert resolve_device_dtype("cpu", "auto", stored="bfloat16") == (cpu, torch.float32)
    with pytest.raises(InputError, match="int8"):
        resolve_device_dtype("cpu", torch.int8)


@pytest.mark.parametrize("threads", [0, -1, 1.5, "two", True])
def test_bad_thread_counts_are_input_errors(folder, threads):
    with pytest.raises(InputError, match="threads"):
        qwen25vl.load(folder, threads=threads)


def test_threads_are_set_as_asked_and_kept_when_not_given(folder):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert qwen25vl.load(folder, threads=None).threads_reason is None and torch.get_num_threads() == 2
        vlm = qwen25vl.load(folder, threads=1)
        assert torch.get_num_threads() == 1 and vlm.threads_reason == "as asked"
        torch.set_num_threads(2)
        assert qwen25vl.load(folder).threads_reason == "auto: tiny model"  # the default
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
