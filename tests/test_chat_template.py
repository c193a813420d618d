"""Chat template: text and ids equal to transformers rendering the official template; the training loss mask."""

import pytest

from qwen25vl.errors import InputError
from qwen25vl.processing.chat_template import OFFICIAL_CHAT_TEMPLATE, media_parts, render, render_text
from qwen25vl.processing.tokenizer import Tokenizer
from qwen25vl.testing.tokenizer import write_tiny_tokenizer

import transformers

IMG = {"type": "image", "image": "a.png"}
CONVERSATIONS = {
    "text": [{"role": "user", "content": "Hello, who are you? 你好"}],
    "system": [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hi"}],
    "one_image": [{"role": "user", "content": [IMG, {"type": "text", "text": "Describe this image."}]}],
    "several_images": [
        {"role": "user", "content": [{"type": "text", "text": "Compare "}, IMG, {"type": "text", "text": " and "},
                                     {"type": "image_url", "image_url": {"url": "http://x/b.png"}}, {"text": "now"}]},
    ],  # fmt: skip
    "video": [{"role": "user", "content": [{"type": "video", "video": "v.mp4", "fps": 1.0}, {"type": "text", "text": "What happens?"}]}],
    "multi_turn": [
        {"role": "user", "content": [IMG, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "A cat on a chair."},
        {"role": "user", "content": [{"type": "text", "text": "And this?"}, {"type": "image", "image": "b.png"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A dog."}]},
        {"role": "user", "content": "Thanks!"},
    ],
    "tool_call_turn": [
        {"role": "system", "content": "You can call get_weather."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'},
        {"role": "tool", "content": '{"temperature": 21}'},
        {"role": "assistant", "content": "It is 21 degrees in Paris."},
    ],
}

# The official Qwen2.5(-Instruct) function-calling layout joined with the VL template's content rendering: the
# reference for conversations with `tools`, `tool_calls` and `tool` results, which the VL template cannot render.
QWEN25_TOOLS_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}"
    "{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}"
    "{{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with "
    "function signatures within <tools></tools> XML tags:\\n<tools>' }}{%- for tool in tools %}{{- '\\n' }}"
    "{{- tool | tojson }}{%- endfor %}{{- '\\n</tools>\\n\\nFor each function call, return a json object with function "
    "name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, "
    "\"arguments\": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}"
    "{%- elif messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}{%- for message in messages %}{%- if message.role == 'system' and loop.first and tools %}"
    "{%- elif message.role == 'tool' %}{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}"
    "{{- '<|im_start|>user' }}{%- endif %}{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- elif message.role == 'assistant' and message.tool_calls %}{{- '<|im_start|>assistant' }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + tool_call.name + '\", \"arguments\": ' + (tool_call.arguments | tojson) "
    "+ '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' }}{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for content in message.content %}{%- if content.type == 'image' or 'image' in content %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}{%- elif content.type == 'video' or 'video' in content %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}{%- elif 'text' in content %}{{- content.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city, 今天",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]  # fmt: skip
TOOL_CONVERSATION = [
    {"role": "user", "content": [IMG, {"type": "text", "text": "Weather where this photo was taken?"}]},
    {"role": "assistant", "content": "Let me check.",
     "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Lyon"}}}]},
    {"role": "tool", "content": '{"temperature": 21}'},
    {"role": "tool", "content": '{"temperature": 25}'},
    {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Nice"}}}]},
    {"role": "tool", "content": "sunny"},
    {"role": "assistant", "content": "Paris 21, Lyon 25, Nice sunny."},
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tiny_tok"))


@pytest.fixture(scope="module")
def tok(tiny_dir):
    return Tokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def hf_tok(tiny_dir):
    return transformers.AutoTokenizer.from_pretrained(tiny_dir)


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_matches_official_template(name, add_generation_prompt, tok, hf_tok):
    messages = CONVERSATIONS[name]
    ref = hf_tok.apply_chat_template(
        messages, chat_template=OFFICIAL_CHAT_TEMPLATE, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    rendered = render(messages, tokenizer=tok, add_generation_prompt=add_generation_prompt)
    assert rendered.text == ref
    assert rendered.input_ids == hf_tok(ref, add_special_tokens=False)["input_ids"]


def test_add_vision_id_matches_official_template(tok, hf_tok):
    messages = CONVERSATIONS["multi_turn"] + [{"role": "user", "content": [{"type": "video", "video": "v.mp4"}]}]
    ref = hf_tok.apply_chat_template(
        messages, chat_template=OFFICIAL_CHAT_TEMPLATE, tokenize=False, add_generation_prompt=True, add_vision_id=True
    )
    assert "Picture 2: " in ref and "Video 1: " in ref
    assert render(messages, tokenizer=tok, add_generation_prompt=True, add_vision_id=True).text == ref


@pytest.mark.parametrize("with_system", [False, True])
def test_tools_and_tool_calls_match_qwen25_layout(with_system, tok, hf_tok):
    messages = ([{"role": "system", "content": "Be brief."}] if with_system else []) + TOOL_CONVERSATION
    ref = hf_tok.apply_chat_template(
        messages, tools=TOOLS, chat_template=QWEN25_TOOLS_TEMPLATE, tokenize=False, add_generation_prompt=True
    )
    rendered = render(messages, tokenizer=tok, tools=TOOLS, add_generation_prompt=True)
    assert rendered.text == ref
    assert rendered.input_ids == hf_tok(ref, add_special_tokens=False)["input_ids"]
    # Without tools the same tool_calls / tool results keep the Qwen2.5 layout, after the VL default system prompt.
    ref = hf_tok.apply_chat_template(TOOL_CONVERSATION, chat_template=QWEN25_TOOLS_TEMPLATE, tokenize=False)
    assert render_text(TOOL_CONVERSATION)[0] == ref


def test_openai_arguments_string_is_rendered_as_object(tok):
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]}  # fmt: skip
    text = render_text([{"role": "user", "content": "go"}, call])[0]
    assert '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call><|im_end|>\n' in text
    call["tool_calls"][0]["function"]["arguments"] = "{not json"
    with pytest.raises(InputError, match=r"messages\[1\].tool_calls\[0\].arguments"):
        render_text([{"role": "user", "content": "go"}, call])


def ft_reference(tok, messages):
    """The official fine-tuning rule (REFERENCE 8.2): each turn tokenised alone; an assistant turn is labelled except
    its header `<|im_start|>assistant\\n` (3 tokens in the real vocabulary, more in the tiny one); system and user
    turns are not labelled."""
    ids, labels = [], []
    turns = [] if messages[0]["role"] == "system" else [("system", "You are a helpful assistant.")]
    turns += [(m["role"], m["content"]) for m in messages]
    header = len(tok.encode("<|im_start|>assistant\n"))
    for role, content in turns:
        turn = tok.encode(f"<|im_start|>{role}\n{content}<|im_end|>\n")
        ids += turn
        labels += [0] * header + [1] * (len(turn) - header) if role == "assistant" else [0] * len(turn)
    return ids, labels


LOSS_MESSAGES = [
    {"role": "user", "content": "Name three colours."},
    {"role": "assistant", "content": "Red, green and blue. 😀"},
    {"role": "user", "content": "More?"},
    {"role": "assistant", "content": "Yellow.\n\nAnd 紫色."},
]


def test_loss_mask_follows_official_finetune_rule(tok):
    messages = LOSS_MESSAGES
    rendered = render(messages, tokenizer=tok)
    ids, labels = ft_reference(tok, messages)
    assert rendered.input_ids == ids and rendered.loss_mask == labels
    trained = [t for t, m in zip(rendered.input_ids, rendered.loss_mask) if m]
    assert tok.decode(trained) == "Red, green and blue. 😀<|im_end|>\nYellow.\n\nAnd 紫色.<|im_end|>\n"
    # The generation prompt is never trained on.
    with_prompt = render(messages, tokenizer=tok, add_generation_prompt=True)
    assert with_prompt.loss_mask[: len(labels)] == labels and not any(with_prompt.loss_mask[len(labels) :])


def test_loss_mask_with_vision_and_tool_calls(tok):
    rendered = render(TOOL_CONVERSATION, tokenizer=tok, tools=TOOLS, image_token_counts=[6])
    ids, mask = rendered.input_ids, rendered.loss_mask
    assert ids.count(tok.special.image_pad) == 6
    assert all(m == 0 for t, m in zip(ids, mask) if t == tok.special.image_pad)
    trained = tok.decode([t for t, m in zip(ids, mask) if m])
    expected = (
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lyon"}}\n</tool_call><|im_end|>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Nice"}}\n</tool_call><|im_end|>\n'
        "Paris 21, Lyon 25, Nice sunny.<|im_end|>\n"
    )
    assert trained == expected
    assert "tool_response" not in trained and "Weather where" not in trained


