"""The judge: the one place where a comparison becomes a verdict.

judge(subject, hf, settings, reference) takes what the model under test did (a SubjectRun: our GPT, your model, a
result file) and what HF did (an HFRun: its own generation, its model on the subject's token streams) and computes
every difference (diffs.py), explains every divergent row (explain.py), decides the verdict and builds the
ParityReport. Nothing else in the lab does any of these. Knows tensors and records only: never which model, file or
thread produced them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import torch

from ..sampling import SamplingSettings
from ..tokenizer import Tokenizer
from ..precision import Precision
from .diffs import (ATOL, PRECISION_FACTOR, error_shape, layer_diffs, logits_layer_diff, place_diff,
                    relative_tolerance, step_checks, step_diffs)
from .explain import explain_rows, models_verdict, sampler_notes, verdict
from .localise import Localiser, diagnosis_sentences, outside
from .reference import HFRun
from .report import ParityError, ParityReport
from .subject import SubjectRun

REFERENCES = ("generate", "pipeline", "logits")


def check_reference(reference: str) -> None:
    if reference not in REFERENCES:
        raise ParityError(f"reference must be one of {', '.join(REFERENCES)}, got {reference!r}")


def _aligned(ours: list[torch.Tensor], ref: list[torch.Tensor]) -> list[torch.Tensor]:
    """HF's layers matched to the positions ours recorded: a layer kept for the last fed position only
    ((B, 1, C), e.g. a final norm applied after slicing) is compared with HF's same position."""
    fed = max(h.size(1) for h in ours)
    return [b[:, fed - 1 : fed] if a.size(1) == 1 and fed > 1 else b for a, b in zip(ours, ref)]


def _layers(subject_hidden, ours_logits, hf: HFRun, P: int, noise: bool):
    """The per-layer comparison (or the logits alone) of one run against HF in float32; with `noise`, each place
    also tolerates HF's own error at the run's precision. -> (layers, whether per layer)."""
    rtol = relative_tolerance(hf.mlp_width)
    noise_l = hf.own_error_logits[:, : ours_logits.size(1)] if noise and hf.own_error_logits is not None else None
    if subject_hidden is None:
        return [logits_layer_diff(hf.n_layer, ours_logits, hf.logits[:, : ours_logits.size(1)], rtol,
                                  logits_start=P - 1, noise=noise_l)], False
    hidden = [h.float().to(ours_logits.device) for h in subject_hidden]
    noise_layers = None
    if noise_l is not None:
        noise_layers = [n[..., 0] for n in _aligned(hidden, [n[..., None] for n in hf.own_error_hidden])] + [noise_l]
    return layer_diffs(hf.n_layer, hidden + [ours_logits],
                       _aligned(hidden, hf.hidden) + [hf.logits[:, : ours_logits.size(1)]], rtol, logits_start=P - 1,
                       noise=noise_layers), True


def _float32_check(subject: SubjectRun, hf: HFRun, P: int) -> dict:
    """The float32 re-check of a run below float32: judged by the float32 rule against HF in float32."""
    check = subject.float32
    if check is None or check.step_logits is None:
        why = check.why_not if check is not None else "the lab cannot re-run this model in float32"
        return {"possible": False, "why_not": why, "agree": None, "first_diverging_layer": None, "verdict": None}
    if check.ref_logits is not None:  # the model's own rounded weights: HF with the same rounding is the reference
        hf = replace(hf, hidden=check.ref_hidden, logits=check.ref_logits)
    hidden = check.hidden if hf.hidden is not None and check.hidden is not None and \
        len(check.hidden) == len(hf.hidden) else None
    gen = subject.generation
    ours_logits = check.step_logits[:, : len(gen.records)].float().to(hf.logits.device)
    with torch.inference_mode():
        layers, per_layer = _layers(hidden, ours_logits, hf, P, noise=False)
        steps = step_checks(gen, ours_logits, hf.logits[:, : ours_logits.size(1)], relative_tolerance(hf.mlp_width))
    models = models_verdict(layers, steps, per_layer)
    first = next((l.name for l in layers if l.exceeds), None) if per_layer else None
    return {"possible": True, "why_not": None, "agree": models is None, "first_diverging_layer": first,
            "verdict": models[1] if models else "identical to HuggingFace within float32 tolerance",
            "max_abs_dlogit": max((d.max_abs_dlogit for st in steps for d in st if d is not None), default=0.0),
            "layers": [{"name": l.name, "ratio": l.ratio, "exceeds": l.exceeds} for l in layers], "note": check.note}


