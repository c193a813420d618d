"""The OpenAI surface beyond plain chat: tools and tool_calls, logprobs, presence/frequency penalties, how request
fields override generation_config, fields we do not implement, and the limits checked before any work is done."""

import base64
import io
import json

import numpy as np
import openai
import pytest
import torch
from PIL import Image

import qwen25vl
from qwen25vl.model.outputs import ModelOutput
from qwen25vl.serve.app import create_app
from qwen25vl.serve.background import BackgroundServer
from qwen25vl.serve.settings import Limits, ServeSettings
from qwen25vl.serve.tools import ToolStream, split_tool_calls, tool_plan
from qwen25vl.testing.checkpoint import make_tiny_checkpoint

NAME = "tiny-vl"
LIMITS = Limits(max_image_pixels=56 * 84, max_frames=8, max_prompt_tokens=2000, max_tokens=512, max_media_items=4)
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    return qwen25vl.load(make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=1))


@pytest.fixture(scope="module")
def server(vlm):
    app = create_app(vlm, ServeSettings(model_name=NAME, limits=LIMITS))
    with BackgroundServer(app) as srv:
        srv.app = app
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)


def _ids(vlm, messages, **kw):
    return vlm.processor(messages, add_generation_prompt=True, **kw)["input_ids"][0].tolist()


# ---- tool calls: parsing ------------------------------------------------------------------------------------------

def test_tool_call_blocks_become_openai_calls():
    content, calls = split_tool_calls("Let me look.\n" + CALL + "\n" + CALL.replace("Paris", "Rome"))
    assert content == "Let me look."
    assert calls == [{"name": "get_weather", "arguments": '{"city": "Paris"}'},
                     {"name": "get_weather", "arguments": '{"city": "Rome"}'}]
    assert split_tool_calls(CALL) == (None, calls[:1])
    cut = '<tool_call>\n{"name": "get_weather", "argum'  # truncated: the text stays, nothing is invented
    assert split_tool_calls("a " + cut) == ("a " + cut, [])
    assert split_tool_calls("no calls here") == ("no calls here", [])


@pytest.mark.parametrize("step", [1, 2, 5, 1000])
def test_tool_stream_sends_text_before_the_call_and_holds_the_tag(step):
    text = "Checking <tool the map.\n" + CALL
    stream, sent = ToolStream(), []
    for i in range(0, len(text), step):
        sent.append(stream.push(text[i:i + step]))
        assert "<tool_call" not in "".join(sent)  # a partial tag is never sent as content
    rest, calls = stream.finish()
    assert "".join(sent) + rest == "Checking <tool the map.\n"
    assert calls == [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]
    plain = ToolStream()
    assert plain.push("just <tool") == "just " and plain.finish() == ("<tool", [])


def test_tool_choice_plans():
    assert tool_plan([], None) == (None, "", False)
    assert tool_plan([WEATHER], "none") == (None, "", False)
    assert tool_plan([WEATHER], "auto") == ([WEATHER], "", True)
    assert tool_plan([WEATHER], "required")[1] == "<tool_call>\n"
    assert tool_plan([WEATHER], "get_weather")[1] == '<tool_call>\n{"name": "get_weather", "arguments": '
    with pytest.raises(ValueError, match="not among the tools"):
        tool_plan([WEATHER], "send_mail")
    with pytest.raises(ValueError, match="needs tools"):
        tool_plan([], "required")


# ---- tool calls: end to end over a scripted model -----------------------------------------------------------------

class Scripted(torch.nn.Module):
    """The tiny model, but every answer is `script` token by token (one request at a time)."""

    def __init__(self, model, script: list[int]):
        super().__init__()
        self.inner, self.script, self.step = model, script, 0
        self.config, self.model, self.lm_head, self.visual = model.config, model.model, model.lm_head, model.visual

    def forward(self, input_ids, **kw):
        out = self.inner(input_ids, **kw)
        self.step = 0 if input_ids.shape[1] > 1 else self.step + 1
        token = self.script[min(self.step, len(self.script) - 1)]
        logits = torch.full_like(out.logits, -1e4)
        logits[..., token] = 0
        return ModelOutput(logits, out.position_ids, out.rope_deltas)

    def encode_images(self, *a, **kw):
        return self.inner.encode_images(*a, **kw)

    def encode_videos(self, *a, **kw):
        return self.inner.encode_videos(*a, **kw)


@pytest.fixture(scope="module")
def scripted(vlm):
    tok = vlm.processor.tokenizer
    script = tok.encode("Sure.\n" + CALL) + [tok.token_to_id("<|im_end|>")]
    shim = type("Shim", (), {})()
    shim.model, shim.processor, shim.defaults = Scripted(vlm.model, script), vlm.processor, vlm.defaults
    with BackgroundServer(create_app(shim, ServeSettings(model_name=NAME, limits=LIMITS))) as srv:
        yield openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=60)


