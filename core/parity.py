"""Parity engine: our GPT-2 against HuggingFace's, step by step and layer by layer, during generation.

Knows both models, our sampler and HF's generate()/pipeline; knows nothing about the UI. Our sampler
generates; HF's model is run teacher-forced on the very same token streams (one forward each, so steps stay
aligned after the two would have sampled differently); HF's own generate() (or the text-generation
pipeline) is run as users call it; every divergent row gets one stated cause with its evidence.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import threading
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .errors import ParityLabError
from .faults import FAULTS, apply_fault
from .model import GPT
from .sampling import TOP_N, Capture, Generation, SamplingSettings, generate, process_logits_hf, prepare
from .tokenizer import Tokenizer, load_tokenizer

REFERENCES = ("generate", "pipeline", "logits")

# Tolerances separating float noise from the smallest real fault (erf GELU). Float32 rounding in a dot product
# of length K grows like eps * sqrt(K), and so does the noise between two correct implementations; a layer (or
# the logits) "differs" when
#     max|Δ| > NOISE_FACTOR * eps32 * sqrt(mlp_width) * max|HF's value| + ATOL.
# Measured with bench/calibrate_tolerances.py on random GPT-2s (2 to 12 layers, 32- to 768-dim, plain and
# sharpened init, 5 x 30 and 1 x 512 tokens, several seeds): the exact port's worst max|Δ|/max|HF| in these units
# was 0.26 (i.e. 0.26 * eps * sqrt(width); 0.11 at the 124M shape); erf GELU's smallest effect at block 0 was 1.9
# (2-layer, 32-dim: its MLP barely moves the residual) and 26 at the 124M shape. NOISE_FACTOR = 1 sits between;
# all 9 faults were flagged at their expected layer in all 360 runs.
NOISE_FACTOR = 1.0
EPS32 = float(torch.finfo(torch.float32).eps)
ATOL = 1e-12  # only so that an all-zero layer compares cleanly

# HF's reference draws from the global RNG (torch.manual_seed + generate, set_seed + pipeline): one at a time.
HF_RNG_LOCK = threading.RLock()


class ParityError(ParityLabError, ValueError):
    """Bad input to compare() (unknown reference, missing pieces for the pipeline reference...)."""


@dataclass
class LayerDiff:
    index: int
    name: str  # "embeddings", "block 0", ..., "ln_f", "lm_head"
    max_abs_diff: float
    scale: float  # max |HF value| at this layer
    tolerance: float
    exceeds: bool


@dataclass
class StepDiff:
    step: int
    row: int
    max_abs_dlogit: float
    tolerance: float
    exceeds: bool
    kl: float | None  # KL(HF || ours) of the sampling distributions; None if ours gives 0 where HF doesn't
    support_mismatch: bool
    top1_agree: bool
    top50_overlap: int
    token_id: int  # the token our sampler chose here
    ours_prob: float
    ours_rank: int
    hf_prob: float
    hf_rank: int
    hf_top_probs: list[float]  # HF's model probabilities of our record's top-50 tokens (same order)
    hf_top_sample_probs: list[float]


@dataclass
class RowComparison:
    row: int
    ours_new_ids: list[int]
    ref_new_ids: list[int]
    ours_text: str
    ref_text: str
    identical: bool
    first_divergent_step: int | None
    cause: str | None  # None | "model" | "settings" | "sampling_order" | "near_tie" | "unexplained"
    explanation: str
    evidence: dict = field(default_factory=dict)


@dataclass
class SettingRow:
    name: str
    ours: object
    hf: object
    source: str  # "you" | "model generation_config" | "pipeline default" | "transformers default" | ...
    differs: bool


@dataclass
class ParityReport:
    model: str
    prompt: str | None
    prompt_ids: list[int]
    settings: dict
    reference: str
    fault: str | None
    agree: bool  # the implementations agree: models within tolerance and every divergence explained
    verdict: str  # one line in plain words
    verdict_kind: str  # identical | logits_agree | sampling_order | settings | near_tie | model | unexplained
    rtol: float  # max|Δ| tolerated per unit of max|HF value| (NOISE_FACTOR * eps32 * sqrt(mlp_width))
    atol: float
    max_abs_dlogit: float
    first_diverging_layer: str | None
    layers: list[LayerDiff]
    steps: list[list[StepDiff | None]]  # [step][row]; None where the row had finished
    rows: list[RowComparison]
    settings_table: list[SettingRow]
    generation: Generation
    ref_sequences: list[list[int]] | None
    timings: dict

    def to_dict(self) -> dict:
        return _plain(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ParityReport":
        from .sampling import StepRecord

        d = dict(d)
        gen = dict(d["generation"])
        gen["records"] = [[StepRecord(**r) if r is not None else None for r in step] for step in gen["records"]]
        d["generation"] = Generation(**gen)
        d["layers"] = [LayerDiff(**x) for x in d["layers"]]
        d["steps"] = [[StepDiff(**x) if x is not None else None for x in step] for step in d["steps"]]
        d["rows"] = [RowComparison(**x) for x in d["rows"]]
        d["settings_table"] = [SettingRow(**x) for x in d["settings_table"]]
        return cls(**d)


_SCALARS = (int, float, str, bool, type(None))


def _plain(obj):
    """dataclasses.asdict without its deep copies (the report is not mutated afterwards): ~5x faster."""
    if hasattr(obj, "__dataclass_fields__"):
        return {name: _plain(getattr(obj, name)) for name in obj.__dataclass_fields__}
    if isinstance(obj, (list, tuple)):  # lists of plain numbers/strings are shared, not copied
        return [_plain(x) for x in obj] if any(not isinstance(x, _SCALARS) for x in obj) else obj
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


@contextlib.contextmanager
def global_rng_section():
    """Serialise use of the global RNGs and leave them as they were (HF's reference seeds them)."""
    with HF_RNG_LOCK:
        torch_state = torch.get_rng_state()
        py_state = random.getstate()
        try:
            import numpy as np

            np_state = np.random.get_state()
        except ImportError:  # pragma: no cover - numpy comes with transformers
            np, np_state = None, None
        try:
            yield
        finally:
            torch.set_rng_state(torch_state)
            random.setstate(py_state)
            if np is not None:
                np.random.set_state(np_state)


# ---------------------------------------------------------------------------------------------------------
# Distributions both sides sample from, under *our* settings (so the models are compared like for like)


def sampling_log_probs(logits: torch.Tensor, s: SamplingSettings) -> torch.Tensor:
    """log of the distribution the chosen method samples from; -inf where a filter removed the token."""
    method = s.effective_method
    if method == "hf":
        return F.log_softmax(process_logits_hf(logits, s.temperature, s.top_k, s.top_p), dim=-1)
    if method == "nanogpt":
        logp = F.log_softmax(logits / s.temperature if s.temperature != 1.0 else logits, dim=-1)
        if s.top_k:
            kth = torch.topk(logp, min(s.top_k, logp.size(-1)))[0][..., -1, None]
            logp = logp.masked_fill(logp < kth, -float("inf"))
            logp = logp - torch.logsumexp(logp, dim=-1, keepdim=True)
        return logp
    return F.log_softmax(logits, dim=-1)  # greedy: compare the model's own distributions


def _kl(logp_ref: torch.Tensor, logp_ours: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(ref || ours) per row over ref's support, and whether ours gives 0 where ref does not."""
    p = logp_ref.exp()
    mismatch = ((p > 0) & torch.isinf(logp_ours)).any(dim=-1)
    terms = torch.where(p > 0, p * (logp_ref - logp_ours.clamp_min(-1e30)), torch.zeros_like(p))
    return terms.sum(dim=-1).clamp_min(0.0), mismatch


# ---------------------------------------------------------------------------------------------------------
# The pieces


def _layer_names(n_layer: int) -> list[str]:
    return ["embeddings"] + [f"block {i}" for i in range(n_layer)] + ["ln_f", "lm_head"]


def relative_tolerance(mlp_width: int) -> float:
    return NOISE_FACTOR * EPS32 * math.sqrt(mlp_width)


def _tolerance(scale: float, rtol: float) -> float:
    return rtol * scale + ATOL


@torch.inference_mode()
def hf_teacher_forced(hf, sequences: torch.Tensor, keep: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One forward of HF's model over the token streams -> its residual stream [embeddings, each block, ln_f]
    (the raw output of the last block comes from a hook: output_hidden_states puts ln_f's output last) and the
    logits of the last `keep` positions (0: all)."""
    captured = {}
    me = threading.get_ident()

    def keep_last_block_output(module, args, output):  # hooks are shared by every thread: keep only ours
        if threading.get_ident() == me:
            captured["last"] = output

    hook = hf.transformer.h[-1].register_forward_hook(keep_last_block_output)
    try:
        ref = hf(sequences, output_hidden_states=True, logits_to_keep=keep)
    finally:
        hook.remove()
    last = captured["last"]
    last = last[0] if isinstance(last, tuple) else last
    return list(ref.hidden_states[:-1]) + [last, ref.hidden_states[-1]], ref.logits.float()


def layer_diffs(n_layer: int, ours: list[torch.Tensor], ref: list[torch.Tensor], rtol: float) -> list[LayerDiff]:
    """max|Δ| per layer over the positions both sides have (ours may lack the last, never-fed position)."""
    layers = []
    for i, (name, a, b) in enumerate(zip(_layer_names(n_layer), ours, ref)):
        n = min(a.size(1), b.size(1))
        diff = (a[:, :n].float() - b[:, :n].float()).abs().max().item()
        scale = b[:, :n].float().abs().max().item()
        tol = _tolerance(scale, rtol)
        layers.append(LayerDiff(i, name, diff, scale, tol, bool(diff > tol or not math.isfinite(diff))))
    return layers


@torch.inference_mode()
def teacher_forced(ours: GPT, hf, sequences: torch.Tensor) -> tuple[list[LayerDiff], torch.Tensor, torch.Tensor]:
    """Both models teacher-forced over the same streams -> per-layer diffs, ours' and HF's logits (B, T, V)."""
    ref_hidden, ref_logits = hf_teacher_forced(hf, sequences)
    out = ours(sequences, return_hidden=True)
    rtol = relative_tolerance(ours.config.mlp_width)
    layers = layer_diffs(ours.config.n_layer, list(out.hidden) + [out.logits], ref_hidden + [ref_logits], rtol)
    return layers, out.logits.float(), ref_logits


def step_diffs(gen: Generation, s: SamplingSettings, a_all: torch.Tensor, b_all: torch.Tensor,
               rtol: float) -> list[list[StepDiff | None]]:
    """Per step and row, from ours' and HF's logits for the steps, both (B, steps, V)."""
    B, S, V = a_all.shape
    a, b = a_all.reshape(B * S, V), b_all.reshape(B * S, V)
    la, lb = sampling_log_probs(a, s), sampling_log_probs(b, s)
    kl, mismatch = _kl(lb, la)
    raw_b = F.log_softmax(b, dim=-1)
    tokens = torch.tensor([[rec.token_id if rec is not None else 0 for rec in step] for step in gen.records]).t()
    tokens = tokens.reshape(B * S, 1)  # (B*S, 1), row-major over (row, step) like a and b
    top_ids = torch.tensor([[rec.top_ids if rec is not None else list(range(TOP_N)) for rec in step]
                            for step in gen.records]).transpose(0, 1).reshape(B * S, -1)
    top_b = torch.topk(b, TOP_N, dim=-1).indices  # ours' top-50 is already in the records (top_ids)
    overlap = (top_ids[:, :, None] == top_b[:, None, :]).any(dim=-1).sum(dim=-1)
    cols = {
        "dmax": (a - b).abs().amax(dim=-1),
        "scale": b.abs().amax(dim=-1),
        "kl": kl,
        "mismatch": mismatch,
        "top1": a.argmax(dim=-1) == b.argmax(dim=-1),
        "overlap": overlap,
        "hf_prob": lb.gather(1, tokens)[:, 0].exp(),
        "hf_rank": (b > b.gather(1, tokens)).sum(dim=-1) + 1,
        "hf_top": raw_b.gather(1, top_ids).exp(),
        "hf_top_sample": lb.gather(1, top_ids).exp(),
    }
    c = {k: v.tolist() for k, v in cols.items()}
    out = []
    for step, records in enumerate(gen.records):
        row_out = []
        for r, rec in enumerate(records):
            i = r * S + step
            if rec is None:
                row_out.append(None)
                continue
            tol = _tolerance(c["scale"][i], rtol)
            dmax = c["dmax"][i]
            row_out.append(StepDiff(
                step=step, row=r, max_abs_dlogit=dmax, tolerance=tol,
                exceeds=bool(dmax > tol or not math.isfinite(dmax)),
                kl=None if c["mismatch"][i] else c["kl"][i], support_mismatch=bool(c["mismatch"][i]),
                top1_agree=bool(c["top1"][i]), top50_overlap=int(c["overlap"][i]), token_id=rec.token_id,
                ours_prob=rec.prob, ours_rank=rec.rank, hf_prob=c["hf_prob"][i], hf_rank=int(c["hf_rank"][i]),
                hf_top_probs=c["hf_top"][i], hf_top_sample_probs=c["hf_top_sample"][i],
            ))
        out.append(row_out)
    return out


# ---------------------------------------------------------------------------------------------------------
# HF's side: generate() as users call it, or the text-generation pipeline as the seed's author did


def _user_hf_kwargs(s: SamplingSettings, explicit_only: bool) -> dict:
    """The generate()/pipeline kwargs equivalent to our settings. For the pipeline (explicit_only), only what
    the user changed from our defaults is passed, as a person calling the pipeline would."""
    d = SamplingSettings()
    greedy = s.effective_method == "greedy"
    kw: dict = {}
    if s.max_new_tokens is not None:
        kw["max_new_tokens"] = s.max_new_tokens
    else:
        kw["max_length"] = s.max_length
    kw["num_return_sequences"] = s.num_return_sequences
    wanted = {"do_sample": not greedy}
    if not greedy:
        wanted.update(temperature=float(s.temperature), top_k=s.top_k, top_p=float(s.top_p))
    for key, value in wanted.items():
        default = {"do_sample": True, "temperature": d.temperature, "top_k": d.top_k, "top_p": d.top_p}[key]
        if not explicit_only or value != default:
            kw[key] = value
    return kw


def _hf_tokenizer(tokenizer: Tokenizer):
    from transformers import GPT2TokenizerFast

    files = tokenizer.files
    if files is None:
        raise ParityError("the pipeline reference needs GPT-2's vocab.json + merges.txt on disk (set GPT2_BPE_DIR)")
    return GPT2TokenizerFast(vocab=str(files[0]), merges=str(files[1]))


def run_hf_reference(hf, tokenizer: Tokenizer, prompt_text, prompt_ids, s: SamplingSettings, reference: str):
    """HF's own sampling, seeded the way users do it. Returns (sequences, kwargs HF received, user kwargs)."""
    captured: dict = {}
    original = type(hf).generate.__get__(hf)  # the class's method: never another request's spy

    def spy(*args, **kwargs):  # record exactly what reaches generate() (the pipeline adds its defaults)
        captured.update({k: v for k, v in kwargs.items() if k not in ("input_ids", "attention_mask")})
        return original(*args, **kwargs)

    with global_rng_section():
        hf.generate = spy  # only while we hold the lock: every HF sampling call goes through this section
        try:
            if reference == "generate":
                user = _user_hf_kwargs(s, explicit_only=False)
                x = torch.tensor([prompt_ids], device=hf.device)
                torch.manual_seed(s.seed)
                out = hf.generate(input_ids=x, attention_mask=torch.ones_like(x), **user).tolist()
            else:
                from transformers import pipeline, set_seed

                if prompt_text is None:
                    raise ParityError("the pipeline reference needs a text prompt")
                user = _user_hf_kwargs(s, explicit_only=True)
                pipe = pipeline("text-generation", model=hf, tokenizer=_hf_tokenizer(tokenizer),
                                device=hf.device)
                set_seed(s.seed)
                res = pipe(prompt_text, return_tensors=True, **user)
                out = [r["generated_token_ids"] for r in res]
                out = [list(map(int, row.tolist() if hasattr(row, "tolist") else row)) for row in out]
        finally:
            del hf.generate  # back to the class's method
    return out, captured, user


_SHOWN_SETTINGS = (
    "do_sample", "temperature", "top_k", "top_p", "min_p", "typical_p", "repetition_penalty",
    "no_repeat_ngram_size", "max_length", "max_new_tokens", "min_length", "min_new_tokens",
    "num_return_sequences", "eos_token_id", "pad_token_id",
)
# Fields that change which tokens get sampled, and their neutral value on our side.
_OURS_NEUTRAL = {"min_p": None, "typical_p": 1.0, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
                 "min_length": 0, "min_new_tokens": None}


def settings_table(hf, s: SamplingSettings, prompt_len: int, n_new: int, received: dict, user: dict,
                   eos_id: int) -> tuple[list[SettingRow], dict]:
    """Each effective generation setting of the HF side, resolved by transformers itself, with its source."""
    from transformers import GenerationConfig

    resolved, _ = hf._prepare_generation_config(None, **dict(received))
    defaults = GenerationConfig._get_default_generation_params()
    model_set = {k for k, v in hf.generation_config.to_dict().items() if v is not None}
    effective_total = prompt_len + resolved.max_new_tokens if resolved.max_new_tokens is not None else (
        resolved.max_length if resolved.max_length is not None else prompt_len + 20)
    greedy = s.effective_method == "greedy"
    ours = {
        "do_sample": not greedy,
        "temperature": float(s.temperature),
        "top_k": s.top_k if not greedy else None,
        "top_p": float(s.top_p),
        "max_length": prompt_len + n_new,
        "max_new_tokens": s.max_new_tokens,
        "num_return_sequences": s.num_return_sequences,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        **_OURS_NEUTRAL,
    }
    rows, hf_values = [], {}
    for name in _SHOWN_SETTINGS:
        value = getattr(resolved, name, None)
        if name == "max_length":
            value = effective_total
        if name == "pad_token_id" and value is None:
            value, source = eos_id, "generate() falls back to eos"
        elif name in user:
            source = "you"
        elif name in received:
            source = "pipeline default"
        elif name in model_set:
            source = "model generation_config"
        elif defaults.get(name) is not None:
            source = "transformers default"
        else:
            source = "unset"
        hf_values[name] = value
        differs = _setting_differs(name, ours[name], value, greedy)
        rows.append(SettingRow(name, ours[name], value, source, differs))
    return rows, hf_values


def _setting_differs(name: str, ours, hf, greedy: bool) -> bool:
    if name == "max_new_tokens":
        return False  # compared through the effective max_length
    if greedy and name in ("temperature", "top_k", "top_p"):
        return False  # no effect without sampling
    if name == "top_k":
        return (ours or 0) != (hf or 0)
    if name in ("min_length",):
        return (ours or 0) != (hf or 0)
    if isinstance(ours, float) or isinstance(hf, float):
        return ours is None or hf is None or not math.isclose(float(ours), float(hf))
    return ours != hf


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
    score_a = sampling_log_probs(a[None], s)[0] - logq
    score_b = sampling_log_probs(b[None], s)[0] - logq
    best = torch.topk(score_b, 2).values
    margin = (best[0] - best[1]).item()
    scaled = 2 * dlogit / (s.temperature or 1.0)
    if score_a.argmax() != score_b.argmax() and margin <= scaled + 1e-6:
        return {"margin": margin, "max_abs_dlogit": dlogit, "temperature": s.temperature}
    return None


def explain_rows(gen: Generation, s: SamplingSettings, ref, tokenizer, table, steps,
                 ours_logits, hf_logits, first_layer) -> list[RowComparison]:
    P = len(gen.prompt_ids)
    rows = []
    diff_settings = [r for r in table if r.differs]
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
        decode = tokenizer.decode if tokenizer is not None else (lambda ids: "")
        cause, why, evidence = None, "identical to HuggingFace", {}
        if not identical:
            s_idx = first if first is not None else 0
            bad = [d for st in steps[: s_idx + 1] for d in [st[r]] if d is not None and d.exceeds]
            if bad:
                cause = "model"
                why = f"the models' logits differ at step {bad[0].step} (max |Δlogit| {bad[0].max_abs_dlogit:.3g}" \
                      f" > tolerance {bad[0].tolerance:.2g}); first diverging layer: {first_layer}"
                evidence = {"step": bad[0].step, "max_abs_dlogit": bad[0].max_abs_dlogit, "layer": first_layer}
            elif not prompt_same:
                cause, why = "settings", "HF saw a different prompt (the pipeline truncates it to max_length)"
            elif diff_settings:
                cause = "settings"
                parts = [f"{d.name}: ours {d.ours!r} vs HF {d.hf!r} ({d.source})" for d in diff_settings]
                why = "same model, different effective settings: " + "; ".join(parts)
                evidence = {d.name: {"ours": d.ours, "hf": d.hf, "source": d.source} for d in diff_settings}
            elif s.effective_method == "nanogpt":
                cause = "sampling_order"
                why = ("same model, different random draws: the seed's loop draws one number per row over the "
                       f"{s.top_k or 'full'} sorted top-k probabilities; HF draws over the full vocabulary in id order")
                evidence = {"ours_method": "nanogpt", "hf_draws_per_step": "B x vocab"}
            else:
                st = steps[s_idx][r] if s_idx < len(steps) else None
                tie = None
                if st is not None:
                    tie = _near_tie(s, r, s_idx, ours_logits[:, s_idx], hf_logits[:, s_idx],
                                    st.max_abs_dlogit, len(gen.sequences))
                if tie is not None:
                    cause = "near_tie"
                    why = (f"a near-tie flipped by float noise at step {s_idx}: the winning margin {tie['margin']:.2g} "
                           f"is within the logit difference {tie['max_abs_dlogit']:.2g}")
                    evidence = tie
                else:
                    cause = "unexplained"
                    why = f"diverges at step {s_idx} with logits within tolerance and no tie: please report this"
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
    "unexplained": "rows diverge with agreeing logits and no known cause",
}


def _verdict(rows: list[RowComparison], layers, step_list, reference) -> tuple[bool, str, str]:
    first_layer = next((l for l in layers if l.exceeds), None)
    any_step = any(d.exceeds for st in step_list for d in st if d is not None)
    if first_layer is not None or any_step:
        where = first_layer.name if first_layer is not None else "lm_head"
        return False, "model", f"logits differ from HuggingFace: first diverging layer {where}"
    if reference == "logits":
        return True, "logits_agree", _HEADLINES["logits_agree"]
    causes = [r.cause for r in rows if not r.identical]
    if not causes:
        return True, "identical", _HEADLINES["identical"]
    for kind in ("unexplained", "settings", "sampling_order", "near_tie"):
        if kind in causes:
            head = _HEADLINES[kind]
            if kind == "settings":
                head += ": " + next(r.explanation.split(": ", 1)[1] for r in rows if r.cause == "settings")
            return kind != "unexplained", kind, f"{head} ({len(causes)} of {len(rows)} rows differ)"
    raise AssertionError(causes)  # pragma: no cover


# ---------------------------------------------------------------------------------------------------------
# The entry point


def _resolve_pair(model_or_name, hf_model):
    from .loader import load_pair

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
    if fault not in (None, "", "none") and fault not in FAULTS:
        raise ParityError(f"unknown fault {fault!r}; known faults: {', '.join(FAULTS)}")
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
        layers = layer_diffs(ours.config.n_layer, ours_hidden + [ours_logits], ref_hidden + [hf_logits], rtol)
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


if __name__ == "__main__":
    from .cli import main_parity

    raise SystemExit(main_parity())
