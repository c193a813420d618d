"""The continuous-batching worker on its own (no HTTP): vision batched across requests, n choices from one prefill,
a failing request or step leaves the worker serving, cancelled rows leave the batch."""

import asyncio

import numpy as np
import pytest
import torch
from PIL import Image

import qwen25vl
from qwen25vl.serve.rows import GenRequest
from qwen25vl.serve.scheduler import QueueFull, Scheduler
from qwen25vl.testing.checkpoint import make_tiny_checkpoint


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    return qwen25vl.load(make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=1))


def _image(seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (56, 56 + 28 * seed, 3), dtype=np.uint8))


def _conversation(i):
    if i == 3:
        return [{"role": "user", "content": "No picture here."}]
    return [{"role": "user", "content": [{"type": "image", "image": _image(i)}, {"type": "text", "text": f"Q{i}"}]}]


def _run(scheduler, requests, stop=True, watched=None):
    """Submit all requests, start the worker, collect each watched request's text / finish reasons / errors."""

    async def main():
        loop = asyncio.get_running_loop()
        for r in requests:
            r.loop, r.queue = loop, asyncio.Queue()
            scheduler.submit(r)
        if not scheduler.alive:
            scheduler.start()
        return await asyncio.gather(*(collect(r) for r in (requests if watched is None else watched)))

    async def collect(r):
        texts, reasons = {}, {}
        while True:
            event = await asyncio.wait_for(r.queue.get(), timeout=30)
            if event.kind == "error":
                return {"error": (event.status, event.text)}
            if event.kind == "delta":
                texts[event.index] = texts.get(event.index, "") + event.text
            elif event.kind == "finish":
                reasons[event.index] = event.reason
            elif event.kind == "end":
                return {"texts": [texts.get(i, "") for i in range(r.n)], "reasons": reasons, "usage": event.usage}

    try:
        return asyncio.run(main())
    finally:
        if stop:
            scheduler.stop()


def test_vision_is_encoded_once_across_admitted_requests(vlm, monkeypatch):
    calls = []
    encode = vlm.model.encode_images
    monkeypatch.setattr(vlm.model, "encode_images", lambda pv, grid: calls.append(grid.shape[0]) or encode(pv, grid))
    params = vlm.defaults.updated(temperature=0, max_new_tokens=10)
    conversations = [_conversation(i) for i in range(4)]
    requests = [GenRequest(inputs=dict(vlm.processor(c)), params=params) for c in conversations]
    results = _run(Scheduler(vlm.model, vlm.tokenizer, vision_cache_bytes=0), requests)
    assert calls == [3]  # three requests' images, one tower call
    monkeypatch.undo()
    for conversation, result in zip(conversations, results):
        assert result["texts"][0] == vlm.chat(conversation, temperature=0, max_new_tokens=10)


def test_n_choices_share_one_prefill(vlm):
    conversation = [{"role": "user", "content": "Three times the same."}]
    params = vlm.defaults.updated(temperature=0, max_new_tokens=8)
    scheduler = Scheduler(vlm.model, vlm.tokenizer)
    forwards = []
    original = scheduler.model.forward
    scheduler.model.forward = lambda ids, *a, **k: forwards.append(tuple(ids.shape)) or original(ids, *a, **k)
    try:
        (result,) = _run(scheduler, [GenRequest(inputs=dict(vlm.processor(conversation)), params=params, n=3)])
    finally:
        del scheduler.model.forward
    want = vlm.chat(conversation, temperature=0, max_new_tokens=8)
    assert result["texts"] == [want] * 3
    assert sum(1 for shape in forwards if shape[1] > 1) == 1  # one prefill for the three rows
    assert all(shape[0] == 3 for shape in forwards if shape[1] == 1)  # decoded together


def test_a_bad_request_or_a_failing_step_leaves_the_worker_serving(vlm):
    params = vlm.defaults.updated(temperature=0, max_new_tokens=6)
    good = dict(vlm.processor([{"role": "user", "content": "fine"}]))
    bad = dict(good)
    pad = vlm.model.config.image_token_id
    bad["input_ids"] = torch.cat([good["input_ids"], torch.tensor([[pad, pad]])], 1)  # pads without an image
    bad["attention_mask"] = torch.ones_like(bad["input_ids"])
    scheduler = Scheduler(vlm.model, vlm.tokenizer)
    results = _run(scheduler, [GenRequest(inputs=bad, params=params), GenRequest(inputs=good, params=params)])
    assert results[0]["error"][0] == 400 and "image" in results[0]["error"][1]
    assert results[1]["texts"][0] == vlm.chat([{"role": "user", "content": "fine"}], temperature=0, max_new_tokens=6)

    scheduler = Scheduler(vlm.model, vlm.tokenizer)
    step, failed = scheduler._decode_step, []

    def flaky():
        if not failed:
            failed.append(1)
            raise RuntimeError("boom")
        step()

    scheduler._decode_step = flaky
    first = _run(scheduler, [GenRequest(inputs=good, params=params)], stop=False)
    assert first[0]["error"][0] == 500 and "boom" in first[0]["error"][1]
    assert scheduler.alive and scheduler.running_rows == 0
    second = _run(scheduler, [GenRequest(inputs=good, params=params)])  # the same worker answers the next one
    assert second[0]["texts"] == results[1]["texts"]