def test_tool_calls_whole_and_streamed(scripted, vlm):
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    got = scripted.chat.completions.create(model=NAME, messages=messages, tools=[WEATHER], temperature=0,
                                           max_tokens=64)
    choice = got.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Sure."
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    # the prompt is the Qwen function-calling layout: exactly what the processor renders with these tools
    assert got.usage.prompt_tokens == len(_ids(vlm, messages, tools=[WEATHER]))

    content, calls, reasons = "", {}, []
    for chunk in scripted.chat.completions.create(model=NAME, messages=messages, tools=[WEATHER], temperature=0,
                                                  max_tokens=64, stream=True):
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for tc in delta.tool_calls or ():
            calls.setdefault(tc.index, {"name": "", "arguments": ""})
            calls[tc.index]["name"] += tc.function.name or ""
            calls[tc.index]["arguments"] += tc.function.arguments or ""
        reasons += [chunk.choices[0].finish_reason] if chunk.choices[0].finish_reason else []
    assert content.strip() == "Sure." and "<tool_call>" not in content
    assert reasons == ["tool_calls"]
    assert [c["name"] for c in calls.values()] == ["get_weather"]
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}

    # the conversation goes on: the assistant's call and the tool's answer render in Qwen's layout
    follow = messages + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                         {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'}]
    again = scripted.chat.completions.create(model=NAME, messages=follow, tools=[WEATHER], max_tokens=64,
                                             temperature=0)
    rendered = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": call.function.arguments}}]},
                {"role": "tool", "content": '{"temp": 21}'}]
    assert again.usage.prompt_tokens == len(_ids(vlm, rendered, tools=[WEATHER]))
    # tool_choice "none": no tools in the prompt and the answer is left as text
    plain = scripted.chat.completions.create(model=NAME, messages=messages, tools=[WEATHER], tool_choice="none",
                                             temperature=0, max_tokens=64)
    assert plain.choices[0].message.tool_calls is None and "<tool_call>" in plain.choices[0].message.content
    assert plain.usage.prompt_tokens == len(_ids(vlm, messages))


def test_a_named_tool_choice_starts_the_answer_with_the_call(client, vlm):
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    forced = {"type": "function", "function": {"name": "get_weather"}}
    got = client.chat.completions.create(model=NAME, messages=messages, tools=[WEATHER], tool_choice=forced,
                                         temperature=0, max_tokens=4)
    prefix = vlm.processor.tokenizer.encode('<tool_call>\n{"name": "get_weather", "arguments": ')
    assert got.usage.prompt_tokens == len(_ids(vlm, messages, tools=[WEATHER])) + len(prefix)
    # 4 random tokens cannot close the call: the text comes back whole, prefix included, nothing invented
    assert got.choices[0].message.content.startswith('<tool_call>\n{"name": "get_weather", "arguments": ')
    with pytest.raises(openai.BadRequestError, match="not among the tools"):
        client.chat.completions.create(model=NAME, messages=messages, tools=[WEATHER], max_tokens=2,
                                       tool_choice={"type": "function", "function": {"name": "nope"}})


# ---- logprobs and penalties ---------------------------------------------------------------------------------------

def _next_logits(vlm, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return vlm.model(torch.tensor([ids])).logits[0, -1].float()


def test_logprobs_are_the_models_distribution(client, vlm):
    messages = [{"role": "user", "content": "Say something."}]
    got = client.chat.completions.create(model=NAME, messages=messages, temperature=0, max_tokens=6,
                                         logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    entries = got.choices[0].logprobs.content
    assert len(entries) == 6
    assert b"".join(bytes(e.bytes) for e in entries).decode() == got.choices[0].message.content
    ids = _ids(vlm, messages)
    for entry in entries:  # greedy: each chosen token is the top one, with the model's own log-probability
        logp = torch.log_softmax(_next_logits(vlm, ids), -1)
        best = torch.topk(logp, 3)
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(best.values.tolist(), abs=1e-4)
        assert entry.logprob == pytest.approx(float(best.values[0]), abs=1e-4)
        assert bytes(entry.bytes) == bytes(entry.top_logprobs[0].bytes)
        ids.append(int(best.indices[0]))
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(model=NAME, messages=messages, max_tokens=2, top_logprobs=2)


@pytest.mark.parametrize("presence,frequency", [(-2.0, 0.0), (0.0, -1.0), (2.0, 2.0)])
def test_presence_and_frequency_penalties_follow_openai(client, vlm, presence, frequency):
    messages = [{"role": "user", "content": "Repeat after me: la la la la"}]
    got = client.chat.completions.create(model=NAME, messages=messages, temperature=0, max_tokens=32,
                                         presence_penalty=presence, frequency_penalty=frequency,
                                         extra_body={"ignore_eos": True, "repetition_penalty": 1.0})
    ids, counts, want = _ids(vlm, messages), torch.zeros(vlm.model.lm_head.weight.shape[0]), []
    for _ in range(32):  # the hand computation: counts over generated tokens only, then greedy
        logits = _next_logits(vlm, ids) - presence * (counts > 0) - frequency * counts
        token = int(logits.argmax())
        want.append(token)
        counts[token] += 1
        ids.append(token)
    assert vlm.processor.tokenizer.decode(want) == got.choices[0].message.content
    plain = client.chat.completions.create(model=NAME, messages=messages, temperature=0, max_tokens=32,
                                           extra_body={"ignore_eos": True, "repetition_penalty": 1.0})
    assert plain.choices[0].message.content != got.choices[0].message.content  # the penalties changed the answer


# ---- request fields over generation_config ------------------------------------------------------------------------

def test_stating_a_temperature_lifts_the_checkpoints_top_k_1(client, vlm):
    assert vlm.defaults.top_k == 1  # Qwen's generation_config: greedy unless the request says otherwise
    messages = [{"role": "user", "content": "Tell me anything."}]
    got = client.chat.completions.create(model=NAME, messages=messages, n=4, temperature=1.0, seed=3,
                                         max_tokens=8, extra_body={"ignore_eos": True})
    assert len({c.message.content for c in got.choices}) > 1
    defaults = client.chat.completions.create(model=NAME, messages=messages, n=2, max_tokens=8, seed=3,
                                              extra_body={"ignore_eos": True})
    assert defaults.choices[0].message.content == defaults.choices[1].message.content  # top_k=1 kept


@pytest.mark.parametrize("field,value", [("logit_bias", {"5": 10}), ("temprature", 0.5), ("audio", {}),
                                         ("modalities", ["audio"]), ("functions", [])])
def test_fields_we_do_not_implement_are_400s_naming_them(client, field, value):
    with pytest.raises(openai.BadRequestError, match=field):
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       extra_body={field: value})


def test_bookkeeping_fields_are_accepted(client):
    got = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                         user="u1", metadata={"k": "v"}, store=False)
    assert got.choices


