"""The native AVX2 int8 and bf16 mat-vecs (model/native.py, model/kernels/matvec.c): built where the machine can, equal
to the fp32 product of the dequantised weight, on torch's OpenMP runtime, and the path `Int8Linear` takes for a few
rows; and torch's kernels where it is switched off."""

import pytest
import torch
from torch import nn

from qwen25vl.model import native, quant
from qwen25vl.model.quant import Int8Linear, quantize_weight

AVAILABLE = native.matvec() is not None
needs_kernel = pytest.mark.skipif(not AVAILABLE, reason=f"native kernel unavailable here: {native.why_not()}")


def test_the_kernel_builds_wherever_the_machine_allows():
    if native.cpu_has_avx2_fma() and native._compiler() and native.sys.platform == "linux":
        assert native.why_not() is None  # a broken build or a second OpenMP runtime fails here, not silently
    else:
        assert native.matvec() is None and native.why_not()


@needs_kernel
@pytest.mark.parametrize("rows,n,k", [(1, 48, 32), (1, 4864 // 8, 896), (3, 131, 77), (16, 9, 16), (2, 3, 5)])
@pytest.mark.parametrize("bias", [False, True])
def test_kernel_equals_the_dequantised_product(rows, n, k, bias):
    g = torch.Generator().manual_seed(rows * 1000 + n + k)
    q, s = quantize_weight(torch.randn(n, k, generator=g))
    b = torch.randn(n, generator=g) if bias else None
    x = torch.randn(rows, k, generator=g)
    ref = torch.nn.functional.linear(x.double(), q.double() * s.double()[:, None], None if b is None else b.double())
    y = native.linear(x, q, s, b)
    assert y.shape == (rows, n) and y.dtype == torch.float32
    # fp32 sums of exact products: error of a few ulps of the sum's magnitude
    bound = 1e-6 * (x.abs().double() @ (q.abs().double() * s.double()[:, None]).T).max() + 1e-6
    assert float((y.double() - ref).abs().max()) < float(bound) * 8


@needs_kernel
def test_every_output_channel_and_row_is_written():
    q = torch.ones(7, 20, dtype=torch.int8) * torch.arange(1, 8, dtype=torch.int8)[:, None]
    s = torch.full((7,), 0.5)
    x = torch.ones(2, 20)
    x[1] *= 2
    y = native.linear(x, q, s, None)
    assert torch.equal(y, torch.tensor([[10.0 * c for c in range(1, 8)], [20.0 * c for c in range(1, 8)]]))


@needs_kernel
def test_kernel_threads_follow_torch(one_thread):
    assert native.matvec() is not None
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        q, s = quantize_weight(torch.randn(256, 64))
        x = torch.randn(1, 64)
        a = native.linear(x, q, s, None)
        torch.set_num_threads(1)
        assert torch.equal(native.linear(x, q, s, None), a)  # the split across threads changes no sum
    finally:
        torch.set_num_threads(before)


@needs_kernel
def test_int8_linear_takes_the_native_kernel_for_few_rows_only(monkeypatch):
    lin = nn.Linear(32, 40)
    q8 = Int8Linear.from_linear(lin)
    calls = []
    real = native.linear
    monkeypatch.setattr(native, "linear", lambda x, *a: calls.append(tuple(x.shape)) or real(x, *a))
    x = torch.randn(1, 3, 32)
    with torch.no_grad():
        y = q8(x)
        big = q8(torch.randn(70, 32))  # prefill-sized: dequantise then GEMM
        half = q8(x.bfloat16())
    assert calls == [(3, 32), (3, 32)]
    ref = torch.nn.functional.linear(x, q8.dequantized(), lin.bias)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    assert big.shape == (70, 40) and half.dtype == torch.bfloat16


def test_switched_off_it_falls_back_to_torch(monkeypatch):
    monkeypatch.setenv("QWEN25VL_NATIVE", "0")
    monkeypatch.setattr(native, "_state", {})
    assert native.matvec() is None and "QWEN25VL_NATIVE" in native.why_not()
    lin = nn.Linear(32, 40)
    q8 = Int8Linear.from_linear(lin)
    x = torch.randn(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(q8(x), torch.nn.functional.linear(x, q8.dequantized(), lin.bias),
                                   rtol=2e-2, atol=2e-2)


def test_a_failed_build_is_reported_not_raised(monkeypatch, tmp_path):
    monkeypatch.setenv("QWEN25VL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(native, "cpu_has_avx2_fma", lambda: True)
    assert native.matvec() is None
    assert "could not build" in native.why_not()
    assert not list(tmp_path.rglob("*.so"))  # no half-written library left behind


@needs_kernel
@pytest.mark.parametrize("rows,n,k", [(1, 64, 48), (5, 131, 77)])
def test_bf16_kernel_equals_the_fp32_product_of_the_bf16_weight(rows, n, k):
    g = torch.Generator().manual_seed(n + k)
    w = torch.randn(n, k, generator=g).bfloat16()
    b = torch.randn(n, generator=g)
    x = torch.randn(rows, k, generator=g)
    ref = torch.nn.functional.linear(x.double(), w.double(), b.double())
    y = native.linear(x, w, None, b)
    bound = 1e-6 * (x.abs().double() @ w.abs().double().T).max() + 1e-6
    assert float((y.double() - ref).abs().max()) < float(bound) * 8


@needs_kernel
def test_native_linear_rejects_mismatched_inputs():
    q, s = quantize_weight(torch.randn(8, 16))
    with pytest.raises(ValueError, match="scale"):
        native.linear(torch.randn(1, 16), q, None, None)  # int8 needs its scales
    with pytest.raises(ValueError, match="not contiguous"):
        native.linear(torch.randn(1, 8), q.t(), s, None)
    with pytest.raises(ValueError, match="fp32"):
        native.linear(torch.randn(1, 16), q, s.double(), None)


@needs_kernel
def test_bf16_model_decodes_on_the_native_kernel_with_the_same_greedy_tokens(tmp_path, one_thread):
    import qwen25vl
    from qwen25vl.generation.layout import Bf16MatvecLinear, use_native_bf16
    from qwen25vl.model.vlm import Qwen25VL
    from qwen25vl.testing.checkpoint import make_tiny_checkpoint

    folder = make_tiny_checkpoint(tmp_path / "ckpt", seed=5)
    plain = Qwen25VL.from_pretrained(folder, dtype=torch.bfloat16, progress=False).eval()
    swapped = Qwen25VL.from_pretrained(folder, dtype=torch.bfloat16, progress=False).eval()
    keys = set(swapped.state_dict())
    changed = use_native_bf16(swapped)
    layers = swapped.config.text.num_hidden_layers
    assert changed == 7 * layers + 1 and isinstance(swapped.lm_head, Bf16MatvecLinear)
    assert set(swapped.state_dict()) == keys  # same parameters, same keys (tying kept)
    assert swapped.lm_head.weight is swapped.model.embed_tokens.weight
    ids = torch.randint(0, 400, (1, 7))
    with torch.no_grad():
        a, b = plain(ids).logits.float(), swapped(ids).logits.float()
    assert (a - b).abs().max() < 0.1 * a.abs().max()  # bf16 rounding of the same products
    vlm = qwen25vl.load(folder, dtype="bfloat16", threads=None)
    assert isinstance(vlm.model.model.layers[0].mlp.up_proj, Bf16MatvecLinear)
    assert isinstance(qwen25vl.load(folder, dtype="bfloat16", threads=None, decode_layout=False)
                      .model.model.layers[0].mlp.up_proj, torch.nn.Linear)


@needs_kernel
def test_a_worker_thread_runs_the_kernel_on_torchs_thread_count(monkeypatch):
    """A server worker thread calls the kernel: it passes torch's count, not the runtime's per-thread default."""
    import threading

    seen = []
    fns = native.matvec()
    real = fns["int8"]
    monkeypatch.setitem(fns, "int8", lambda *a: seen.append(a[-1]) or real(*a))
    q, s = quantize_weight(torch.randn(64, 32))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        t = threading.Thread(target=lambda: native.linear(torch.randn(1, 32), q, s, None))
        t.start()
        t.join()
    finally:
        torch.set_num_threads(before)
    assert seen == [1]


def test_an_unwritable_cache_falls_back_to_the_temporary_folder(monkeypatch, tmp_path):
    if native._compiler() is None:
        pytest.skip("no C compiler here: nothing to build")
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("QWEN25VL_CACHE", str(blocked))  # cache_dir() lies under a file: mkdir fails
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    out = native.build()
    assert out.is_file() and out.parent.parent == tmp_path / "tmp"
