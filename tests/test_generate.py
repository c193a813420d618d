"""Generation: greedy parity with transformers' generate, cache == no cache, batched == one by one, streaming,
stop strings, vision cache. A tiny random checkpoint written in the test (embedding std 1, so argmax margins are
wide and the greedy sequences are not constant), loaded by our loader and by transformers from the same folder.

Inputs are built by hand (token ids + random pixel rows of the right grid) so that these tests depend on the model
only; the processor has its own parity tests.
"""

import pytest
import torch

from qwen25vl.generation.generate import TokenGenerator, generate_batch, stream_batch
from qwen25vl.generation.sampling import SamplingParams
from qwen25vl.generation.streaming import TextStream
from qwen25vl.generation.vision_cache import VisionCache

IMAGE, VIDEO, VSTART, VEND, IM_END = 524, 525, 521, 522, 514
NO_STOP = SamplingParams(max_new_tokens=12)  # greedy; no stop ids (random models emit EOS at random)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from qwen25vl.testing.checkpoint import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def model(folder):
    from qwen25vl.model.vlm import Qwen25VL

    return Qwen25VL.from_pretrained(folder, dtype=torch.float32, device="cpu").eval()


@pytest.fixture(scope="module")
def tokenizer(folder):
    from qwen25vl.processing.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def hf_model(folder):
    import transformers
    return transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()


def _text(tokenizer, text):
    return tokenizer.encode(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")


def image_prompt(tokenizer, grid=(1, 4, 6), text="what is this?", seed=1):
    t, h, w = grid
    n = t * h * w // 4
    ids = tokenizer.encode("<|im_start|>user\n") + [VSTART] + [IMAGE] * n + [VEND] + tokenizer.encode(
        f"{text}<|im_end|>\n<|im_start|>assistant\n")
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.tensor([ids]), "pixel_values": torch.randn(t * h * w, 1176, generator=g),
            "image_grid_thw": torch.tensor([grid])}


def video_prompt(tokenizer, grid=(2, 4, 4), seconds=0.5, seed=2):
    t, h, w = grid
    n = t * h * w // 4
    ids = tokenizer.encode("<|im_start|>user\n") + [VSTART] + [VIDEO] * n + [VEND] + tokenizer.encode(
        "when?<|im_end|>\n<|im_start|>assistant\n")
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.tensor([ids]), "pixel_values_videos": torch.randn(t * h * w, 1176, generator=g),
            "video_grid_thw": torch.tensor([grid]), "second_per_grid_ts": torch.tensor([seconds])}


def _ours(model, inputs, params=NO_STOP, **kw):
    gen = TokenGenerator(model, inputs, params, **kw)
    for _ in gen:
        pass
    return gen


def _hf_greedy(hf_model, inputs, n):
    ids = inputs["input_ids"]
    mm = torch.zeros_like(ids)
    mm[ids == IMAGE] = 1
    mm[ids == VIDEO] = 2
    extra = {k: v for k, v in inputs.items() if k != "input_ids"}
    out = hf_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=mm, **extra,
                            max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=512,
                            repetition_penalty=1.0, top_k=None, top_p=None, temperature=None)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("kind", ["text", "image", "video_4fps", "video_2fps"])
def test_greedy_equals_transformers_generate(kind, model, tokenizer, hf_model):
    # Videos: grid (2, 4, 4) at 4 fps (second_per_grid_t 0.5: temporal ids 0, 1; spatial ids 0..1) and (2, 8, 8) at
    # 2 fps (temporal ids 0, 2; spatial 0..3): spatial span >= temporal span, the case where transformers 5's
    # positions agree with the original rule we follow (text resumes at max id + 1). Longer videos are not compared.
    inputs = {
        "text": lambda: {"input_ids": torch.tensor([_text(tokenizer, "Tell me a story about a cat.")])},
        "image": lambda: image_prompt(tokenizer),
        "video_4fps": lambda: video_prompt(tokenizer, seconds=0.5),
        "video_2fps": lambda: video_prompt(tokenizer, grid=(2, 8, 8), seconds=1.0),
    }[kind]()
    ours = _ours(model, inputs).tokens[0]
    assert len(ours) == NO_STOP.max_new_tokens
    assert len(set(ours)) > 2, f"degenerate greedy sequence {ours}: parity would prove little"
    assert ours == _hf_greedy(hf_model, inputs, NO_STOP.max_new_tokens)


