"""compare(): a model under test (our GPT-2, optionally with a bug-lab fault, or any GPT-2) against HuggingFace's
while generating. It reads: resolve the models -> start HF's side -> run the model under test -> judge.

The model under test generates (subject.py, foreign.py -> a SubjectRun); HF's own generate() (or the
text-generation pipeline) is started first, as users call it, and runs beside our generation where that cannot
change a bit of either (reference.HFSide hides how); HF's side of the comparison is what its model computed on the
very same token streams (an HFRun); judge.py turns the two runs into the report. Knows nothing about the UI.
"""

from __future__ import annotations

import os
import time

import torch

from ..faults import FaultError, apply_fault, get_fault
from ..kernels import thread_invariant
from ..model import GPT
from ..precision import FLOAT32, PrecisionError
from ..precision import parse as _parse
from ..sampling import SamplingSettings, prepare
from ..tokenizer import Tokenizer, load_tokenizer
from .diffs import layer_diffs, relative_tolerance
from .judge import REFERENCES, check_reference, judge
from .reference import HFSide, hf_teacher_forced, mlp_width, overlap_reference
from .report import LayerDiff, ParityError, ParityReport
from . import regimes
from .subject import SubjectRun, run_ours

__all__ = ["REFERENCES", "compare", "compare_run", "resolve_subject", "teacher_forced"]


@torch.inference_mode()
def teacher_forced(ours: GPT, hf, sequences: torch.Tensor) -> tuple[list[LayerDiff], torch.Tensor, torch.Tensor]:
    """Both models teacher-forced over the same streams -> per-layer diffs, ours' and HF's logits (B, T, V)."""
    ref_hidden, ref_logits = hf_teacher_forced(hf, sequences)
    out = ours(sequences, return_hidden=True)
    rtol = relative_tolerance(mlp_width(hf.config))
    layers = layer_diffs(ours.config.n_layer, list(out.hidden) + [out.logits], ref_hidden + [ref_logits], rtol)
    return layers, out.logits.float(), ref_logits


def parse_precision(name: str | None) -> str:
    try:
        return _parse(name)
    except PrecisionError as e:
        raise ParityError(str(e)) from None


def compare_run(run: SubjectRun, hf, *, settings: SamplingSettings, reference: str = "generate",
                tokenizer: Tokenizer | None = None, name: str = "custom", fault: str | None = None,
                timings: dict | None = None) -> ParityReport:
    """Judge what a model under test generated (`run`) against HF: HF's model on the run's very token streams
    and, with reference "generate"/"pipeline", HF's own sampling. Never asks what made the run."""
    check_reference(reference)
    gen = run.generation
    side = HFSide(hf, tokenizer, gen.prompt, gen.prompt_ids, settings, reference)
    return _judged(run, side, settings, reference, tokenizer, name, fault, dict(timings or {}))


