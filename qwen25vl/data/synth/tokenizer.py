"""The tiny model's tokenizer, trained with `tokenizers` on the engines' text: byte-level BPE with Qwen2's
normaliser and split regex (which isolates every digit, so digits stay single tokens and numbers are read digit by
digit), `regular_tokens` regular ids, then the 22 Qwen2.5-VL special tokens in the official order (the tiny layout of
docs/CONTRACTS.md at the default 512), written as tokenizer.json + tokenizer_config.json + chat_template.json with
the official chat template. Only train splits feed it: held-out text never shapes the vocabulary."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from qwen25vl.errors import InputError

DEFAULT_REGULAR_TOKENS = 512  # the tiny layout: specials at 512..533
_TEMPLATE_TEXT = ("system\nYou are a helpful assistant.", "user\n", "assistant\n", "tool\n")


def _texts(content) -> Iterator[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        yield from (p["text"] for p in content if p.get("type") == "text")


def corpus(roots: Iterable[str | Path]) -> Iterator[str]:
    """Every message text of the train split of each dataset folder, then the chat template's own words."""
    from qwen25vl.data.records import read_records

    for root in roots:
        path = Path(root) / "train.jsonl"
        if not path.is_file():
            raise InputError(f"tokenizer corpus: {root} holds no train.jsonl (write it with `qwen25vl data synth`)")
        for record in read_records(path):
            for message in record.messages:
                yield from _texts(message.get("content"))
    yield from _TEMPLATE_TEXT


def train_tokenizer(texts: Iterable[str], out: str | Path, regular_tokens: int = DEFAULT_REGULAR_TOKENS) -> Path:
    """Train on `texts` and write the tokenizer folder `out`; returns the tokenizer.json path."""
    from tokenizers import Regex, models, normalizers, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    from qwen25vl.processing.tiktoken_convert import write_tokenizer_files
    from qwen25vl.processing.tokenizer import QWEN2_SPLIT_REGEX

    if regular_tokens < 257:
        raise InputError(f"regular_tokens must exceed the 256 byte symbols, got {regular_tokens}")
    backend = HFTokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=regular_tokens, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    backend.train_from_iterator(list(texts), trainer)
    model = json.loads(backend.to_str())["model"]
    vocab = model["vocab"]
    if sorted(vocab.values()) != list(range(regular_tokens)):
        raise InputError(f"the corpus yields {len(vocab)} tokens, fewer than the {regular_tokens} asked for: "
                         "write more samples or ask for fewer regular tokens")
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return write_tokenizer_files(out, vocab, merges, regular_tokens)


def train_from_datasets(roots: Iterable[str | Path], out: str | Path,
                        regular_tokens: int = DEFAULT_REGULAR_TOKENS) -> Path:
    return train_tokenizer(corpus(roots), out, regular_tokens)
