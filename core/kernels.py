"""Which kernels compute our forward on the CPU, and why: knows linears and attention, not the network around them.

The product's numbers must not depend on which BLAS runs them beyond float rounding, nor on the thread count at all:
the parity engine runs our side beside HF's on a share of the cores, and the report must be the same bits either way.
  - MKL (F.linear): at 2-16 rows it splits the dot products across threads, so its bits change with the thread
    count; on an AMD EPYC (Zen 4) it ran GPT-2's decode-sized products 2-5x slower than oneDNN.
  - oneDNN's fp32 matmul (torch.ops.mkldnn._linear_pointwise, the kernel torch.compile emits for CPU linears): reads
    the weight where it is (HF's (in, out) Conv1D storage seen transposed: no copy), fp32 accumulation, the same bits
    at any thread count (checked).
  - Attention of one fp32 query over a cache (a decoding step) is q @ k^T, softmax, @ v: SDPA's one-query kernel
    splits the keys across threads. Every other attention is SDPA's.
  - bf16 on the CPU: oneDNN-prepacked weights (bit-identical to F.linear, faster), SDPA throughout; bf16 is never run
    beside HF, so its bits may follow the thread count.
  - Autocast: torch caches its weight casts only for leaf tensors that require grad, so an inference model's
    linears cast every weight again at every call (a 124M decode under CPU autocast ran ~2x slower than fp32).
    autocast_copy() gives a copy whose linears hold their weight cast once, exactly as autocast casts it (`.to()`,
    strides kept): the same matmuls, the same bits, without the per-call casts.

linear_kernel() picks oneDNN or aten once per process, lazily at the first fp32 linear: oneDNN when it is available,
accurate to fp32, thread-invariant and not clearly slower than F.linear on this CPU (a check of ~130 ms, timed on one
thread, best of interleaved runs, so that a busy machine cannot tip it); $PARITY_LAB_LINEAR=onednn|aten forces one.
The check runs on a short-lived thread of its own and leaves every thread count as it found it: the caller's, and
the one threads started later get (torch.set_num_threads sets both; see _set_own_threads).
thread_invariant() tells whether a model's forward gives the same bits at any thread count.

It does not know the network (core/model.py), where weights come from, nor when the parity engine runs what.
"""

from __future__ import annotations

import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from .model import GPT

EPS32 = float(torch.finfo(torch.float32).eps)  # fp32's machine epsilon: the scale of one rounding

KERNELS = ("onednn", "aten")
ONEDNN_SLOWER_OK = 1.25  # oneDNN is chosen unless it is more than this much slower than F.linear
_KERNEL: str | None = None
_KERNEL_LOCK = threading.Lock()


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")


def _best_ms(fns: list, reps: int = 9) -> list[float]:
    """Each function's best time of `reps`, interleaved: a busy machine slows some runs, never speeds one up."""
    for fn in fns:
        fn()  # oneDNN builds its kernel for a shape at first use
    best = [math.inf] * len(fns)
    for _ in range(reps):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t)
    return [b * 1e3 for b in best]


def _set_own_threads(n: int, default: int) -> None:
    """The calling thread's torch thread count to `n`, leaving the count threads started later get at `default`.
    torch.set_num_threads sets both; a short-lived thread that runs no torch work puts the latter back (a thread
    whose first torch call falls in the instant between the two would take `n`)."""
    torch.set_num_threads(n)
    keeper = threading.Thread(target=torch.set_num_threads, args=(default,), name="torch-threads-default")
    keeper.start()
    keeper.join()


def _check_onednn_on(threads: int) -> str | None:
    """_check_onednn's work, on a thread of its own that may change its own thread count."""
    default = torch.get_num_threads()  # a new thread takes the default count at its first torch call
    try:
        if not torch.backends.mkldnn.is_available():
            return "oneDNN is not available in this torch build"
        g = torch.Generator().manual_seed(0)
        w_in_out = torch.randn(768, 3072, generator=g)  # HF's Conv1D storage; the weight is its transposed view
        w_out_in = torch.randn(3072, 768, generator=g)
        bias = torch.randn(3072, generator=g)
        cases = [(torch.randn(rows, 768, generator=g), w) for rows in (1, 5, 37) for w in (w_in_out.t(), w_out_in)]
        _set_own_threads(threads, default)
        results = []
        for x, w in cases:
            got = _onednn(x, w, bias)
            exact = torch.addmm(bias.double(), x.double(), w.double().t())
            # fp32 accumulation of 768 products stays within ~eps * sqrt(K) of the scale; bf16 would be ~1e-3 off
            if not (got - exact).abs().max() <= 4 * EPS32 * math.sqrt(768) * exact.abs().max():
                return "oneDNN's fp32 matmul is not accurate to fp32 here"
            results.append(got)
        _set_own_threads(1, default)  # each kernel's own speed: on a busy machine a thread team waits for its slowest
        if threads > 1 and not all(torch.equal(got, _onednn(x, w, bias)) for got, (x, w) in zip(results, cases)):
            return "oneDNN's results change with the thread count here"
        x5 = torch.randn(5, 768, generator=g)
        products = [(x, w) for x in (x5, x5[:1]) for w in (w_in_out.t(), w_out_in)]
        times = _best_ms([lambda x=x, w=w: _onednn(x, w, bias) for x, w in products]
                         + [lambda x=x, w=w: F.linear(x, w, bias) for x, w in products])
        ours, aten = sum(times[: len(products)]), sum(times[len(products):])
        if ours > ONEDNN_SLOWER_OK * aten:  # a little slower still wins: its bits let us run beside HF
            return f"oneDNN is slower than F.linear here ({ours:.2f} ms vs {aten:.2f} ms)"
        return None
    except (RuntimeError, AttributeError) as exc:  # an op missing from this build, or refusing these inputs
        return f"oneDNN's linear failed here: {exc}"


