"""Helpers for users' own test suites: pin any GPT-2 implementation to HuggingFace's in pytest.

Knows compare() and how to word a failure; nothing about pytest itself (a plain AssertionError).
"""

from __future__ import annotations

from collections.abc import Iterable

from .parity import compare

DEFAULT_PROMPTS = ("Hello, I'm a language model,",)


def assert_matches_hf(
    model,
    hf,
    *,
    prompts: Iterable = DEFAULT_PROMPTS,
    seeds: Iterable[int] = (42,),
    reference: str = "generate",
    tokenizer=None,
    sampling_step=None,
    layers=None,
    precision: str = "auto",
    **settings,
) -> list:
    """Compare `model` (any GPT-2: a torch.nn.Module or a function ids (B, T) -> logits) with `hf` (HF's
    GPT2LMHeadModel, a Hub id or a checkpoint directory) on every prompt and seed; raise AssertionError naming the
    verdict, the first diverging layer, the first divergent step and its cause for each failing case.
    Settings as for compare() (method="hf" by default: the rows must then be HF's own, token for token).
    `precision` as for compare(): "auto" detects a bfloat16/float16/autocast model and judges it at that precision.
    Returns the ParityReports when everything agrees."""
    reports, failures = [], []
    for prompt in prompts:
        for seed in seeds:
            r = compare(model, prompt, hf_model=hf, tokenizer=tokenizer, reference=reference, seed=seed,
                        sampling_step=sampling_step, layers=layers, precision=precision, **settings)
            reports.append(r)
            if not r.agree:
                failures.append(describe_failure(r, prompt, seed))
    if failures:
        raise AssertionError(f"{len(failures)} of {len(reports)} comparisons with HuggingFace failed:\n"
                             + "\n".join(failures))
    return reports


def describe_failure(r, prompt, seed) -> str:
    """One readable paragraph for a failing report."""
    bad = [row for row in r.rows if not row.identical]
    first = min(bad, key=lambda row: row.first_divergent_step) if bad else None
    worst = max((d for st in r.steps for d in st if d is not None), key=lambda d: d.max_abs_dlogit, default=None)
    lines = [
        f"- prompt {prompt!r}, seed {seed}: {r.verdict}",
        f"  first diverging layer: {r.first_diverging_layer or 'none'}; max |Δlogit| {r.max_abs_dlogit:.3g}"
        + (f" (tolerance at that step {worst.tolerance:.2g})" if worst is not None else ""),
    ]
    exceeding = next((d for st in r.steps for d in st if d is not None and d.exceeds), None)
    if exceeding is not None:
        lines.append(f"  first step whose logits exceed the tolerance: step {exceeding.step} (row {exceeding.row}, "
                     f"max |Δlogit| {exceeding.max_abs_dlogit:.3g} > {exceeding.tolerance:.2g})")
    if first is not None:
        lines.append(f"  first divergent step: {first.first_divergent_step} (row {first.row}); cause: {first.cause}: "
                     f"{first.explanation}")
    elif r.reference != "logits":
        lines.append("  first divergent step: none (every sampled row is HuggingFace's, token for token)")
    prec = getattr(r, "precision", None) or {}
    if prec.get("factor"):
        check = r.float32_check or {}
        lines.append(f"  precision: {prec['label']} ({prec['how']}); float32 re-check: "
                     + (check["verdict"] if check.get("possible") else f"not possible: {check.get('why_not')}"))
    from .cli import localisation_lines

    lines += [f"  {line}" for line in localisation_lines(r)]
    lines += [f"  note: {n}" for n in r.notes]
    return "\n".join(lines)
