"""`response_format: {"type": "json_object"}`: decoding constrained to one valid JSON object.

At each step the row's most likely candidate tokens are checked against an incremental JSON-prefix validator (a small
push-down automaton over bytes); every token that cannot continue a valid prefix is masked out before sampling. Two
more rules make the output complete, not merely a prefix:
- an EOS token is allowed only once the object is closed, and then it is the only token allowed;
- a token is allowed only if the JSON can still be finished within the remaining token budget: the shortest
  completion of the new state (e.g. `"}` inside a string value) must fit, one byte per token at worst (a byte-level
  vocabulary holds every single byte as a token). So `max_tokens >= 2` always yields parseable JSON.
Only the top `top_k` candidates are checked for speed; if none of them is valid the rest of the vocabulary is scanned
in logit order until some are. Bytes >= 0x80 (pieces of UTF-8 characters) are only valid inside strings.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

# modes of the automaton
TOP, VALUE, ARR_FIRST, OBJ_FIRST, KEY, COLON, AFTER, STR, NUM, LIT, DONE = range(11)
_WS = frozenset(b" \t\n\r")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_DIGITS = frozenset(b"0123456789")
_NUM_TERMINAL = frozenset(("zero", "int", "frac", "exp"))
_NUM_FIX = {"sign": "0", "dot": "0", "e": "0", "esign": "0"}  # shortest way to end an unfinished number
State = tuple  # (stack: tuple of "o"/"a", mode, sub): immutable, so candidates can branch from it freely
INITIAL: State = ((), TOP, None)


def _after_value(stack: tuple) -> State:
    return (stack, AFTER, None) if stack else (stack, DONE, None)


def _start_value(stack: tuple, c: int) -> Optional[State]:
    if c == 0x7B:  # {
        return (stack + ("o",), OBJ_FIRST, None)
    if c == 0x5B:  # [
        return (stack + ("a",), ARR_FIRST, None)
    if c == 0x22:  # "
        return (stack, STR, (False, 0))
    if c == 0x2D:  # -
        return (stack, NUM, "sign")
    if c == 0x30:
        return (stack, NUM, "zero")
    if c in _DIGITS:
        return (stack, NUM, "int")
    literal = {0x74: b"rue", 0x66: b"alse", 0x6E: b"ull"}.get(c)  # true, false, null
    return (stack, LIT, literal) if literal else None


def _number(stack: tuple, sub: str, c: int) -> Optional[State]:
    digit = c in _DIGITS
    nxt = None
    if sub == "sign":
        nxt = "zero" if c == 0x30 else ("int" if digit else None)
    elif sub in ("zero", "int"):
        nxt = "int" if digit and sub == "int" else ("dot" if c == 0x2E else ("e" if c in b"eE" else None))
    elif sub in ("dot", "frac"):
        nxt = "frac" if digit else ("e" if c in b"eE" and sub == "frac" else None)
    elif sub == "e":
        nxt = "esign" if c in b"+-" else ("exp" if digit else None)
    elif sub in ("esign", "exp"):
        nxt = "exp" if digit else None
    if nxt is not None:
        return (stack, NUM, nxt)
    if sub in _NUM_TERMINAL:  # the number ended; the byte belongs to what follows it
        return step(_after_value(stack), c)
    return None


def _string(stack: tuple, sub: tuple, c: int) -> Optional[State]:
    is_key, esc = sub
    if esc == 0:
        if c == 0x22:
            return (stack, COLON, None) if is_key else _after_value(stack)
        if c == 0x5C:
            return (stack, STR, (is_key, 1))
        return None if c < 0x20 else (stack, STR, sub)  # raw control characters are not allowed in strings
    if esc == 1:
        if c in b'"\\/bfnrt':
            return (stack, STR, (is_key, 0))
        return (stack, STR, (is_key, 2)) if c == 0x75 else None  # \u: four hex digits follow (esc 2..5)
    return (stack, STR, (is_key, esc + 1 if esc < 5 else 0)) if c in _HEX else None


def step(state: State, c: int) -> Optional[State]:
    """The state after one more byte, or None when the byte cannot continue a valid JSON object."""
    stack, mode, sub = state
    if mode == STR:
        return _string(stack, sub, c)
    if mode == NUM:
        return _number(stack, sub, c)
    if mode == LIT:
        if c != sub[0]:
            return None
        return (stack, LIT, sub[1:]) if len(sub) > 1 else _after_value(stack)
    if mode == DONE:
        return None
    if c in _WS:
        return state
    if mode == TOP:
        return (("o",), OBJ_FIRST, None) if c == 0x7B else None  # json_object: the top level is an object
    if mode == ARR_FIRST and c == 0x5D:
        return _after_value(stack[:-1])
    if mode in (VALUE, ARR_FIRST):
        return _start_value(stack, c)
    if mode == OBJ_FIRST and c == 0x7D:
        return _after_value(stack[:-1])
    if mode in (OBJ_FIRST, KEY):
        return (stack, STR, (True, 0)) if c == 0x22 else None
    if mode == COLON:
        return (stack, VALUE, None) if c == 0x3A else None
    # AFTER: a comma or the closer of the open container
    top = stack[-1]
    if c == 0x2C:
        return (stack, KEY if top == "o" else VALUE, None)
    if (c == 0x7D and top == "o") or (c == 0x5D and top == "a"):
        return _after_value(stack[:-1])
    return None


def feed(state: State, data: bytes) -> Optional[State]:
    for c in data:
        state = step(state, c)
        if state is None:
            return None
    return state


def completion(state: State) -> str:
    """The shortest text that completes the JSON object from this state."""
    stack, mode, sub = state
    closers = "".join("}" if c == "o" else "]" for c in reversed(stack))
    if mode == TOP:
        return "{}"
    if mode == STR:
        is_key, esc = sub
        fix = "" if esc == 0 else ("n" if esc == 1 else "0" * (6 - esc))
        return fix + '"' + (":0" if is_key else "") + closers
    if mode == NUM:
        return _NUM_FIX.get(sub, "") + closers
    if mode == LIT:
        return sub.decode() + closers
    return {VALUE: "0", KEY: '"":0', COLON: ":0"}.get(mode, "") + closers


def token_byte_table(tokenizer, vocab_size: int) -> list[Optional[bytes]]:
    """The bytes each token id adds to the text; None for special tokens and ids the tokenizer does not know.

    Uses the tokenizer's exact per-token bytes when it offers them. Otherwise a token holding part of a UTF-8
    character decodes to U+FFFD, whose encoding is made of bytes >= 0x80 as the true bytes are, which is all the
    validator distinguishes (such bytes are only valid inside strings).
    """
    exact = hasattr(tokenizer, "token_bytes") and hasattr(tokenizer, "is_skipped_special")
    known = getattr(tokenizer, "vocab_size", vocab_size)
    table: list[Optional[bytes]] = []
    for token_id in range(vocab_size):
        if token_id >= known:  # padded embedding rows past the tokenizer's vocabulary
            table.append(None)
        elif exact:
            table.append(None if tokenizer.is_skipped_special(token_id) else (tokenizer.token_bytes(token_id) or None))
        else:
            text = tokenizer.decode([token_id], skip_special_tokens=True)
            table.append(text.encode("utf-8") if text else None)
    return table


class JsonConstraint:
    """Per-row state of a JSON-constrained sequence: mask the logits, then advance with the chosen token."""

    def __init__(self, token_bytes: Sequence[Optional[bytes]], eos_ids: Sequence[int], top_k: int = 64):
        self.token_bytes = token_bytes
        self.eos_ids = tuple(eos_ids)
        self.top_k = top_k
        self.state: State = INITIAL

    @property
    def complete(self) -> bool:
        return self.state[1] == DONE

    def _ok(self, token_id: int, remaining_after: int) -> bool:
        data = self.token_bytes[token_id] if token_id < len(self.token_bytes) else None
        if data is None:
            return False
        nxt = feed(self.state, data)
        return nxt is not None and len(completion(nxt)) <= remaining_after

    def allowed_ids(self, logits: torch.Tensor, remaining: int) -> list[int]:
        """Token ids allowed next, given logits (V,) and the number of tokens left in the budget (this one included)."""
        if self.complete:
            return list(self.eos_ids)
        top = torch.topk(logits, min(self.top_k, logits.numel())).indices
        allowed = [t for t in top.tolist() if self._ok(t, remaining - 1)]
        if allowed:
            return allowed
        order = torch.argsort(logits, descending=True)  # rare: scan on in logit order until something fits
        for start in range(len(top), order.numel(), 4096):
            allowed = [t for t in order[start : start + 4096].tolist() if self._ok(t, remaining - 1)]
            if allowed:
                break
        return allowed

    def mask(self, logits: torch.Tensor, remaining: int) -> torch.Tensor:
        """logits (V,) -> logits with every disallowed token at -inf."""
        allowed = self.allowed_ids(logits, remaining)
        if not allowed:  # budget too small to finish (max_tokens < 2): leave the row unconstrained
            return logits
        index = torch.tensor(allowed, dtype=torch.long, device=logits.device)
        masked = torch.full_like(logits, float("-inf"))
        masked[index] = logits[index]
        return masked

    def advance(self, token_id: int) -> None:
        if token_id in self.eos_ids:
            return
        data = self.token_bytes[token_id] if token_id < len(self.token_bytes) else None
        nxt = feed(self.state, data) if data else None
        if nxt is not None:
            self.state = nxt