def _check_onednn() -> str | None:
    """Why oneDNN must not run our linears here (None: it may). Accuracy against float64, bits at the caller's
    thread count against one thread, then speed against F.linear on one thread, on decode-sized products in both
    weight layouts. Runs on a short-lived thread of its own, which alone changes its thread count: the caller's
    count, and the one threads started later get, stay as they were (tests/test_kernels.py)."""
    threads = torch.get_num_threads()  # the count the caller's forward runs at
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="onednn-check") as worker:
        return worker.submit(_check_onednn_on, threads).result()


def linear_kernel() -> str:
    """The kernel our fp32 CPU linears use in this process: "onednn" or "aten" (F.linear); decided once."""
    global _KERNEL
    if _KERNEL is None:
        with _KERNEL_LOCK:
            if _KERNEL is None:
                forced = os.environ.get("PARITY_LAB_LINEAR", "auto").strip().lower() or "auto"
                if forced not in (*KERNELS, "auto"):
                    raise ValueError(f"PARITY_LAB_LINEAR must be onednn, aten or auto, got {forced!r}")
                if forced == "aten" or (forced == "auto" and _check_onednn() is not None):
                    _KERNEL = "aten"
                else:
                    _KERNEL = "onednn"
    return _KERNEL


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, computed by linear_kernel()'s choice for fp32 on the CPU. Autocast and autograd need aten's op
    (oneDNN's has no backward, and autocast does not see it), so they always get F.linear."""
    if (weight.dtype == torch.float32 and x.dtype == torch.float32 and weight.device.type == "cpu"
            and (weight.is_contiguous() or weight.t().is_contiguous())
            and not torch.is_autocast_enabled("cpu")
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and linear_kernel() == "onednn"):
        return _onednn(x, weight, bias)
    return F.linear(x, weight, bias)


def thread_invariant(model: "GPT | None" = None) -> bool:
    """Does our forward (of `model`, if given) give the same bits at any thread count? Yes for an fp32 CPU model
    whose linears run on oneDNN (attention never splits a dot product across threads), unless any of its modules
    runs under autocast: aten's bf16 kernels are not checked. A module whose forward enables torch.autocast says so
    with a class attribute `uses_autocast = True` (the bug lab's bf16_autocast fault does, core/faults.py)."""
    if linear_kernel() != "onednn":
        return False
    if model is None:
        return True
    return (model.dtype == torch.float32 and model.device.type == "cpu"
            and not any(getattr(m, "uses_autocast", False) for m in model.modules()))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int, *, causal: bool = True,
           scale: float | None = None) -> torch.Tensor:
    """Attention of T queries at positions start.. over the keys 0 .. start+T-1: (B, nh, T, hs) -> (B, nh, T, hs).
    One fp32 query (a decoding step) is q @ k^T, softmax, @ v: SDPA's one-query kernel splits the keys across
    threads, which makes its bits depend on the thread count (bf16, never run beside HF, keeps SDPA: ~10% faster)."""
    T = q.size(2)
    if T == 1 and start > 0 and q.dtype == torch.float32:  # one new token sees every cached one
        att = (q @ k.transpose(-2, -1)) * (scale if scale is not None else 1.0 / math.sqrt(q.size(-1)))
        return att.softmax(dim=-1) @ v  # (B, nh, 1, hs)
    if not causal or T == 1:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    if start == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    # a chunk after a cached prefix: query i sees keys 0 .. start+i
    mask = torch.ones(T, start + T, dtype=torch.bool, device=q.device).tril(diagonal=start)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def bf16_prepack_available() -> bool:
    """Can oneDNN prepack bf16 weights on this CPU?"""
    try:
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        return False


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state-dict keys) computed with `linear` above, or, for bf16 on the CPU
    after prepack_bf16, with a oneDNN-prepacked copy of the weight (bit-identical to F.linear, ~1.4x faster at
    decode batch sizes; this is the kernel torch.compile's inductor emits for bf16 linears)."""

    packed: torch.Tensor | None = None
    cast: torch.Tensor | None = None  # the weight as autocast casts it, made once (autocast_copy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None and x.dtype == torch.bfloat16:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        if (self.cast is not None and torch.is_autocast_enabled(x.device.type)
                and torch.get_autocast_dtype(x.device.type) == self.cast.dtype):
            return F.linear(x, self.cast, self.bias)  # autocast casts x and the bias as ever; the weight is cast
        return linear(x, self.weight, self.bias)


@torch.no_grad()
def prepack_bf16(module: nn.Module) -> None:
    """Give every bf16 CPU Linear in `module` a oneDNN-prepacked copy of its weight (where this CPU can): bf16
    decoding then keeps two copies of each weight. Take it after the weights are final: the copy does not follow."""
    if not bf16_prepack_available():
        return
    for lin in module.modules():
        if isinstance(lin, Linear) and lin.weight.dtype == torch.bfloat16 and lin.weight.device.type == "cpu":
            lin.packed = torch.ops.mkldnn._reorder_linear_weight(lin.weight, 1)


@torch.no_grad()
def autocast_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of `module` (its modules copied, every parameter shared) whose Linears hold their weight cast to
    `dtype` once, for running under torch.autocast(dtype): bit-identical to the module itself there, without
    autocast's per-call weight casts. The copy keeps a `dtype` copy of each Linear weight beside the shared one."""
    import copy

    twin = copy.deepcopy(module, memo={id(p): p for p in module.parameters()})
    for lin in twin.modules():
        if isinstance(lin, Linear) and lin.weight.dtype == torch.float32:
            lin.cast = lin.weight.detach().to(dtype)  # autocast's own cast: .to() keeps a transposed view's strides
    return twin

