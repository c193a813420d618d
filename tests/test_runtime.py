"""The shared runtime flags (--device / --dtype / --threads), the automatic thread choice and the startup line."""

import argparse

import pytest
import torch

from qwen25vl import runtime
from qwen25vl.generation.layout import SPLIT_MIN_BYTES
from qwen25vl.runtime import (add_runtime_args, busy_fraction, choose_threads, fps_arg, positive_int_arg,
                              runtime_from_args)

BIG = 4 * SPLIT_MIN_BYTES  # a decode product worth splitting


def test_a_tiny_model_runs_on_one_thread_whatever_the_cores():
    # its products take microseconds: a hand-off to a second thread costs more, far more on a busy machine
    assert choose_threads(cores=16, busy=0.0, largest_matrix_bytes=SPLIT_MIN_BYTES - 1,
                          split_min_bytes=SPLIT_MIN_BYTES) == 1


@pytest.mark.parametrize("cores, busy, expected", [
    (2, 0.0, 2),  # at rest: every core
    (2, 0.3, 2),  # a little background work is not a held core
    (2, 0.9, 1),  # another process holds a core: leave it to it
    (2, 1.8, 1),  # both held: still one thread, never zero
    (8, 2.2, 6),
    (8, 9.0, 1),
])
def test_a_larger_model_uses_the_cores_idle_at_load(cores, busy, expected):
    assert choose_threads(cores, busy, BIG, SPLIT_MIN_BYTES) == expected


def test_busy_fraction_from_two_readings():
    before = {0: (100, 200), 1: (100, 200), 2: (0, 0)}
    after = {0: (190, 300), 1: (110, 300), 2: (50, 100)}  # cpu 0: 10% busy, cpu 1: 90% busy
    assert busy_fraction(before, after, [0, 1]) == pytest.approx(1.0)
    assert busy_fraction(before, after, [1]) == pytest.approx(0.9)
    assert busy_fraction(before, after, [2, 7]) == pytest.approx(0.5)  # a core missing from a reading counts 0
    assert busy_fraction({}, {}, [0, 1]) == 0.0  # /proc/stat unreadable: assume idle


def test_auto_threads_skips_the_sample_for_a_tiny_model(monkeypatch):
    from qwen25vl.config import Qwen25VLConfig
    from qwen25vl.model.vlm import Qwen25VL

    with torch.device("meta"):
        tiny, seven = Qwen25VL(Qwen25VLConfig.preset("tiny")), Qwen25VL(Qwen25VLConfig.preset("7b"))
    monkeypatch.setattr(runtime, "busy_cores", lambda cores: pytest.fail("sampled the CPU for a tiny model"))
    assert runtime.auto_threads(tiny) == (1, "auto: tiny model")
    monkeypatch.setattr(runtime, "usable_cores", lambda: [0, 1])
    monkeypatch.setattr(runtime, "busy_cores", lambda cores: 1.0)
    threads, why = runtime.auto_threads(seven)
    assert threads == 1 and "2 cores, 1.0 busy" in why


def _parser():
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_runtime_args(parser)
    return parser


def test_runtime_flags_and_their_defaults():
    args = _parser().parse_args([])
    assert runtime_from_args(args) == {"device": None, "dtype": "auto", "threads": "auto"}
    args = _parser().parse_args(["--dtype", "bfloat16", "--threads", "3", "--device", "cpu"])
    assert runtime_from_args(args) == {"device": "cpu", "dtype": "bfloat16", "threads": 3}


@pytest.mark.parametrize("argv", [["--threads", "0"], ["--threads", "-2"], ["--threads", "two"],
                                  ["--threads", "1.5"], ["--dtype", "float8"]])
def test_bad_runtime_flags_are_refused_by_the_parser(argv):
    with pytest.raises(argparse.ArgumentError):
        _parser().parse_args(argv)


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "-inf", "fast", ""])
def test_fps_must_be_a_finite_positive_number(text):
    with pytest.raises(argparse.ArgumentTypeError, match="positive"):
        fps_arg(text)


def test_fps_accepts_fractions():
    assert fps_arg("0.5") == 0.5 and fps_arg("4") == 4.0


@pytest.mark.parametrize("text", ["0", "-5", "1.5", "many"])
def test_pixel_budgets_and_counts_must_be_positive_whole_numbers(text):
    with pytest.raises(argparse.ArgumentTypeError, match="positive whole number"):
        positive_int_arg(text)
    assert positive_int_arg("200704") == 200704