def test_pad_expansion_and_media_order(tok):
    messages = CONVERSATIONS["multi_turn"] + [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "v.mp4"}}]}]
    kinds = [kind for kind, _ in media_parts(messages)]
    assert kinds == ["image", "image", "video"]
    plain = render(messages, tokenizer=tok)
    expanded = render(messages, tokenizer=tok, image_token_counts=[4, 9], video_token_counts=[12])
    assert expanded.input_ids.count(tok.special.image_pad) == 13
    assert expanded.input_ids.count(tok.special.video_pad) == 12
    assert len(expanded.input_ids) == len(plain.input_ids) + 3 + 8 + 11
    first = expanded.input_ids.index(tok.special.image_pad)
    assert expanded.input_ids[first - 1] == tok.special.vision_start and expanded.input_ids[first + 4] == tok.special.vision_end


def test_user_mistakes_raise_input_error(tok):
    with pytest.raises(InputError, match="list of dicts"):
        render({"role": "user", "content": "hi"}, tokenizer=tok)
    with pytest.raises(InputError, match=r"messages\[0\].role"):
        render([{"content": "hi"}], tokenizer=tok)
    with pytest.raises(InputError, match=r"messages\[0\].content\[1\].*'input_audio'"):
        render([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "input_audio"}]}], tokenizer=tok)
    with pytest.raises(InputError, match="1 image part.*2 <|image_pad|>"):
        render([{"role": "user", "content": [IMG, {"type": "text", "text": "<|image_pad|>"}]}], tokenizer=tok)
    with pytest.raises(InputError, match="2 image token count"):
        render(CONVERSATIONS["one_image"], tokenizer=tok, image_token_counts=[4, 4])
    with pytest.raises(InputError, match=r"messages\[1\]: content is missing"):
        render([{"role": "user", "content": "a"}, {"role": "assistant"}], tokenizer=tok)


