"""Sampling and stop strings: pure functions, checked against transformers' logits processors."""

import random

import pytest
import torch

from qwen25vl.errors import InputError
from qwen25vl.generation.sampling import SamplingParams, make_generator, sample, sampling_probs, seen_mask
from qwen25vl.generation.stopping import StopStringFilter, find_stop, partial_stop_len

import transformers.generation.logits_process as lp


def _hf_probs(logits, prev, p: SamplingParams):
    scores = logits.clone()
    if p.repetition_penalty != 1:
        scores = lp.RepetitionPenaltyLogitsProcessor(p.repetition_penalty)(prev, scores)
    chain = [lp.TemperatureLogitsWarper(p.temperature)]
    if p.top_k:
        chain.append(lp.TopKLogitsWarper(p.top_k))
    if p.top_p < 1:
        chain.append(lp.TopPLogitsWarper(p.top_p))
    if p.min_p > 0:
        chain.append(lp.MinPLogitsWarper(p.min_p))
    for warper in chain:
        scores = warper(prev, scores)
    return scores.softmax(-1)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.7),
        SamplingParams(temperature=1.3, top_k=5),
        SamplingParams(temperature=0.9, top_p=0.8),
        SamplingParams(temperature=1.0, min_p=0.1),
        SamplingParams(temperature=0.8, top_k=20, top_p=0.9, min_p=0.05, repetition_penalty=1.3),
    ],
)
def test_distribution_equals_transformers_processors(params):
    logits = torch.randn(3, 50) * 3
    prev = torch.randint(0, 50, (3, 7))
    ours = sampling_probs(logits, params, prev)
    ref = _hf_probs(logits, prev, params)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    kept = (ours > 0).sum(-1)  # per row
    if params.top_k or params.top_p < 1 or params.min_p > 0:
        assert (kept < 50).all(), f"a filter was asked for but every row keeps tokens {kept.tolist()}"
    else:
        assert (kept == 50).all()


def test_greedy_is_argmax_after_repetition_penalty():
    logits = torch.tensor([[2.0, 1.9, -1.0], [0.1, -0.5, -0.4]])
    assert sample(logits, SamplingParams()).tolist() == [0, 0]
    # penalty 2 on token 0: row 0 -> 1.0 < 1.9; row 1: 0.1 -> 0.05 still max; negative tokens multiply
    prev = torch.tensor([[0], [0]])
    assert sample(logits, SamplingParams(repetition_penalty=2.0), prev_tokens=prev).tolist() == [1, 0]
    logits = torch.tensor([[2.0, 1.9, 0.05], [0.1, -0.5, 0.05]])
    prev = torch.tensor([[1, 0], [-1, 0]])  # -1 is padding and must be ignored
    out = sample(logits, SamplingParams(repetition_penalty=100.0), prev_tokens=prev).tolist()
    assert out == [2, 2]
    # the (B, V) mask form gives the same
    mask = seen_mask([[1, 0], [-1, 0]], 3)
    assert mask.tolist() == [[True, True, False], [True, False, False]]
    assert sample(logits, SamplingParams(repetition_penalty=100.0), prev_tokens=mask).tolist() == [2, 2]


def test_draws_follow_the_distribution_and_seed_reproduces():
    logits = torch.tensor([[1.0, 0.0, -1.0, 0.5, 2.0, -3.0]]).repeat(20000, 1)
    params = SamplingParams(temperature=0.8, top_k=4, seed=3)
    gen = torch.Generator().manual_seed(3)
    draws = sample(logits, params, gen)
    freq = torch.bincount(draws, minlength=6).float() / len(draws)
    expected = sampling_probs(logits[:1], params)[0]
    assert expected[5] == 0 and expected[2] == 0  # top_k=4 removed the two least likely
    assert freq[5] == 0 and freq[2] == 0
    torch.testing.assert_close(freq, expected, atol=0.015, rtol=0)
    again = sample(logits, params, torch.Generator().manual_seed(3))
    assert torch.equal(draws, again)
    other = sample(logits, params, torch.Generator().manual_seed(4))
    assert not torch.equal(draws, other)


