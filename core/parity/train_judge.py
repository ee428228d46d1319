"""The training judge: the one place where a training comparison becomes a verdict, and its report's plain data.

judge_training(yours, hf, hf_low, steps, ...) takes what each side did on the batch (training.SideRun) and after
each optimizer step (training.StepRun), computes every difference with diffs.py's tolerances (the forward in train
mode, the loss, the gradient along the residual stream, every parameter's gradient, the steps), says what the
likely mistake is, and builds a TrainingReport (plain, JSON-ready). Knows tensors and records only: never which
model, file or CLI produced them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from ..precision import Precision
from .diffs import (ATOL, PRECISION_FACTOR, UPDATE_ULPS, grad_layer_diffs, grad_rtol,
                    layer_diffs, logits_layer_diff, loss_tolerance, own_error, relative_tolerance, tensor_gap,
                    tensor_tolerance, update_tolerance)
from .report import LayerDiff


@dataclass
class ParamDiff:
    """One of HF's parameters: your gradient for it (in HF's layout) against HF's."""

    name: str  # HF's name, e.g. "transformer.h.0.attn.c_attn.weight"
    layer: str  # "lm_head", "ln_f", "block 3", "embeddings"
    shape: list[int]
    yours: list[str]  # your parameters holding it ("decoder.blocks.0.attention.query.weight (q, transposed)")
    max_abs_diff: float
    scale: float  # max |HF's gradient|
    tolerance: float
    ratio: float
    exceeds: bool
    note: str | None = None  # "no gradient reached it", "not in your model"
    hf_own_error: float | None = None


@dataclass
class StepCheck:
    """After optimizer step `step`: the loss on the batch, the parameters against HF's (reported), and your
    optimizer's update against build-nanogpt's AdamW on your own gradients (judged, where your optimizer ran)."""

    step: int
    loss: float
    hf_loss: float
    loss_diff: float
    loss_tolerance: float
    loss_exceeds: bool
    max_param_diff: float  # max over parameters of max |yours - HF's| after this step
    worst_param: str | None
    update_checked: bool
    update_exceeds: bool
    first_diverging_parameter: str | None  # the first (from the loss towards the embeddings) update over tolerance
    exceeds: bool
    params: list[dict] = field(default_factory=list)  # per HF name: max_abs_diff vs HF, update diff and tolerance


@dataclass
class TrainingReport:
    model: str
    subject: str
    fault: str | None
    agree: bool
    verdict: str
    loss: float
    hf_loss: float
    loss_diff: float
    loss_tolerance: float
    first_diverging_layer: str | None
    first_diverging_parameter: str | None
    mistakes: list[str]  # each finding, with the likely mistake, in order
    structure: list[str]  # tying and layout, said directly
    forward_layers: list[LayerDiff]  # the train-mode forward, per layer (embeddings .. lm_head)
    grad_layers: list[LayerDiff]  # d loss / d residual stream, from the loss towards the embeddings
    params: list[ParamDiff]  # every HF parameter, from the loss towards the embeddings
    steps: list[StepCheck]
    batch: dict
    optimizer: dict
    precision: dict
    rtol: float
    grad_rtol: float
    atol: float
    notes: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return _plain(asdict(self))

    def __repr__(self) -> str:
        """One screen: the verdict, the losses and where the gradients part (the whole report is to_dict())."""
        lines = [f"<TrainingReport {'AGREE' if self.agree else 'DIFFER'}: {self.verdict}",
                 f"  model {self.model!r}, under test: {self.subject}, precision "
                 f"{self.precision.get('label', 'float32')}, fault {self.fault or 'none'}, {len(self.steps)} step(s)",
                 f"  loss {self.loss:.6g} vs HF {self.hf_loss:.6g} (|Δ| {self.loss_diff:.3g}, tolerance "
                 f"{self.loss_tolerance:.3g}); first diverging layer {self.first_diverging_layer or 'none'}, "
                 f"parameter {self.first_diverging_parameter or 'none'}"]
        lines += [f"  {m if len(m) <= 200 else m[:199] + '…'}" for m in list(dict.fromkeys(self.structure + self.mistakes))[:6]]
        return "\n".join(lines) + ">"

    def _repr_html_(self) -> str:
        """Jupyter's view: the Training step tab's verdict panel and figures."""
        from demo.report import training_notebook_html

        return training_notebook_html(self.to_dict())

    @property
    def diverging_params(self) -> list[ParamDiff]:
        return [p for p in self.params if p.exceeds]


