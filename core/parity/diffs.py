"""Differences between two implementations' tensors and the tolerances that separate float noise from a fault.

Knows the float-noise model (eps * sqrt(K)) and the sampling distributions of each method; knows nothing
about where the tensors came from (our GPT, HF, a foreign model, a dump).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..sampling import TOP_N, Generation, SamplingSettings, process_logits_hf
from .report import LayerDiff, StepDiff

# Tolerances separating float noise from the smallest real fault (erf GELU). Float32 rounding in a dot product
# of length K grows like eps * sqrt(K), and so does the noise between two correct implementations; a layer (or
# the logits) "differs" when
#     max|Δ| > NOISE_FACTOR * eps32 * sqrt(mlp_width) * max|HF's value| + ATOL.
# Measured with bench/calibrate_tolerances.py on random GPT-2s (2 to 12 layers, 32- to 768-dim, plain and
# sharpened init, 5 x 30 and 1 x 512 tokens, several seeds): the exact port's worst max|Δ|/max|HF| in these units
# was 0.26 (i.e. 0.26 * eps * sqrt(width); 0.11 at the 124M shape); erf GELU's smallest effect at block 0 was 1.9
# (2-layer, 32-dim: its MLP barely moves the residual) and 26 at the 124M shape. NOISE_FACTOR = 1 sits between;
# all 9 faults were flagged at their expected layer in all 360 runs.
NOISE_FACTOR = 1.0
EPS32 = float(torch.finfo(torch.float32).eps)
ATOL = 1e-12  # only so that an all-zero layer compares cleanly


# ---------------------------------------------------------------------------------------------------------
# Distributions both sides sample from, under *our* settings (so the models are compared like for like)


def sampling_log_probs(logits: torch.Tensor, s: SamplingSettings) -> torch.Tensor:
    """log of the distribution the chosen method samples from; -inf where a filter removed the token."""
    method = s.effective_method
    if method == "hf":
        return F.log_softmax(process_logits_hf(logits, s.temperature, s.top_k, s.top_p), dim=-1)
    if method == "nanogpt":
        logp = F.log_softmax(logits / s.temperature if s.temperature != 1.0 else logits, dim=-1)
        if s.top_k:
            kth = torch.topk(logp, min(s.top_k, logp.size(-1)))[0][..., -1, None]
            logp = logp.masked_fill(logp < kth, -float("inf"))
            logp = logp - torch.logsumexp(logp, dim=-1, keepdim=True)
        return logp
    return F.log_softmax(logits, dim=-1)  # greedy: compare the model's own distributions


def _kl(logp_ref: torch.Tensor, logp_ours: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(ref || ours) per row over ref's support, and whether ours gives 0 where ref does not."""
    p = logp_ref.exp()
    mismatch = ((p > 0) & torch.isinf(logp_ours)).any(dim=-1)
    terms = torch.where(p > 0, p * (logp_ref - logp_ours.clamp_min(-1e30)), torch.zeros_like(p))
    return terms.sum(dim=-1).clamp_min(0.0), mismatch


# ---------------------------------------------------------------------------------------------------------
# The pieces


def _layer_names(n_layer: int) -> list[str]:
    return ["embeddings"] + [f"block {i}" for i in range(n_layer)] + ["ln_f", "lm_head"]


def relative_tolerance(mlp_width: int) -> float:
    return NOISE_FACTOR * EPS32 * math.sqrt(mlp_width)


def _tolerance(scale: float, rtol: float) -> float:
    return rtol * scale + ATOL


def layer_diffs(n_layer: int, ours: list[torch.Tensor], ref: list[torch.Tensor], rtol: float) -> list[LayerDiff]:
    """max|Δ| per layer over the positions both sides have (ours may lack the last, never-fed position)."""
    layers = []
    for i, (name, a, b) in enumerate(zip(_layer_names(n_layer), ours, ref)):
        n = min(a.size(1), b.size(1))
        diff = (a[:, :n].float() - b[:, :n].float()).abs().max().item()
        scale = b[:, :n].float().abs().max().item()
        tol = _tolerance(scale, rtol)
        layers.append(LayerDiff(i, name, diff, scale, tol, bool(diff > tol or not math.isfinite(diff))))
    return layers


def step_diffs(gen: Generation, s: SamplingSettings, a_all: torch.Tensor, b_all: torch.Tensor,
               rtol: float) -> list[list[StepDiff | None]]:
    """Per step and row, from ours' and HF's logits for the steps, both (B, steps, V)."""
    B, S, V = a_all.shape
    a, b = a_all.reshape(B * S, V), b_all.reshape(B * S, V)
    la, lb = sampling_log_probs(a, s), sampling_log_probs(b, s)
    kl, mismatch = _kl(lb, la)
    raw_b = F.log_softmax(b, dim=-1)
    tokens = torch.tensor([[rec.token_id if rec is not None else 0 for rec in step] for step in gen.records]).t()
    tokens = tokens.reshape(B * S, 1)  # (B*S, 1), row-major over (row, step) like a and b
    top_ids = torch.tensor([[rec.top_ids if rec is not None else list(range(TOP_N)) for rec in step]
                            for step in gen.records]).transpose(0, 1).reshape(B * S, -1)
    top_b = torch.topk(b, TOP_N, dim=-1).indices  # ours' top-50 is already in the records (top_ids)
    overlap = (top_ids[:, :, None] == top_b[:, None, :]).any(dim=-1).sum(dim=-1)
    cols = {
        "dmax": (a - b).abs().amax(dim=-1),
        "scale": b.abs().amax(dim=-1),
        "kl": kl,
        "mismatch": mismatch,
        "top1": a.argmax(dim=-1) == b.argmax(dim=-1),
        "overlap": overlap,
        "hf_prob": lb.gather(1, tokens)[:, 0].exp(),
        "hf_rank": (b > b.gather(1, tokens)).sum(dim=-1) + 1,
        "hf_top": raw_b.gather(1, top_ids).exp(),
        "hf_top_sample": lb.gather(1, top_ids).exp(),
    }
    c = {k: v.tolist() for k, v in cols.items()}
    out = []
    for step, records in enumerate(gen.records):
        row_out = []
        for r, rec in enumerate(records):
            i = r * S + step
            if rec is None:
                row_out.append(None)
                continue
            tol = _tolerance(c["scale"][i], rtol)
            dmax = c["dmax"][i]
            row_out.append(StepDiff(
                step=step, row=r, max_abs_dlogit=dmax, tolerance=tol,
                exceeds=bool(dmax > tol or not math.isfinite(dmax)),
                kl=None if c["mismatch"][i] else c["kl"][i], support_mismatch=bool(c["mismatch"][i]),
                top1_agree=bool(c["top1"][i]), top50_overlap=int(c["overlap"][i]), token_id=rec.token_id,
                ours_prob=rec.prob, ours_rank=rec.rank, hf_prob=c["hf_prob"][i], hf_rank=int(c["hf_rank"][i]),
                hf_top_probs=c["hf_top"][i], hf_top_sample_probs=c["hf_top_sample"][i],
            ))
        out.append(row_out)
    return out


