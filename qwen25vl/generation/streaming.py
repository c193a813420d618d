"""Token ids -> text deltas, per sequence, with stop strings held back.

`TextStream` joins an incremental detokenizer (never half a UTF-8 character) and a `StopStringFilter` (never a piece
of a stop string). The concatenation of its deltas equals the text of the whole generation cut at the first stop
string, which is what the non-streamed result returns (it is built by the same stream).
"""

from __future__ import annotations

from typing import Any, Sequence

from qwen25vl.generation.stopping import StopStringFilter


class WindowDecoder:
    """Incremental detokenizer over any tokenizer with `decode(ids, skip_special_tokens=...)`.

    Decodes a short window of recent ids twice (with and without the new ones) and emits the difference, so a
    byte-level BPE token that ends inside a multi-byte character is held until the character completes (the decoded
    text would end with U+FFFD). Cost per token is O(window), not O(length).
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0  # start of the context window decoded for spacing
        self.read_offset = 0  # ids before this are already emitted

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=self.skip)

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return full[len(prefix) :]
        return ""

    def flush(self) -> str:
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix) :] if len(full) > len(prefix) else ""


def make_decoder(tokenizer: Any, skip_special_tokens: bool = True):
    """The tokenizer's own IncrementalDecoder (processing/tokenizer.py: add/finish) when it has one, else ours."""
    if hasattr(tokenizer, "incremental_decoder"):
        inner = tokenizer.incremental_decoder(skip_special_tokens=skip_special_tokens)
        return _Adapter(inner)
    return WindowDecoder(tokenizer, skip_special_tokens)


class _Adapter:
    def __init__(self, inner):
        self.inner = inner

    def push(self, token_id: int) -> str:
        return self.inner.add(int(token_id))

    def flush(self) -> str:
        return self.inner.finish()


class TextStream:
    """One sequence's text: push token ids, get safe deltas; `stopped` when a stop string appeared."""

    def __init__(self, tokenizer: Any, stops: Sequence[str] = (), skip_special_tokens: bool = True):
        self.decoder = make_decoder(tokenizer, skip_special_tokens)
        self.filter = StopStringFilter(stops)
        self.parts: list[str] = []
        # the model's embedding has padded rows beyond the tokenizer's vocabulary; a (random) model may pick one
        self.vocab_size = len(tokenizer) if hasattr(tokenizer, "__len__") else None

    @property
    def stopped(self) -> bool:
        return self.filter.stopped

    def push(self, token_id: int) -> str:
        if self.vocab_size is not None and not 0 <= token_id < self.vocab_size:
            return ""  # no text, as the tokenizer's decode writes nothing for ids it does not know
        delta = self.filter.push(self.decoder.push(token_id))
        if delta:
            self.parts.append(delta)
        return delta

    def finish(self) -> str:
        """End of generation: release what the decoder and the stop filter still hold."""
        delta = self.filter.push(self.decoder.flush()) if not self.stopped else ""
        delta += self.filter.flush()
        if delta:
            self.parts.append(delta)
        return delta

    @property
    def text(self) -> str:
        return "".join(self.parts)
