"""A tiny Qwen2-style tokenizer for tests and the embedded model (layout in docs/CONTRACTS.md).

Ids 0..511 are a byte-level BPE vocabulary (the 256 byte symbols, then merges learnt by the `tokenizers` trainer
on the built-in corpus below, deterministic); the 22 Qwen2.5-VL special tokens follow at 512..533 in the official
order. The model's embedding has TINY_VOCAB_SIZE rows (padded, as the real checkpoints pad 151,665 to 151,936).
Same normaliser, split regex and byte-level steps as the real tokenizer, so it exercises the same code paths.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_REGULAR_TOKENS = 512
TINY_SPECIAL_START = 512
TINY_VOCAB_SIZE = 544

_CORPUS = """\
The quick brown fox jumps over the lazy dog. A picture is worth a thousand words.
You are a helpful assistant. Describe this image in detail. What is shown in the video?
The image shows a cat sitting on a red chair next to the window, and a dog sleeping on the floor.
Please locate every person in the picture and output their coordinates in JSON format.
[{"bbox_2d": [12, 34, 256, 480], "label": "person"}, {"point_2d": [100, 200], "label": "cup"}]
The given query happens in 64.0 - 72.0 seconds. The event starts at 00:12.50 and ends at 01:03.00.
<html><body><p data-bbox="10 20 300 40">Invoice number 2024-0917</p><table><tr><td>Total</td></tr></table></body>
def main(argv: list[str]) -> int:
    for index, value in enumerate(argv):
        if value.startswith("--"):
            print(f"option {index}: {value}")
    return 0
import torch
x = torch.randn(2, 3, 4)  # (B, T, D)
y = x.transpose(1, 2).contiguous().view(2, -1)
SELECT name, count(*) FROM users WHERE age > 30 GROUP BY name ORDER BY 2 DESC;
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 1000 3.14159 2.71828 -7 +15 1e-6 50%
Les enfants jouent dans le jardin pendant que le soleil se couche.
Der schnelle braune Fuchs springt über den faulen Hund. Grüße aus München!
El perro duerme en la casa y el gato mira por la ventana.
今天天气很好，我们去公园散步吧。这张图片里有一只猫和一只狗。
東京は日本の首都です。写真には猫が写っています。
서울은 한국의 수도입니다. 사진에 고양이가 있습니다.
Привет, мир! Это тестовый текст для токенизатора.
مرحبا بالعالم. هذه صورة قطة.
Emoji: 😀 🎉 🐱 🐶 ❤️ 👍🏽 🇫🇷 and symbols: © ® ™ € £ ¥ § ¶ • … — –
Whitespace:    four spaces,\ttab,\n\nblank lines, trailing spaces   
The assistant calls a function: <tool_call>
{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
</tool_call>
Click the button at the top left corner of the screen, then type the password and press enter.
Swipe up on the screen to open the app list, then scroll down to find the settings.
The chart shows the revenue increased from 1.2 million in 2020 to 3.4 million in 2023.
Once upon a time there was a little robot who wanted to learn how to paint the sky.
"""


def tiny_corpus() -> list[str]:
    """The built-in training text, repeated with variations so every frequent pair is seen many times."""
    lines = _CORPUS.splitlines(keepends=True)
    return lines * 4 + [line.lower() for line in lines] + [line.upper() for line in lines]


def train_tiny_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE with 512 regular tokens, trained by `tokenizers` on the built-in corpus (deterministic)."""
    from tokenizers import Regex, models, normalizers, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    from qwen25vl.processing.tokenizer import QWEN2_SPLIT_REGEX

    tok = HFTokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_REGULAR_TOKENS,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(tiny_corpus(), trainer)
    model = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = model["vocab"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    if sorted(vocab.values()) != list(range(TINY_REGULAR_TOKENS)):
        raise RuntimeError(f"tiny tokenizer training gave {len(vocab)} tokens, expected {TINY_REGULAR_TOKENS}")
    return vocab, merges


def write_tiny_tokenizer(folder: str | Path) -> Path:
    """Write tokenizer.json, tokenizer_config.json and chat_template.json of the tiny tokenizer; returns the folder."""
    from qwen25vl.processing.tiktoken_convert import write_tokenizer_files

    vocab, merges = train_tiny_vocab()
    write_tokenizer_files(folder, vocab, merges, TINY_SPECIAL_START)
    return Path(folder)


DEFAULT_PREPROCESSOR_CONFIG = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
}


def write_preprocessor_config(folder: str | Path, **overrides) -> Path:
    """Write preprocessor_config.json as the official checkpoints have it (values overridable)."""
    unknown = set(overrides) - set(DEFAULT_PREPROCESSOR_CONFIG)
    if unknown:
        from qwen25vl.errors import InputError

        raise InputError(f"unknown preprocessor_config.json field(s) {sorted(unknown)}")
    config = {**DEFAULT_PREPROCESSOR_CONFIG, **overrides}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "preprocessor_config.json"
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path
