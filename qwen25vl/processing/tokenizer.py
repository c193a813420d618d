"""The Qwen2 byte-level BPE tokenizer, loaded from a checkpoint's tokenizer.json with the `tokenizers` library.

No transformers at run time: `tokenizers` does the BPE (Rust, fast); this module adds the Qwen2.5-VL special tokens by
name, the end-of-sequence ids generation stops on, and an incremental decoder for streaming that never emits half a
UTF-8 character.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer

from qwen25vl.errors import CheckpointError, InputError

# The 22 special tokens of Qwen2.5-VL in id order (151643.. in the real vocabulary, 512.. in the tiny one).
# `special` is the flag the official tokenizer_config.json gives each (skipped by decode(skip_special_tokens=True)).
SPECIAL_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
SPECIAL_TOKEN_NAMES: tuple[str, ...] = tuple(name for name, _ in SPECIAL_TOKENS)

# Long texts are cut into pieces encoded in parallel (`encode_batch`); one long string is also slower per character.
# A cut right after a newline and before a non-space character is a boundary of the split regex (no alternative
# matches a newline and then a non-space: the letter and punctuation ones exclude a leading newline, the others
# match spaces only; the regex has no look-behind), of NFC (a newline composes with nothing) and of special tokens
# (none contains a newline): the pieces encode exactly like the whole. Python's \S is narrower than the regex's.
_SAFE_CUT = re.compile(r"\n(?=\S)")
_PIECE_CHARS = 2048
# Surrogate code points are not characters: they reach Python from JSON escapes ("\ud800") and from command-line bytes
# that are not UTF-8 (decoded with surrogateescape), and the Rust tokenizer cannot take them.
_SURROGATE = re.compile("[\ud800-\udfff]")

# The pre-tokenisation regex of Qwen2 (tiktoken's cl100k pattern with single digits).
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table that byte-level BPE vocabularies are written in."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the special tokens the rest of the package needs, looked up by name (never hard-coded)."""

    endoftext: int
    im_start: int
    im_end: int
    vision_start: int
    vision_end: int
    vision_pad: int
    image_pad: int
    video_pad: int
    tool_call_start: int
    tool_call_end: int


