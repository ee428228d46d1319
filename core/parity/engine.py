"""compare(): our GPT-2 (optionally with a bug-lab fault) against HuggingFace's while generating.

Ties the pieces together: our sampler generates; HF's model is run teacher-forced on the very same token
streams (one forward each, so steps stay aligned after the two would have sampled differently); HF's own
generate() (or the text-generation pipeline) is run as users call it; every divergent row gets one stated
cause with its evidence. Knows nothing about the UI.
"""

from __future__ import annotations

import os
import time

import torch

from ..faults import FaultError, apply_fault, get_fault
from ..model import GPT
from ..sampling import Capture, SamplingSettings, generate, prepare
from ..tokenizer import Tokenizer, load_tokenizer
from .diffs import ATOL, layer_diffs, relative_tolerance, step_diffs
from .explain import _verdict, explain_rows
from .reference import hf_teacher_forced, run_hf_reference, settings_table
from .report import LayerDiff, ParityError, ParityReport

REFERENCES = ("generate", "pipeline", "logits")


@torch.inference_mode()
def teacher_forced(ours: GPT, hf, sequences: torch.Tensor) -> tuple[list[LayerDiff], torch.Tensor, torch.Tensor]:
    """Both models teacher-forced over the same streams -> per-layer diffs, ours' and HF's logits (B, T, V)."""
    ref_hidden, ref_logits = hf_teacher_forced(hf, sequences)
    out = ours(sequences, return_hidden=True)
    rtol = relative_tolerance(ours.config.mlp_width)
    layers = layer_diffs(ours.config.n_layer, list(out.hidden) + [out.logits], ref_hidden + [ref_logits], rtol)
    return layers, out.logits.float(), ref_logits




# ---------------------------------------------------------------------------------------------------------
# The entry point


def _resolve_pair(model_or_name, hf_model):
    from ..loader import load_pair

    if isinstance(model_or_name, (str, os.PathLike)):
        ours, hf = load_pair(model_or_name)
        return ours, hf, str(model_or_name)
    if isinstance(model_or_name, tuple) and len(model_or_name) == 2:
        ours, hf = model_or_name
        return ours, hf, getattr(hf.config, "_name_or_path", "") or "custom"
    if isinstance(model_or_name, GPT):
        if hf_model is None:
            raise ParityError("pass hf_model= (the HF GPT2LMHeadModel) with our GPT, or a model name/path")
        return model_or_name, hf_model, getattr(hf_model.config, "_name_or_path", "") or "custom"
    raise ParityError(f"expected a model name/path, an (ours, hf) pair or our GPT, got {type(model_or_name).__name__}")


def compare(
    model_or_name,
    prompt,
    *,
    reference: str = "generate",
    fault: str | None = None,
    tokenizer: Tokenizer | None = None,
    hf_model=None,
    on_step=None,
    **settings,
) -> ParityReport:
    """Generate with our model (optionally with a bug-lab `fault`) and compare with HF, step by step and layer
    by layer; with reference "generate" or "pipeline" also run HF's own sampling and explain every difference.
    `model_or_name`: a Hub id or checkpoint directory, an (ours, hf) pair, or our GPT with `hf_model=`.
    `on_step` sees each of our sampling steps as it happens (for streaming UIs).
    """
    if reference not in REFERENCES:
        raise ParityError(f"reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
    if fault not in (None, "", "none"):
        try:
            get_fault(fault)  # a listed fault or "<mistake>@<block>"
        except FaultError as e:
            raise ParityError(str(e)) from None
    t0 = time.perf_counter()
    s = SamplingSettings.from_kwargs(**settings)
    ours, hf, name = _resolve_pair(model_or_name, hf_model)
    if tokenizer is None:
        tokenizer = load_tokenizer(name if isinstance(model_or_name, (str, os.PathLike)) else None)
    prepare(ours, prompt, tokenizer, s)  # every input check before any work
    faulty = apply_fault(ours, fault)
    timings = {}

    t = time.perf_counter()
    capture = Capture()
    gen = generate(faulty, prompt, tokenizer=tokenizer, on_step=on_step, capture=capture, **settings)
    timings["ours_generate_s"] = time.perf_counter() - t

    # HF teacher-forced on our very streams, compared with what our sampler actually computed (logits of every
    # step and the residual stream at every position fed to our model, captured while generating)
    t = time.perf_counter()
    seqs = torch.tensor(gen.sequences, device=ours.device)
    n_steps = len(gen.records)
    with torch.inference_mode():
        ours_logits, ours_hidden = capture.stacked()
        ref_hidden, ref_logits = hf_teacher_forced(hf, seqs, keep=n_steps + 1)
        hf_logits = ref_logits[:, :n_steps]  # positions P-1 .. L-2 predict steps 0 .. S-1
        rtol = relative_tolerance(ours.config.mlp_width)
        layers = layer_diffs(ours.config.n_layer, ours_hidden + [ours_logits], ref_hidden + [hf_logits], rtol,
                             logits_start=len(gen.prompt_ids) - 1)
        steps = step_diffs(gen, s, ours_logits, hf_logits, rtol)
    del capture, ours_hidden, ref_hidden
    timings["teacher_forced_s"] = time.perf_counter() - t
    first_layer = next((l.name for l in layers if l.exceeds), None)
    P = len(gen.prompt_ids)

    ref, table = None, []
    if reference != "logits":
        t = time.perf_counter()
        ref, received, user = run_hf_reference(hf, tokenizer, gen.prompt, gen.prompt_ids, s, reference)
        timings["hf_reference_s"] = time.perf_counter() - t
        n_planned = s.new_tokens_for(P)
        table, _ = settings_table(hf, s, P, n_planned, received, user, ours.config.eos_token_id)
    rows = explain_rows(gen, s, ref, tokenizer, table, steps, ours_logits, hf_logits, first_layer)
    if reference == "logits":
        for row in rows:  # no HF sampling to compare with: rows carry only the model comparison
            row.identical, row.first_divergent_step, row.cause = True, None, None
            row.explanation = "not compared (reference: logits only)"
    agree, kind, verdict = _verdict(rows, layers, steps, reference)
    max_dlogit = max((d.max_abs_dlogit for st in steps for d in st if d is not None), default=0.0)
    timings["total_s"] = time.perf_counter() - t0
    return ParityReport(
        model=name, prompt=gen.prompt, prompt_ids=gen.prompt_ids, settings=gen.settings, reference=reference,
        fault=fault if fault not in ("", "none") else None, agree=agree, verdict=verdict, verdict_kind=kind,
        rtol=rtol, atol=ATOL, max_abs_dlogit=max_dlogit, first_diverging_layer=first_layer, layers=layers,
        steps=steps, rows=rows, settings_table=table, generation=gen, ref_sequences=ref, timings=timings,
    )


