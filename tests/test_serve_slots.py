"""The scheduler's preallocated cache slots, batched and chunked prefill: outputs equal the Python API's one by one
under joins and departures at every step, and joining copies no running row."""

import asyncio

import numpy as np
import pytest
import torch
from PIL import Image

from model_helpers import build_prompt, randomize_

import qwen25vl
from qwen25vl.config import Qwen25VLConfig
from qwen25vl.errors import InputError
from qwen25vl.model.kv_cache import KVCache
from qwen25vl.model.vlm import Qwen25VL
from qwen25vl.serve.prefill import chunk_bounds, chunk_inputs, padded_batch
from qwen25vl.serve.rows import GenRequest
from qwen25vl.serve.scheduler import Scheduler
from qwen25vl.testing.checkpoint import make_tiny_checkpoint

TOL = 1e-4


@pytest.fixture(scope="module")
def model():
    return randomize_(Qwen25VL(Qwen25VLConfig.preset("tiny")), seed=5).eval()


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    return qwen25vl.load(make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=2), threads=None)


def _step(model, cache, tokens):
    with torch.no_grad():
        return model(torch.tensor(tokens), cache=cache, logits_to_keep=1).logits[:, -1]  # tokens (B, 1)


# --- the cache's slot operations -----------------------------------------------------------------------------------

def test_rows_join_leave_in_place_and_decode_as_alone(model):
    prompts = [build_prompt([5, ("image", (1, 4, 4)), 2], seed=1), build_prompt([9], seed=2),
               build_prompt([3], seed=3)]
    alone = []
    for p in prompts:
        cache = KVCache.for_model(model, 1, 40)
        with torch.no_grad():
            model(**p, cache=cache)
        alone.append(cache)
    slots = KVCache.for_model(model, 0, 40, capacity=4)
    storage = slots.k.untyped_storage().data_ptr()
    for p in prompts:
        rows = slots.add_rows(1)
        with torch.no_grad():
            model(**p, cache=slots.rows_view(rows))
    assert slots.batch == 3 and slots.lengths.tolist() == [13, 9, 3] and slots._host_lengths == [13, 9, 3]
    out = _step(model, slots, [[7], [8], [9]])
    for i, cache in enumerate(alone):
        assert (out[i] - _step(model, cache, [[7 + i]])[0]).abs().max() <= TOL
    assert slots.remove_rows([0]) == [2, 1]  # the last row moves into the hole; row 1 stays put
    assert slots.lengths.tolist() == [4, 10] and slots.rope_deltas.tolist() == [0, 0]
    out = _step(model, slots, [[20], [21]])
    assert (out[0] - _step(model, alone[2], [[20]])[0]).abs().max() <= TOL
    assert (out[1] - _step(model, alone[1], [[21]])[0]).abs().max() <= TOL
    assert slots.k.untyped_storage().data_ptr() == storage  # nothing reallocated
    with pytest.raises(InputError, match="capacity 4"):
        slots.add_rows(3)


def test_copy_row_and_resized_keep_decoding_equal(model):
    slots = KVCache.for_model(model, 0, 20, capacity=3)
    with torch.no_grad():
        model(**build_prompt([6, ("image", (1, 4, 4)), 1], seed=4), cache=slots.rows_view(slots.add_rows(1)))
    slots.copy_row(0, slots.add_rows(1).start)
    grown = slots.resized(64, 3)
    assert grown.max_len == 64 and grown.capacity == 3 and grown.rope_deltas.tolist() == slots.rope_deltas.tolist()
    a, b = _step(model, slots, [[3], [3]]), _step(model, grown, [[3], [3]])
    assert (a[0] - a[1]).abs().max() <= TOL and (a - b).abs().max() <= TOL


# --- prefill cuts --------------------------------------------------------------------------------------------------

