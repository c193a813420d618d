"""Write a Hugging Face `tokenizer.json` (+ `tokenizer_config.json`) from a tiktoken rank file.

The real Qwen2.5 vocabulary ships as `qwen.tiktoken`: 151,643 base64 byte strings with their ranks (rank = id), no
merges. A `tokenizers` BPE model needs merges, recovered here the classic way: the merge that builds a token of
rank r is the last step of running byte-level BPE on its bytes with only the ranks below r, which ends in two parts.
Most tokens have exactly one split into two lower-ranked tokens, which is then that merge; only the rest are
simulated, so the whole vocabulary converts in seconds.

tiktoken returns a pre-tokenised chunk that is itself a token without merging; `ignore_merges` makes `tokenizers`
do the same, so the two agree even where the merge path to such a token is ambiguous.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from qwen25vl.errors import InputError
from qwen25vl.processing.tokenizer import QWEN2_SPLIT_REGEX, SPECIAL_TOKENS, bytes_to_unicode

QWEN_SPECIAL_START = 151643  # <|endoftext|> in the real vocabulary; the tiny test vocabulary starts at 512


def load_tiktoken_ranks(path: str | Path) -> dict[bytes, int]:
    """Read a `.tiktoken` file: one `base64(token) rank` pair per line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"tiktoken file not found: {path}")
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            token_b64, rank = line.split()
            ranks[base64.b64decode(token_b64)] = int(rank)
        except ValueError as err:
            raise InputError(f"{path}:{lineno}: not a 'base64 rank' line: {line[:60]!r}") from err
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise InputError(f"{path}: ranks are not the contiguous ids 0..{len(ranks) - 1}")
    return ranks


def _bpe_parts(token: bytes, ranks: dict[bytes, int], max_rank: int) -> list[bytes]:
    """Byte-level BPE of `token` using only merges whose result ranks below `max_rank` (tiktoken's rule)."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best, best_rank = -1, max_rank
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best, best_rank = i, rank
        if best < 0:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts


def recover_merges(ranks: dict[bytes, int]) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
    """Merges in rank order, and the multi-byte tokens no merge reaches (reachable only as whole chunks)."""
    merges: list[tuple[bytes, bytes]] = []
    unreachable: list[bytes] = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        splits = []
        for i in range(1, len(token)):
            left, right = ranks.get(token[:i]), ranks.get(token[i:])
            if left is not None and right is not None and left < rank and right < rank:
                splits.append(i)
        if len(splits) == 1:  # the final two parts of BPE must be such a split: no simulation needed
            merges.append((token[: splits[0]], token[splits[0] :]))
            continue
        parts = _bpe_parts(token, ranks, rank) if splits else []
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
        else:
            unreachable.append(token)
    return merges, unreachable


def tokenizer_json(
    vocab: dict[str, int], merges: list[tuple[str, str]], special_start: int, *, ignore_merges: bool = True
) -> dict:
    """The tokenizer.json document of a Qwen2 byte-level BPE (NFC, Qwen2 split regex) with the 22 special tokens."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    added = [
        {"id": special_start + i, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": special}
        for i, (name, special) in enumerate(SPECIAL_TOKENS)
    ]  # fmt: skip
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT_REGEX}, "behavior": "Isolated", "invert": False},
                byte_level,
            ],
        },
        "post_processor": dict(byte_level),
        "decoder": dict(byte_level),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": ignore_merges,
            "vocab": vocab,
            "merges": [[a, b] for a, b in merges],
        },
    }


def tokenizer_config(special_start: int, chat_template: str, model_max_length: int = 131072) -> dict:
    """tokenizer_config.json as the official checkpoints write it (so transformers loads the folder too)."""
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(special_start + i): {"content": name, "lstrip": False, "normalized": False, "rstrip": False,
                                     "single_word": False, "special": special}
            for i, (name, special) in enumerate(SPECIAL_TOKENS)
        },  # fmt: skip
        "additional_special_tokens": [name for name, _ in SPECIAL_TOKENS[1:14]],
        "bos_token": None,
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": model_max_length,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def write_tokenizer_files(
    folder: str | Path, vocab: dict[str, int], merges: list[tuple[str, str]], special_start: int, **json_options
) -> Path:
    """Write tokenizer.json, tokenizer_config.json and chat_template.json (the official template) into `folder`."""
    from qwen25vl.processing.chat_template import OFFICIAL_CHAT_TEMPLATE

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    doc = tokenizer_json(vocab, merges, special_start, **json_options)
    (folder / "tokenizer.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    config = tokenizer_config(special_start, OFFICIAL_CHAT_TEMPLATE)
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
    template = {"chat_template": OFFICIAL_CHAT_TEMPLATE}
    (folder / "chat_template.json").write_text(json.dumps(template, ensure_ascii=False, indent=2), encoding="utf-8")
    return folder / "tokenizer.json"


def convert_tiktoken(path: str | Path, out_dir: str | Path) -> dict:
    """Convert a Qwen `.tiktoken` file into a tokenizer folder; returns a summary (counts, unreachable tokens)."""
    ranks = load_tiktoken_ranks(path)
    if len(ranks) != QWEN_SPECIAL_START:
        raise InputError(
            f"{path}: {len(ranks)} ranked tokens, expected {QWEN_SPECIAL_START} (the Qwen2 vocabulary) so that the "
            f"special tokens land at ids {QWEN_SPECIAL_START}-{QWEN_SPECIAL_START + len(SPECIAL_TOKENS) - 1}"
        )
    merges, unreachable = recover_merges(ranks)
    table = bytes_to_unicode()

    def to_str(token: bytes) -> str:
        return "".join(table[b] for b in token)

    vocab = {to_str(token): rank for token, rank in ranks.items()}
    str_merges = [(to_str(a), to_str(b)) for a, b in merges]
    written = write_tokenizer_files(out_dir, vocab, str_merges, QWEN_SPECIAL_START)
    return {"path": written, "tokens": len(ranks), "merges": len(merges), "unreachable": len(unreachable)}