def _plain(obj):
    """JSON-ready: non-finite floats as strings ("nan", "inf")."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def grad_layer_names(n_layer: int) -> list[str]:
    """The residual stream's gradient, from the loss towards the embeddings: the logits, ln_f's input, each block's
    input (block n-1 first)."""
    return ["lm_head", "ln_f"] + [f"block {i}" for i in reversed(range(n_layer))]


def _own(low: list[torch.Tensor] | None, high: list[torch.Tensor] | None):
    if low is None or high is None:
        return None
    return [own_error(a, b) for a, b in zip(low, high)]


def _param_rows(yours, hf, hf_low, matching, n_layer: int, rtol: float) -> list[ParamDiff]:
    holders: dict[str, list[str]] = {}
    for name, piece in matching.pieces.items():
        how = {"same": "", "transposed": " (transposed)", "rows": " (first rows: padded vocabulary)"}.get(
            piece.how, f" ({piece.how}, transposed)" if piece.hf_name.endswith("weight") else f" ({piece.how})")
        holders.setdefault(piece.hf_name, []).append(name + how)
    rows = []
    for name in matching.hf_order:
        ref = hf.grads[name]
        layer = matching.hf_layer[name]
        if name not in yours.grads:
            rows.append(ParamDiff(name, layer, list(ref.shape), [], math.nan, float(ref.abs().max()), ATOL,
                                  math.inf, True, "not in your model"))
            continue
        diff, scale = tensor_gap(yours.grads[name], ref)
        noise = tensor_gap(hf_low.grads[name], ref)[0] if hf_low is not None else None
        tol = tensor_tolerance(scale, rtol, noise)
        ratio = diff / tol if math.isfinite(diff) else math.inf
        note = "no gradient reached it" if name in yours.no_grad and name not in hf.no_grad else None
        rows.append(ParamDiff(name, layer, list(ref.shape), holders.get(name, []), diff, scale, tol, ratio,
                              bool(ratio > 1.0), note, noise))
    return rows


def _step_checks(steps, logit_scale: float, mlp_width: int, lr: float, hf_order: list[str]) -> list[StepCheck]:
    """Each step: the loss after it against HF's (judged), the parameters against HF's (reported: AdamW's first
    steps move an element whose gradient is at the noise level by up to 2 lr either way), your update against
    build-nanogpt's AdamW on your own gradients (judged, where your optimizer ran)."""
    out = []
    for s in steps:
        noise = abs(s.hf_low_loss - s.hf_loss) if s.hf_low_loss is not None else None
        tol = loss_tolerance(logit_scale, mlp_width, noise)
        d = abs(s.loss - s.hf_loss)
        loss_exceeds = bool(not d <= tol)
        rows, first = [], None
        for name in hf_order:
            gap = s.params.get(name)
            row = {"name": name, "max_abs_diff": gap[0] if gap else math.nan}
            if s.updates is not None and name in s.updates:
                u, scale = s.updates[name]
                t = update_tolerance(scale, lr)
                row.update(update_diff=u, update_scale=scale, update_tolerance=t, update_exceeds=bool(not u <= t))
                if row["update_exceeds"] and first is None:
                    first = name
            rows.append(row)
        finite = [(r["max_abs_diff"], r["name"]) for r in rows if math.isfinite(r["max_abs_diff"])]
        worst = max(finite) if finite else (math.nan, None)
        update_exceeds = first is not None
        out.append(StepCheck(step=s.step, loss=s.loss, hf_loss=s.hf_loss, loss_diff=d, loss_tolerance=tol,
                             loss_exceeds=loss_exceeds, max_param_diff=worst[0], worst_param=worst[1],
                             update_checked=s.updates is not None, update_exceeds=update_exceeds,
                             first_diverging_parameter=first, exceeds=loss_exceeds or update_exceeds, params=rows))
    return out