def test_segment_encoding_equals_offsets_path(tok, monkeypatch):
    # Answers starting with a non-space are cut out and encoded alone; forcing the offsets path must agree.
    messages = LOSS_MESSAGES + [{"role": "user", "content": "x"}, {"role": "assistant", "content": "```json\n[1]\n```"}]
    fast = render(messages * 20, tokenizer=tok, add_generation_prompt=True)
    monkeypatch.setattr(Tokenizer, "is_safe_cut", staticmethod(lambda text, p: False))
    slow = render(messages * 20, tokenizer=tok, add_generation_prompt=True)
    assert fast.input_ids == slow.input_ids == tok.encode(fast.text)
    assert fast.loss_mask == slow.loss_mask and sum(fast.loss_mask) > 0


def test_answer_starting_with_whitespace(tok):
    messages = [{"role": "user", "content": "Indent?"}, {"role": "assistant", "content": "\n\n    indented 紫"}]
    rendered = render(messages, tokenizer=tok)
    assert rendered.input_ids == tok.encode(rendered.text)
    trained = tok.decode([t for t, m in zip(rendered.input_ids, rendered.loss_mask) if m])
    # The header's newline shares a token with the answer's leading newlines: that token is not trained on.
    assert trained.endswith("indented 紫<|im_end|>\n") and "\n\n\n" not in trained


def test_system_parts_with_tools(tok):
    system = {"role": "system", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]}
    text = render_text([system, {"role": "user", "content": "hi"}], tools=TOOLS)[0]
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n") and text.count("<|im_start|>system") == 1
    system["content"].append(IMG)
    with pytest.raises(InputError, match=r"messages\[0\].content\[2\]: a system message with tools can hold text only"):
        render_text([system], tools=TOOLS)