def test_chunks_never_split_a_vision_block_and_equal_one_shot(model):
    cfg = model.config
    prompt = build_prompt([5, ("image", (1, 4, 4)), 4, ("image", (1, 4, 8)), 6], seed=6)
    ids = prompt["input_ids"][0]
    bounds = chunk_bounds(ids, 4, cfg.vision_start_token_id, cfg.vision_end_token_id)
    assert bounds[0] == (0, 4) and bounds[-1][1] == len(ids)
    assert all(a == b for (_, a), (b, _) in zip(bounds, bounds[1:]))
    cuts = {a for a, _ in bounds}
    for first, last in [(5, 10), (15, 24)]:  # the blocks: start token .. end token
        assert not any(first < c <= last for c in cuts)
    with torch.no_grad():
        feats = model.encode_images(prompt["pixel_values"], prompt["image_grid_thw"])
        whole = model(**prompt).logits[0, -1]
        cache = KVCache.for_model(model, 1, 64)
        for a, b in bounds:
            part = chunk_inputs(prompt, a, b, start_id=cfg.vision_start_token_id, end_id=cfg.vision_end_token_id,
                                image_id=cfg.image_token_id, merge=4, image_embeds=feats, video_embeds=None)
            last = model(part["input_ids"], image_grid_thw=part["image_grid_thw"], cache=cache,
                         image_embeds=part["image_embeds"], logits_to_keep=1).logits[0, -1]
    assert (last - whole).abs().max() <= TOL


def test_padded_batch_concatenates_grids_in_row_order():
    a, b = build_prompt([2, ("image", (1, 4, 4)), 1], seed=7), build_prompt([4], seed=8)
    c = build_prompt([1, ("image", (1, 4, 6))], seed=9)
    batch = padded_batch([a, b, c])
    assert batch["input_ids"].shape == (3, 9) and batch["attention_mask"].sum(-1).tolist() == [9, 4, 9]
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 6]] and batch["video_grid_thw"] is None


# --- the scheduler -------------------------------------------------------------------------------------------------

def _image(seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (56, 84, 3), dtype=np.uint8))


def _conv(i):
    text = f"question {i} " + "and more words " * (20 if i % 4 == 3 else 0)  # every 4th is long: chunked
    if i % 2:
        return [{"role": "user", "content": text}]
    return [{"role": "user", "content": [{"type": "image", "image": _image(i % 3)}, {"type": "text", "text": text}]}]


def _serve(scheduler, first, arrivals, observe=None):
    """Start with `first`; before every decode step call `observe` and submit the next of `arrivals`; return every
    request's texts."""
    pending = list(arrivals)

    def arrive():
        if observe is not None:
            observe()
        if pending:
            scheduler.submit(pending.pop(0))

    scheduler.before_step = arrive

    async def main():
        loop = asyncio.get_running_loop()
        for r in [*first, *arrivals]:
            r.loop, r.queue = loop, asyncio.Queue()
        for r in first:
            scheduler.submit(r)
        scheduler.start()
        return await asyncio.gather(*(collect(r) for r in [*first, *arrivals]))

    async def collect(r):
        texts = [""] * r.n
        while True:
            event = await asyncio.wait_for(r.queue.get(), timeout=60)
            assert event.kind != "error", event.text
            if event.kind == "delta":
                texts[event.index] += event.text
            if event.kind == "end":
                return texts

    try:
        return asyncio.run(main())
    finally:
        scheduler.stop()


def test_greedy_outputs_equal_one_by_one_under_joins_and_departures_every_step(vlm, monkeypatch):
    lengths = [9, 3, 6, 1, 8, 2, 5, 4, 7, 3]  # departures at many different steps
    requests = [GenRequest(inputs=dict(vlm.processor(_conv(i))), n=2 if i == 4 else 1,
                           params=vlm.defaults.updated(temperature=0, max_new_tokens=n))
                for i, n in enumerate(lengths)]
    expected = [vlm.chat(_conv(i), temperature=0, max_new_tokens=n) for i, n in enumerate(lengths)]
    monkeypatch.setattr(KVCache, "concat", lambda *a: pytest.fail("joined by copying the cache"))
    monkeypatch.setattr(KVCache, "select", lambda *a: pytest.fail("left by copying the cache"))
    # room for every row from the start: joins and departures within capacity, so nothing may be copied
    scheduler = Scheduler(vlm.model, vlm.tokenizer, max_batch=8, prefill_chunk=24, slot_rows=8, slot_tokens=256)
    rows = []
    texts = _serve(scheduler, requests[:2], requests[2:], observe=lambda: rows.append(scheduler.running_rows))
    for i, got in enumerate(texts):
        assert got == [expected[i]] * requests[i].n, f"request {i}"
    assert scheduler.cache_copies == 0 and scheduler.cache_allocs == 1 and max(rows) >= 4
    assert sum(r.prompt_len > 24 for r in requests) >= 2  # some prompts were prefilled in chunks
    assert scheduler.prefill_calls > len(requests)


