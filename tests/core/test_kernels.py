"""The kernels under our fp32 forward (core/kernels.py): oneDNN's linear is fp32-exact against float64 on every layout
we use, gives way to aten's under autocast and autograd, is chosen by a check that a slow or inaccurate kernel fails,
and our whole generation (logits, residual stream, every record) has the same bits at any thread count, which is what
lets the parity engine run it beside HF (core/parity/reference.py)."""

import math
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F
from conftest import WIDE

from core import generate, port_from_hf
from core import kernels
from core.faults import apply_fault
from core.sampling import Capture
from core.structured import random_gpt2

EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture()
def kernel(monkeypatch):
    """Force the process's kernel choice for one test."""

    def use(name: str) -> None:
        monkeypatch.setattr(kernels, "_KERNEL", name)

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
                _close_to_float64(kernels.linear(x, w, b), x, w, b)


def test_onednn_gives_way_under_autocast_and_autograd(kernel):
    kernel("onednn")
    w = torch.randn(64, 32)
    x = torch.randn(4, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the bug lab's bf16_autocast fault relies on this
        assert kernels.linear(x, w).dtype == torch.bfloat16
    wg = w.clone().requires_grad_(True)
    y = kernels.linear(x, wg)
    assert y.grad_fn is not None
    y.sum().backward()
    torch.testing.assert_close(wg.grad, x.sum(0).expand_as(w))


def test_kernel_choice(monkeypatch):
    monkeypatch.setattr(kernels, "_KERNEL", None)
    monkeypatch.setenv("PARITY_LAB_LINEAR", "aten")
    assert kernels.linear_kernel() == "aten" and not kernels.thread_invariant()
    monkeypatch.setattr(kernels, "_KERNEL", None)
    monkeypatch.setenv("PARITY_LAB_LINEAR", "onednn")
    assert kernels.linear_kernel() == "onednn" and kernels.thread_invariant()
    monkeypatch.setattr(kernels, "_KERNEL", None)
    monkeypatch.setenv("PARITY_LAB_LINEAR", "blas")
    with pytest.raises(ValueError, match="PARITY_LAB_LINEAR must be onednn, aten or auto"):
        kernels.linear_kernel()
    monkeypatch.delenv("PARITY_LAB_LINEAR")
    for verdict, chosen in ((None, "onednn"), ("oneDNN is slower than F.linear here", "aten")):
        monkeypatch.setattr(kernels, "_KERNEL", None)
        monkeypatch.setattr(kernels, "_check_onednn", lambda v=verdict: v)
        assert kernels.linear_kernel() == chosen


def test_the_check_fails_an_inaccurate_or_slow_kernel(monkeypatch):
    real = kernels._onednn
    # this machine's oneDNN: accurate, thread-invariant, fast enough (speed: in one of three checks, as a busy
    # machine can slow any one of them)
    assert any(kernels._check_onednn() is None for _ in range(3))
    monkeypatch.setattr(kernels, "_onednn", lambda x, w, b: real(x.bfloat16().float(), w.bfloat16().float(), b))
    assert "not accurate" in kernels._check_onednn()  # what a bf16 "fp32" matmul would look like

    def slow(x, w, b):
        for _ in range(3):
            real(x, w, b)
        return real(x, w, b)

    monkeypatch.setattr(kernels, "_onednn", slow)
    assert "slower than F.linear" in kernels._check_onednn()


def _in_a_new_thread(fn):
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(fn).result()


def _threads_of_a_new_thread() -> int:
    def probe():
        torch.ones(4).sum()  # a thread's first torch op fixes its thread count
        return torch.get_num_threads()

    return _in_a_new_thread(probe)


def _set_default_threads(n: int) -> None:
    """The count threads started later get, set from a thread that runs no torch work (the caller's own stays)."""
    _in_a_new_thread(lambda: torch.set_num_threads(n))


@pytest.mark.parametrize("own_is_one", [True, False], ids=["own=1,default=all", "own=all,default=1"])
def test_the_first_forward_leaves_every_thread_count_alone(monkeypatch, tiny_pair, own_is_one):
    """The kernel check at the first forward times on one thread and compares bits at the caller's count against one
    thread, yet leaves the caller's count, and the one threads started later get, as they were: even where the two
    differ (as while HF runs beside us) and whichever is larger."""
    n = torch.get_num_threads()
    assert n > 1, "the test needs at least two threads to compare"
    own, default = (1, n) if own_is_one else (n, 1)
    monkeypatch.setattr(kernels, "_KERNEL", None)  # not decided yet: the next fp32 linear runs the check
    monkeypatch.delenv("PARITY_LAB_LINEAR", raising=False)
    counts = []  # the thread count each of the check's oneDNN products ran at
    real = kernels._onednn
    monkeypatch.setattr(kernels, "_onednn", lambda x, w, b: counts.append(torch.get_num_threads()) or real(x, w, b))
    ids = torch.tensor([[15496, 11, 314]])

    def caller() -> dict:
        torch.get_num_threads()  # take the default count, then set this thread's own
        torch.set_num_threads(own)
        _set_default_threads(default)
        with torch.no_grad():
            tiny_pair[0](ids)
        return dict(kernel=kernels._KERNEL, own=torch.get_num_threads(), new=_threads_of_a_new_thread())

    try:
        seen = _in_a_new_thread(caller)
    finally:
        _set_default_threads(n)
    assert seen["kernel"] in kernels.KERNELS, "the forward did not decide the kernel"
    assert set(counts) == ({1} if own == 1 else {own, 1}), "the check ran at other thread counts"
    assert seen["own"] == own, "the caller's own thread count changed"
    assert seen["new"] == default, "the count threads started later get changed"
    assert torch.get_num_threads() == n, "another thread's count changed"


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
    got = kernels.attend(q, k, v, start=39)
    torch.testing.assert_close(got, F.scaled_dot_product_attention(q, k, v), rtol=1e-5, atol=1e-6)
    got = kernels.attend(q, k, v, start=39, scale=1.0)
    torch.testing.assert_close(got, F.scaled_dot_product_attention(q, k, v, scale=1.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_copy_is_autocast_bit_for_bit(wide_pair, dtype):
    """The autocast regime runs our GPT on a copy whose linears hold their weight cast once: under torch.autocast it
    must give autocast's own bits (the model itself under autocast is the reference), and share every parameter."""
    ours = wide_pair[0]
    twin = kernels.autocast_copy(ours, dtype)
    assert all(a is b for a, b in zip(ours.parameters(), twin.parameters()))
    assert all(m.cast is None for m in ours.modules() if isinstance(m, kernels.Linear))  # the original untouched
    ids = torch.tensor([[15496, 11, 314, 1101, 257, 3303, 2746, 11]] * 3)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        want, got = ours(ids, return_hidden=True), twin(ids, return_hidden=True)
    assert got.logits.dtype == dtype and torch.equal(got.logits, want.logits)
    assert all(torch.equal(a, b) for a, b in zip(got.hidden, want.hidden))
    with torch.no_grad():  # outside autocast the cast weights are not used: float32 as ever
        assert torch.equal(twin(ids), ours(ids))