def test_vision_input_changes_the_answer(model, tokenizer):
    a = _ours(model, image_prompt(tokenizer, seed=1)).tokens[0]
    b = _ours(model, image_prompt(tokenizer, seed=7)).tokens[0]
    assert a != b  # the image features really reach the language model


def test_cached_logits_equal_uncached(model, tokenizer):
    from qwen25vl.model.kv_cache import KVCache

    inputs = image_prompt(tokenizer)
    gen = _ours(model, inputs, SamplingParams(max_new_tokens=6))
    full = torch.cat([inputs["input_ids"], torch.tensor([gen.tokens[0]])], 1)
    extra = {k: v for k, v in inputs.items() if k != "input_ids"}
    with torch.no_grad():
        reference = model(full, **extra).logits[0, inputs["input_ids"].shape[1] - 1 :]  # (7, V)
        cache = KVCache.for_model(model, 1, full.shape[1])
        steps = [model(inputs["input_ids"], **extra, cache=cache, logits_to_keep=1).logits[0, -1]]
        for t in gen.tokens[0]:
            steps.append(model(torch.tensor([[t]]), cache=cache, logits_to_keep=1).logits[0, -1])
    torch.testing.assert_close(torch.stack(steps), reference, atol=1e-4, rtol=1e-4)


def _batch(prompts, pad_id=512):
    """Left-pad prompts (dicts as built above) into one batch, concatenating their vision inputs in order."""
    width = max(p["input_ids"].shape[1] for p in prompts)
    ids, mask = [], []
    for p in prompts:
        row = p["input_ids"][0].tolist()
        ids.append([pad_id] * (width - len(row)) + row)
        mask.append([0] * (width - len(row)) + [1] * len(row))
    batch = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
    for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
        parts = [p[key] for p in prompts if key in p]
        if parts:
            batch[key] = torch.cat(parts)
    return batch


def test_batch_of_mixed_prompts_equals_each_alone(model, tokenizer):
    prompts = [
        {"input_ids": torch.tensor([_text(tokenizer, "hi")])},
        image_prompt(tokenizer, grid=(1, 4, 4), text="describe the picture in detail please"),
        {"input_ids": torch.tensor([_text(tokenizer, "A much longer text-only prompt, with more words in it.")])},
        video_prompt(tokenizer),
        image_prompt(tokenizer, grid=(1, 6, 4), seed=5),
    ]
    # different lengths per row: rows finish at different steps and are dropped from the cache as they do
    params = [SamplingParams(max_new_tokens=n) for n in (9, 4, 12, 7, 10)]
    alone = [_ours(model, p, params[i]).tokens[0] for i, p in enumerate(prompts)]
    selected = []
    gen = TokenGenerator(model, _batch(prompts), params)
    for _ in gen:
        selected.append(gen.cache.batch)
    assert gen.tokens == alone
    assert selected[0] == 5 and selected[-1] == 1 and selected == sorted(selected, reverse=True)


def test_stop_tokens_and_finish_reasons(model, tokenizer):
    inputs = {"input_ids": torch.tensor([_text(tokenizer, "Tell me a story about a cat.")])}
    free = _ours(model, inputs).tokens[0]
    stop_at = free[5]
    first = free.index(stop_at)
    gen = _ours(model, inputs, SamplingParams(max_new_tokens=12, stop_token_ids=(stop_at,)))
    assert gen.tokens[0] == free[:first] and gen.finish_reasons == ["stop"]
    gen = _ours(model, inputs, SamplingParams(max_new_tokens=3))
    assert gen.tokens[0] == free[:3] and gen.finish_reasons == ["length"]


def test_stream_concatenates_to_text_and_stop_strings_cut(model, tokenizer):
    inputs = {"input_ids": torch.tensor([_text(tokenizer, "Tell me a story about a cat.")] * 1)}
    params = SamplingParams(max_new_tokens=24)
    done = generate_batch(model, tokenizer, inputs, params)[0]
    deltas = list(stream_batch(model, tokenizer, inputs, params))
    assert "".join(d.text for d in deltas) == done.text == tokenizer.decode(done.token_ids, skip_special_tokens=True)
    assert deltas[-1].finish_reason == "length"
    text = done.text
    assert len(text) > 6, text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = generate_batch(model, tokenizer, inputs, params.updated(stop=(stop,)))[0]
    assert cut.text == text[: text.index(stop)] and cut.finish_reason == "stop"
    shown = ""
    for d in stream_batch(model, tokenizer, inputs, params.updated(stop=(stop,))):
        shown += d.text
        assert text[: text.index(stop)].startswith(shown)  # never a piece of the stop string
    assert shown == cut.text


