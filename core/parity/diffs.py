"""Differences between two implementations' tensors and the tolerances that separate float noise from a fault.

Knows the float-noise model (eps * sqrt(K)) and the sampling distributions of each method; knows nothing
about where the tensors came from (our GPT, HF, a foreign model, a dump).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..kernels import EPS32
from ..sampling import TOP_N, Generation, SamplingSettings, sampling_distribution
from .report import LayerDiff, StepDiff

# Tolerances separating float noise from the smallest real fault. Float32 rounding in a dot product of length K
# grows like eps * sqrt(K), and so does the noise between two correct implementations, *relative to the values at
# that place*. After a LayerNorm every position is normalised; a residual add carries each position's absolute
# error forward, and GPT-2's massive activations (a few channels of ~3,000 at position 0 only) make one position's
# values, and its rounding error, a thousand times those of the others. So each (row, position) is judged against
# its own scale, max over channels of |HF's value| there; a layer (or a step's logits) "differs" when, at some
# (row, position),
#     max_c |Δ| > NOISE_FACTOR * eps32 * sqrt(mlp_width) * max_c |HF's value| + ATOL.
# A global max (the earlier rule) let position 0's thousands hide a whole block's fault at every other position.
# Measured with bench/calibrate_tolerances.py over 18 random GPT-2s and 12 of core.structured's massive-activation
# models (2 to 12 layers, up to the 124M shape; table in README's "Bug lab"): in units of eps32 * sqrt(mlp_width)
# the exact port's worst max_c|Δ| / max_c|HF| was 0.33 and the smallest fault's, at its first layer, 3.3 (erf GELU
# in one block); NOISE_FACTOR = 1 sits between. Faults flagged first at another layer: 0 of 1010 (global max: 185).
NOISE_FACTOR = 1.0
ATOL = 1e-12  # only so that an all-zero layer compares cleanly

# Below float32 (bfloat16, float16, their autocast variants, TF32) fixed tolerances cannot work: the rounding of an
# exact implementation spans decades across layers and places. The yardstick is HF's *own* error at that precision:
# HF's model run in the same regime on the same token streams, against HF in float32. At each place (row, position)
# the model under test's max_c |Δ| from HF-float32 is tolerated up to
#     PRECISION_FACTOR * max(HF's own max_c |Δ| there, its layer's median relative own error * scale there)
# on top of the float32 tolerance (the median floor keeps a place where HF's rounding happened to cancel from
# counting as exact). The rule of flash-attention's tests and torch._dynamo's accuracy check. PRECISION_FACTOR is
# twice the worst ratio (|Δ| - float32 tolerance) / yardstick that exact ports written differently (our GPT,
# examples/my_gpt2.py, examples/build_nanogpt.py) reached in bench/calibrate_precision.py: 2.6, over bf16/fp16 and
# their autocast variants on random and massive-activation models from 2 layers to the 124M shape (the full run:
# 785 compares, 432 of exact ports, 0 false alarms at this factor; README's calibration table).
PRECISION_FACTOR = 5.2


def own_error(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """HF's own error at a place: max_c |HF at the precision - HF in float32|, (B, T, C) each -> (B, T)."""
    return (low.float() - high.float()).abs().amax(dim=-1)


