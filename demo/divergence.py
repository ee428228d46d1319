"""Bounded divergences (total variation, Jensen-Shannon) between our and HF's sampling distributions at one step,
from what a report already carries: our top-50 tokens with both sides' probabilities, "all other tokens" lumped.

Knows the report's record fields; knows nothing of the models. Both are finite where KL is infinite (supports
differ). Over our top-50 plus one "rest" outcome they are lower bounds of the full-vocabulary values (lumping
outcomes never increases a divergence) and equal them exactly when one side puts no mass outside our top-50,
which is the case whenever our sampling keeps only our top-50 tokens (top-k <= 50, or top-p cutting inside it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Divergence:
    tv: float  # total variation, 0..1: the largest difference in probability of any set of tokens
    js: float  # Jensen-Shannon divergence in bits, 0..1
    exact: bool  # True: equals the full-vocabulary value; False: a lower bound
    ours_rest: float  # our sampling mass outside our top-50
    hf_rest: float  # HF's sampling mass outside our top-50
    kl: float | None  # core's KL(HF || ours), None where infinite (support mismatch)
    support_mismatch: bool


def _js_term(p: float, q: float) -> float:
    """p log2(2p / (p + q)) + q log2(2q / (p + q)), with 0 log 0 = 0."""
    m = p + q
    out = 0.0
    if p > 0:
        out += p * math.log2(2 * p / m)
    if q > 0:
        out += q * math.log2(2 * q / m)
    return out


def distributions(rec: dict, diff: dict, greedy: bool) -> tuple[list[float], list[float], float, float, bool]:
    """Our and HF's probabilities over our top-50 and the mass each leaves outside it. Greedy runs compare the
    model distributions (what core's KL compares); sampling runs the distributions sampled from."""
    if greedy:
        p, q = list(rec["top_probs"]), list(diff["hf_top_probs"])
        ours_rest = max(0.0, 1.0 - math.fsum(p))
        exact = False
    else:
        p, q = list(rec["top_sample_probs"]), list(diff["hf_top_sample_probs"])
        kept_in_top = sum(1 for x in p if x > 0)
        exact = kept_in_top == rec["n_kept"]  # our whole support lies in our top-50
        ours_rest = 0.0 if exact else max(0.0, 1.0 - math.fsum(p))
    hf_rest = max(0.0, 1.0 - math.fsum(q))
    return p, q, ours_rest, hf_rest, exact or hf_rest == 0.0


def step_divergence(rec: dict, diff: dict, greedy: bool = False) -> Divergence:
    p, q, pr, qr, exact = distributions(rec, diff, greedy)
    tv = 0.5 * (math.fsum(abs(a - b) for a, b in zip(p, q)) + abs(pr - qr))
    js = 0.5 * (math.fsum(_js_term(a, b) for a, b in zip(p, q)) + _js_term(pr, qr))
    return Divergence(tv=min(max(tv, 0.0), 1.0), js=min(max(js, 0.0), 1.0), exact=exact, ours_rest=pr, hf_rest=qr,
                      kl=diff.get("kl"), support_mismatch=bool(diff.get("support_mismatch")))


def is_greedy(report: dict) -> bool:
    s = report.get("settings") or {}
    return s.get("method") == "greedy" or not s.get("do_sample", True) or s.get("temperature", 1.0) == 0


def report_divergences(report: dict) -> list[list[Divergence | None]]:
    """[step][row] like report["steps"]; None where the row had finished."""
    greedy = is_greedy(report)
    return [[step_divergence(rec, d, greedy) if rec is not None and d is not None else None
             for rec, d in zip(recs, diffs)]
            for recs, diffs in zip(report["generation"]["records"], report["steps"])]
