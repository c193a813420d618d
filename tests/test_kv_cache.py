"""KV cache: cached decoding equals the uncached forward; per-row offsets, select and concat behave."""

import pytest
import torch

from model_helpers import build_prompt, left_pad_batch, randomize_

from qwen25vl.config import Qwen25VLConfig
from qwen25vl.errors import InputError
from qwen25vl.model.kv_cache import KVCache
from qwen25vl.model.vlm import Qwen25VL

TOL = 1e-4
NEW = [[17, 301], [45, 99], [7, 250], [123, 5]]  # tokens fed one step at a time (2 rows)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_(Qwen25VL(Qwen25VLConfig.preset("tiny")), seed=3).eval()


def _run(model, inputs, **kw):
    with torch.no_grad():
        return model(**inputs, **kw)


def _extend(inputs, tokens):
    """The prompt plus generated tokens, as one uncached input."""
    out = dict(inputs)
    out["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor(tokens)], dim=1)
    if "attention_mask" in inputs:
        out["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones(len(tokens), len(tokens[0]),
                                                                                 dtype=torch.long)], dim=1)
    return out


def _decode_matches(model, inputs, steps):
    batch = inputs["input_ids"].shape[0]
    new = [row[:batch] for row in NEW[:steps]]
    cache = KVCache.for_model(model, batch, inputs["input_ids"].shape[1] + steps + 3)
    first = _run(model, inputs, cache=cache)
    full = _run(model, _extend(inputs, [list(col) for col in zip(*new)]))
    n = inputs["input_ids"].shape[1]
    valid = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])).bool()
    assert (first.logits - full.logits[:, :n])[valid].abs().max().item() <= TOL
    for step, tokens in enumerate(new):
        out = _run(model, {"input_ids": torch.tensor(tokens)[:, None]}, cache=cache)
        diff = (out.logits[:, 0] - full.logits[:, n + step]).abs().max().item()
        assert diff <= TOL, f"decode step {step}: {diff:.2e}"
        assert torch.equal(out.position_ids[:, :, 0], full.position_ids[:, :, n + step])
    return cache


def test_left_padded_text_batch(model):
    inputs = left_pad_batch([build_prompt([9], seed=1), build_prompt([4], seed=2)])
    cache = _decode_matches(model, inputs, 4)
    assert cache.lengths.tolist() == [13, 13]
    assert cache.num_valid().tolist() == [13, 8]


def test_with_an_image(model):
    inputs = build_prompt([3, ("image", (1, 6, 8)), 4], seed=3)
    cache = _decode_matches(model, inputs, 3)
    assert cache.rope_deltas.tolist() == [3 - 12 + 1]  # image of 3 x 4 units: 12 tokens hold 4 distinct ids


def test_left_padded_batch_with_images_and_video(model):
    a = build_prompt([2, ("image", (1, 4, 6)), 5], seed=4)
    b = build_prompt([3, ("video", (4, 4, 4), 2.0), 2], seed=5)
    _decode_matches(model, left_pad_batch([a, b]), 3)


def test_chunked_prefill_with_image_equals_one_shot(model):
    # A second turn that brings a new image after a cached first turn (multi-turn chat).
    turn1 = build_prompt([4, ("image", (1, 4, 4)), 3], seed=6)
    turn2 = build_prompt([2, ("image", (1, 4, 6)), 3], seed=7)
    whole = {"input_ids": torch.cat([turn1["input_ids"], turn2["input_ids"]], 1),
             "pixel_values": torch.cat([turn1["pixel_values"], turn2["pixel_values"]]),
             "image_grid_thw": torch.cat([turn1["image_grid_thw"], turn2["image_grid_thw"]])}
    full = _run(model, whole)
    cache = KVCache.for_model(model, 1, 64)
    _run(model, turn1, cache=cache)
    second = _run(model, turn2, cache=cache)
    n = turn1["input_ids"].shape[1]
    assert (second.logits - full.logits[:, n:]).abs().max().item() <= TOL
    assert torch.equal(second.position_ids, full.position_ids[:, :, n:])
    assert cache.rope_deltas.tolist() == full.rope_deltas.tolist()


def test_select_keeps_rows(model):
    inputs = left_pad_batch([build_prompt([6], seed=8), build_prompt([9], seed=9)])
    cache = KVCache.for_model(model, 2, 20)
    _run(model, inputs, cache=cache)
    both = _run(model, {"input_ids": torch.tensor([[11], [22]])}, cache=cache)
    kept = cache.select([1])
    assert kept.batch == 1 and kept.lengths.tolist() == [10] and kept.used() == 10
    single = KVCache.for_model(model, 1, 20)
    _run(model, build_prompt([9], seed=9), cache=single)
    _run(model, {"input_ids": torch.tensor([[22]])}, cache=single)
    a = _run(model, {"input_ids": torch.tensor([[33]])}, cache=kept)
    b = _run(model, {"input_ids": torch.tensor([[33]])}, cache=single)
    assert (a.logits - b.logits).abs().max().item() <= TOL
    assert both.logits.shape[0] == 2
    masked = cache.select(torch.tensor([True, False]))
    assert masked.num_valid().tolist() == [7]