@pytest.mark.parametrize("turns", [
    [{"role": "system", "content": "You are terse."}] + LOSS_MESSAGES,
    LOSS_MESSAGES[:2] + [{"role": "tool", "content": '{"colours": 3}'}] + LOSS_MESSAGES[2:],
    [{"role": "system", "content": "S."}, {"role": "user", "content": "Q"}, {"role": "tool", "content": "R"},
     {"role": "assistant", "content": "A"}, {"role": "system", "content": "Later system."},
     {"role": "assistant", "content": "B"}],
], ids=["explicit-system", "plain-tool-turn", "system-tool-and-late-system"])
def test_loss_mask_trains_on_assistant_turns_only(turns, tok):
    # System and tool turns are context, never targets (the official fine-tuning rule labels assistant turns only).
    rendered = render(turns, tokenizer=tok)
    ids, labels = ft_reference(tok, turns)
    assert rendered.input_ids == ids and rendered.loss_mask == labels
    answers = "".join(m["content"] + "<|im_end|>\n" for m in turns if m["role"] == "assistant")
    assert tok.decode([t for t, m in zip(ids, rendered.loss_mask) if m]) == answers


def test_loss_mask_with_system_and_tool_calls_without_tools(tok):
    # The function-calling layout without `tools`: the system turn is rendered as a turn of its own, not trained on.
    messages = [{"role": "system", "content": "Use tools."}] + TOOL_CONVERSATION[1:]
    rendered = render(messages, tokenizer=tok)
    trained = tok.decode([t for t, m in zip(rendered.input_ids, rendered.loss_mask) if m])
    assert "Use tools." not in trained and "tool_response" not in trained
    assert trained.startswith("Let me check.\n<tool_call>") and trained.endswith("Nice sunny.<|im_end|>\n")


# The Qwen2.5-Instruct text models' own chat template (tokenizer_config.json of Qwen/Qwen2.5-*-Instruct), as
# published, rendered by transformers' apply_chat_template: an independent reference for the function-calling
# layout (tools block in the system turn, tool calls, tool results as a user turn). It renders string contents only
# and its default system prompt is the text models' ("You are Qwen, created by Alibaba Cloud. ..."), where the VL
# checkpoints use "You are a helpful assistant.".
QWEN25_INSTRUCT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""
QWEN25_TEXT_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

TWO_TOOLS = TOOLS + [{"type": "function", "function": {"name": "convert", "description": "Units: °C → °F",
                                                        "parameters": {"type": "object", "required": ["value"],
                                                                       "properties": {"value": {"type": "number"}}}}}]  # fmt: skip
TEXT_TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Paris and Lyon, in °F? «vite»"},
    {"role": "assistant", "content": "Checking both.",
     "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Lyon"}}}]},
    {"role": "tool", "content": '{"temperature": 21}'},
    {"role": "tool", "content": '{"temperature": 25}'},
    {"role": "assistant", "content": "",
     "tool_calls": [{"name": "convert", "arguments": {"value": 21, "nested": {"list": [1, 2.5, None, True]}}}]},
    {"role": "tool", "content": "69.8"},
    {"role": "assistant", "content": "Paris 69.8 °F, Lyon 25 °C."},
    {"role": "user", "content": "Thanks"},
]  # fmt: skip