@pytest.mark.parametrize("text", ["héllo wörld — 東京 🐱🐶 ok", "😀😀😀 ∑∫ 文字化け"])
def test_text_stream_over_multibyte_characters(tokenizer, text):
    ids = tokenizer.encode(text)
    stream = TextStream(tokenizer)
    deltas = [stream.push(t) for t in ids] + [stream.finish()]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    stream = TextStream(tokenizer, stops=["🐶", "文字"])
    out = "".join([stream.push(t) for t in ids] + [stream.finish()])
    assert out == text[: min(i for i in (text.find("🐶"), text.find("文字")) if i >= 0)]


def test_vision_cache_reuses_features(model, tokenizer, monkeypatch):
    inputs = image_prompt(tokenizer)
    plain = _ours(model, inputs).tokens[0]
    cache = VisionCache(max_bytes=1 << 20)
    calls = []
    real = model.encode_images
    monkeypatch.setattr(model, "encode_images", lambda *a: calls.append(1) or real(*a))
    assert _ours(model, inputs, vision_cache=cache).tokens[0] == plain
    assert _ours(model, inputs, vision_cache=cache).tokens[0] == plain
    assert len(calls) == 1 and cache.hits == 1 and len(cache) == 1
    other = image_prompt(tokenizer, seed=9)
    _ours(model, other, vision_cache=cache)
    assert len(calls) == 2 and len(cache) == 2
    twice = _ours(model, _batch([inputs, inputs]), vision_cache=VisionCache())
    assert twice.tokens == [plain, plain] and len(calls) == 3  # the same picture twice in a batch: encoded once
    small = VisionCache(max_bytes=cache.bytes // 2 + 1)  # room for one item's features only
    _ours(model, inputs, vision_cache=small)
    _ours(model, other, vision_cache=small)
    assert len(small) == 1 and small.bytes <= small.max_bytes


def test_sampling_with_seed_reproduces(model, tokenizer):
    inputs = {"input_ids": torch.tensor([_text(tokenizer, "hi")])}
    params = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.95, seed=123)
    a = _ours(model, inputs, params).tokens[0]
    assert a == _ours(model, inputs, params).tokens[0]
    assert a != _ours(model, inputs, params.updated(seed=321)).tokens[0]


def test_decode_layout_keeps_values_names_and_tokens(folder, tokenizer):
    from qwen25vl.generation.layout import use_decode_layout
    from qwen25vl.model.vlm import Qwen25VL

    model = Qwen25VL.from_pretrained(folder, dtype=torch.float32, device="cpu").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = image_prompt(tokenizer)
    tokens = _ours(model, inputs).tokens[0]
    with torch.no_grad():
        logits = model(**inputs).logits
    per_layer = 2 if torch.get_num_threads() == 1 else 5  # gate, up; with threads to split over: also down, q, o
    assert use_decode_layout(model) == per_layer * model.config.text.num_hidden_layers + 1  # + lm_head
    assert not model.model.layers[0].mlp.gate_proj.weight.is_contiguous()
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, logits, atol=1e-5, rtol=1e-5)
    assert _ours(model, inputs).tokens[0] == tokens



def test_training_forward_after_generation(folder, tokenizer):
    # generation runs under no_grad, not inference_mode: whatever the model caches per grid while generating must
    # remain usable by autograd later in the same process (a generate-then-train loop, e.g. RL or eval in training)
    from qwen25vl.model.vlm import Qwen25VL

    model = Qwen25VL.from_pretrained(folder, dtype=torch.float32, device="cpu")
    inputs = image_prompt(tokenizer, grid=(1, 6, 6))
    _ours(model, inputs, SamplingParams(max_new_tokens=2))
    model(**inputs).logits.logsumexp(-1).mean().backward()
    assert model.visual.patch_embed.proj.weight.grad is not None