def _structure(matching, cfg) -> tuple[list[str], bool]:
    """Tying and layout, said directly; whether any of it is a divergence."""
    out, bad = [], False
    wte = [n for n, p in matching.pieces.items() if p.hf_name == "transformer.wte.weight"]
    tied_hf = bool(getattr(cfg, "tie_word_embeddings", True))
    if tied_hf and len(wte) > 1:
        out.append(f"your lm_head and wte are separate parameters ({', '.join(wte)}); GPT-2 ties them: one matrix, "
                   "whose gradient is the sum of its two uses and which one update moves")
        bad = True
    elif tied_hf and len(wte) == 1:
        names = matching.aliases.get(wte[0], [wte[0]])
        if len(names) > 1:
            out.append(f"your lm_head and wte are one parameter ({' = '.join(names)}), tied as in GPT-2")
    if matching.missing:
        out.append("HF's " + ", ".join(matching.missing) + " has no counterpart among your parameters")
        bad = True
    if matching.unmatched:
        out.append("your " + ", ".join(matching.unmatched) + " holds none of HF's values (not compared)")
    pads = [n for n, p in matching.pieces.items() if p.how == "rows"]
    if pads:
        out.append(f"your {pads[0]} is a padded vocabulary: its first {cfg.vocab_size} rows are GPT-2's")
    return out, bad


def _loss_mistake(yours, x: torch.Tensor, y: torch.Tensor) -> str:
    """Why the loss differs while the logits agree: the targets, or else the loss's own arithmetic."""
    logits = yours.logits
    V = logits.size(-1)
    against_x = float(F.cross_entropy(logits.reshape(-1, V), x.reshape(-1).to(logits.device)))
    if abs(against_x - yours.loss) <= 1e-4 * max(1.0, abs(against_x)):
        return ("your loss is the cross-entropy against the inputs themselves (unshifted targets): the target at "
                "position t must be token t+1, y = x shifted by one (build-nanogpt's DataLoaderLite; HF shifts "
                "labels inside the model)")
    return (f"your loss ({yours.loss_source}) differs from HF's cross-entropy on the same logits: check the targets "
            "(y = x shifted by one), the reduction (mean over B x T), ignored indices and label smoothing")


def dropout_places(cfg) -> str:
    """Where and how GPT-2 (HF's eager attention) draws its dropout, in order, for the report's words."""
    return (f"p={cfg.embd_pdrop:g} on the embeddings, then in each block p={cfg.attn_pdrop:g} on the attention "
            f"weights, p={cfg.resid_pdrop:g} after the attention's c_proj and p={cfg.resid_pdrop:g} after the MLP's")


