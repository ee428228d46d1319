"""compare(): a model under test (our GPT-2, optionally with a bug-lab fault, or any GPT-2) against HuggingFace's
while generating.

Ties the pieces together: the model under test generates (subject.py, foreign.py -> a SubjectRun); HF's own
generate() (or the text-generation pipeline) is run as users call it, beside our generation where that cannot
change a bit of either; HF's side of the comparison is what its model computed on the very same token streams
(from its own generate() where a stream is HF's, else one teacher-forced forward, so steps stay aligned after the
two would have sampled differently); every divergent row gets one stated cause with its evidence. Knows nothing
about the UI.
"""

from __future__ import annotations

import os
import time

import torch

from ..faults import FaultError, apply_fault, get_fault
from ..kernels import thread_invariant
from ..model import GPT
from ..sampling import SamplingSettings, prepare
from ..tokenizer import Tokenizer, load_tokenizer
from .diffs import ATOL, layer_diffs, relative_tolerance, step_diffs
from .explain import _verdict, explain_rows, sampler_notes
from .reference import (hf_on_streams, hf_reference_in_background, hf_teacher_forced, model_key,
                        overlap_reference, settings_table, sharing_cores_with)
from .report import LayerDiff, ParityError, ParityReport
from .subject import SubjectRun, run_ours

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
# Any model under test (a SubjectRun) against HF


def hf_eos_id(hf) -> int:
    eos = hf.config.eos_token_id
    eos = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
    return int(eos) if eos is not None else 50256


def _mlp_width(hf) -> int:
    return int(hf.config.n_inner or 4 * hf.config.n_embd)


def _aligned(ours: list[torch.Tensor], ref: list[torch.Tensor]) -> list[torch.Tensor]:
    """HF's layers matched to the positions ours recorded: a layer kept for the last fed position only
    ((B, 1, C), e.g. a final norm applied after slicing) is compared with HF's same position."""
    fed = max(h.size(1) for h in ours)
    return [b[:, fed - 1 : fed] if a.size(1) == 1 and fed > 1 else b for a, b in zip(ours, ref)]