@pytest.mark.parametrize("system", [None, "You are a weather bot."], ids=["default-system", "own-system"])
@pytest.mark.parametrize("with_tools", [True, False], ids=["tools", "no-tools"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_function_calling_equals_qwen25_instruct_template(system, with_tools, add_generation_prompt, tok, hf_tok):
    messages = ([{"role": "system", "content": system}] if system else []) + TEXT_TOOL_CONVERSATION
    tools = TWO_TOOLS if with_tools else None
    ref = hf_tok.apply_chat_template(messages, tools=tools, chat_template=QWEN25_INSTRUCT_TEMPLATE, tokenize=False,
                                     add_generation_prompt=add_generation_prompt)
    if system is None:  # the one intended difference: the VL checkpoints' default system prompt
        assert ref.count(QWEN25_TEXT_DEFAULT_SYSTEM) == 1
        ref = ref.replace(QWEN25_TEXT_DEFAULT_SYSTEM, "You are a helpful assistant.")
    rendered = render(messages, tokenizer=tok, tools=tools, add_generation_prompt=add_generation_prompt)
    assert rendered.text == ref
    assert rendered.input_ids == hf_tok(ref, add_special_tokens=False)["input_ids"]
    assert ref.count("<tool_call>\n{") == 3 + (1 if with_tools else 0) and ref.count("<tool_response>") == 3


# --- edges the mutation run found unguarded (TESTING.md) ---

PART_FORMS = [
    [{"type": "image"}, {"type": "text", "text": "type only"}],
    [{"image": "x.png"}, {"text": "key only, no type"}],
    [{"type": "video"}, {"video": "v.mp4"}, "a plain string part", {"type": "image_url", "image_url": {"url": "u"}}],
]


@pytest.mark.parametrize("content", PART_FORMS, ids=["type-only", "key-only", "mixed"])
def test_part_forms_match_official_template(content, tok, hf_tok):
    messages = [{"role": "user", "content": content}]
    ref_content = [{"type": "text", "text": p} if isinstance(p, str) else p for p in content]  # jinja: dict parts
    ref = hf_tok.apply_chat_template([{"role": "user", "content": ref_content}], chat_template=OFFICIAL_CHAT_TEMPLATE,
                                     tokenize=False, add_generation_prompt=True, add_vision_id=True)
    assert render(messages, tokenizer=tok, add_generation_prompt=True, add_vision_id=True).text == ref


def test_video_url_parts_in_every_form():
    forms = [{"type": "video_url", "video_url": {"url": "v"}}, {"type": "video_url"}, {"video_url": {"url": "v"}}]
    for part in forms:
        assert media_parts([{"role": "user", "content": [part]}]) == [("video", part)]


def test_counts_per_item_and_result_fields(tok):
    images = [{"type": "image", "image": f"{i}.png"} for i in range(3)]
    videos = [{"type": "video", "video": f"{i}.mp4"} for i in range(3)]
    messages = [{"role": "user", "content": images + videos + ["Which?"]}, {"role": "assistant", "content": "The 2nd."}]
    rendered = render(messages, tokenizer=tok, image_token_counts=[2, 3, 1], video_token_counts=[4, 1, 5])
    runs, ids = [], rendered.input_ids
    i = 0
    while i < len(ids):  # lengths of the runs of pad tokens, in order
        if ids[i] in (tok.special.image_pad, tok.special.video_pad):
            j = i
            while j < len(ids) and ids[j] == ids[i]:
                j += 1
            runs.append((ids[i], j - i))
            i = j
        else:
            i += 1
    img, vid = tok.special.image_pad, tok.special.video_pad
    assert runs == [(img, 2), (img, 3), (img, 1), (vid, 4), (vid, 1), (vid, 5)]
    assert (rendered.num_images, rendered.num_videos) == (3, 3)
    (a, b), = rendered.answer_spans
    assert rendered.text[a:b] == "The 2nd.<|im_end|>\n"
    only_videos = render(messages, tokenizer=tok, video_token_counts=[4, 1, 5])
    assert only_videos.input_ids.count(vid) == 10 and only_videos.input_ids.count(img) == 3
    text = render_text([{"role": "user", "content": videos[:2]}], add_vision_id=True)[0]
    assert "Video 1: <|vision_start|>" in text and "Video 2: <|vision_start|>" in text
    with pytest.raises(InputError, match="^a vision item must have at least one token, got 0$"):
        render(messages, tokenizer=tok, image_token_counts=[2, 0, 1])
    with pytest.raises(InputError, match=r"^the conversation has 1 video part\(s\) but its text holds 2 <\|video_pad\|>"):
        render([{"role": "user", "content": [videos[0], {"text": "<|video_pad|>"}]}], tokenizer=tok)
    with pytest.raises(InputError, match=r"^2 video token count\(s\) given for 3 video part\(s\)$"):
        render(messages, tokenizer=tok, video_token_counts=[1, 1])


def test_empty_conversation_renders_the_default_system_turn():
    assert render_text([])[0] == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert render_text([], add_generation_prompt=True)[0].endswith("<|im_end|>\n<|im_start|>assistant\n")


TOOL_EDGES = {
    "tool-results-first-and-last": [{"role": "tool", "content": "A"}, {"role": "tool", "content": "B"},
                                    {"role": "assistant", "content": "Seen."}, {"role": "tool", "content": "C"},
                                    {"role": "tool", "content": "D"}],
    "tool-result-without-calls": [{"role": "user", "content": "Q"}, {"role": "tool", "content": "R"},
                                  {"role": "assistant", "content": "A"}],
    "user-with-tool_calls-key": [{"role": "user", "content": "Q", "tool_calls": [{"name": "f", "arguments": {}}]},
                                 {"role": "assistant", "content": "A"}],
}


@pytest.mark.parametrize("name", sorted(TOOL_EDGES))
def test_tool_edges_equal_qwen25_instruct_template(name, tok, hf_tok):
    messages = [{"role": "system", "content": "S"}] + TOOL_EDGES[name]
    ref = hf_tok.apply_chat_template(messages, tools=TOOLS, chat_template=QWEN25_INSTRUCT_TEMPLATE, tokenize=False)
    assert render(messages, tokenizer=tok, tools=TOOLS).text == ref


def test_tool_call_details():
    user = {"role": "user", "content": "go"}
    no_args = {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f"}}]}
    assert '{"name": "f", "arguments": {}}' in render_text([user, no_args])[0]
    empty = render_text([user, no_args, {"role": "tool", "content": None}])[0]
    assert empty.endswith("<|im_start|>user\n<tool_response>\n\n</tool_response><|im_end|>\n")
    long_bad = "{" + "x" * 100
    call = {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": long_bad}}]}
    with pytest.raises(InputError, match=r"\.arguments is not valid JSON: '\{x{79}'$"):
        render_text([user, call])


@pytest.mark.parametrize("messages, message", [
    ("hello", r"^messages must be a list of dicts, got str$"),
    ([{"role": "user", "content": "a"}, "b"], r"^messages\[1\] must be a dict, got str$"),
    ([{"role": 5, "content": "a"}], r"^messages\[0\]\.role must be a non-empty string, got 5$"),
    ([{"role": "user", "content": 5}], r"^messages\[0\]\.content must be a string or a list of parts, got int$"),
    ([{"role": "user", "content": [{"type": "text", "text": 5}]}],
     r"^messages\[0\]\.content\[0\]\.text must be a string, got int$"),
    ([{"role": "user", "content": [7]}], r"^messages\[0\]\.content\[0\]: a content part must be a dict or str, got int$"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": None, "tool_calls": ["x"]}],
     r"^messages\[1\]\.tool_calls\[0\] must be a dict, got str$"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": None, "tool_calls": [{"function": "f"}]}],
     r"^messages\[1\]\.tool_calls\[0\]: the function name is missing$"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "input_audio"}],
                                          "tool_calls": [{"name": "f"}]}],
     r"^messages\[1\]\.content\[0\]: unsupported content part type 'input_audio'"),
    ([{"role": "assistant", "content": None, "tool_calls": [{"name": "f"}]},
      {"role": "tool", "content": [{"type": "input_audio"}]}],
     r"^messages\[1\]\.content\[0\]: unsupported content part type 'input_audio'"),
])
def test_mistakes_name_the_place(messages, message):
    with pytest.raises(InputError, match=message):
        render_text(messages)


