"""JSON-object constrained decoding: the prefix automaton, shortest completions, and decoding random logits."""

import json

import pytest
import torch

from qwen25vl.serve.json_mode import DONE, INITIAL, JsonConstraint, completion, feed

VALID = ['{}', ' {"a": [1, -2.5e+3, true, null, {"b": "x\\u00e9\\n"}], "c": 0}', '{"k":[ ]}',
         '{"a":0.5,"b":[[]],"":-0,"t":false}', '{"\xc3\xa9": "\xe2\x82\xac"}']
INVALID = ['[]', '"s"', '1', '{a}', '{"a" 1}', '{"a":01}', '{"a":1,}', '{"a":tru}', '{}}', '{"a":"\x01"}',
           '{"a":-}', '{"a":1.}', '{"a":1e}', "{'a':1}", '{"a":[1 2]}', '{"a":1]', '{"\\x"}']


@pytest.mark.parametrize("text", VALID)
def test_valid_objects_reach_done(text):
    state = feed(INITIAL, text.encode("latin-1"))
    assert state is not None and state[1] == DONE


@pytest.mark.parametrize("text", INVALID)
def test_invalid_texts_never_reach_done(text):
    state = feed(INITIAL, text.encode("latin-1"))
    assert state is None or state[1] != DONE


@pytest.mark.parametrize("text", VALID[:4])
def test_every_prefix_plus_its_completion_parses(text):
    for cut in range(len(text) + 1):
        state = feed(INITIAL, text[:cut].encode())
        assert state is not None, text[:cut]
        assert isinstance(json.loads(text[:cut] + completion(state)), dict)


def _vocab():
    """A byte-level toy vocabulary: all 256 single bytes, some JSON-ish merges, two 'special' tokens (None)."""
    table = [bytes([b]) for b in range(256)]
    table += [s.encode() for s in ['{"', '":', '",', '"}', 'true', 'null', '12', '.5', 'e-', '\\u', 'abc', ' {',
                                   '}}', ']]', '[[', '", "', '\u00e9', '{"a": [']]
    eos = len(table)
    table += [None, None]  # eos, another special
    return table, eos


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("max_tokens", [2, 3, 7, 40])
def test_random_logits_decode_to_valid_json_within_budget(seed, max_tokens):
    table, eos = _vocab()
    gen = torch.Generator().manual_seed(seed)
    constraint = JsonConstraint(table, eos_ids=(eos,), top_k=8)
    out = b""
    for step in range(max_tokens):
        logits = torch.randn(len(table), generator=gen) * 3
        logits[eos] += 2.0  # a model eager to stop: EOS must still wait for a complete object
        masked = constraint.mask(logits, max_tokens - step)
        token = int(masked.argmax())
        if token == eos:
            assert constraint.complete
            break
        assert table[token] is not None, "a special token slipped through"
        out += table[token]
        constraint.advance(token)
        assert feed(INITIAL, out) is not None
    assert isinstance(json.loads(out.decode("utf-8", errors="replace")), dict)


def test_eos_is_the_only_choice_once_complete():
    table, eos = _vocab()
    constraint = JsonConstraint(table, eos_ids=(eos,))
    for token in [ord("{"), ord("}")]:
        constraint.advance(token)
    assert constraint.complete
    masked = constraint.mask(torch.randn(len(table)), remaining=10)
    assert torch.isfinite(masked).nonzero().flatten().tolist() == [eos]