class Tokenizer:
    """A Qwen2 tokenizer: `encode` recognises special tokens in text; `decode` mirrors the reference's."""

    def __init__(self, backend: _HFTokenizer, config: dict | None = None):
        self._tok = backend
        self.config = dict(config or {})
        missing = [name for name in SPECIAL_TOKEN_NAMES[:16] if backend.token_to_id(name) is None]
        if missing:
            raise CheckpointError(f"tokenizer has no id for the Qwen2.5-VL special tokens {missing}")
        tid = backend.token_to_id
        self.special = SpecialIds(
            endoftext=tid("<|endoftext|>"), im_start=tid("<|im_start|>"), im_end=tid("<|im_end|>"),
            vision_start=tid("<|vision_start|>"), vision_end=tid("<|vision_end|>"), vision_pad=tid("<|vision_pad|>"),
            image_pad=tid("<|image_pad|>"), video_pad=tid("<|video_pad|>"),
            tool_call_start=tid("<tool_call>"), tool_call_end=tid("</tool_call>"),
        )  # fmt: skip
        self._id_bytes: list[bytes] | None = None
        self._skipped_ids = frozenset(tid for tid, tok in backend.get_added_tokens_decoder().items() if tok.special)

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_file(cls, path: str | Path, config: dict | None = None) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"tokenizer file not found: {path}")
        try:
            backend = _HFTokenizer.from_file(str(path))
        except Exception as err:  # the Rust loader raises a bare Exception on malformed files
            raise CheckpointError(f"cannot read tokenizer file {path}: {err}") from err
        return cls(backend, config)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "Tokenizer":
        """Load `tokenizer.json` (+ `tokenizer_config.json` when present) from a checkpoint folder."""
        folder = Path(folder)
        config_path = folder / "tokenizer_config.json"
        config = {}
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except ValueError as err:
                raise CheckpointError(f"cannot read {config_path}: {err}") from err
        return cls.from_file(folder / "tokenizer.json", config)

    # ---------------------------------------------------------------- ids and names
    @property
    def backend(self) -> _HFTokenizer:
        return self._tok

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included (the model's embedding may have more, padded, rows)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def special_token_ids(self) -> dict[str, int]:
        """All Qwen2.5-VL special tokens present, by name (e.g. '<|box_start|>')."""
        found = {name: self._tok.token_to_id(name) for name in SPECIAL_TOKEN_NAMES}
        return {name: tid for name, tid in found.items() if tid is not None}

    @property
    def pad_token_id(self) -> int:
        return self.special.endoftext

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Ids generation stops on: `<|im_end|>` and `<|endoftext|>` (the instruct models' generation_config)."""
        return (self.special.im_end, self.special.endoftext)

    def token_to_id(self, name: str) -> int:
        tid = self._tok.token_to_id(name)
        if tid is None:
            raise InputError(f"unknown token {name!r}")
        return tid

    def id_to_token(self, token_id: int) -> str:
        tok = self._tok.id_to_token(int(token_id))
        if tok is None:
            raise InputError(f"token id {token_id} is out of range (vocabulary of {self.vocab_size})")
        return tok

    # ---------------------------------------------------------------- encode / decode
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in the text become their ids. No BOS is added (Qwen has none)."""
        return self.encode_with_offsets(text, offsets=False)[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        texts = list(texts)
        for i, text in enumerate(texts):
            check_text(text, f"text {i}")
        return [enc.ids for enc in self._tok.encode_batch(texts, add_special_tokens=False)]

    @staticmethod
    def is_safe_cut(text: str, position: int) -> bool:
        """Whether encoding text[:position] and text[position:] apart gives the ids of the whole (see _SAFE_CUT)."""
        if position <= 0 or position >= len(text):
            return True
        return text[position - 1] == "\n" and _SAFE_CUT.match(text, position - 1) is not None

    def encode_segments(self, text: str, cuts: list[int]) -> list[list[int]]:
        """Ids of text[cuts[i]:cuts[i + 1]] for consecutive cuts (0 and len(text) implied), in one parallel batch.

        Every cut must be a safe one (`is_safe_cut`); long segments are cut further at safe newlines.
        """
        check_text(text)
        bounds = [0] + [c for c in cuts if 0 < c < len(text)] + [len(text)]
        pieces, owner = [], []
        for seg, (a, b) in enumerate(zip(bounds, bounds[1:])):
            if b - a > 2 * _PIECE_CHARS:
                for match in _SAFE_CUT.finditer(text, a, b):
                    if match.end() - a >= _PIECE_CHARS and b - match.end() >= _PIECE_CHARS // 2:
                        pieces.append(text[a : match.end()])
                        owner.append(seg)
                        a = match.end()
            pieces.append(text[a:b])
            owner.append(seg)
        out: list[list[int]] = [[] for _ in range(len(bounds) - 1)]
        for seg, enc in zip(owner, self._tok.encode_batch(pieces, add_special_tokens=False)):
            out[seg].extend(enc.ids)
        return out

    def encode_with_offsets(self, text: str, offsets: bool = True) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and each token's (start, end) character span in `text`."""
        check_text(text)
        if len(text) <= 2 * _PIECE_CHARS:
            enc = self._tok.encode(text, add_special_tokens=False)
            return enc.ids, (enc.offsets if offsets else [])
        starts = [0]
        for match in _SAFE_CUT.finditer(text):
            if match.end() - starts[-1] >= _PIECE_CHARS:
                starts.append(match.end())
        pieces = [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]
        ids: list[int] = []
        spans: list[tuple[int, int]] = []
        for start, enc in zip(starts, self._tok.encode_batch(pieces, add_special_tokens=False)):
            ids.extend(enc.ids)
            if offsets:
                spans.extend((a + start, b + start) for a, b in enc.offsets)
        return ids, spans

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        ids = _as_id_list(ids)
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences, skip_special_tokens: bool = False) -> list[str]:
        return self._tok.decode_batch([_as_id_list(s) for s in sequences], skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (its surface form for added tokens)."""
        table = self._bytes_table()
        if not 0 <= token_id < len(table):
            raise InputError(f"token id {token_id} is out of range (vocabulary of {len(table)})")
        return table[token_id]

    def incremental_decoder(self, skip_special_tokens: bool = False) -> "IncrementalDecoder":
        return IncrementalDecoder(self, skip_special_tokens=skip_special_tokens)

    def is_skipped_special(self, token_id: int) -> bool:
        return token_id in self._skipped_ids

    def _bytes_table(self) -> list[bytes]:
        if self._id_bytes is None:
            byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
            added = {tid: tok.content for tid, tok in self._tok.get_added_tokens_decoder().items()}
            table = []
            for tid in range(self.vocab_size):
                if tid in added:
                    table.append(added[tid].encode("utf-8"))
                    continue
                tok = self._tok.id_to_token(tid) or ""
                # A vocabulary entry outside the byte alphabet (never produced by BPE) decodes to nothing, as in
                # the reference's byte-level decoder.
                table.append(bytes(byte_of[ch] for ch in tok if ch in byte_of))
            self._id_bytes = table
        return self._id_bytes

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, im_end={self.special.im_end})"


class IncrementalDecoder:
    """Turns a stream of token ids into text deltas that never end in the middle of a UTF-8 character.

    Bytes of each token go through Python's incremental UTF-8 decoder: a character split over several tokens
    (an emoji is often 2-4 byte tokens) is held back until complete; bytes that can never form a character become
    U+FFFD exactly as `Tokenizer.decode` would write them. The concatenation of all deltas plus `finish()` equals
    `decode(all ids)`.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self._tokenizer = tokenizer
        self._table = tokenizer._bytes_table()
        self._skip = skip_special_tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.ids: list[int] = []

    def add(self, token_ids) -> str:
        """Feed one id or several; returns the newly completed text (possibly empty)."""
        ids = [token_ids] if isinstance(token_ids, int) else _as_id_list(token_ids)
        chunks = []
        for tid in ids:
            if not 0 <= tid < len(self._table):
                raise InputError(f"token id {tid} is out of range (vocabulary of {len(self._table)})")
            self.ids.append(tid)
            if self._skip and self._tokenizer.is_skipped_special(tid):
                continue
            chunks.append(self._table[tid])
        return self._utf8.decode(b"".join(chunks))

    def finish(self) -> str:
        """Flush bytes still held back (an unfinished character becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)


def check_text(text: str, what: str = "text") -> None:
    """Raise InputError unless `text` is a str of Unicode characters only (no lone surrogates), naming the position."""
    if not isinstance(text, str):
        raise InputError(f"{what}: expected a str, got {type(text).__name__}")
    if text.isascii():
        return
    bad = _SURROGATE.search(text)
    if bad is not None:
        at = bad.start()
        raise InputError(
            f"{what}: invalid Unicode at character {at}: U+{ord(bad.group()):04X} is a lone surrogate "
            f"(after {text[max(0, at - 20):at]!r}), not a character: a JSON escape such as \\ud800 without its pair, "
            "or bytes that are not UTF-8, give this; send UTF-8 text"
        )


def _as_id_list(ids) -> list[int]:
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, int):
        return [ids]
    return [int(i) for i in ids]