def judge_training(yours, hf, hf_low, steps, matching, cfg, *, precision: Precision, batch, model_name: str,
                   fault: str | None, label: str, optimizer: str, lr: float,
                   timings: dict | None = None, dropout: bool = False) -> TrainingReport:
    """Every difference of a training step and its optimizer steps, the likely mistakes, one verdict."""
    n_layer, width = int(cfg.n_layer), int(cfg.n_embd)
    mlp = int(cfg.n_inner or 4 * width)
    rtol, g_rtol = relative_tolerance(mlp), grad_rtol(mlp)
    low = hf_low is not None
    notes = list(yours.notes) + list(matching.notes)
    if dropout:
        notes.append(f"dropout on, as each model has it, both drawing from the batch's seed; GPT-2's (HF): "
                     f"{dropout_places(cfg)}")
    x, y = batch

    with torch.inference_mode():
        # the forward in train mode, per layer (or the logits alone)
        fnoise = None
        if yours.hidden is not None and hf.hidden is not None:
            if low:
                fnoise = _own(hf_low.hidden + [hf_low.logits], hf.hidden + [hf.logits])
            fwd = layer_diffs(n_layer, yours.hidden + [yours.logits], hf.hidden + [hf.logits], rtol, noise=fnoise)
        else:
            fwd = [logits_layer_diff(n_layer, yours.logits, hf.logits, rtol,
                                     noise=own_error(hf_low.logits, hf.logits) if low else None)]
            notes.append(f"per-layer comparison not possible: {yours.why_no_layers or hf.why_no_layers}")
        # the loss
        logit_scale = float(hf.logits.abs().max())
        loss_noise = abs(hf_low.loss - hf.loss) if low else None
        l_tol = loss_tolerance(logit_scale, mlp, loss_noise)
        l_diff = abs(yours.loss - hf.loss)
        loss_exceeds = bool(not l_diff <= l_tol)
        # the gradient along the residual stream, from the loss towards the embeddings
        gl = []
        if yours.stream_grads is not None and hf.stream_grads is not None:
            gnoise = _own(hf_low.stream_grads, hf.stream_grads) if low and hf_low.stream_grads else None
            gl = grad_layer_diffs(grad_layer_names(n_layer), yours.stream_grads, hf.stream_grads, g_rtol, gnoise)
        elif yours.why_no_layers:
            notes.append(f"the gradient along the residual stream was not compared: {yours.why_no_layers}")
        params = _param_rows(yours, hf, hf_low, matching, n_layer, g_rtol)
    dims = {p.name: len(p.shape) for p in params}
    step_checks = _step_checks(steps, logit_scale, mlp, lr, matching.hf_order)
    structure, structure_bad = _structure(matching, cfg)

    # the findings, most telling first
    mistakes: list[str] = []
    fwd_first = next((l.name for l in fwd if l.exceeds), None) if len(fwd) > 1 or fwd[0].exceeds else None
    grad_first = next((l.name for l in gl if l.exceeds), None)
    param_first = next((p for p in params if p.exceeds), None)
    if structure_bad:
        mistakes += [s for s in structure if "separate parameters" in s or "no counterpart" in s]
    eval_agrees = None
    if fwd_first is not None and yours.eval_logits is not None:
        hf_eval = hf.eval_logits if hf.eval_logits is not None else hf.logits  # the train-mode forward's, dropout off
        eval_agrees = not logits_layer_diff(n_layer, yours.eval_logits, hf_eval, rtol,
                                            noise=own_error(hf_low.logits, hf.logits) if low else None).exceeds
    if fwd_first is not None:
        if dropout:
            why = ("in eval mode it agrees, so your dropout differs from GPT-2's in its places, rates or the order of "
                   f"its random draws (GPT-2's: {dropout_places(cfg)}; SDPA's dropout_p draws its own masks); with "
                   "dropout off (the default) the rest is checked") if eval_agrees else \
                "the forward itself differs (run the forward check: python -m core.parity)"
        else:
            why = ("in eval mode it agrees, so something that acts only in training mode differs: most likely "
                   "dropout the lab could not switch off (it sets every nn.Dropout to p=0; F.dropout or SDPA's "
                   "dropout_p with a fixed rate stay on): set your dropout to 0, as HF's is here") if eval_agrees \
                else "the forward itself differs (run the forward check: python -m core.parity)"
        mistakes.append(f"in train mode your forward differs from HF's from {fwd_first} on; {why}")
    elif loss_exceeds:
        mistakes.append(_loss_mistake(yours, x, y))
    elif grad_first is not None:
        in_layer = [p.name for p in params if p.layer == grad_first and p.note]
        mistakes.append(f"the gradient of the loss first differs at the input of {grad_first} (from the loss towards "
                        f"the embeddings) while the forward agrees: the backward pass is cut or changed inside "
                        f"{grad_first}, e.g. a .detach(), torch.no_grad() or an in-place operation there"
                        + (f"; no gradient reached {', '.join(in_layer)}" if in_layer else ""))
    if param_first is not None and fwd_first is None and not loss_exceeds and grad_first is None \
            and not structure_bad:
        if param_first.note:
            mistakes.append(f"{param_first.name}: {param_first.note} (is it frozen, or used through .detach() or "
                            ".data?)")
        else:
            mistakes.append(f"{param_first.name}'s gradient differs (max |Δ| {param_first.max_abs_diff:.3g}, "
                            f"tolerance {param_first.tolerance:.3g}) while the loss and the stream's gradient agree: "
                            "that parameter is used differently (shared with another use, scaled, or copied)")
    first_step = next((s for s in step_checks if s.exceeds), None)
    if first_step is not None and not mistakes:
        if first_step.update_exceeds:
            over = [r for r in first_step.params if r.get("update_exceeds")]
            if all(dims.get(r["name"], 2) < 2 for r in over):
                mistakes.append(f"step {first_step.step}: your optimizer's update differs from build-nanogpt's "
                                f"AdamW on 1-D parameters only (first: {first_step.first_diverging_parameter}) while "
                                "the gradients agree: weight decay applied to biases and LayerNorm gains; "
                                "build-nanogpt decays only parameters of 2 or more dimensions")
            else:
                mistakes.append(f"step {first_step.step}: your optimizer's update differs from build-nanogpt's "
                                f"AdamW (lr {lr:g}, betas {(0.9, 0.95)}, eps 1e-8, weight decay 0.1 on 2-D "
                                f"parameters) on the same gradients, first at {first_step.first_diverging_parameter}")
        else:
            mistakes.append(f"step {first_step.step}: the loss after the step differs from HF's "
                            f"({first_step.loss:.6g} vs {first_step.hf_loss:.6g}) although every update was checked")

    # the forward in train mode first (a backward through a different forward says nothing more), then the
    # gradient from the loss towards the embeddings; a loss that differs alone is the lm_head's (d loss / d logits)
    first_layer = fwd_first or grad_first or ("lm_head" if loss_exceeds else None)
    first_param = param_first.name if param_first else (first_step.first_diverging_parameter if first_step else None)
    agree = not mistakes and not loss_exceeds and first_layer is None and param_first is None and first_step is None
    p_label = precision.label
    if agree:
        what = "loss and every gradient" + (f", and {len(steps)} optimizer step{'s' * (len(steps) > 1)}" if steps
                                            else "")
        verdict = (f"{what} identical to HuggingFace within float32 tolerance" if not low else
                   f"{what} consistent with {p_label} precision (HF's own error at {p_label})")
    else:
        verdict = "differs from HuggingFace: " + (mistakes[0] if mistakes else "see the tables")
    B, T = x.shape
    return TrainingReport(
        model=model_name, subject=label, fault=fault if fault not in (None, "", "none") else None, agree=agree,
        verdict=verdict, loss=yours.loss, hf_loss=hf.loss, loss_diff=l_diff, loss_tolerance=l_tol,
        first_diverging_layer=first_layer, first_diverging_parameter=first_param, mistakes=mistakes,
        structure=structure, forward_layers=fwd, grad_layers=gl, params=params, steps=step_checks,
        batch={"batch_size": B, "seq_len": T, "x0": x[0, :16].tolist(), "y0": y[0, :16].tolist(),
               "loss_source": yours.loss_source},
        optimizer={"name": optimizer, "lr": lr, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1,
                   "update_ulps": UPDATE_ULPS},
        precision={**precision.to_dict(), "factor": PRECISION_FACTOR if low else None,
                   "hf_own_loss_error": loss_noise},
        rtol=rtol, grad_rtol=g_rtol, atol=ATOL, notes=notes, timings=dict(timings or {}),
    )

