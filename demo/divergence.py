"""Bounded divergences (total variation, Jensen-Shannon) between our and HF's sampling distributions at one step,
from what a report already carries: our top-50 tokens with both sides' probabilities, "all other tokens" lumped.

Knows the report's record fields; knows nothing of the models. Both are finite where KL is infinite (supports
differ). Over our top-50 plus one "rest" outcome they are lower bounds of the full-vocabulary values (lumping
outcomes never increases a divergence) and equal them exactly when one side puts no mass outside our top-50,
which is the case whenever our sampling keeps only our top-50 tokens (top-k <= 50, or top-p cutting inside it).

The report compares both models under OUR settings. When HF's own sampling used other settings (the report's
settings table: the pipeline's temperature 0.7, say), effective_divergences() also compares what we sample from
with what HF samples from under ITS settings, rebuilt from HF's model probabilities of our top-50 tokens: exact
when HF keeps only tokens among them (its top-k <= 50, or greedy); with HF's top-k off, only at temperature 1
(the probabilities of the other ~50,000 tokens after another temperature are not in the report).
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


def tv_js(p: list[float], q: list[float], p_rest: float, q_rest: float) -> tuple[float, float]:
    """Total variation and Jensen-Shannon divergence (bits) of two distributions over the same listed tokens,
    each with its mass outside the list as one more outcome; both clamped to [0, 1]."""
    tv = 0.5 * (math.fsum(abs(a - b) for a, b in zip(p, q)) + abs(p_rest - q_rest))
    js = 0.5 * (math.fsum(_js_term(a, b) for a, b in zip(p, q)) + _js_term(p_rest, q_rest))
    return min(max(tv, 0.0), 1.0), min(max(js, 0.0), 1.0)


def step_divergence(rec: dict, diff: dict, greedy: bool = False) -> Divergence:
    p, q, pr, qr, exact = distributions(rec, diff, greedy)
    tv, js = tv_js(p, q, pr, qr)
    return Divergence(tv=tv, js=js, exact=exact, ours_rest=pr, hf_rest=qr, kl=diff.get("kl"),
                      support_mismatch=bool(diff.get("support_mismatch")))


def is_greedy(report: dict) -> bool:
    s = report.get("settings") or {}
    return s.get("method") == "greedy" or not s.get("do_sample", True) or s.get("temperature", 1.0) == 0


def report_divergences(report: dict) -> list[list[Divergence | None]]:
    """[step][row] like report["steps"]; None where the row had finished."""
    greedy = is_greedy(report)
    return [[step_divergence(rec, d, greedy) if rec is not None and d is not None else None
             for rec, d in zip(recs, diffs)]
            for recs, diffs in zip(report["generation"]["records"], report["steps"])]


# ---------------------------------------------------------------------------------------------------------
# What we sample from against what HF samples from under HF's own effective settings

# The settings that shape one step's sampling distribution, and those this module can rebuild HF's side for.
SAMPLING_SETTINGS = ("do_sample", "temperature", "top_k", "top_p", "min_p", "typical_p", "repetition_penalty",
                     "no_repeat_ngram_size")
REBUILT = ("do_sample", "temperature", "top_k", "top_p")


@dataclass(frozen=True)
class HFSettings:
    """HF's effective sampling settings where they differ from ours (from the report's settings table)."""

    do_sample: bool
    temperature: float
    top_k: int  # 0: off
    top_p: float
    differing: tuple[str, ...]  # the names of the sampling settings that differ from ours
    rebuildable: bool  # False: a setting this module cannot apply (repetition penalty, min_p...) differs

    def describe(self) -> str:
        """HF's values of the differing settings, e.g. "temperature 0.7"."""
        shown = {"do_sample": "sampling" if self.do_sample else "no sampling (greedy)",
                 "temperature": f"temperature {self.temperature:g}", "top_k": f"top-k {self.top_k or 'off'}",
                 "top_p": f"top-p {self.top_p:g}"}
        return ", ".join(shown.get(name, name.replace("_", " ")) for name in self.differing)


@dataclass(frozen=True)
class EffectiveDivergence:
    tv: float  # total variation between what we sample from and what HF samples from under its own settings
    js: float
    exact: bool  # False: an approximation (HF's kept tokens may reach outside our top-50), see the module doc