def test_concat_rows_of_different_lengths(model):
    pa, pb = build_prompt([5, ("image", (1, 4, 4)), 2], seed=10), build_prompt([12], seed=11)
    ca, cb = KVCache.for_model(model, 1, 16), KVCache.for_model(model, 1, 24)
    _run(model, pa, cache=ca)
    _run(model, pb, cache=cb)
    joined = ca.concat(cb)
    assert joined.max_len == 24 and joined.lengths.tolist() == [13, 12] and joined.used() == 13
    out = _run(model, {"input_ids": torch.tensor([[40], [41]])}, cache=joined)
    alone_a = _run(model, {"input_ids": torch.tensor([[40]])}, cache=ca)
    alone_b = _run(model, {"input_ids": torch.tensor([[41]])}, cache=cb)
    assert (out.logits[0] - alone_a.logits[0]).abs().max().item() <= TOL
    assert (out.logits[1] - alone_b.logits[0]).abs().max().item() <= TOL
    assert out.position_ids[0, :, 0].tolist() == [alone_a.position_ids[0, 0, 0].item(),
                                                  alone_b.position_ids[0, 0, 0].item()]
    # A second step after the join still matches (rows now at 14 and 13 slots).
    out2 = _run(model, {"input_ids": torch.tensor([[50], [51]])}, cache=joined)
    ref_b = _run(model, {"input_ids": torch.tensor([[51]])}, cache=cb)
    assert (out2.logits[1] - ref_b.logits[0]).abs().max().item() <= TOL


def test_given_positions_set_the_delta(model):
    inputs = build_prompt([6], seed=12)
    cache = KVCache.for_model(model, 1, 16)
    pos = (torch.arange(6) * 2).expand(3, 1, -1)  # max id 10 over 6 tokens: delta 5
    out = _run(model, inputs, position_ids=pos, cache=cache)
    assert out.rope_deltas.tolist() == [5] and cache.rope_deltas.tolist() == [5]
    nxt = _run(model, {"input_ids": torch.tensor([[3]])}, cache=cache)
    assert nxt.position_ids[:, 0, 0].tolist() == [11, 11, 11]


def test_errors(model):
    cache = KVCache.for_model(model, 1, 4)
    with pytest.raises(InputError, match="overflow"):
        _run(model, {"input_ids": torch.ones(1, 5, dtype=torch.long)}, cache=cache)
    with pytest.raises(InputError, match="holds 1 rows but input_ids has 2"):
        _run(model, {"input_ids": torch.ones(2, 1, dtype=torch.long)}, cache=KVCache.for_model(model, 1, 4))
    with pytest.raises(InputError, match="at least one row"):
        KVCache.for_model(model, 2, 4).select([])
    # A refused call leaves the cache as it was: the next step still works.
    cache = KVCache.for_model(model, 1, 4)
    _run(model, {"input_ids": torch.ones(1, 3, dtype=torch.long)}, cache=cache)
    with pytest.raises(InputError, match="3 slots used \\+ 2 new tokens > max_len 4"):
        _run(model, {"input_ids": torch.ones(1, 2, dtype=torch.long)}, cache=cache)
    assert cache.lengths.tolist() == [3] and cache.rope_deltas.tolist() == [0]
    assert _run(model, {"input_ids": torch.ones(1, 1, dtype=torch.long)}, cache=cache).position_ids[0, 0, 0] == 3
    other = KVCache(1, 1, 4, 2, 16)
    with pytest.raises(InputError, match="equal layers"):
        KVCache.for_model(model, 1, 4).concat(other)


@pytest.mark.parametrize("keep", [1, 3, 50])
def test_logits_to_keep_with_and_without_cache(model, keep):
    # The last layer computes queries for the kept positions only; padding and the cache mask must still line up.
    inputs = left_pad_batch([build_prompt([2, ("image", (1, 4, 4)), 6], seed=13), build_prompt([5], seed=14)])
    full = _run(model, inputs).logits
    n = min(keep, full.shape[1])
    assert (_run(model, inputs, logits_to_keep=keep).logits - full[:, -n:]).abs().max().item() <= TOL
    cache = KVCache.for_model(model, 2, 32)
    out = _run(model, inputs, cache=cache, logits_to_keep=keep)
    assert (out.logits - full[:, -n:]).abs().max().item() <= TOL
    nxt = _run(model, {"input_ids": torch.tensor([[9], [8]])}, cache=cache)
    ref = _run(model, _extend(inputs, [[9], [8]])).logits[:, -1]
    assert (nxt.logits[:, 0] - ref).abs().max().item() <= TOL


def test_resized_to_more_rows_and_slots_then_rows_join_in_place(model):
    """The scheduler's growth step: the running rows copied once into a bigger cache decode as before, and rows
    added afterwards (within the new capacity) leave the storage where it is."""
    small = KVCache.for_model(model, 0, 16, capacity=2)
    for seed, words in ((1, [9]), (2, [4])):
        rows = small.add_rows(1)
        _run(model, build_prompt(words, seed=seed), cache=small.rows_view(rows))
    assert [small.row_used(i) for i in range(2)] == [9, 4]
    with pytest.raises(InputError, match="capacity 2"):
        small.add_rows(1)
    big = small.resized(32, 4)
    assert (big.capacity, big.max_len, big.batch) == (4, 32, 2) and big._host_lengths == [9, 4]
    storage = big.k.untyped_storage().data_ptr()
    step = torch.tensor([[7], [8]])
    a, b = _run(model, {"input_ids": step}, cache=small), _run(model, {"input_ids": step}, cache=big)
    assert (a.logits - b.logits).abs().max() <= TOL
    _run(model, build_prompt([3], seed=3), cache=big.rows_view(big.add_rows(2)[:1]))
    assert big.k.untyped_storage().data_ptr() == storage and big.row_used(2) == 3 and big.row_used(3) == 0
    with pytest.raises(InputError, match="outside 4"):
        big.row_used(4)
    with pytest.raises(InputError, match="cannot hold"):
        big.resized(9, 4)  # row 0 uses 10 slots