def judge(subject: SubjectRun, hf: HFRun, settings: SamplingSettings, reference: str, *,
          tokenizer: Tokenizer | None = None, model: str = "custom", fault: str | None = None,
          timings: dict | None = None, localiser: Localiser | None = None,
          on_verdict: Callable[[ParityReport], None] | None = None) -> ParityReport:
    """Per layer (where both sides have the residual stream) and per step on the subject's streams, every
    divergent row explained, one verdict. `reference` "logits" compares the models only (no HF sampling).
    Below float32 (subject.precision) each place also tolerates PRECISION_FACTOR times HF's own error at that
    precision (hf.own_error_*), and the float32 re-check (subject.float32) says what the precision would hide."""
    check_reference(reference)
    s, gen, p = settings, subject.generation, subject.precision
    low = p.low and hf.own_error_logits is not None
    notes = list(subject.notes) + list(hf.notes)
    P = len(gen.prompt_ids)
    hidden = subject.hidden if hf.hidden is not None else None
    if hidden is not None and len(hidden) != len(hf.hidden):
        notes.append(f"per-layer comparison not possible: the run has {len(hidden)} layers of residual stream, "
                     f"HF's model {len(hf.hidden)} (embeddings, {hf.n_layer} blocks, ln_f)")
        hidden = None
    n_steps = len(gen.records)
    ours_logits = subject.step_logits[:, :n_steps].float().to(hf.logits.device)
    hf_logits = hf.logits[:, :n_steps]
    with torch.inference_mode():
        layers, per_layer = _layers(hidden, ours_logits, hf, P, low)
        noise = hf.own_error_logits[:, :n_steps] if low else None
        steps = step_diffs(gen, s, ours_logits, hf_logits, relative_tolerance(hf.mlp_width), noise=noise)
    first_layer = next((l.name for l in layers if l.exceeds), None) if per_layer else None
    models = models_verdict(layers, steps, per_layer)
    recheck = _float32_check(subject, hf, P) if low else None
    model_differs = models[0] if models else None
    if recheck is not None and models is None and recheck["agree"] is False:
        first_layer = recheck["first_diverging_layer"]
        model_differs = f"in float32, first diverging layer {first_layer}" if first_layer else "in float32"

    compared = reference != "logits" and hf.sequences is not None
    rows = explain_rows(gen, s, hf.sequences, tokenizer, hf.settings_table, steps, ours_logits, hf_logits,
                        first_layer if per_layer else "not known (no per-layer comparison)", sampler=subject.sampler,
                        streams=subject.streams, model_differs=model_differs,
                        precision=p.label if low else None)
    if not compared:
        for row in rows:  # no HF sampling to compare with: rows carry only the model comparison
            row.identical, row.first_divergent_step, row.cause, row.evidence = True, None, None, {}
            row.explanation = "not compared (reference: logits only)"
        reference = "logits"
    notes += sampler_notes(rows, subject.sampler)
    agree, kind, text = verdict(rows, models, reference)
    max_dlogit = max((d.max_abs_dlogit for st in steps for d in st if d is not None), default=0.0)
    precision = {**p.to_dict(), "factor": PRECISION_FACTOR if low else None,
                 "hf_own_error": float(hf.own_error_logits.max()) if low and hf.own_error_logits.numel() else None}
    if low:
        agree, kind, text = _precision_verdict(p, agree, kind, text, models, recheck, max_dlogit,
                                               precision["hf_own_error"])
    if subject.ran_in is not None:
        ran, asked = subject.ran_in, p.how  # "asked" (compare()), or "declared in the result's manifest"
        text += f" (your model ran in {ran.label} although float32 was {asked}: {ran.how})"
        fix = subject.ran_in_fix or f"pass precision={ran.name!r} (or 'auto')"
        notes.append(f"your model ran in {ran.label} although float32 was {asked}; {fix} to judge it at its own "
                     "precision")
    timings = {**(timings or {}), **hf.timings}
    report = ParityReport(
        model=model, prompt=gen.prompt, prompt_ids=gen.prompt_ids, settings=gen.settings, reference=reference,
        fault=fault if fault not in ("", "none") else None, agree=agree, verdict=text, verdict_kind=kind,
        rtol=relative_tolerance(hf.mlp_width), atol=ATOL, max_abs_dlogit=max_dlogit,
        first_diverging_layer=first_layer, layers=layers, steps=steps, rows=rows, settings_table=hf.settings_table,
        generation=gen, ref_sequences=hf.sequences, timings=timings, subject=subject.label, sampler=subject.sampler,
        notes=notes, precision=precision, float32_check=recheck,
    )
    flagged, loc = [(l.name, l.exceeds) for l in layers], localiser if models is not None else None
    if models is None and recheck is not None and recheck["agree"] is False and localiser is not None \
            and localiser.twin is not None and recheck.get("layers") and len(recheck["layers"]) == len(layers):
        loc, low = localiser.twin, False  # what only float32 shows is localised in float32, on the same streams
        flagged = [(l["name"], l["exceeds"]) for l in recheck["layers"]]
        notes.append("localised in float32 (the model re-run in float32 on the same streams): at "
                     f"{p.label} the difference is within HF's own error")
    if loc is not None and per_layer and hf.hidden is not None:
        report.localisation = "pending"
        if on_verdict is not None:
            on_verdict(report)
        t = time.perf_counter()
        localise(report, loc, hf, relative_tolerance(hf.mlp_width), low, flagged)
        report.timings["localise_s"] = time.perf_counter() - t
    elif models is not None and per_layer and not low and subject.resid_mid is not None and hf.resid_mid is not None:
        # outputs only (a result file): where inside the blocks; running blocks on HF's input needs the model
        report.sublayers, report.first_diverging_sublayer = _sublayers(
            subject.resid_mid, hf.resid_mid, None, flagged, relative_tolerance(hf.mlp_width))
        report.localisation = ("inside the blocks only: each block on HF's input and the likely mistake need the "
                               "model itself, a result file holds its outputs")
    return report