def noise_yardstick(noise: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The unit PRECISION_FACTOR multiplies, at each place: max(HF's own error there, the layer's median relative
    own error * scale there); `noise` and `scale` (max_c |HF value|) over the same places, e.g. (B, T)."""
    rel = noise / scale.clamp_min(1e-30)
    floor = rel.flatten().median() if rel.numel() else rel.new_zeros(())
    return torch.maximum(noise, floor * scale)


def _noise_tolerance(noise: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """What a place tolerates below float32 on top of the float32 tolerance: PRECISION_FACTOR yardsticks."""
    return PRECISION_FACTOR * noise_yardstick(noise, scale)


def _kl(logp_ref: torch.Tensor, logp_ours: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(ref || ours) per row over ref's support, and whether ours gives 0 where ref does not (then KL is +inf).
    Terms where ref's probability is 0 are 0 (0 * inf or 0 * nan there is no evidence of anything)."""
    p = logp_ref.exp()
    kl = (p * (logp_ref - logp_ours)).masked_fill_(p == 0, 0.0).sum(dim=-1)
    return kl.clamp_min(0.0), torch.isposinf(kl)


# ---------------------------------------------------------------------------------------------------------
# The pieces


def _layer_names(n_layer: int) -> list[str]:
    return ["embeddings"] + [f"block {i}" for i in range(n_layer)] + ["ln_f", "lm_head"]


def relative_tolerance(mlp_width: int) -> float:
    """Tolerated max|Δ| per unit of the local scale (max |HF value| at the same row and position)."""
    return NOISE_FACTOR * EPS32 * math.sqrt(mlp_width)


def _tolerance(scale, rtol: float):
    """The tolerance at a place whose scale (max_c |HF value|) is `scale`: a float or a tensor of them."""
    return rtol * scale + ATOL


def _layer_diff(index: int, name: str, a: torch.Tensor, b: torch.Tensor, rtol: float, start: int,
                noise: torch.Tensor | None = None) -> LayerDiff:
    """One layer, (B, T, C) each: judged per (row, position) against that place's own scale (and, below float32,
    HF's own error there at that precision, `noise` (B, T))."""
    a, b = a.float(), b.float()
    dpos = (a - b).abs().amax(dim=-1)  # (B, T): max_c |Δ| at each place
    spos = b.abs().amax(dim=-1)  # (B, T): max_c |HF value| there
    tpos = _tolerance(spos, rtol)
    if noise is not None:
        noise = noise[:, : dpos.size(1)].to(tpos.device).float()
        tpos = tpos + _noise_tolerance(noise, spos)
    ratio = dpos / tpos
    ratio = torch.where(torch.isfinite(dpos), ratio, torch.full_like(ratio, math.inf))  # NaN/inf always exceed
    flat = int(ratio.flatten().argmax()) if ratio.numel() else 0
    r, p = divmod(flat, max(ratio.size(1), 1))
    worst = ratio.flatten()[flat].item() if ratio.numel() else 0.0
    diff = dpos.max().item() if dpos.numel() else 0.0
    if dpos.numel() and not torch.isfinite(dpos).all():
        diff = math.nan if torch.isnan(dpos).any() else math.inf
    return LayerDiff(
        index=index, name=name, max_abs_diff=diff, scale=spos.max().item() if spos.numel() else 0.0,
        tolerance=tpos[r, p].item() if ratio.numel() else ATOL, exceeds=bool(worst > 1.0),
        ratio=worst, worst_row=r, worst_position=start + p,
        worst_abs_diff=dpos[r, p].item() if ratio.numel() else 0.0,
        worst_scale=spos[r, p].item() if ratio.numel() else 0.0,
        hf_own_error=(noise[r, p].item() if ratio.numel() else 0.0) if noise is not None else None,
    )


def place_diff(name: str, a: torch.Tensor, b: torch.Tensor, rtol: float, noise: torch.Tensor | None = None,
               index: int = 0) -> LayerDiff:
    """Any one reading of the residual stream (B, T, C) against HF's (or a reference's), by the same rule as a
    layer: inside a block, a block on HF's input, a catalogue candidate against the model under test."""
    n = min(a.size(1), b.size(1))
    return _layer_diff(index, name, a[:, :n], b[:, :n], rtol, 0, noise)


def error_shape(a: torch.Tensor, b: torch.Tensor, rtol: float, noise: torch.Tensor | None = None) -> dict:
    """Where a reading differs beyond its tolerance, (B, T, C) each: the positions (over rows), the channels (at
    places that differ), the largest |Δ| and its size relative to max_c |HF value| at that place."""
    a, b = a.float(), b.float()
    d = (a - b).abs()
    spos = b.abs().amax(dim=-1)
    tpos = _tolerance(spos, rtol)
    if noise is not None:
        tpos = tpos + _noise_tolerance(noise[:, : d.size(1)].to(tpos.device).float(), spos)
    over = d > tpos[..., None]  # (B, T, C)
    positions = over.any(dim=-1).any(dim=0).nonzero().flatten().tolist()
    channels = over.any(dim=1).any(dim=0).nonzero().flatten().tolist()
    rel = (d.amax(dim=-1) / spos.clamp_min(1e-30))
    flat = int(rel.flatten().argmax()) if rel.numel() else 0
    return {"positions": positions, "n_positions": d.size(1), "channels": channels, "n_channels": d.size(2),
            "max_abs": float(d.max()) if d.numel() else 0.0,
            "relative": float(rel.flatten()[flat]) if rel.numel() else 0.0}


def layer_diffs(n_layer: int, ours: list[torch.Tensor], ref: list[torch.Tensor], rtol: float, *,
                logits_start: int = 0, noise: list[torch.Tensor] | None = None) -> list[LayerDiff]:
    """Per layer, over the positions both sides have (ours may lack the last, never-fed position): the place
    (row, position) whose max|Δ| is largest against its own tolerance decides. `logits_start`: the position of
    the first logits compared (the last entry of `ours`/`ref`), so that worst_position is a sequence position."""
    layers = []
    names = _layer_names(n_layer)
    for i, (name, a, b) in enumerate(zip(names, ours, ref)):
        n = min(a.size(1), b.size(1))
        start = logits_start if i == len(names) - 1 else 0
        layers.append(_layer_diff(i, name, a[:, :n], b[:, :n], rtol, start, noise[i] if noise else None))
    return layers


def logits_layer_diff(n_layer: int, ours: torch.Tensor, ref: torch.Tensor, rtol: float, *,
                      logits_start: int = 0, noise: torch.Tensor | None = None) -> LayerDiff:
    """The logits alone as the "lm_head" layer (a run without a residual stream), as layer_diffs names it."""
    n = min(ours.size(1), ref.size(1))
    return _layer_diff(n_layer + 2, "lm_head", ours[:, :n], ref[:, :n], rtol, logits_start, noise)


# perf: step_diffs makes ~30 full-vocabulary passes over every (row, step); taken a few rows at a time, each chunk's
# intermediates stay in the L2 cache between passes (4 x 50257 floats = 0.8 MB): 130 -> 82 ms (nanogpt) for the
# seed's case at the 124M shape; HF's plain top-k filter (_fast_stats) 110 -> 45 ms.
ROWS_PER_CHUNK = 4


def _topk_support(x: torch.Tensor, k: int, values: torch.Tensor) -> torch.Tensor | None:
    """log p of the top-k filter's distribution at its k kept entries (values: x's top values, descending), or
    None where some row ties its k-th value (the filter then keeps more than k entries)."""
    if bool(((x >= values[:, k - 1 : k]).sum(dim=-1) != k).any()):
        return None
    return values[:, :k] - torch.logsumexp(values[:, :k], dim=-1, keepdim=True)


def _log_p_at(ids: torch.Tensor, kept: torch.Tensor, kept_logp: torch.Tensor) -> torch.Tensor:
    """A top-k distribution's log p at ids (n, m), from its kept entries (ids and log p, (n, k)): -inf elsewhere."""
    hit = ids[:, :, None] == kept[:, None, :]  # (n, m, k)
    out = torch.where(hit, kept_logp[:, None, :], torch.zeros_like(kept_logp[:, None, :])).sum(dim=-1)
    return out.masked_fill(~hit.any(dim=-1), -float("inf"))


def _fast_stats(a: torch.Tensor, b: torch.Tensor, tokens: torch.Tensor, top_ids: torch.Tensor,
                k: int) -> dict[str, torch.Tensor] | None:
    """The sampling-distribution numbers of _row_stats for HF's plain top-k filter (temperature 1, no top-p), from
    the k kept entries of each side: no full-vocabulary log-softmax, exp or KL pass. None if some row has a tie at
    its k-th value (then the general path decides)."""
    b_values, b_idx = torch.topk(b, max(k, TOP_N), dim=-1)
    a_values, a_idx = torch.topk(a, k, dim=-1)
    lb_kept, la_kept = _topk_support(b, k, b_values), _topk_support(a, k, a_values)
    if lb_kept is None or la_kept is None:
        return None
    b_idx_k = b_idx[:, :k]
    kl, mismatch = _kl(lb_kept, _log_p_at(b_idx_k, a_idx, la_kept))  # over HF's kept entries
    return {"kl": kl, "mismatch": mismatch, "top_b": b_idx[:, :TOP_N],
            "hf_prob": _log_p_at(tokens, b_idx_k, lb_kept)[:, 0].exp(),
            "hf_top_sample": _log_p_at(top_ids, b_idx_k, lb_kept).exp()}


def _row_stats(a: torch.Tensor, b: torch.Tensor, tokens: torch.Tensor, top_ids: torch.Tensor,
               s: SamplingSettings) -> dict[str, torch.Tensor]:
    """Per row of ours' and HF's logits (n, V): the numbers of a StepDiff, as (n,) or (n, TOP_N) tensors."""
    k = s.top_k and min(s.top_k, b.size(-1))
    fast = None
    if s.effective_method == "hf" and k and s.temperature == 1.0 and s.top_p >= 1.0:
        fast = _fast_stats(a, b, tokens, top_ids, k)
    if fast is None:
        la, lb = sampling_distribution(a, s, log=True), sampling_distribution(b, s, log=True)
        kl, mismatch = _kl(lb, la)
        fast = {"kl": kl, "mismatch": mismatch, "top_b": torch.topk(b, TOP_N, dim=-1).indices,
                "hf_prob": lb.gather(1, tokens)[:, 0].exp(), "hf_top_sample": lb.gather(1, top_ids).exp()}
    top_b = fast.pop("top_b")
    lse_b = torch.logsumexp(b, dim=-1, keepdim=True)  # HF's model distribution at the top-50: b - logsumexp(b)
    return {
        **fast,
        "dmax": (a - b).abs().amax(dim=-1),
        "scale": b.abs().amax(dim=-1),
        "top1": a.argmax(dim=-1) == b.argmax(dim=-1),
        "overlap": (top_ids[:, :, None] == top_b[:, None, :]).any(dim=-1).sum(dim=-1),
        "hf_rank": (b > b.gather(1, tokens)).sum(dim=-1) + 1,
        "hf_top": (b.gather(1, top_ids) - lse_b).exp(),
    }


@dataclass
class StepCheck:
    """A step's logits judged, without the sampling statistics of a StepDiff (the float32 re-check needs no more)."""

    step: int
    row: int
    max_abs_dlogit: float
    tolerance: float
    exceeds: bool


def step_checks(gen: Generation, a_all: torch.Tensor, b_all: torch.Tensor, rtol: float) -> list[list[StepCheck | None]]:
    """Per step and row: max |Δlogit| against the float32 tolerance, (B, steps, V) each; None where the row had
    finished (as step_diffs)."""
    dmax = (a_all.float() - b_all.float()).abs().amax(dim=-1).tolist()  # (B, S)
    tol = _tolerance(b_all.float().abs().amax(dim=-1), rtol).tolist()
    return [[None if rec is None else StepCheck(t, r, dmax[r][t], tol[r][t], bool(not dmax[r][t] <= tol[r][t]))
             for r, rec in enumerate(records)] for t, records in enumerate(gen.records)]


def step_diffs(gen: Generation, s: SamplingSettings, a_all: torch.Tensor, b_all: torch.Tensor,
               rtol: float, noise: torch.Tensor | None = None) -> list[list[StepDiff | None]]:
    """Per step and row, from ours' and HF's logits for the steps, both (B, steps, V); below float32 `noise`
    (B, steps) is HF's own error at each step at that precision."""
    B, S, V = a_all.shape
    a, b = a_all.reshape(B * S, V), b_all.reshape(B * S, V)
    tokens = torch.tensor([[rec.token_id if rec is not None else 0 for rec in step] for step in gen.records]).t()
    tokens = tokens.reshape(B * S, 1).to(b.device)  # (B*S, 1), row-major over (row, step) like a and b
    top_ids = torch.tensor([[rec.top_ids if rec is not None else list(range(TOP_N)) for rec in step]
                            for step in gen.records]).transpose(0, 1).reshape(B * S, -1).to(b.device)
    bounds = list(range(0, B * S, ROWS_PER_CHUNK)) + [B * S]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        del bounds[-2]  # no one-row chunk: torch splits a one-row sum across threads (its bits follow their count)
    parts = [_row_stats(a[i:j], b[i:j], tokens[i:j], top_ids[i:j], s) for i, j in zip(bounds, bounds[1:])]
    cols = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
    if noise is not None:  # (B*S,), row-major like the columns
        scale = cols["scale"].reshape(B, S)
        cols["noise"] = noise[:, :S].to(scale.device).float()
        cols["noise_tol"] = _noise_tolerance(cols["noise"], scale).reshape(-1)
        cols["noise"] = cols["noise"].reshape(-1)
    c = {k: v.tolist() for k, v in cols.items()}
    out = []
    for step, records in enumerate(gen.records):
        row_out = []
        for r, rec in enumerate(records):
            i = r * S + step
            if rec is None:
                row_out.append(None)
                continue
            tol = _tolerance(c["scale"][i], rtol) + (c["noise_tol"][i] if noise is not None else 0.0)
            dmax = c["dmax"][i]
            row_out.append(StepDiff(
                step=step, row=r, max_abs_dlogit=dmax, tolerance=tol,
                exceeds=bool(dmax > tol or not math.isfinite(dmax)),
                kl=None if c["mismatch"][i] else c["kl"][i], support_mismatch=bool(c["mismatch"][i]),
                top1_agree=bool(c["top1"][i]), top50_overlap=int(c["overlap"][i]), token_id=rec.token_id,
                ours_prob=rec.prob, ours_rank=rec.rank, hf_prob=c["hf_prob"][i], hf_rank=int(c["hf_rank"][i]),
                hf_top_probs=c["hf_top"][i], hf_top_sample_probs=c["hf_top_sample"][i], scale=c["scale"][i],
                hf_own_error=c["noise"][i] if noise is not None else None,
            ))
        out.append(row_out)
    return out




# ---------------------------------------------------------------------------------------------------------
# Training: the loss, gradients and optimizer steps (core/parity/train_judge.py)
#
# The same float-noise model. A gradient is a chain of the forward's products run backwards (each a dot product
# over C, 4C or B*T terms), so between two correct implementations it differs by a few eps32 * sqrt(K) relative
# to its own scale: along the residual stream each (row, position) is judged against its own scale as in the
# forward (layer_diffs' rule), and each parameter's gradient, a sum over every position of the batch, against the
# largest |HF gradient| of that tensor (llm.c's test_gpt2 also judges per tensor). GRAD_NOISE_FACTOR multiplies
# the forward's relative tolerance; calibrated by bench/calibrate_training.py (README's "Training parity").
# The loss: cross-entropy moves by at most 2 max|Δlogit| (log-sum-exp and the target's logit each by max|Δlogit|),
# so it is tolerated up to twice the forward's tolerance at the logits' scale, times GRAD_NOISE_FACTOR.
# After an optimizer step the parameters of two correct implementations are *not* within float noise of each other:
# AdamW moves each element by about lr * sign(gradient) on its first step, and an element whose gradient is at the
# noise level can move either way (up to 2 lr apart). So after a step the lab judges the loss (second order in
# those flips) and the optimizer's update itself: your optimizer's step against build-nanogpt's AdamW applied to
# your own parameters and gradients, which must agree to a few roundings of the parameter (UPDATE_ULPS).
GRAD_NOISE_FACTOR = 4.0
UPDATE_ULPS = 16.0


def grad_rtol(mlp_width: int) -> float:
    """Tolerated max|Δ| per unit of local scale for a gradient."""
    return GRAD_NOISE_FACTOR * relative_tolerance(mlp_width)


def grad_layer_diffs(names: list[str], ours: list[torch.Tensor], ref: list[torch.Tensor], rtol: float,
                     noise: list[torch.Tensor] | None = None) -> list[LayerDiff]:
    """The gradient of the loss along the residual stream, (B, T, C or V) each, named `names` (from the loss
    towards the embeddings), judged per (row, position) as layer_diffs judges the forward."""
    return [_layer_diff(i, name, a, b, rtol, 0, noise[i] if noise else None)
            for i, (name, a, b) in enumerate(zip(names, ours, ref))]


def tensor_tolerance(scale: float, rtol: float, noise: float | None = None) -> float:
    """A whole tensor's tolerance at its scale (max |HF value|); below float32 plus PRECISION_FACTOR times HF's
    own error on it."""
    return _tolerance(scale, rtol) + (PRECISION_FACTOR * noise if noise is not None else 0.0)


def loss_tolerance(logit_scale: float, mlp_width: int, noise: float | None = None) -> float:
    """The loss's tolerance: 2 x the gradient-factor forward tolerance at the logits' scale (+ HF's own error)."""
    return 2.0 * grad_rtol(mlp_width) * logit_scale + ATOL + (PRECISION_FACTOR * noise if noise is not None else 0.0)


def update_tolerance(param_scale: float, lr: float) -> float:
    """Your optimizer's update against AdamW's on the same gradients: UPDATE_ULPS roundings of the parameter and
    of an update of size lr."""
    return UPDATE_ULPS * EPS32 * (param_scale + lr) + ATOL


def tensor_gap(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(max |a - b|, max |b|) over two tensors of the same shape; NaN/inf propagate to the first."""
    if not b.numel():
        return 0.0, 0.0
    a, b = a.float(), b.float()
    worst = float(torch.linalg.vector_norm(a - b, ord=math.inf))  # max |Δ|; a NaN anywhere makes it NaN
    return worst, float(torch.linalg.vector_norm(b, ord=math.inf))
