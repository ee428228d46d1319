"""The model under test in a precision: which regime it is judged in (asked, or detected), how it is run there, and
its float32 re-check on the same token streams.

Knows core.precision's regimes and the foreign runner's teacher-forced replay; knows nothing about the judge's rule
(diffs.py) or about HF's side beyond running HF with rounded weights for a re-check.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import torch
import torch.nn as nn

from ..kernels import autocast_copy
from ..model import GPT
from ..precision import FLOAT32, Precision, cast_copy, detect, linear_output_dtypes, parse, regime
from .foreign import replay
from .reference import hf_teacher_forced
from .report import ParityError
from .subject import Recheck, SubjectRun

_LOW = (torch.bfloat16, torch.float16)


def device_type(model) -> str:
    if isinstance(model, nn.Module):
        for t in list(model.parameters()) + list(model.buffers()):
            return t.device.type
    return "cpu"


def choose(model, asked: str | None, prompt_ids: list[int], *, lab_loaded: bool) -> tuple[Precision, Precision | None]:
    """(the regime the run is judged in, what it was seen to run in where float32 was asked and it ran below).
    `asked`: a name from core.precision.CHOICES (None: "auto"). "auto" detects what a model given as an object does;
    for a model the lab loaded itself (a name or checkpoint, or one carrying a bug-lab fault) "auto" is float32,
    and detection only checks that it really ran so."""
    name = parse(asked)
    dev = device_type(model)
    probe_ids = torch.tensor([prompt_ids[-8:]], dtype=torch.long, device=dev)

    def probe():
        with torch.no_grad():
            model(probe_ids)

    if name == "auto" and not lab_loaded:
        return _detect(model, probe, dev), None
    p = FLOAT32 if name == "auto" else Precision(name)
    if p.low:
        return p, None
    seen = _detect(model, probe, dev)
    return p, (seen if seen.low else None)


def _detect(model, probe, dev: str) -> Precision:
    try:
        return detect(model, probe, dev)
    except Exception as exc:  # the user's forward failed on the probe: the run itself will say why
        if isinstance(exc, ParityError):
            raise
        return Precision("float32", f"assumed: the precision probe failed ({type(exc).__name__})")


def prepared(model, p: Precision):
    """The model to run in regime `p` (a cast copy for bfloat16/float16 weights) and the context to run it in."""
    dev = device_type(model)
    if p.weights_cast and not _all_low(model, p.dtype):
        if not isinstance(model, nn.Module):
            raise ParityError(f"precision {p.name!r} casts the model's weights, but your model is a plain function: "
                              "cast it yourself (precision='auto' then detects it), or use an autocast precision")
        model = cast_copy(model, p.dtype)
    elif p.autocast and isinstance(model, GPT):
        model = autocast_copy(model, p.dtype)  # our GPT: the same bits as autocast's own casts, without them per call
    return model, (regime(p, dev) if p.low else contextlib.nullcontext())


def _all_low(model, dtype: torch.dtype) -> bool:
    if not isinstance(model, nn.Module):
        return False
    ts = [t for t in model.parameters() if t.is_floating_point()]
    return bool(ts) and all(t.dtype == dtype for t in ts)


def float32_recheck(model, hf, run: SubjectRun, layers: Mapping[str, str] | None = None) -> Recheck:
    """The model under test in float32 (a float32 copy, autocast and TF32 off) on the run's token streams. A model
    whose weights came in below float32 keeps its rounded weights, and is judged against HF with the same rounding.
    Declared impossible where the model's forward forces its own dtype (its linear layers still return bfloat16 or
    float16 from float32 weights with autocast off) or where a plain function cannot be cast."""
    p = run.precision
    dev = device_type(model)
    if isinstance(model, nn.Module):
        dtypes = {t.dtype for t in model.parameters() if t.is_floating_point()}
        rounded = next((d for d in _LOW if d in dtypes), None)
        m32 = cast_copy(model, torch.float32) if rounded is not None else model
    elif p.weights_cast:
        return Recheck(why_not="your model is a plain function, so the lab cannot make a float32 copy of it")
    else:
        m32, rounded = model, None
    gen = run.generation
    P, S = len(gen.prompt_ids), len(gen.records)
    out = {}

    def go():
        out["logits"], out["hidden"] = replay(m32, hf, run.fed_streams, P, S, layers)

    with regime(FLOAT32, dev):
        seen = linear_output_dtypes(m32, go)
    forced = sorted({str(o).replace("torch.", "") for w, o in seen if w == torch.float32 and o in _LOW})
    if forced:
        return Recheck(why_not=f"your forward forces its own dtype (its linear layers return {', '.join(forced)} "
                               "from float32 weights with autocast off), so it cannot be re-run in float32")
    check = Recheck(step_logits=out["logits"], hidden=out["hidden"])
    if rounded is not None:  # HF with the same rounded weights, in float32, is the re-check's reference
        name = str(rounded).replace("torch.", "")
        hf_r = cast_copy(hf, rounded).float()
        fed = torch.tensor(run.fed_streams, device=next(hf.parameters()).device)[:, : P + S - 1]
        with regime(FLOAT32, dev):
            check.ref_hidden, check.ref_logits = hf_teacher_forced(hf_r, fed, keep=S)
        check.note = (f"your weights are {name}: the float32 re-check runs them in float32 against HF's weights "
                      f"rounded to {name}")
    return check