def _judged(run: SubjectRun, side: HFSide, s: SamplingSettings, reference: str, tokenizer, name: str, fault,
            timings: dict, localiser=None, on_verdict=None) -> ParityReport:
    hf_run = side.on_streams(run.fed_streams, len(run.generation.records), run.precision)
    report = judge(run, hf_run, s, reference, tokenizer=tokenizer, model=name, fault=fault, timings=timings,
                   localiser=localiser, on_verdict=on_verdict)
    if "start" in report.timings:
        report.timings["total_s"] = time.perf_counter() - report.timings.pop("start")
    return report


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
    precision: str = "auto",
    localise: bool = True,
    on_verdict=None,
    **settings,
) -> ParityReport:
    """Generate with the model under test and compare with HF, step by step and layer by layer; with reference
    "generate" or "pipeline" also run HF's own sampling and explain every difference.

    `model_or_name`: a Hub id or checkpoint directory (our GPT for it); our GPT, any torch.nn.Module or a
    function mapping ids (B, T) to logits, with `hf_model=` (a GPT2LMHeadModel, Hub id or directory); or a
    (model, hf) pair. `fault`: a bug-lab mistake injected into our GPT. Foreign models run without a KV cache;
    `sampling_step` (their own step: logits (B, V) -> ids (B,), on the global RNG) and `layers` (dict(blocks=...,
    final_norm=...) where their layout is not discovered) apply to them. `on_step` sees each sampling step.
    `precision`: "auto" (a model object: detected; a name, checkpoint or fault: float32), or one of "float32",
    "bfloat16", "float16", "bfloat16-autocast", "float16-autocast", "tf32" (applied by the lab: a cast copy, or
    autocast/TF32 around each call). Below float32 the model is judged against HF's own error at that precision,
    and re-run in float32 on the same streams to see what the precision could hide.
    `localise`: when the models differ, read inside the blocks, run each block on HF's input and try the catalogue
    of known mistakes (report.first_diverging_sublayer, diverging_blocks, diagnosis); layers=dict(attn=..., mlp=...)
    names a block's sub-layers where they are not found. `on_verdict(report)` sees the report before that.
    """
    from .foreign import run_foreign

    check_reference(reference)
    if fault not in (None, "", "none"):
        try:
            get_fault(fault)  # a listed fault or "<mistake>@<block>"
        except FaultError as e:
            raise ParityError(str(e)) from None
    t0 = time.perf_counter()
    s = SamplingSettings.from_kwargs(**settings)
    asked = parse_precision(precision)
    subject, hf, name, ours = resolve_subject(model_or_name, hf_model)
    if tokenizer is None:
        tokenizer = load_tokenizer(name if isinstance(model_or_name, (str, os.PathLike)) else None)
    timings = {"start": t0}
    t = time.perf_counter()
    faulty = fault not in (None, "", "none")
    if faulty and not (ours and sampling_step is None and layers is None):
        raise ParityError("bug-lab faults are injected into our GPT only, not into your model")
    prompt_text, prompt_ids, _ = prepare(subject if ours else hf, prompt, tokenizer, s)  # every check before work
    subject = apply_fault(subject, fault) if faulty else subject
    lab_loaded = isinstance(model_or_name, (str, os.PathLike)) or faulty
    p, ran_in = regimes.choose(subject, asked, prompt_ids, lab_loaded=lab_loaded)
    if faulty and fault.partition("@")[0] == "bf16_autocast" and p.weights_cast and p.dtype == torch.float16:
        raise ParityError("the bug lab's bf16_autocast fault runs our GPT under bfloat16 autocast, which cannot "
                          "take float16 weights (precision fp16): choose another precision or another fault")
    model, in_regime = regimes.prepared(subject, p)
    if ours and sampling_step is None and layers is None:
        # perf: HF's own sampling depends on nothing of ours: it starts first and, when our bits do not depend on
        # our thread count, runs beside our generation (HF at the full thread count, ours on a share until HF is done)
        side = HFSide(hf, tokenizer, prompt_text, prompt_ids, s, reference,
                      beside=not p.low and overlap_reference(thread_invariant(model)))
        with side.sharing_cores() as cores, in_regime:
            timings["overlapped"] = float(cores.shared)  # 1: HF's reference ran beside our generation

            def step(event):
                cores.poll()  # HF done: every core is ours again
                if on_step is not None:
                    on_step(event)

            run = run_ours(model, prompt, s, tokenizer=tokenizer, on_step=step, label=label or "Ours")
    else:
        with in_regime:
            run = run_foreign(model, hf, prompt, s, tokenizer=tokenizer, sampling_step=sampling_step, layers=layers,
                              on_step=on_step, label=label or "Yours")
        side = HFSide(hf, tokenizer, prompt_text, prompt_ids, s, reference)
    run.precision, run.ran_in = p, ran_in
    timings["ours_generate_s"] = time.perf_counter() - t
    if p.low:  # what the precision could hide: the same model in float32 on the same streams
        t = time.perf_counter()
        run.float32 = regimes.float32_recheck(subject, hf, run, layers)
        timings["float32_recheck_s"] = time.perf_counter() - t
    localiser = None
    if localise:
        mine = ours and sampling_step is None and layers is None
        localiser = _localiser(model, hf, run, mine, layers, p)
        if localiser is not None and p.low and _float32_weights(subject):
            localiser.twin = _localiser(subject, hf, run, mine, layers, FLOAT32)
    return _judged(run, side, s, reference, tokenizer, name, fault, timings, localiser, on_verdict)


def _float32_weights(model) -> bool:
    return isinstance(model, torch.nn.Module) and all(t.dtype == torch.float32 for t in model.parameters()
                                                      if t.is_floating_point())


def _localiser(model, hf, run: SubjectRun, ours: bool, layers, p):
    """What lets the judge read the model under test inside its blocks and on HF's input, once it knows that
    something differs (built here, nothing run); None for a plain function."""
    from .foreign import localiser_for
    from .localise import Localiser

    dev = regimes.device_type(model)
    if ours:
        blocks = list(model.transformer.h)
        fed = len(run.generation.prompt_ids) + len(run.generation.records) - 1
        return Localiser(lambda ids: model(ids), blocks, [b.attn for b in blocks], hf, run.fed_streams, fed, p, dev)
    if not isinstance(model, torch.nn.Module):
        return None
    return localiser_for(model, hf, run, layers, p, dev)