def hf_settings(report: dict) -> HFSettings | None:
    """HF's effective sampling settings if any differs from ours, else None."""
    rows = {r["name"]: r for r in report.get("settings_table") or []}
    differing = tuple(n for n in SAMPLING_SETTINGS if rows.get(n, {}).get("differs"))
    if not differing:
        return None
    hf = {n: rows[n]["hf"] for n in REBUILT if n in rows}
    return HFSettings(do_sample=bool(hf.get("do_sample", True)), temperature=float(hf.get("temperature") or 1.0),
                      top_k=int(hf.get("top_k") or 0), top_p=float(hf.get("top_p") if hf.get("top_p") is not None
                                                                     else 1.0),
                      differing=differing, rebuildable=set(differing) <= set(REBUILT))


def _top_p_keep(p: list[float], top_p: float, below: float = 0.0) -> list[bool]:
    """HF's top-p filter over listed probabilities (normalised, with `below` = the mass of unlisted tokens that
    rank under all of them): ascending, a token is dropped while the cumulative mass up to it is <= 1 - top_p;
    the most likely token always stays."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    keep = [True] * len(p)
    cum = below
    for i in order[:-1]:
        cum += p[i]
        if cum <= 1.0 - top_p:
            keep[i] = False
    return keep


def hf_effective_distribution(rec: dict, diff: dict, hf: HFSettings) -> tuple[list[float], float, bool] | None:
    """HF's sampling distribution under its own settings over our top-50 tokens (same order), the mass it puts
    outside them, and whether that is exact; None where the report cannot tell (see the module doc)."""
    q = list(diff["hf_top_probs"])  # HF's model probabilities (temperature 1) of our top-50 tokens
    rest = max(0.0, 1.0 - math.fsum(q))
    same_set = diff.get("top50_overlap") == len(q)  # HF's own top-50 is our top-50: the rest ranks below all
    if not hf.do_sample:
        i = max(range(len(q)), key=lambda j: q[j])
        return [1.0 if j == i else 0.0 for j in range(len(q))], 0.0, same_set or q[i] >= rest
    k = hf.top_k
    if k > len(q):
        return None  # HF keeps tokens beyond our top-50 whose probabilities the report does not carry
    if k:
        order = sorted(range(len(q)), key=lambda j: -q[j])
        kept = order[:k]
        exact = same_set or q[order[k - 1]] > rest
        logits = {j: math.log(q[j]) / hf.temperature for j in kept if q[j] > 0}
        top = max(logits.values())
        weights = {j: math.exp(v - top) for j, v in logits.items()}
        total = math.fsum(weights.values())
        p = [weights.get(j, 0.0) / total for j in range(len(q))]
        if hf.top_p < 1.0:
            keep = _top_p_keep(p, hf.top_p)
            total = math.fsum(x for x, kp in zip(p, keep) if kp)
            p = [x / total if kp else 0.0 for x, kp in zip(p, keep)]
        return p, 0.0, exact
    if hf.temperature != 1.0:
        return None  # the other tokens' share after this temperature is not in the report
    if hf.top_p >= 1.0:
        return q, rest, True
    if same_set and rest <= 1.0 - hf.top_p:  # the cut falls among our top-50: every other token is dropped
        keep = _top_p_keep(q, hf.top_p, below=rest)
        total = math.fsum(x for x, kp in zip(q, keep) if kp)
        return [x / total if kp else 0.0 for x, kp in zip(q, keep)], 0.0, True
    return None


def _ours_sampled(rec: dict, greedy: bool) -> tuple[list[float], float]:
    """What we sample from over our top-50 (greedy: the top token), and our mass outside them."""
    if greedy:
        return [1.0] + [0.0] * (len(rec["top_ids"]) - 1), 0.0
    p = list(rec["top_sample_probs"])
    inside = sum(1 for x in p if x > 0) == rec["n_kept"]
    return p, 0.0 if inside else max(0.0, 1.0 - math.fsum(p))


def effective_divergences(report: dict) -> tuple[HFSettings | None, list[list[EffectiveDivergence | None]]]:
    """(HF's differing settings, [step][row] divergences between what we and HF sample from, each under its own
    settings). No settings differ: (None, []). A step the report cannot rebuild, or a finished row: None."""
    hf = hf_settings(report)
    if hf is None or not hf.rebuildable:
        return hf, []
    greedy = is_greedy(report)
    out = []
    for recs, diffs in zip(report["generation"]["records"], report["steps"]):
        row_out = []
        for rec, d in zip(recs, diffs):
            theirs = hf_effective_distribution(rec, d, hf) if rec is not None and d is not None else None
            if theirs is None:
                row_out.append(None)
                continue
            q, q_rest, exact = theirs
            p, p_rest = _ours_sampled(rec, greedy)
            tv, js = tv_js(p, q, p_rest, q_rest)
            row_out.append(EffectiveDivergence(tv, js, exact and (p_rest == 0.0 or q_rest == 0.0)))
        out.append(row_out)
    return hf, out