def _sublayers(mid: list, hf_mid: list, noise: list | None, flagged: list[tuple[str, bool]],
               rtol: float) -> tuple[list, str | None]:
    """The residual stream after each block's attention against HF's, and the first sub-layer that differs on the
    model's own stream ("block k attention" / "block k MLP", the latter from the block's output in `flagged`)."""
    n = len(hf_mid)
    diffs = [place_diff(f"block {k} attention", mid[k].to(hf_mid[k].device), hf_mid[k], rtol,
                        noise[k] if noise is not None else None, index=k + 1) for k in range(n)]
    if flagged[0][1]:
        return diffs, None
    for k in range(n):
        if diffs[k].exceeds or flagged[k + 1][1]:
            return diffs, f"block {k} {'attention' if diffs[k].exceeds else 'MLP'}"
    return diffs, None


def localise(report: ParityReport, loc: Localiser, hf: HFRun, rtol: float, low: bool,
             flagged: list[tuple[str, bool]]) -> None:
    """The localisation fields of `report` (the models differ): the first sub-layer that differs on the model's own
    stream, every block whose output differs on HF's input, and for each the catalogue's verdict. `flagged`: each
    layer's name and whether it differs on the model's own stream (the report's layers, or the float32 re-check's)."""
    try:
        with torch.inference_mode():
            r = loc.readings(hf.hidden)
    except Exception as exc:  # the model under test cannot be run again with hooks: say why, keep the verdict
        report.localisation = f"not possible: {type(exc).__name__}: {exc}"
        report.notes.append(f"localisation not possible: {exc}")
        return
    n = hf.n_layer
    noise = (lambda xs, k: xs[k] if low and xs is not None else None)  # noqa: E731
    if r.mid is not None:
        report.sublayers, report.first_diverging_sublayer = _sublayers(r.mid, r.hf_mid, r.noise_mid if low else None,
                                                                       flagged, rtol)
    report.isolated = [place_diff(f"block {k}", r.iso_out[k], hf.hidden[k + 1], rtol, noise(r.noise_iso_out, k),
                                  index=k + 1) for k in range(n)]
    report.diverging_blocks = [k for k, d in enumerate(report.isolated) if d.exceeds]
    found = []  # (block, part, matched candidates, or the error's shape)
    named: dict[str, list[str]] = {}  # part -> what the last block's diagnosis matched
    for k in report.diverging_blocks:
        parts = []  # (part, its input, the model's output there, HF's output there, noise)
        if r.iso_mid is not None:
            if place_diff("", r.iso_mid[k], r.hf_mid[k], rtol, noise(r.noise_iso_mid, k)).exceeds:
                parts.append(("attention", hf.hidden[k], r.iso_mid[k], r.hf_mid[k], noise(r.noise_iso_mid, k)))
            with torch.inference_mode():
                hf_mlp = loc.hf_mlp(k, r.iso_mid[k])  # HF's MLP after the block's own attention output
            if place_diff("", r.iso_out[k], hf_mlp, rtol, noise(r.noise_iso_out, k)).exceeds:
                parts.append(("MLP", r.iso_mid[k], r.iso_out[k], hf_mlp, noise(r.noise_iso_out, k)))
        if not parts:
            parts = [("block", hf.hidden[k], r.iso_out[k], hf.hidden[k + 1], noise(r.noise_iso_out, k))]
        for part, x, got, ref, nz in parts:
            before = named.get(part, [])  # perf: a mistake made in every block is tried first, and alone if it fits
            tried = []
            with torch.inference_mode():
                for i, (c, y) in enumerate(loc.tries(k, part, x, first=before)):
                    tried.append((place_diff(c.name, got, y, rtol, nz).ratio, i, c))
                    if i == len(before) - 1 and any(ratio <= 1.0 for ratio, _, _ in tried):
                        break
            matched = [c for ratio, _, c in sorted(tried, key=lambda t: (t[0], t[1])) if ratio <= 1.0]
            if matched:
                named[part] = [c.name for c in matched]
            found.append((k, part, matched or error_shape(got, ref, rtol, nz)))
    report.diagnosis = diagnosis_sentences(found, outside(flagged, report.diverging_blocks))
    report.notes += [note for note in r.notes if note not in report.notes]
    report.localisation = "done"