def test_rows_with_different_params():
    logits = torch.tensor([[0.0, 5.0, 4.9, 0.0]]).repeat(2000, 1)
    rows = [SamplingParams(), SamplingParams(temperature=1.0)] * 1000
    out = sample(logits, rows, torch.Generator().manual_seed(0))
    assert set(out[0::2].tolist()) == {1}  # greedy rows
    assert set(out[1::2].tolist()) >= {1, 2}  # sampled rows see both near-equal tokens
    with pytest.raises(InputError, match="3 sampling params"):
        sample(logits[:2], rows[:3])


@pytest.mark.parametrize(
    "kwargs, name",
    [({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_k": -2}, "top_k"),
     ({"max_new_tokens": -1}, "max_new_tokens"), ({"repetition_penalty": 0}, "repetition_penalty"),
     ({"min_p": 1.5}, "min_p"), ({"stop": ("",)}, "stop")],
)
def test_bad_params_name_the_field(kwargs, name):
    with pytest.raises(InputError, match=name):
        SamplingParams(**kwargs)


def test_params_from_generation_config():
    p = SamplingParams.from_generation_config(
        {"do_sample": True, "temperature": 0.1, "top_k": 1, "top_p": 0.001, "repetition_penalty": 1.05,
         "eos_token_id": [514, 512]}
    )
    assert p.greedy and p.top_p == 0.001 and p.repetition_penalty == 1.05 and p.stop_token_ids == (514, 512)
    assert SamplingParams.from_generation_config({"do_sample": False, "temperature": 0.7}).temperature == 0
    assert p.updated(temperature=0.5, seed=None).temperature == 0.5
    with pytest.raises(InputError, match="tempreature"):
        p.updated(tempreature=1.0)


def test_find_and_partial_stop():
    assert find_stop("abc STOP def END", ["END", "STOP"]) == 4
    assert find_stop("abc", ["x"]) is None
    assert partial_stop_len("hello ST", ["STOP"]) == 2
    assert partial_stop_len("hello S", ["STOP", "Sx"]) == 1
    assert partial_stop_len("hello", ["STOP"]) == 0
    assert partial_stop_len("STOP", ["STOP"]) == 0  # a whole stop string is found, not held


@pytest.mark.parametrize("seed", range(20))
def test_stop_filter_never_leaks_and_cuts_at_first_stop(seed):
    rng = random.Random(seed)
    stops = ["<END>", "ab", "\n\n"]
    alphabet = ["a", "b", "<", "E", "N", "D", ">", "\n", "x", "é", " "]
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
    cut = find_stop(text, stops)
    expected = text if cut is None else text[:cut]
    f = StopStringFilter(stops)
    out, i = [], 0
    while i < len(text) and not f.stopped:
        n = rng.randint(1, 4)
        delta = f.push(text[i : i + n])
        out.append(delta)
        i += n
        shown = "".join(out)
        assert expected.startswith(shown)  # never more than the final text, never a piece of a stop string
    out.append(f.flush())
    assert "".join(out) == expected
    assert f.stopped == (cut is not None)


# --- sample()'s draws, not only sampling_probs(): seeded, many rows at once, tolerances from the binomial std ---

DRAWS = 40000


def _frequencies(logits_row: torch.Tensor, params, seed: int) -> torch.Tensor:
    draws = sample(logits_row.repeat(DRAWS, 1), params, torch.Generator().manual_seed(seed))
    return torch.bincount(draws, minlength=logits_row.shape[-1]).double() / DRAWS


def _assert_matches(freq: torch.Tensor, probs: torch.Tensor, sigmas: float = 5.0):
    """|freq - p| within `sigmas` binomial standard deviations sqrt(p (1 - p) / n) for every token (plus one draw)."""
    probs = probs.double()
    tol = sigmas * (probs * (1 - probs) / DRAWS).sqrt() + 1 / DRAWS
    assert ((freq - probs).abs() <= tol).all(), f"draws {freq.tolist()} vs distribution {probs.tolist()}"


LOGITS = torch.tensor([[0.5, 0.3, 0.1, 0.06, 0.04]]).log()  # probabilities at temperature 1


def test_top_p_alone_never_draws_outside_the_nucleus():
    # before-mass 0, 0.5, 0.8, 0.9, 0.96: top_p 0.85 keeps tokens 0, 1, 2 (renormalised over 0.9)
    freq = _frequencies(LOGITS, SamplingParams(temperature=1.0, top_p=0.85), seed=1)
    assert freq[3] == 0 and freq[4] == 0
    _assert_matches(freq, torch.tensor([0.5, 0.3, 0.1, 0, 0]) / 0.9)


def test_min_p_alone_never_draws_below_the_threshold():
    # min_p 0.15: tokens under 0.15 x 0.5 = 0.075 go (0.06 and 0.04)
    freq = _frequencies(LOGITS, SamplingParams(temperature=1.0, min_p=0.15), seed=2)
    assert freq[3] == 0 and freq[4] == 0
    _assert_matches(freq, torch.tensor([0.5, 0.3, 0.1, 0, 0]) / 0.9)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_alone_shapes_the_draws(temperature):
    freq = _frequencies(LOGITS, SamplingParams(temperature=temperature), seed=3)
    _assert_matches(freq, (LOGITS[0] / temperature).softmax(-1))
    # and the draws are far from the temperature-1 distribution (ignoring temperature would pass the check above
    # only by accident): the largest gap is many standard deviations
    plain = LOGITS[0].softmax(-1).double()
    sigma = (plain * (1 - plain) / DRAWS).sqrt().max()
    assert (freq - plain).abs().max() > 20 * sigma


def test_mixed_rows_filter_only_where_asked():
    # one batch: a top-p row, a plain row and a greedy row, drawn together
    rows = [SamplingParams(temperature=1.0, top_p=0.85), SamplingParams(temperature=1.0), SamplingParams()]
    logits = LOGITS.repeat(3 * DRAWS, 1)
    draws = sample(logits, rows * DRAWS, torch.Generator().manual_seed(4)).view(DRAWS, 3)
    top_p, plain, greedy = (torch.bincount(draws[:, i], minlength=5).double() / DRAWS for i in range(3))
    assert top_p[3:].sum() == 0 and (plain[3:] > 0).all()
    _assert_matches(plain, LOGITS[0].softmax(-1))
    assert greedy.tolist() == [1, 0, 0, 0, 0]


# --- boundaries and small contracts the mutation run found unguarded (TESTING.md) ---

EXACT = torch.tensor([[0.0, -0.6931472, -0.6931472]])  # softmax exactly [0.5, 0.25, 0.25] in fp32


def test_filter_boundaries_are_exact():
    # top-p: the smallest set whose mass reaches top_p (0.5 + 0.25 = 0.75 exactly: the second 0.25 is not needed)
    probs = sampling_probs(EXACT, SamplingParams(temperature=1.0, top_p=0.75))[0]
    assert (probs > 0).sum() == 2 and torch.allclose(probs[:2].sum(), torch.tensor(1.0))
    # min-p: a token exactly at min_p x the top probability stays (transformers removes strictly below)
    assert (sampling_probs(EXACT, SamplingParams(temperature=1.0, min_p=0.5))[0] > 0).sum() == 3
    # top_k=1 alone is a one-hot distribution, whatever the temperature
    one = sampling_probs(torch.tensor([[0.1, 2.0, 1.9]]), SamplingParams(temperature=0.7, top_k=1))
    assert one.tolist() == [[0.0, 1.0, 0.0]]


def test_sampling_probs_of_greedy_rows_and_lists_of_params():
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    torch.testing.assert_close(sampling_probs(logits, SamplingParams()), logits.softmax(-1))  # temperature 1
    rows = [SamplingParams(temperature=0.5), SamplingParams(temperature=2.0)]
    torch.testing.assert_close(sampling_probs(logits, rows), torch.stack([(logits[0] / 0.5).softmax(-1),
                                                                         (logits[1] / 2.0).softmax(-1)]))


@pytest.mark.parametrize("penalty", [1.5, 2.0])
def test_repetition_penalty_alone_equals_transformers(penalty):
    logits = torch.tensor([[2.0, -1.0, 0.5, -0.2, 0.0], [-2.0, 1.0, 0.3, -0.7, 1.2]])
    prev = torch.tensor([[0, 1, 3], [0, 3, -1]])  # negative seen logits are multiplied, positive ones divided
    params = SamplingParams(temperature=1.0, repetition_penalty=penalty)
    ref = _hf_probs(logits, torch.tensor([[0, 1, 3], [0, 3, 3]]), params)  # transformers takes no padding ids
    torch.testing.assert_close(sampling_probs(logits, params, prev), ref)


def test_seen_mask_forms_and_penalty_without_history():
    logits = torch.tensor([[1.0, 0.9, 2.0]])
    mask = torch.tensor([[False, False, True]])  # the (B, V) form: only token 2 seen
    params = SamplingParams(repetition_penalty=100.0)
    assert sample(logits, params, prev_tokens=mask).tolist() == [0]
    probs = sampling_probs(logits, SamplingParams(temperature=1.0, repetition_penalty=100.0), mask)
    assert probs.argmax(-1).tolist() == [0]
    # no history given: the penalty has nothing to act on
    assert sample(logits, params).tolist() == [2]
    torch.testing.assert_close(sampling_probs(logits, SamplingParams(temperature=1.0, repetition_penalty=2.0)),
                               logits.softmax(-1))
    # rows of different lengths: the padding of the shorter row marks nothing
    assert seen_mask([[3], [0, 2]], 4).tolist() == [[False, False, False, True], [True, False, True, False]]
    assert seen_mask([], 4).shape == (0, 4)
    assert seen_mask([[], []], 4).tolist() == [[False] * 4] * 2


def test_plain_temperature_draws_follow_the_seed():
    logits = torch.randn(1, 30).repeat(500, 1)
    params = SamplingParams(temperature=1.0)
    first = sample(logits, params, torch.Generator().manual_seed(7))
    assert torch.equal(first, sample(logits, params, torch.Generator().manual_seed(7)))
    assert not torch.equal(first, sample(logits, params, torch.Generator().manual_seed(8)))
    gen = make_generator(7, "cpu")
    assert make_generator(None, "cpu") is None and torch.equal(sample(logits, params, gen), first)


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -1}, "temperature=-1 must be a number >= 0"),
    ({"temperature": float("inf")}, "temperature=inf must be a number >= 0"),
    ({"temperature": True}, "temperature=True must be a number >= 0"),
    ({"temperature": "0.5"}, "temperature='0.5' must be a number >= 0"),
    ({"top_k": 1.5}, "top_k=1.5 must be an int >= 0"),
    ({"top_p": 1.5}, r"top_p=1.5 must be in \(0, 1\]"),
    ({"min_p": -0.1}, r"min_p=-0.1 must be in \[0, 1\]"),
    ({"max_new_tokens": -1}, "max_new_tokens=-1 must be an int >= 0"),
    ({"repetition_penalty": float("nan")}, "repetition_penalty=nan must be a number > 0"),
    ({"seed": "x"}, "seed='x' must be an int or None"),
    ({"stop": ("ok", 5)}, r"stop=\('ok', 5\) must hold non-empty strings"),
])
def test_bad_params_messages(kwargs, message):
    with pytest.raises(InputError, match=f"^sampling parameter {message}"):
        SamplingParams(**kwargs)


def test_params_normalisation_and_edges():
    assert SamplingParams(stop="END").stop == ("END",)
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")
    assert SamplingParams(stop_token_ids=[5, torch.tensor(6)]).stop_token_ids == (5, 6)
    assert SamplingParams(max_new_tokens=0, min_p=1.0, top_p=1.0).max_new_tokens == 0
    p = SamplingParams.from_generation_config({"temperature": 0.7, "min_p": 0.05, "max_new_tokens": 77,
                                               "eos_token_id": 514})
    assert (p.temperature, p.min_p, p.max_new_tokens, p.stop_token_ids) == (0.7, 0.05, 77, (514,))