def test_joining_keeps_the_running_rows_storage(vlm):
    params = vlm.defaults.updated(temperature=0, max_new_tokens=12)
    requests = [GenRequest(inputs=dict(vlm.processor(_conv(i))), params=params, ignore_eos=True) for i in range(5)]
    scheduler = Scheduler(vlm.model, vlm.tokenizer, max_batch=8, slot_rows=8, slot_tokens=256)  # room for all
    seen = []

    def observe():
        cache = scheduler._cache
        seen.append((cache.k.untyped_storage().data_ptr(), cache.batch))

    texts = _serve(scheduler, requests[:1], requests[1:], observe)
    assert len({ptr for ptr, _ in seen}) == 1  # one allocation for the whole run
    assert max(rows for _, rows in seen) == 5 and scheduler.cache_copies == 0 and scheduler.cache_allocs == 1
    assert all(t[0] for t in texts)


def test_a_long_prompt_is_prefilled_between_decode_steps(vlm):
    params = vlm.defaults.updated(temperature=0, max_new_tokens=30)
    running = GenRequest(inputs=dict(vlm.processor(_conv(1))), params=params, ignore_eos=True)
    long = GenRequest(inputs=dict(vlm.processor(_conv(3))), params=params.updated(max_new_tokens=3))
    chunk = running.prompt_len  # the running prompt in one forward, the long one in several
    scheduler = Scheduler(vlm.model, vlm.tokenizer, prefill_chunk=chunk)
    trace = []
    texts = _serve(scheduler, [running], [long],
                   observe=lambda: trace.append((scheduler.prefill_calls, running.completion_tokens)))
    chunks = len([c for c in range(0, long.prompt_len, chunk)])
    assert chunks >= 3
    # the long prompt's chunks went in one per iteration, and the running row got a token after each
    first_seen = {}
    for calls, tokens in trace:
        first_seen.setdefault(calls, tokens)
    assert [first_seen.get(c) for c in range(2, 2 + chunks)] == list(range(2, 2 + chunks))
    assert texts[1] == [vlm.chat(_conv(3), temperature=0, max_new_tokens=3)]