def compare_run(
    run: SubjectRun,
    hf,
    *,
    settings: SamplingSettings,
    reference: str = "generate",
    tokenizer: Tokenizer | None = None,
    name: str = "custom",
    fault: str | None = None,
    timings: dict | None = None,
    pending=None,
    hf_key: tuple | None = None,
) -> ParityReport:
    """Compare what a model under test generated (`run`) with HF: HF's model on the run's very token streams (per
    step and, where the run has its residual stream, per layer: from HF's own generate() where a stream is HF's,
    teacher-forced elsewhere), and with reference "generate"/"pipeline" HF's own sampling, every divergent row
    explained. Never asks what made the run.
    `pending`: HF's reference already started (hf_reference_in_background; else it starts here); `hf_key`:
    model_key(hf)."""
    if reference not in REFERENCES:
        raise ParityError(f"reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
    s = settings
    timings = dict(timings or {})
    gen = run.generation
    notes = list(run.notes)
    n_layer = int(hf.config.n_layer)
    hf_key = hf_key or model_key(hf)
    if pending is None and reference != "logits":
        pending = hf_reference_in_background(hf, tokenizer, gen.prompt, gen.prompt_ids, s, reference, model=hf_key)
    P = len(gen.prompt_ids)
    ref, table, trace = None, [], None
    if reference != "logits":
        t = time.perf_counter()
        ref, received, user, timings["hf_reference_s"], trace = pending.result()  # perf: 0 s when it was cached
        timings["hf_reference_wait_s"] = time.perf_counter() - t
        n_planned = s.new_tokens_for(P)
        table, _ = settings_table(hf, s, P, n_planned, received, user, hf_eos_id(hf))

    # HF's side on the run's very token streams (logits of every step, residual stream at every position fed to the
    # model): taken from HF's own generate() where a row's stream is HF's, teacher-forced for the other rows
    t = time.perf_counter()
    hf_device = next(hf.parameters()).device
    seqs = torch.tensor(gen.sequences, device=hf_device)
    n_steps = len(gen.records)
    with torch.inference_mode():
        ours_logits = run.step_logits[:, :n_steps].float().to(hf_device)
        ref_hidden, hf_logits, recomputed = hf_on_streams(hf, seqs, P, n_steps, ref, trace, hf_key)
        timings["teacher_forced_rows"] = float(recomputed)
        rtol = relative_tolerance(_mlp_width(hf))
        hidden = run.hidden
        if hidden is not None and len(hidden) != len(ref_hidden):
            notes.append(f"per-layer comparison not possible: the run has {len(hidden)} layers of residual stream, "
                         f"HF's model {len(ref_hidden)} (embeddings, {n_layer} blocks, ln_f)")
            hidden = None
        if hidden is not None:
            hidden = [h.to(hf_device) for h in hidden]
            layers = layer_diffs(n_layer, hidden + [ours_logits], _aligned(hidden, ref_hidden) + [hf_logits], rtol,
                                 logits_start=P - 1)
        else:  # only the logits can be compared: HF's own stream stands in for the unknown layers, then dropped
            layers = layer_diffs(n_layer, ref_hidden + [ours_logits], ref_hidden + [hf_logits], rtol,
                                 logits_start=P - 1)[-1:]
        steps = step_diffs(gen, s, ours_logits, hf_logits, rtol)
    del hidden, ref_hidden
    timings["teacher_forced_s"] = time.perf_counter() - t
    per_layer = len(layers) > 1
    first_layer = next((l.name for l in layers if l.exceeds), None) if per_layer else None

    rows = explain_rows(gen, s, ref, tokenizer, table, steps, ours_logits, hf_logits,
                        first_layer if per_layer else "not known (no per-layer comparison)", sampler=run.sampler)
    if reference == "logits":
        for row in rows:  # no HF sampling to compare with: rows carry only the model comparison
            row.identical, row.first_divergent_step, row.cause = True, None, None
            row.explanation = "not compared (reference: logits only)"
    notes += sampler_notes(rows, run.sampler)
    agree, kind, verdict = _verdict(rows, layers, steps, reference, per_layer=per_layer)
    max_dlogit = max((d.max_abs_dlogit for st in steps for d in st if d is not None), default=0.0)
    if "start" in timings:
        timings["total_s"] = time.perf_counter() - timings.pop("start")
    return ParityReport(
        model=name, prompt=gen.prompt, prompt_ids=gen.prompt_ids, settings=gen.settings, reference=reference,
        fault=fault if fault not in ("", "none") else None, agree=agree, verdict=verdict, verdict_kind=kind,
        rtol=rtol, atol=ATOL, max_abs_dlogit=max_dlogit, first_diverging_layer=first_layer, layers=layers,
        steps=steps, rows=rows, settings_table=table, generation=gen, ref_sequences=ref, timings=timings,
        subject=run.label, sampler=run.sampler, notes=notes,
    )


# ---------------------------------------------------------------------------------------------------------
# The entry point: resolve the model under test, run it, compare the run


def _is_hf_model(obj) -> bool:
    return hasattr(obj, "generate") and hasattr(obj, "config") and hasattr(obj, "transformer")


def _resolve_hf(hf_model):
    from ..loader import load_hf_model

    if isinstance(hf_model, (str, os.PathLike)):
        return load_hf_model(hf_model), str(hf_model)
    if _is_hf_model(hf_model):
        return hf_model, getattr(hf_model.config, "_name_or_path", "") or "custom"
    raise ParityError("hf_model= must be HF's GPT2LMHeadModel, a Hub id or a checkpoint directory, got "
                      f"{type(hf_model).__name__}")


def resolve_subject(model_or_name, hf_model):
    """-> (the model under test, HF's model, the checkpoint's name, whether the subject is our GPT)."""
    from ..loader import load_pair

    if isinstance(model_or_name, (str, os.PathLike)):
        ours, hf = load_pair(model_or_name)
        return ours, hf, str(model_or_name), True
    if isinstance(model_or_name, tuple) and len(model_or_name) == 2 and _is_hf_model(model_or_name[1]):
        subject, hf = model_or_name
        name = getattr(hf.config, "_name_or_path", "") or "custom"
        return subject, hf, name, isinstance(subject, GPT)
    if isinstance(model_or_name, GPT) or callable(model_or_name):
        if hf_model is None:
            raise ParityError("pass hf_model= (HF's GPT2LMHeadModel, a Hub id or a checkpoint directory) with the "
                              "model under test, or a model name/path")
        hf, name = _resolve_hf(hf_model)
        return model_or_name, hf, name, isinstance(model_or_name, GPT)
    raise ParityError(f"expected a model name/path, a model (our GPT, any torch.nn.Module or a function ids -> "
                      f"logits) with hf_model=, or a (model, hf) pair; got {type(model_or_name).__name__}")


def compare(
    model_or_name,
    prompt,
    *,
    reference: str = "generate",
    fault: str | None = None,
    tokenizer: Tokenizer | None = None,
    hf_model=None,
    on_step=None,
    sampling_step=None,
    layers=None,
    label: str | None = None,
    **settings,
) -> ParityReport:
    """Generate with the model under test and compare with HF, step by step and layer by layer; with reference
    "generate" or "pipeline" also run HF's own sampling and explain every difference.

    `model_or_name`: a Hub id or checkpoint directory (our GPT for it); our GPT, any torch.nn.Module or a
    function mapping ids (B, T) to logits, with `hf_model=` (a GPT2LMHeadModel, Hub id or directory); or a
    (model, hf) pair. `fault`: a bug-lab mistake injected into our GPT. Foreign models run without a KV cache;
    `sampling_step` (their own step: logits (B, V) -> ids (B,), on the global RNG) and `layers` (dict(blocks=...,
    final_norm=...) where their layout is not discovered) apply to them. `on_step` sees each sampling step.
    """
    from .foreign import run_foreign

    if reference not in REFERENCES:
        raise ParityError(f"reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
    if fault not in (None, "", "none"):
        try:
            get_fault(fault)  # a listed fault or "<mistake>@<block>"
        except FaultError as e:
            raise ParityError(str(e)) from None
    t0 = time.perf_counter()
    s = SamplingSettings.from_kwargs(**settings)
    subject, hf, name, ours = resolve_subject(model_or_name, hf_model)
    if tokenizer is None:
        tokenizer = load_tokenizer(name if isinstance(model_or_name, (str, os.PathLike)) else None)
    timings = {"start": t0}
    t = time.perf_counter()
    pending = hf_key = None
    if ours and sampling_step is None and layers is None:
        prompt_text, prompt_ids, _ = prepare(subject, prompt, tokenizer, s)  # every input check before any work
        faulty = apply_fault(subject, fault)
        # perf: HF's own sampling depends on nothing of ours: it starts first and, when our bits do not depend on
        # our thread count, runs beside our generation (HF at the full thread count, ours on a share until HF is done)
        hf_key = model_key(hf)
        if reference != "logits":
            pending = hf_reference_in_background(hf, tokenizer, prompt_text, prompt_ids, s, reference, model=hf_key,
                                                 overlap=overlap_reference(thread_invariant(faulty)))
        with sharing_cores_with(pending) as cores:
            timings["overlapped"] = float(cores.shared)  # 1: HF's reference ran beside our generation
            def step(event):
                cores.poll()  # HF done: every core is ours again
                if on_step is not None:
                    on_step(event)

            run = run_ours(faulty, prompt, s, tokenizer=tokenizer, on_step=step, label=label or "Ours")
    else:
        if fault not in (None, "", "none"):
            raise ParityError("bug-lab faults are injected into our GPT only, not into your model")
        run = run_foreign(subject, hf, prompt, s, tokenizer=tokenizer, sampling_step=sampling_step, layers=layers,
                          on_step=on_step, label=label or "Yours")
    timings["ours_generate_s"] = time.perf_counter() - t
    return compare_run(run, hf, settings=s, reference=reference, tokenizer=tokenizer, name=name, fault=fault,
                       timings=timings, pending=pending, hf_key=hf_key)
