"""Why a row diverged (model, settings, sampling order, near tie, your sampler) and the one-line verdict, for the
judge (judge.py), which alone calls these.

Knows our sampling methods' random draws; works on diffs and token streams only, not on models.
"""

from __future__ import annotations

import torch

from ..sampling import Generation, SamplingSettings, sampling_distribution
from .report import RowComparison

# ---------------------------------------------------------------------------------------------------------
# Why a row diverged


def _uniforms_at(seed: int, step: int, shape: tuple[int, int]) -> torch.Tensor:
    """The float64 uniforms HF-exact sampling draws at `step` (B x V per step, in order), for a tie check."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(step):
        torch.rand(shape, dtype=torch.float64, generator=g)
    return torch.rand(shape, dtype=torch.float64, generator=g)


def _near_tie(s: SamplingSettings, row: int, step: int, ours_logits_s, hf_logits_s, dlogit: float, B: int) -> dict | None:
    """Is the choice at (row, step) a near-tie that float noise of size `dlogit` can flip? Evidence or None."""
    method = s.effective_method
    a, b = ours_logits_s[row], hf_logits_s[row]
    if method == "greedy":
        top2 = torch.topk(b, 2).values
        margin = (top2[0] - top2[1]).item()
        return {"margin": margin, "max_abs_dlogit": dlogit} if margin <= 2 * dlogit else None
    if method != "hf":
        return None
    # HF-exact sampling picks argmax(log p - log q) with q = -log1p(-u): replay the step's draws
    u = _uniforms_at(s.seed, step, (B, a.numel()))[row]
    logq = torch.log(-torch.log1p(-u)).float()
    score_a = sampling_distribution(a[None], s, log=True)[0] - logq
    score_b = sampling_distribution(b[None], s, log=True)[0] - logq
    best = torch.topk(score_b, 2).values
    margin = (best[0] - best[1]).item()
    scaled = 2 * dlogit / (s.temperature or 1.0)
    if score_a.argmax() != score_b.argmax() and margin <= scaled + 1e-6:
        return {"margin": margin, "max_abs_dlogit": dlogit, "temperature": s.temperature}
    return None


# A user's sampling step is judged a valid draw from the settings' distribution unless a chosen token has zero
# probability under it, or the chosen tokens' likelihood ratio against another temperature exceeds this (in
# nats; 2 * 15 = 30 on the chi-square(1) scale, p ~ 4e-8 for a sampler that does follow the settings).
TEMPERATURE_LLR = 15.0
_TEMPERATURES = torch.exp(torch.linspace(-3.0, 1.5, 91))  # 0.05 .. 4.5


def own_draws(gen: Generation, streams: list[list[int]], logits: torch.Tensor) -> list[tuple[int, int, int]]:
    """(row, step, token) of every choice the subject made on logits computed on that row's own prefix: every live
    step of a run that generated its own streams; for a result file (logits on HF's streams, its own sampled rows
    beside them) the steps up to and including the row's first divergence from HF's stream."""
    P = len(gen.prompt_ids)
    S = logits.size(1)
    out = []
    for r, seq in enumerate(gen.sequences):
        live = min(len(gen.new_token_ids[r]), S)
        for t in range(live):
            if gen.records[t][r] is None or seq[: P + t] != streams[r][: P + t]:
                break
            out.append((r, t, seq[P + t]))
    return out


def _support_violations(s: SamplingSettings, draws: list[tuple[int, int, int]], logits: torch.Tensor) -> dict:
    """Per row, the first own choice the settings give zero probability: {row: evidence}."""
    if not draws:
        return {}
    rows, steps, tokens = (torch.tensor(c) for c in zip(*draws))
    z = logits[rows, steps].float()  # (N, V)
    tok = tokens[:, None]
    outside = ~torch.isfinite(sampling_distribution(z, s, log=True).gather(1, tok))[:, 0]
    rank = (z > z.gather(1, tok)).sum(dim=-1) + 1
    found = {}
    for i in outside.nonzero()[:, 0].tolist():
        r, t, token = draws[i]
        found.setdefault(r, {"kind": "support", "step": t, "token_id": token, "rank": int(rank[i])})
    return found


def _temperature_fit(s: SamplingSettings, draws: list[tuple[int, int, int]], logits: torch.Tensor) -> dict | None:
    """Do the chosen tokens contradict the settings' temperature? The log-likelihood of every own choice under the
    settings' filter (top-k/top-p support fixed) at temperatures on a grid, against the settings' own;
    evidence if another temperature is more likely by more than TEMPERATURE_LLR nats, else None."""
    if s.effective_method == "greedy" or len(draws) < 10:
        return None
    rows, steps, tokens = (torch.tensor(c) for c in zip(*draws))
    z = logits[rows, steps].float()  # (N, V)
    tok = tokens[:, None]
    support = torch.isfinite(sampling_distribution(z, s, log=True))
    if not support.gather(1, tok).all():
        return None  # a support violation is reported on its own
    chosen = z.gather(1, tok)[:, 0]
    kept = z.masked_fill(~support, -float("inf")).topk(int(support.sum(dim=-1).max()), dim=-1).values  # (N, K)

    def log_likelihood(t: float) -> float:
        return (chosen / t - torch.logsumexp(kept / t, dim=-1)).sum().item()

    lls = torch.tensor([log_likelihood(t) for t in _TEMPERATURES.tolist()])
    at_settings = log_likelihood(float(s.temperature))
    best = int(lls.argmax())
    gain = lls[best].item() - at_settings
    if gain <= TEMPERATURE_LLR:
        return None
    return {"kind": "temperature", "settings_temperature": float(s.temperature),
            "fitted_temperature": round(float(_TEMPERATURES[best]), 3), "log_likelihood_ratio": gain,
            "tokens": len(draws)}


def _sampler_why(ev: dict, s: SamplingSettings) -> str:
    if ev["kind"] == "support":
        filt = []
        if s.effective_method == "greedy":
            filt.append("greedy decoding")
        else:
            if s.top_k:
                filt.append(f"top-k {s.top_k}")
            if s.top_p < 1.0:
                filt.append(f"top-p {s.top_p:g}")
        return (f"your sampling step chose token {ev['token_id']} (rank {ev['rank']} by logit) at step {ev['step']}, "
                f"which {' and '.join(filt) or 'the settings'} never samples: it does not apply the settings "
                "(a forgotten top-k/top-p filter?)")
    return (f"your sampling step's choices fit temperature {ev['fitted_temperature']:g}, not the settings' "
            f"{ev['settings_temperature']:g} (log-likelihood ratio {ev['log_likelihood_ratio']:.1f} nats over "
            f"{ev['tokens']} tokens): a forgotten or misapplied temperature?")


def explain_rows(gen: Generation, s: SamplingSettings, ref, tokenizer, table, steps,
                 ours_logits, hf_logits, first_layer, *, sampler: str | None = None,
                 streams: list[list[int]] | None = None, model_differs: str | None = None,
                 precision: str | None = None) -> list[RowComparison]:
    """One RowComparison per row. `sampler` says what chose the run's tokens (default: the settings' method);
    "yours" (a user's own sampling step) is checked for being a valid draw from the settings' distribution.
    `streams`: the token streams the logits were computed on, where they are not the run's own (a result file's
    logits are on HF's streams). `model_differs`: where the models differ (the verdict says so) although a row's
    divergence has another cause: the row's explanation then never calls the models the same. `precision`: the
    regime's name below float32 (a near tie flipped there is the precision's doing)."""
    P = len(gen.prompt_ids)
    rows = []
    diff_settings = [r for r in table if r.differs]
    sampler = sampler or s.effective_method
    streams = streams if streams is not None else gen.sequences
    violations, temperature_fit = {}, None
    if sampler == "yours":
        draws = own_draws(gen, streams, ours_logits.cpu())
        violations = _support_violations(s, draws, ours_logits.cpu())
        temperature_fit = _temperature_fit(s, draws, ours_logits.cpu())
    decode = tokenizer.decode if tokenizer is not None else (lambda ids: "")
    same = "same model, " if model_differs is None else ""
    for r in range(len(gen.sequences)):
        ours_new = gen.sequences[r][P:]
        ref_new = ref[r][P:] if ref is not None and r < len(ref) else []
        prompt_same = ref is not None and r < len(ref) and ref[r][:P] == gen.prompt_ids
        first = None
        for i in range(max(len(ours_new), len(ref_new))):
            if i >= len(ours_new) or i >= len(ref_new) or ours_new[i] != ref_new[i]:
                first = i
                break
        identical = prompt_same and first is None
        cause, why, evidence = None, "identical to HuggingFace", {}
        sampler_ev = (violations.get(r) or temperature_fit) if sampler == "yours" else None
        if not identical:
            s_idx = first if first is not None else 0
            bad = [d for st in steps[: s_idx + 1] for d in [st[r]] if d is not None and d.exceeds]
            if bad:
                cause = "model"
                why = f"the models' logits differ at step {bad[0].step} (max |Δlogit| {bad[0].max_abs_dlogit:.3g}" \
                      f" > tolerance {bad[0].tolerance:.2g}); first diverging layer: {first_layer}"
                evidence = {"step": bad[0].step, "max_abs_dlogit": bad[0].max_abs_dlogit, "layer": first_layer}
                if sampler_ev is not None:
                    evidence["sampler"] = sampler_ev
            elif not prompt_same:
                cause, why = "settings", "HF saw a different prompt (the pipeline truncates it to max_length)"
            elif sampler_ev is not None:
                cause, why, evidence = "sampler", _sampler_why(sampler_ev, s), sampler_ev
            elif diff_settings:
                cause = "settings"
                parts = [f"{d.name}: ours {d.ours!r} vs HF {d.hf!r} ({d.source})" for d in diff_settings]
                why = same + "different effective settings: " + "; ".join(parts)
                evidence = {d.name: {"ours": d.ours, "hf": d.hf, "source": d.source} for d in diff_settings}
            elif sampler == "nanogpt":
                cause = "sampling_order"
                why = (same + "different random draws: the seed's loop draws one number per row over the "
                       f"{s.top_k or 'full'} sorted top-k probabilities; HF draws over the full vocabulary in id order")
                evidence = {"ours_method": "nanogpt", "hf_draws_per_step": "B x vocab"}
            elif sampler == "yours" and s.effective_method != "greedy":
                cause = "sampling_order"
                why = (same + "different random draws: your sampling step's choices are valid draws from the settings' "
                       "distribution, but not made with HF's random numbers (HF draws one number per vocabulary "
                       "entry in id order: one multinomial over B x vocab per step, from the seed)")
                evidence = {"ours_method": "yours", "hf_draws_per_step": "B x vocab"}
            else:
                st = steps[s_idx][r] if s_idx < len(steps) else None
                tie = None
                if st is not None:
                    tie = _near_tie(s, r, s_idx, ours_logits[:, s_idx], hf_logits[:, s_idx],
                                    st.max_abs_dlogit, len(gen.sequences))
                if tie is not None and precision is not None:
                    cause = "precision"
                    why = (f"a near tie flipped by {precision} rounding at step {s_idx}: the winning margin "
                           f"{tie['margin']:.2g} is within the logit difference {tie['max_abs_dlogit']:.2g}, which "
                           f"{precision} precision allows")
                    evidence = {**tie, "precision": precision}
                elif tie is not None:
                    cause = "near_tie"
                    why = (f"a near-tie flipped by float noise at step {s_idx}: the winning margin {tie['margin']:.2g} "
                           f"is within the logit difference {tie['max_abs_dlogit']:.2g}")
                    evidence = tie
                else:
                    cause = "unexplained"
                    why = f"diverges at step {s_idx} with logits within tolerance and no tie: please report this"
            if cause != "model" and model_differs is not None:
                why += (f"; the models also differ ({model_differs}), though not by enough to change this row's "
                        "choice here")
                evidence = {**evidence, "model_differs": model_differs}
        rows.append(RowComparison(
            row=r, ours_new_ids=ours_new, ref_new_ids=ref_new, ours_text=decode(gen.sequences[r]),
            ref_text=decode(ref[r]) if ref is not None and r < len(ref) else "",
            identical=identical, first_divergent_step=None if identical else (first if first is not None else 0),
            cause=cause, explanation=why, evidence=evidence,
        ))
    return rows


_HEADLINES = {
    "identical": "identical to HuggingFace",
    "logits_agree": "logits agree with HuggingFace within tolerance",
    "sampling_order": "same model, different random draws: sampling order",
    "settings": "same model, different effective settings",
    "near_tie": "same model; a near-tie flipped by float noise",
    "precision": "a near tie flipped by low-precision rounding",
    "unexplained": "rows diverge with agreeing logits and no known cause",
    "sampler": "same model, but your sampling step does not sample what the settings say",
}


def sampler_notes(rows: list[RowComparison], sampler: str | None) -> list[str]:
    """Report notes about a user's sampling step that no row's cause carries (e.g. hidden behind a model bug)."""
    if sampler != "yours":
        return []
    for row in rows:
        ev = row.evidence.get("sampler") if row.cause == "model" else None
        if ev is not None:
            return [f"also (row {row.row}): " + (
                f"your sampling step chose token {ev['token_id']} at step {ev['step']}, outside the settings' "
                "support" if ev["kind"] == "support" else
                f"your sampling step's choices fit temperature {ev['fitted_temperature']:g}, not "
                f"{ev['settings_temperature']:g}")]
    return []


def models_verdict(layers, step_list, per_layer: bool = True) -> tuple[str, str] | None:
    """(where the models differ, the verdict's words), or None when every layer and step agrees within
    tolerance. Decided before the rows are explained: a row must not call the models the same when they differ."""
    first_layer = next((l for l in layers if l.exceeds), None)
    any_step = any(d.exceeds for st in step_list for d in st if d is not None)
    if first_layer is None and not any_step:
        return None
    if first_layer is not None and not any_step and first_layer.name != "lm_head":
        return (f"from {first_layer.name} on",
                f"hidden states differ from HuggingFace from {first_layer.name} on, although every sampled step's "
                "logits agree (a mistake that only earlier positions see, such as a missing causal mask when each "
                "step recomputes the whole sequence)")
    if first_layer is not None and (per_layer or first_layer.name != "lm_head"):
        return (f"first diverging layer {first_layer.name}",
                f"logits differ from HuggingFace: first diverging layer {first_layer.name}")
    if not per_layer:
        return "logits", "logits differ from HuggingFace (per-layer comparison not available)"
    return "first diverging layer lm_head", "logits differ from HuggingFace: first diverging layer lm_head"


def verdict(rows: list[RowComparison], models: tuple[str, str] | None, reference: str) -> tuple[bool, str, str]:
    """(agree, verdict_kind, the one-line verdict) from the models' verdict and the rows' causes."""
    if models is not None:
        return False, "model", models[1]
    if reference == "logits":
        return True, "logits_agree", _HEADLINES["logits_agree"]
    causes = [r.cause for r in rows if not r.identical]
    if not causes:
        return True, "identical", _HEADLINES["identical"]
    for kind in ("unexplained", "sampler", "settings", "sampling_order", "near_tie", "precision"):
        if kind in causes:
            head = _HEADLINES[kind]
            if kind == "settings":
                head += ": " + next(r.explanation.split(": ", 1)[1] for r in rows if r.cause == "settings")
            return kind not in ("unexplained", "sampler"), kind, f"{head} ({len(causes)} of {len(rows)} rows differ)"
    raise AssertionError(causes)  # pragma: no cover