def test_the_same_image_in_later_requests_skips_the_tower(vlm, monkeypatch):
    calls = []
    real = vlm.model.visual.forward
    monkeypatch.setattr(vlm.model.visual, "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    params = vlm.defaults.updated(temperature=0, max_new_tokens=2)
    scheduler = Scheduler(vlm.model, vlm.tokenizer)
    first = GenRequest(inputs=dict(vlm.processor(_conv(0))), params=params)
    _serve(scheduler, [first], [])
    scheduler = Scheduler(vlm.model, vlm.tokenizer)
    scheduler.vision_cache = None
    _serve(scheduler, [GenRequest(inputs=dict(vlm.processor(_conv(0))), params=params)], [])
    assert len(calls) == 2  # no cache: encoded again
    scheduler = Scheduler(vlm.model, vlm.tokenizer)
    again = [GenRequest(inputs=dict(vlm.processor(_conv(i))), params=params) for i in (0, 2, 6)]  # images 0, 2, 0
    _serve(scheduler, again[:1], again[1:])
    assert len(calls) == 4 and scheduler.vision_cache.hits == 1  # image 0 once, image 2 once, image 0 again: hit


def test_a_request_failing_after_the_batched_prefill_fails_alone(vlm):
    params = vlm.defaults.updated(temperature=0, max_new_tokens=5)
    good, bad = (GenRequest(inputs=dict(vlm.processor(_conv(i))), params=params) for i in (1, 5))
    scheduler = Scheduler(vlm.model, vlm.tokenizer)
    real = scheduler.sampler.sample

    def sample(rows, logits):
        if rows[0].request is bad:
            raise RuntimeError("sampling broke")
        return real(rows, logits)

    scheduler.sampler.sample = sample

    async def main():
        loop = asyncio.get_running_loop()
        for r in (good, bad):
            r.loop, r.queue = loop, asyncio.Queue()
            scheduler.submit(r)  # both wait before the worker starts: one batched prefill
        scheduler.start()
        return [await events(r) for r in (good, bad)]

    async def events(r):
        out = []
        while not out or out[-1].kind not in ("end", "error"):
            out.append(await asyncio.wait_for(r.queue.get(), timeout=30))
        return out

    try:
        got_good, got_bad = asyncio.run(main())
    finally:
        scheduler.stop()
    assert [e.kind for e in got_bad] == ["error"] and "sampling broke" in got_bad[0].text
    assert "".join(e.text for e in got_good if e.kind == "delta") == vlm.chat(_conv(1), temperature=0,
                                                                             max_new_tokens=5)
    assert sum(e.kind == "end" for e in got_good) == 1 and scheduler.prefill_calls == 1


def test_rows_of_a_chunked_request_are_reserved_until_it_joins(vlm):
    params = vlm.defaults.updated(temperature=0, max_new_tokens=4)
    long = GenRequest(inputs=dict(vlm.processor(_conv(3))), params=params, n=2)
    short = GenRequest(inputs=dict(vlm.processor(_conv(1))), params=params.updated(max_new_tokens=20), n=2)
    # short arrives while long's chunks go in and still runs when long joins: 1 + 2 rows would fit, but long's
    # second choice needs the third
    scheduler = Scheduler(vlm.model, vlm.tokenizer, max_batch=3, prefill_chunk=short.prompt_len)
    assert long.prompt_len > 2 * short.prompt_len
    texts = _serve(scheduler, [long], [short])
    assert texts == [[vlm.chat(_conv(i), temperature=0, max_new_tokens=n)] * 2 for i, n in ((3, 4), (1, 20))]
    assert scheduler.max_rows_seen <= 3


def test_a_request_longer_than_the_slots_grows_them_once_and_outputs_stay_equal(vlm):
    params = vlm.defaults.updated(temperature=0, max_new_tokens=6)
    requests = [GenRequest(inputs=dict(vlm.processor(_conv(i))), params=params) for i in (1, 3)]
    scheduler = Scheduler(vlm.model, vlm.tokenizer, slot_tokens=requests[0].prompt_len + 6)
    texts = _serve(scheduler, requests[:1], requests[1:])  # the second (longer) arrives while the first decodes
    assert texts == [[vlm.chat(_conv(i), temperature=0, max_new_tokens=6)] for i in (1, 3)]
    assert scheduler.cache_copies == 1 and scheduler._cache.max_len >= requests[1].prompt_len + 6


# --- the cache grows on demand ---------------------------------------------------------------------------------------

def test_the_cache_grows_rows_and_tokens_in_the_middle_of_a_run_and_outputs_stay_equal(vlm, monkeypatch):
    """Two short requests start (2 rows of 64 slots); eight more arrive one per step (rows double 2 -> 4 -> 8 -> 16)
    and two long prompts, prefilled in chunks, join the running batch (slots double 64 -> 128 -> 256)."""
    order = [1, 2, 5, 0, 3, 6, 4, 7, 9, 8, 10, 11]  # 3 and 7 are the long ones
    lengths = {i: 4 + (5 * i) % 9 for i in order}
    lengths[10] = 8  # its 9th greedy token is an exact tie in this random model (two equal logits, 20.0971): which
    # one wins depends on the summation order of a batched product, not on the cache
    requests = [GenRequest(inputs=dict(vlm.processor(_conv(i))), params=vlm.defaults.updated(
        temperature=0, max_new_tokens=lengths[i]), n=2 if i == 6 else 1) for i in order]
    expected = [vlm.chat(_conv(i), temperature=0, max_new_tokens=lengths[i]) for i in order]
    resized = []
    real = KVCache.resized
    monkeypatch.setattr(KVCache, "resized", lambda self, *a: resized.append((self.batch, *a)) or real(self, *a))
    monkeypatch.setattr(KVCache, "concat", lambda *a: pytest.fail("joined by copying the cache"))
    scheduler = Scheduler(vlm.model, vlm.tokenizer, max_batch=16, prefill_chunk=64)
    seen = []

    def observe():
        cache = scheduler._cache
        seen.append((cache.k.untyped_storage().data_ptr(), scheduler.cache_allocs, cache.capacity, cache.max_len,
                     cache.batch))

    texts = _serve(scheduler, requests[:2], requests[2:], observe)
    for i, got in enumerate(texts):
        assert got == [expected[i]] * requests[i].n, f"request {order[i]}"
    assert seen[0][2:4] == (2, 64)  # the first admission's two rows of ~50 tokens, rounded up to powers of two
    assert {c for *_, c, _, _ in seen} >= {2, 4, 8} and max(c for *_, c, _, _ in seen) == 16
    assert {m for *_, m, _ in seen} >= {64, 256}
    assert any(rows > 1 and length > 64 for rows, length, _ in resized)  # tokens grew under running rows
    # the storage moved only at counted allocations: joins and departures in between copied nothing
    for (ptr_a, allocs_a, *_), (ptr_b, allocs_b, *_) in zip(seen, seen[1:]):
        assert ptr_a == ptr_b or allocs_a != allocs_b
    assert len(resized) == scheduler.cache_copies >= 4
    assert scheduler.cache_allocs == 1 + scheduler.cache_copies <= 1 + 3 + 2  # log2(16 / 2) + log2(256 / 64)


def test_decode_steps_grow_the_slots_by_doubling(vlm):
    """One request generating 300 tokens from a ~42-token prompt: 64 -> 128 -> 256 -> 512 slots, four allocations."""
    params = vlm.defaults.updated(temperature=0, max_new_tokens=300)
    request = GenRequest(inputs=dict(vlm.processor(_conv(1))), params=params, ignore_eos=True)
    scheduler = Scheduler(vlm.model, vlm.tokenizer)
    sizes = []
    texts = _serve(scheduler, [request], [], observe=lambda: sizes.append(scheduler._cache.max_len))
    assert request.completion_tokens == 300 and texts[0][0]
    used = request.prompt_len + 299  # the last token is sampled, never written
    assert 256 < used <= 512 and sorted(set(sizes)) == [64, 128, 256, 512]
    assert sizes == sorted(sizes) and scheduler.cache_allocs == 4 and scheduler.cache_copies == 3


def test_max_slot_tokens_bounds_growth_and_refuses_a_request_over_it(vlm):
    params = vlm.defaults.updated(temperature=0, max_new_tokens=60)
    short = GenRequest(inputs=dict(vlm.processor(_conv(1))), params=params, ignore_eos=True)
    long = GenRequest(inputs=dict(vlm.processor(_conv(3))), params=params)
    cap = short.prompt_len + 60 + 3  # not a power of two: growth stops at the cap, not at 128
    scheduler = Scheduler(vlm.model, vlm.tokenizer, max_slot_tokens=cap)

    async def main():
        loop = asyncio.get_running_loop()
        for r in (short, long):
            r.loop, r.queue = loop, asyncio.Queue()
            scheduler.submit(r)
        scheduler.start()
        return [await events(r) for r in (short, long)]

    async def events(r):
        out = []
        while not out or out[-1].kind not in ("end", "error"):
            out.append(await asyncio.wait_for(r.queue.get(), timeout=60))
        return out

    try:
        got_short, got_long = asyncio.run(main())
    finally:
        scheduler.stop()
    assert [e.kind for e in got_long] == ["error"] and f"max_slot_tokens={cap}" in got_long[0].text
    assert "".join(e.text for e in got_short if e.kind == "delta") == vlm.chat(
        _conv(1), temperature=0, max_new_tokens=60)
    assert scheduler._cache.max_len == cap and scheduler.cache_allocs == 2


def test_slot_shape_starts_at_powers_of_two_and_doubles_the_short_side():
    from qwen25vl.serve.slots import pow2, slot_shape

    assert [pow2(n) for n in (0, 1, 2, 3, 64, 65)] == [1, 1, 2, 4, 64, 128]
    kw = dict(floor=(1, 64), most=(32, None))
    assert slot_shape(None, 3, 50, **kw) == (4, 64)  # first: powers of two, at least the floor
    assert slot_shape((4, 64), 4, 64, **kw) == (4, 64)  # fits: unchanged
    assert slot_shape((4, 64), 5, 64, **kw) == (8, 64)  # rows double, slots stay
    assert slot_shape((4, 64), 4, 65, **kw) == (4, 128)  # slots double, rows stay
    assert slot_shape((4, 64), 4, 300, **kw) == (4, 512)  # or jump to what is needed
    assert slot_shape((16, 64), 17, 64, **kw) == (32, 64)  # capped at max_batch
    assert slot_shape((4, 64), 4, 100, floor=(1, 64), most=(32, 100)) == (4, 100)  # capped at max_slot_tokens