def _precision_verdict(p: Precision, agree: bool, kind: str, text: str, models, recheck: dict | None,
                       max_dlogit: float, own: float | None) -> tuple[bool, str, str]:
    """The verdict below float32, in the precision's words."""
    name = p.label
    if models is not None:
        where = text.removeprefix("logits differ from HuggingFace").lstrip(": ")
        return False, "model", f"differs beyond {name} precision" + (f": {where}" if where else "")
    head = (f"consistent with {name} precision (max |Δlogit| {max_dlogit:.3g}; HF's own error at {name}: "
            f"{own:.3g})")
    if recheck is not None and not recheck["possible"]:
        tail = f"; a fault smaller than {name}'s resolution cannot be excluded: {recheck['why_not']}"
    elif recheck is not None and recheck["agree"] is False:
        where = recheck["verdict"].removeprefix("logits differ from HuggingFace").lstrip(": ")
        return False, "model", f"{head}; in float32 it differs from HuggingFace: {where}"
    else:
        tail = "; in float32 identical to HuggingFace within float32 tolerance"
    if kind in ("identical", "near_tie", "precision", "logits_agree"):
        return agree, "precision", head + tail + ("" if kind in ("identical", "logits_agree") else f"; {text}")
    return agree, kind, f"{head}{tail}; {text}"
