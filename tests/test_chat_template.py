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
