"""The fuzz suite's CI slice: a few hundred malformed inputs through the processor and the server, each answered by
the project's own error types (or processed), none hanging, peak RSS within the bound the caps set.

Time is not asserted here: on a loaded 2-core CI machine a 1-second input can take 10. A hang still fails (the
runner's per-input limit, `HANG_S`, records it as a timeout). The 10-second goal is measured by `make fuzz`, which
runs the same generator over 10,000 inputs and writes RELIABILITY.md.
"""

from qwen25vl.testing.fuzz import FAMILIES, make_case
from qwen25vl.testing.fuzz_media import png_bomb, webp_bomb
from qwen25vl.testing.fuzz_run import (
    FUZZ_MAX_FRAME_PIXELS,
    FUZZ_MAX_IMAGE_PIXELS,
    Result,
    run_fuzz,
    summary_table,
)

# The stated bound (RELIABILITY.md): an image costs at most 13 bytes a pixel of the decode cap, a video frame 50
# bytes a pixel of the frame cap, plus 64 MB for the rest (output tensors, tokenizer, decoder state).
RSS_BOUND_MB = max(13 * FUZZ_MAX_IMAGE_PIXELS, 50 * FUZZ_MAX_FRAME_PIXELS) / 2**20 + 64
SLICE = range(0, 12 * len(FAMILIES))  # every family 12 times
HANG_S = 120.0


def _check(results):
    assert len({r.index for r in results}) == len(results)
    bad = [f"{r.index} {r.family}: {r.outcome} {r.detail}" for r in results if r.failed]
    assert not bad, "inputs not answered by the project's error types:\n" + "\n".join(bad)
    heavy = [(r.index, r.family, r.peak_mb) for r in results if r.peak_mb > RSS_BOUND_MB]
    assert not heavy, f"over the RSS bound of {RSS_BOUND_MB:.0f} MB: {heavy}"


def test_fuzz_slice_through_the_processor():
    results = run_fuzz(SLICE, timeout=HANG_S)
    _check(results)
    outcomes = {r.outcome for r in results}
    assert outcomes == {"ok", "error"}  # the slice holds inputs of both kinds
    families = {r.family.split("/")[0] for r in results}
    assert {"image", "video", "frames", "path", "text"} <= families
    assert max(r.peak_mb for r in results if r.family.startswith("image/at-cap")) > 20  # RSS is really measured


def test_fuzz_slice_through_the_server():
    results = run_fuzz(range(0, 2 * len(FAMILIES)), server=True, timeout=HANG_S)
    _check(results)
    assert {r.outcome for r in results} == {"ok", "error"}


def test_runner_records_each_kind_of_failure():
    results = run_fuzz([-4, -1, -2, -3, -4], timeout=1.0)
    assert [r.outcome for r in results] == ["ok", "bug:ZeroDivisionError", "timeout", "crash", "ok"]
    assert [r.failed for r in results] == [False, True, True, True, False]  # and the run went on after each


def test_cases_are_deterministic(tmp_path):
    def fingerprint(case):
        src = case.source
        if isinstance(src, (bytes, str)):
            return (case.family, src if isinstance(src, bytes) else src.replace(str(tmp_path), ""))
        return (case.family, repr(type(src)), case.options.keys())

    for index in (0, 7, 33, 250):
        a, b = make_case(index, 5, tmp_path), make_case(index, 5, tmp_path)
        assert fingerprint(a) == fingerprint(b)
        a.cleanup()
        b.cleanup()
    cuts = {make_case(1, seed, tmp_path).source for seed in range(6)}  # a mutation family: seeds differ
    assert len(cuts) > 1


def test_bombs_declare_their_size_in_a_tiny_file(monkeypatch):
    from PIL import Image
    import io

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # PIL would refuse to even open them

    for raw, size in ((png_bomb(60000, 50000), (60000, 50000)), (webp_bomb(16384, 9000), (16384, 9000))):
        assert len(raw) < 2000
        assert Image.open(io.BytesIO(raw)).size == size


def test_summary_table_counts_outcomes():
    results = [Result(0, "image/bomb/PNG", "error", 0.1, 3.0), Result(1, "image/bomb/GIF", "ok", 0.2, 9.0),
               Result(2, "video/truncated/mp4", "bug:KeyError", 1.5, 1.0), Result(3, "text/long", "timeout", 10.0, 0)]
    table = summary_table(results).splitlines()
    assert "| image/bomb | 2 | 1 | 1 | 0 | 0 | 0.20 | 9 |" in table
    assert "| video/truncated | 1 | 0 | 0 | 1 | 0 | 1.50 | 1 |" in table
    assert table[-1] == "| **all** | 4 | 1 | 1 | 1 | 1 | 10.00 | 9 |"