# ---- limits before work ---------------------------------------------------------------------------------------------

def _png_url() -> str:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_media_count_and_text_length_are_refused_before_any_work(client, server, vlm, monkeypatch):
    from qwen25vl.serve import messages as M

    loads = []
    monkeypatch.setattr(M, "load_image", lambda *a, **k: loads.append(1))  # nothing may be decoded
    monkeypatch.setattr(type(vlm.processor), "__call__", lambda *a, **k: loads.append(2))  # nor tokenized
    parts = [{"type": "image_url", "image_url": {"url": _png_url()}} for _ in range(5)]
    with pytest.raises(openai.BadRequestError, match="max_media_items=4"):
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": parts}], max_tokens=2)
    assert loads == []
    longest = server.app.state.limits.max_token_chars
    assert longest >= len("<|vision_start|>")
    text = "a" * (LIMITS.max_prompt_tokens * longest + 1)
    with pytest.raises(openai.BadRequestError, match="characters"):
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": text}], max_tokens=2)
    assert loads == []


def test_memory_is_handed_back_after_a_big_request(vlm, monkeypatch):
    from qwen25vl.serve import app as A

    calls = []
    monkeypatch.setattr(A, "_release_memory", lambda: calls.append(1))
    monkeypatch.setattr(A, "_BIG_REQUEST_BYTES", 100_000)  # the test's images stand for big ones
    with BackgroundServer(create_app(vlm, ServeSettings(model_name=NAME, limits=LIMITS))) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=60)
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "small"}], max_tokens=2)
        assert calls == []
        image = {"type": "image_url", "image_url": {"url": _png_url(), "min_pixels": 56 * 84}}
        big = [image] * 4  # 4 x 24 patches x 1176 floats: over the lowered threshold
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": big}], max_tokens=2)
    assert calls == [1]


def test_text_that_is_not_unicode_is_a_400(server):
    import httpx

    body = '{"model": "%s", "max_tokens": 2, "messages": [{"role": "user", "content": "a\\ud800b"}]}' % NAME
    got = httpx.post(server.url + "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert got.status_code == 400 and "lone surrogate" in got.json()["error"]["message"]
    ok = httpx.post(server.url + "/v1/chat/completions", content=body.replace("\\ud800", "\\u00e9"),
                    headers={"Content-Type": "application/json"})
    assert ok.status_code == 200


def test_max_slot_tokens_reaches_the_scheduler_and_bounds_a_request(vlm):
    """`ServeSettings.max_slot_tokens` (`serve --max-slot-tokens`): a request whose prompt plus max_tokens could
    outgrow it is a 400 naming the limit; a shorter one is answered."""
    import argparse

    from qwen25vl.errors import ConfigError
    from qwen25vl.serve.cli import register, settings_from_args

    app = create_app(vlm, ServeSettings(model_name=NAME, limits=LIMITS, max_slot_tokens=64))
    assert app.state.scheduler.max_slot_tokens == 64
    with BackgroundServer(app) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=60)
        ok = c.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert ok.choices[0].finish_reason in ("stop", "length")
        with pytest.raises(openai.BadRequestError, match="max_slot_tokens=64"):
            c.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=200)
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    register(sub)
    args = parser.parse_args(["serve", "-m", "x", "--max-slot-tokens", "128"])
    assert settings_from_args(args, "x").max_slot_tokens == 128
    assert settings_from_args(parser.parse_args(["serve", "-m", "x"]), "x").max_slot_tokens is None
    with pytest.raises(ConfigError, match="max-slot-tokens"):
        settings_from_args(parser.parse_args(["serve", "-m", "x", "--max-slot-tokens", "10"]), "x")