def test_system_parts_with_tools_and_their_mistakes():
    def system(*parts):
        return [{"role": "system", "content": list(parts)}, {"role": "user", "content": "hi"}]

    assert render_text(system("Be ", {"type": "text", "text": "brief."}), tools=TOOLS)[0].startswith(
        "<|im_start|>system\nBe brief.\n\n# Tools")
    with pytest.raises(InputError, match=r"^messages\[0\]\.content\[0\]: unsupported content part type"):
        render_text(system({"type": "input_audio"}), tools=TOOLS)
    with pytest.raises(InputError, match=r"^messages\[0\]\.content\[1\]\.text must be a string, got int$"):
        render_text(system("a", {"type": "text", "text": 3}), tools=TOOLS)
    with pytest.raises(InputError, match=r"^messages\[0\]\.content\[0\]: unsupported content part type"):
        media_parts([{"role": "user", "content": [{"type": "input_audio"}]}])


def test_conversation_opening_with_tool_results(tok, hf_tok):
    # the first message a tool result (no system turn): its user header comes from being first, not from the turn before
    messages = [{"role": "tool", "content": "A"}, {"role": "tool", "content": "B"},
                {"role": "assistant", "content": "Seen."}, {"role": "tool", "content": "C"}]
    ref = hf_tok.apply_chat_template(messages, tools=TOOLS, chat_template=QWEN25_INSTRUCT_TEMPLATE, tokenize=False)
    ref = ref.replace(QWEN25_TEXT_DEFAULT_SYSTEM, "You are a helpful assistant.")
    assert render(messages, tokenizer=tok, tools=TOOLS).text == ref
    assert ref.count("<|im_start|>user") == 2
