"""step_diffs (core/parity/diffs.py) against a float64 numpy computation over the whole vocabulary, for every sampling
method and filter: its shortcut for HF's plain top-k filter (from the kept entries only) and its general path, with
ties at the k-th logit (the filter then keeps more than k entries), supports that differ, and 4-row chunks."""

import numpy as np
import pytest
import torch

from core.parity.diffs import relative_tolerance, step_diffs
from core.parity.subject import build_generation
from core.sampling import TOP_N, SamplingSettings

V, B, S = 400, 3, 5


def _log_softmax(x):
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def reference_log_probs(x: np.ndarray, s: SamplingSettings) -> np.ndarray:
    """The distribution each method samples from, in float64, by its definition (HF's warpers: temperature, top-k
    keeping ties, top-p keeping the most likely token; the seed's loop: top-k of the softmax, renormalised)."""
    method = s.effective_method
    if method == "greedy":
        return _log_softmax(x)
    if method == "nanogpt":
        logp = _log_softmax(x / s.temperature)
        if s.top_k:
            kth = np.sort(logp)[::-1][s.top_k - 1]
            logp = np.where(logp < kth, -np.inf, logp)
            logp = logp - np.log(np.exp(logp).sum())
        return logp
    x = x / s.temperature
    if s.top_k:
        kth = np.sort(x)[::-1][s.top_k - 1]
        x = np.where(x < kth, -np.inf, x)
    if s.top_p < 1.0:
        order = np.argsort(x, kind="stable")
        p = np.exp(_log_softmax(x[order]))
        remove = np.cumsum(p) <= 1 - s.top_p
        remove[-1] = False
        x = x.copy()
        x[order[remove]] = -np.inf
    return _log_softmax(x)


def _case(seed: int):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(B, S, V, generator=g) * 3
    b = a + torch.randn(B, S, V, generator=g) * 0.05  # HF close to ours: small KLs
    b[2, 1] = a[2, 1] + torch.randn(V, generator=g) * 2  # a step whose supports differ
    # a tie at HF's 10th and at its 50th value: the filter keeps 11 (or 51) entries there
    for step, k in ((3, 10), (4, 50)):
        order = torch.argsort(b[0, step], descending=True)
        b[0, step, order[k]] = b[0, step, order[k - 1]]
    tokens = torch.topk(a, 3, dim=-1).indices[..., 2]  # a token ours could sample under every filter here
    return a, b, tokens


SETTINGS = [
    dict(method="hf", top_k=50), dict(method="hf", top_k=10), dict(method="hf", top_k=50, temperature=0.7),
    dict(method="hf", top_k=50, top_p=0.9), dict(method="hf", top_k=None), dict(method="nanogpt", top_k=50),
    dict(method="greedy", num_return_sequences=1),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))
def test_step_diffs_equal_a_float64_reference(settings):
    s = SamplingSettings(**{"num_return_sequences": B, **settings, "max_new_tokens": S})
    a, b, tokens = _case(seed=5)
    if s.effective_method == "greedy":
        tokens = a.argmax(dim=-1)
    gen = build_generation(s, None, [1, 2, 3], tokens, a, eos_id=V + 1)  # no eos within the vocabulary
    steps = step_diffs(gen, s, a, b, relative_tolerance(3072))
    A, Bn = a.double().numpy(), b.double().numpy()
    mismatches = 0
    for t in range(S):
        for r in range(B):
            d, rec = steps[t][r], gen.records[t][r]
            x, y = A[r, t], Bn[r, t]
            la, lb = reference_log_probs(x, s), reference_log_probs(y, s)
            pb = np.exp(lb)
            mismatch = bool(((pb > 0) & np.isinf(la)).any())
            mismatches += mismatch
            assert d.support_mismatch == mismatch, (t, r)
            if mismatch:
                assert d.kl is None
            else:
                with np.errstate(invalid="ignore"):  # 0 * -inf where HF's p is 0: masked out
                    kl = float(np.where(pb > 0, pb * (lb - la), 0).sum())
                # float32 cancellation: |error| ~ eps32 * sum p |log p| (a few 1e-7 at these entropies)
                assert d.kl == pytest.approx(max(kl, 0.0), rel=1e-3, abs=2e-6), (t, r)
            ids = np.array(rec.top_ids)
            assert d.hf_prob == pytest.approx(float(pb[rec.token_id]), rel=1e-5, abs=1e-12)
            np.testing.assert_allclose(d.hf_top_sample_probs, pb[ids], rtol=1e-5, atol=1e-12)
            np.testing.assert_allclose(d.hf_top_probs, np.exp(_log_softmax(y))[ids], rtol=1e-5, atol=1e-12)
            assert d.hf_rank == int((y > y[rec.token_id]).sum()) + 1
            assert d.max_abs_dlogit == pytest.approx(float(np.abs(x - y).max()), rel=1e-6)
            assert d.scale == pytest.approx(float(np.abs(y).max()), rel=1e-6)
            assert d.top1_agree == (x.argmax() == y.argmax())
            v50 = np.sort(y)[::-1][TOP_N - 1]  # HF's top-50; a tie at its 50th value makes either tied id right
            ours = set(ids.tolist())
            above, tied = set(np.flatnonzero(y > v50).tolist()), set(np.flatnonzero(y == v50).tolist())
            assert len(ours & above) <= d.top50_overlap <= len(ours & (above | tied)), (t, r)
    if s.effective_method != "greedy" and s.top_k:
        assert mismatches > 0, "the case should include a step whose supports differ"
