"""The kernels under our fp32 forward (core/model.py): oneDNN's linear is fp32-exact against float64 on every layout
we use, gives way to aten's under autocast and autograd, is chosen by a check that a slow or inaccurate kernel fails,
and our whole generation (logits, residual stream, every record) has the same bits at any thread count, which is what
lets the parity engine run it beside HF (core/parity/reference.py)."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import WIDE

from core import generate, port_from_hf
from core import model as model_mod
from core.faults import apply_fault
from core.sampling import Capture
from core.structured import random_gpt2

EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture()
def kernel(monkeypatch):
    """Force the process's kernel choice for one test."""

    def use(name: str) -> None:
        monkeypatch.setattr(model_mod, "_KERNEL", name)

    return use


@pytest.fixture(scope="module")
def wide_pair():
    hf = random_gpt2(seed=31, logit_std=3.0, **WIDE)
    return port_from_hf(hf), hf


def _close_to_float64(got: torch.Tensor, x: torch.Tensor, w_out_in: torch.Tensor, bias) -> None:
    exact = x.double() @ w_out_in.double().t() + (bias.double() if bias is not None else 0)
    bound = 4 * EPS32 * math.sqrt(x.size(-1)) * exact.abs().amax()
    assert got.dtype == torch.float32 and got.shape == exact.shape
    assert (got.double() - exact).abs().max() <= bound


@pytest.mark.parametrize("name", ["onednn", "aten"])
def test_linear_is_fp32_exact_on_every_layout(kernel, name):
    kernel(name)
    g = torch.Generator().manual_seed(0)
    w_in_out = torch.randn(96, 200, generator=g)  # HF's Conv1D storage: our weight is its transposed view
    bias = torch.randn(200, generator=g)
    for w in (w_in_out.t(), w_in_out.t().contiguous()):
        for x in (torch.randn(1, 96, generator=g), torch.randn(5, 96, generator=g), torch.randn(3, 7, 96, generator=g),
                  torch.randn(3, 7, 96, generator=g)[:, -1:, :]):  # 3-D, and a non-contiguous last-position slice
            for b in (bias, None):
                _close_to_float64(model_mod.linear(x, w, b), x, w, b)


def test_onednn_gives_way_under_autocast_and_autograd(kernel):
    kernel("onednn")
    w = torch.randn(64, 32)
    x = torch.randn(4, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the bug lab's bf16_autocast fault relies on this
        assert model_mod.linear(x, w).dtype == torch.bfloat16
    wg = w.clone().requires_grad_(True)
    y = model_mod.linear(x, wg)
    assert y.grad_fn is not None
    y.sum().backward()
    torch.testing.assert_close(wg.grad, x.sum(0).expand_as(w))


def test_kernel_choice(monkeypatch):
    monkeypatch.setattr(model_mod, "_KERNEL", None)
    monkeypatch.setenv("PARITY_LAB_LINEAR", "aten")
    assert model_mod.linear_kernel() == "aten" and not model_mod.thread_invariant()
    monkeypatch.setattr(model_mod, "_KERNEL", None)
    monkeypatch.setenv("PARITY_LAB_LINEAR", "onednn")
    assert model_mod.linear_kernel() == "onednn" and model_mod.thread_invariant()
    monkeypatch.setattr(model_mod, "_KERNEL", None)
    monkeypatch.setenv("PARITY_LAB_LINEAR", "blas")
    with pytest.raises(ValueError, match="PARITY_LAB_LINEAR must be onednn, aten or auto"):
        model_mod.linear_kernel()
    monkeypatch.delenv("PARITY_LAB_LINEAR")
    for verdict, chosen in ((None, "onednn"), ("oneDNN is slower than F.linear here", "aten")):
        monkeypatch.setattr(model_mod, "_KERNEL", None)
        monkeypatch.setattr(model_mod, "_check_onednn", lambda v=verdict: v)
        assert model_mod.linear_kernel() == chosen


def test_the_check_fails_an_inaccurate_or_slow_kernel(monkeypatch):
    real = model_mod._onednn
    assert model_mod._check_onednn() is None  # this machine's oneDNN: accurate, thread-invariant, fast enough
    monkeypatch.setattr(model_mod, "_onednn", lambda x, w, b: real(x.bfloat16().float(), w.bfloat16().float(), b))
    assert "not accurate" in model_mod._check_onednn()  # what a bf16 "fp32" matmul would look like

    def slow(x, w, b):
        for _ in range(3):
            real(x, w, b)
        return real(x, w, b)

    monkeypatch.setattr(model_mod, "_onednn", slow)
    assert "slower than F.linear" in model_mod._check_onednn()


def _run(model, threads: int, **settings):
    n = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        capture = Capture()
        gen = generate(model, [15496, 11, 314, 1101, 257, 3303, 2746, 11], capture=capture, **settings)
    finally:
        torch.set_num_threads(n)
    logits, hidden = capture.stacked()
    d = gen.to_dict()
    d.pop("seconds")
    return d, logits, hidden


@pytest.mark.parametrize("fault", [None, "qk_swapped"])
@pytest.mark.parametrize("rows,new", [(1, 110), (5, 24)], ids=["B=1", "B=5"])
def test_generation_has_the_same_bits_at_any_thread_count(kernel, wide_pair, fault, rows, new):
    """At 110 steps of one row, SDPA's one-query kernel (which split the keys across threads) and torch's one-row
    vocabulary sums both changed bits with the thread count; a MKL product of 5 rows does on AMD EPYC."""
    kernel("onednn")
    assert torch.get_num_threads() > 1, "the test needs at least two threads to compare"
    model = apply_fault(wide_pair[0], fault)
    settings = dict(num_return_sequences=rows, max_new_tokens=new, seed=3, top_k=50)
    many, one = _run(model, torch.get_num_threads(), **settings), _run(model, 1, **settings)
    assert many[0] == one[0], "records (tokens, probabilities, entropies, top-50) differ"
    assert torch.equal(many[1], one[1]), "step logits differ"
    assert all(torch.equal(a, b) for a, b in zip(many[2], one[2])), "residual stream differs"


def test_one_query_attention_matches_sdpa():
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(3, 12, n, 64, generator=g) for n in (1, 40, 40))
    got = model_mod.attend(q, k, v, start=39)
    torch.testing.assert_close(got, F.scaled_dot_product_attention(q, k, v), rtol=1e-5, atol=1e-6)
    got = model_mod.attend(q, k, v, start=39, scale=1.0)
    torch.testing.assert_close(got, F.scaled_dot_product_attention(q, k, v, scale=1.0), rtol=1e-5, atol=1e-6)