def test_cancelled_rows_leave_the_batch_and_others_are_unaffected(vlm):
    long = GenRequest(inputs=dict(vlm.processor([{"role": "user", "content": "long"}])),
                      params=vlm.defaults.updated(temperature=0, max_new_tokens=400), ignore_eos=True)
    conversation = [{"role": "user", "content": "short"}]
    short = GenRequest(inputs=dict(vlm.processor(conversation)),
                       params=vlm.defaults.updated(temperature=0, max_new_tokens=30))
    scheduler = Scheduler(vlm.model, vlm.tokenizer)

    def cancel_long_at_its_third_token():  # runs in the worker, before a decode step: no race with the clock
        if long.completion_tokens >= 3 and not long.cancelled.is_set():
            scheduler.cancel(long)

    scheduler.before_step = cancel_long_at_its_third_token
    results = _run(scheduler, [long, short], watched=[short])
    assert results[0]["texts"][0] == vlm.chat(conversation, temperature=0, max_new_tokens=30)
    # cancelled before its 4th step: that step still runs, the next iteration drops the row
    assert long.completion_tokens == 4 and scheduler.rows_cancelled == 1


def test_queue_bound(vlm):
    scheduler = Scheduler(vlm.model, vlm.tokenizer, max_queue=2)  # not started: nothing leaves the queue
    inputs = dict(vlm.processor([{"role": "user", "content": "x"}]))
    for _ in range(2):
        scheduler.submit(GenRequest(inputs=inputs, params=vlm.defaults))
    with pytest.raises(QueueFull, match="max_queue=2"):
        scheduler.submit(GenRequest(inputs=inputs, params=vlm.defaults))


def test_more_choices_than_batch_rows_is_refused(vlm):
    from qwen25vl.errors import InputError

    scheduler = Scheduler(vlm.model, vlm.tokenizer, max_batch=2)
    inputs = dict(vlm.processor([{"role": "user", "content": "x"}]))
    with pytest.raises(InputError, match="max_batch=2"):
        scheduler.submit(GenRequest(inputs=inputs, params=vlm.defaults, n=3))


def test_a_new_request_joins_the_running_batch(vlm):
    """A request arriving while another decodes is prefilled between decode steps and finishes first."""
    long_conv, short_conv = [{"role": "user", "content": "long one"}], [{"role": "user", "content": "short one"}]
    long = GenRequest(inputs=dict(vlm.processor(long_conv)), params=vlm.defaults.updated(temperature=0,
                      max_new_tokens=300), ignore_eos=True)
    short = GenRequest(inputs=dict(vlm.processor(short_conv)),
                       params=vlm.defaults.updated(temperature=0, max_new_tokens=8))
    scheduler = Scheduler(vlm.model, vlm.tokenizer)
    order = []

    def arrive_while_long_decodes():  # in the worker, between decode steps: the same on any machine
        if long.completion_tokens == 5 and not order:
            order.append("long started")
            scheduler.submit(short)

    scheduler.before_step = arrive_while_long_decodes

    async def main():
        loop = asyncio.get_running_loop()
        for r in (long, short):
            r.loop, r.queue = loop, asyncio.Queue()
        scheduler.submit(long)
        scheduler.start()
        texts = {long.id: "", short.id: ""}

        async def drain(r):
            while True:
                event = await asyncio.wait_for(r.queue.get(), timeout=30)
                if event.kind == "delta":
                    texts[r.id] += event.text
                if event.kind == "end":
                    order.append(r.id)
                    return

        await asyncio.gather(drain(long), drain(short))
        return texts

    try:
        texts = asyncio.run(main())
    finally:
        scheduler.stop()
    assert order == ["long started", short.id, long.id]
    assert scheduler.max_rows_seen == 2
    assert texts[short.id] == vlm.chat(short_conv, temperature=0, max_new_tokens=8)
