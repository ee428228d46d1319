"""Localisation after a verdict: inside each block, each block on HF's own input, and the likely mistake by name.

Three readings of the model under test, all taken by forward hooks over the token streams it was judged on, and
only once the judge knows that something differs (an exact model pays nothing):
  * accumulated: its residual stream after each block's attention ("resid_mid": the block's input plus its
    attention's output), beside the stream after each block the run already recorded;
  * isolated: every block run on HF's residual stream at that block's input (forward pre-hooks substituting the
    input, one extra pass), so each block's own error is free of everything upstream;
  * the catalogue: each known porting mistake applied to HF's block k (its weights, GPT-2's formula with one switch
    changed), on the same input as the model under test's block k, to see which reproduces its output.

Knows block layouts (attention and MLP submodule names), hooks and GPT-2's block formula; computes tensors and
words only: every comparison and tolerance is the judge's (judge.py with diffs.py), never this module's.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..precision import FLOAT32, Precision, regime
from .report import ParityError

# Where a block keeps its attention and its MLP (first match wins), and what `layers=dict(attn=..., mlp=...)` names.
ATTN_NAMES = ("attn", "attention", "self_attn", "self_attention", "attn_layer", "sa", "mha")
MLP_NAMES = ("mlp", "ffn", "feed_forward", "feedforward", "ff", "mlp_layer", "fc")


def _child(block: nn.Module, path: str) -> nn.Module | None:
    try:
        return block.get_submodule(path)
    except AttributeError:
        return None


def find_sublayers(blocks: Sequence[nn.Module], spec: Mapping[str, str] | None = None) -> list[nn.Module] | str:
    """Each block's attention module (named in spec["attn"], relative to a block, or found by a common name), when
    every block also has an MLP module; else why the residual stream inside the blocks cannot be seen."""
    spec = dict(spec or {})
    attns = []
    for k, block in enumerate(blocks):
        found = {}
        for key, names in (("attn", ATTN_NAMES), ("mlp", MLP_NAMES)):
            if key in spec:
                mod = _child(block, spec[key])
                if mod is None:
                    raise ParityError(f"layers: block {k} has no module {spec[key]!r} ({key}=)")
            else:
                mod = next((m for m in (_child(block, n) for n in names) if m is not None), None)
            found[key] = mod
        if found["attn"] is None or found["mlp"] is None:
            missing = "attention" if found["attn"] is None else "MLP"
            looked = ATTN_NAMES if found["attn"] is None else MLP_NAMES
            return (f"the residual stream inside the blocks is not visible: block {k} has no {missing} submodule "
                    f"(looked for {', '.join(looked[:5])}, ...); name both with layers=dict(..., attn=..., mlp=...)")
        attns.append(found["attn"])
    return attns


class _Enough(BaseException):
    """Raised by the last block's hook: the rest of the forward (final norm, the head) is not needed. A
    BaseException, so that a wrapper catching Exception around a user's forward lets it through."""


def _first(value):
    if isinstance(value, (tuple, list)):
        value = value[0] if value else None
    return value if isinstance(value, torch.Tensor) else None


@torch.no_grad()
def block_readings(run: Callable[[torch.Tensor], object], blocks: Sequence[nn.Module],
                   attns: Sequence[nn.Module] | None, fed: torch.Tensor,
                   inputs: Sequence[torch.Tensor] | None = None) -> tuple[list | None, list]:
    """One forward `run(fed)` with hooks -> (the residual stream after each block's attention, None without
    `attns`; each block's output), float32 (B, T, C) each. With `inputs` (one (B, T, C) per block), each block's
    input is replaced by it first, so every block is read on that input, free of the blocks before it."""
    n = len(blocks)
    x_in: list = [None] * n
    outs: list = [None] * n
    att: list = [None] * n
    me = threading.get_ident()

    def pre(k):
        def hook(module, args, kwargs):
            if threading.get_ident() != me:
                return None
            x = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))
            if not isinstance(x, torch.Tensor):
                return None
            if inputs is not None:
                x = inputs[k].to(device=x.device, dtype=x.dtype)
                if args:
                    args = (x, *args[1:])
                else:
                    kwargs = {**kwargs, ("hidden_states" if "hidden_states" in kwargs else "x"): x}
            x_in[k] = x.detach()
            return (args, kwargs) if inputs is not None else None
        return hook

    def keep(store, k, last=False):
        def hook(module, args, out):
            if threading.get_ident() == me:
                store[k] = _first(out)
                if last:
                    raise _Enough
        return hook

    handles = []
    try:
        for k, block in enumerate(blocks):
            handles.append(block.register_forward_pre_hook(pre(k), with_kwargs=True))
            if attns is not None:
                handles.append(attns[k].register_forward_hook(keep(att, k)))
            handles.append(block.register_forward_hook(keep(outs, k, last=k == n - 1)))
        run(fed)
    except _Enough:  # perf: the final norm and the head over every position are skipped
        pass
    finally:
        for h in handles:
            h.remove()
    for k in range(n):
        if outs[k] is None or x_in[k] is None or (attns is not None and att[k] is None):
            raise ParityError(f"block {k} recorded no tensor (is it called in forward()?)")
    mids = None
    if attns is not None:
        mids = [(x.float() + a.float()) for x, a in zip(x_in, att)]
    return mids, [o.float() for o in outs]


# ---------------------------------------------------------------------------------------------------------
# The catalogue: GPT-2's block from HF's weights, one switch at a time


@dataclass(frozen=True)
class Variant:
    """How GPT-2's block is computed; the defaults are GPT-2 itself (gelu: HF's config decides)."""

    ln_eps: float | None = None  # None: the config's layer_norm_epsilon
    ln_2_from_ln_1: bool = False  # ln_2 loaded with ln_1's weights
    qkv: str = "qkv"  # the order the three thirds of c_attn's output were taken as (q, k, v)
    heads_interleaved: bool = False  # heads split as (B, T, hs, nh) instead of (B, T, nh, hs)
    swap_heads: bool = False  # heads 0 and 1 swapped before merging
    scale: str = "sqrt"  # "sqrt": 1/sqrt(hs); "none": no scale; "extra": 1/hs
    causal: bool = True
    softmax_dim: int = -1
    c_proj_not_transposed: bool = False  # attn.c_proj's Conv1D weight used as nn.Linear's without .t()
    no_bias: tuple[str, ...] = ()  # of "q", "k", "v", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"
    gelu: str | None = None  # "tanh" | "none" (erf) | "relu"; None: the config's
    attn_residual: bool = True
    mlp_residual: bool = True


@dataclass(frozen=True)
class Candidate:
    name: str  # a short key: "erf_gelu", "no_attention_scale", ...
    part: str  # "attention" | "MLP": the half of the block it changes
    variant: Variant
    says: str  # the mistake, completing "block 3's MLP matches HuggingFace with ..."


def _gelu_words(approx: str) -> str:
    return "the tanh approximation `nn.GELU(approximate='tanh')`" if approx == "tanh" else "exact erf GELU `nn.GELU()`"


def catalogue(hf_config) -> list[Candidate]:
    """The known porting mistakes, each one switch on GPT-2's block (the bug lab's and the common ones)."""
    gpt2_gelu = "none" if getattr(hf_config, "activation_function", "gelu_new") == "gelu" else "tanh"
    other = "tanh" if gpt2_gelu == "none" else "none"
    eps = float(getattr(hf_config, "layer_norm_epsilon", 1e-5))
    A, M = "attention", "MLP"
    cands = [
        Candidate("erf_gelu" if other == "none" else "tanh_gelu", M, Variant(gelu=other),
                  f"{_gelu_words(other)}, where GPT-2 uses {_gelu_words(gpt2_gelu)}"),
        Candidate("relu", M, Variant(gelu="relu"), "ReLU, where GPT-2 uses a GELU"),
        Candidate("ln_2_from_ln_1", M, Variant(ln_2_from_ln_1=True),
                  "ln_2 loaded with ln_1's weights (a copy-paste in the loader)"),
        Candidate("no_mlp_residual", M, Variant(mlp_residual=False),
                  "no residual connection around the MLP (`x = mlp(ln_2(x))` instead of `x = x + ...`)"),
        Candidate("no_causal_mask", A, Variant(causal=False), "no causal mask: every position attends to the future"),
        Candidate("no_attention_scale", A, Variant(scale="none"),
                  "no attention scale: the scores are not divided by sqrt(head_dim)"),
        Candidate("extra_attention_scale", A, Variant(scale="extra"),
                  "the scores divided by head_dim instead of sqrt(head_dim) (the scale applied twice)"),
        Candidate("softmax_over_queries", A, Variant(softmax_dim=-2),
                  "the softmax taken over the query axis (dim=-2) instead of the key axis"),
        Candidate("c_proj_not_transposed", A, Variant(c_proj_not_transposed=True),
                  "attn.c_proj's Conv1D weight copied into nn.Linear without transposing it"),
        Candidate("heads_swapped", A, Variant(swap_heads=True), "the attention heads merged in the wrong order "
                  "(heads 0 and 1 swapped)"),
        Candidate("heads_interleaved", A, Variant(heads_interleaved=True),
                  "the heads split as view(B, T, head_dim, n_head) instead of view(B, T, n_head, head_dim)"),
        Candidate("no_attn_residual", A, Variant(attn_residual=False),
                  "no residual connection around the attention"),
        Candidate("no_c_attn_bias", A, Variant(no_bias=("q", "k", "v")), "c_attn's bias dropped"),
        Candidate("no_attn_c_proj_bias", A, Variant(no_bias=("attn.c_proj",)), "attn.c_proj's bias dropped"),
        Candidate("no_mlp_c_fc_bias", M, Variant(no_bias=("mlp.c_fc",)), "mlp.c_fc's bias dropped"),
        Candidate("no_mlp_c_proj_bias", M, Variant(no_bias=("mlp.c_proj",)), "mlp.c_proj's bias dropped"),
    ]
    for third in ("q", "k", "v"):
        cands.append(Candidate(f"no_{third}_bias", A, Variant(no_bias=(third,)),
                               f"the {dict(q='query', k='key', v='value')[third]} projection's bias dropped"))
    for order in ("kqv", "qvk", "vkq", "kvq", "vqk"):
        name = "qk_swapped" if order == "kqv" else f"qkv_as_{order}"
        cands.append(Candidate(name, A, Variant(qkv=order),
                               f"c_attn's output split as ({', '.join(order)}) instead of (q, k, v)"))
    for wrong in (1e-6, 1e-12, 1e-5):
        if wrong != eps:
            cands.append(Candidate(f"ln_1_eps_{wrong:g}", A, Variant(ln_eps=wrong),
                                   f"LayerNorm eps={wrong:g} where GPT-2 uses {eps:g}"))
            cands.append(Candidate(f"ln_2_eps_{wrong:g}", M, Variant(ln_eps=wrong),
                                   f"LayerNorm eps={wrong:g} where GPT-2 uses {eps:g}"))
    return cands


def _p(block: nn.Module, path: str) -> torch.Tensor:
    return block.get_submodule(path.rsplit(".", 1)[0]).get_parameter(path.rsplit(".", 1)[1]).float()


def _qkv(block: nn.Module, x: torch.Tensor, eps: float, v: Variant) -> dict[str, torch.Tensor]:
    """ln_1 and c_attn of HF's block as `v` says: the three thirds of c_attn's output, {"q", "k", "v"} (B, T, C)."""
    C = x.size(-1)
    h = F.layer_norm(x.float(), (C,), _p(block, "ln_1.weight"), _p(block, "ln_1.bias"),
                     v.ln_eps if v.ln_eps is not None else eps)
    w, b = _p(block, "attn.c_attn.weight"), _p(block, "attn.c_attn.bias")  # Conv1D: (C, 3C), y = x @ w + b
    out = h @ w
    return {name: out[..., i * C:(i + 1) * C] + (0 if name in v.no_bias else b[i * C:(i + 1) * C])
            for i, name in enumerate("qkv")}


def attention_half(block: nn.Module, x: torch.Tensor, n_head: int, eps: float, v: Variant,
                   memo: dict | None = None) -> torch.Tensor:
    """x + attention(ln_1(x)) of HF's GPT2Block `block` (its weights, float32), computed as `v` says; x (B, T, C).
    `memo` keeps ln_1 and c_attn's output between variants that share them (perf: most of a variant's cost)."""
    B, T, C = x.shape
    hs = C // n_head
    key = (v.ln_eps, tuple(sorted(set(v.no_bias) & set("qkv"))))
    thirds = memo.get(key) if memo is not None else None
    if thirds is None:
        thirds = _qkv(block, x, eps, v)
        if memo is not None:
            memo[key] = thirds
    q, k, val = (thirds[name] for name in v.qkv)
    if v.heads_interleaved:
        q, k, val = (t.reshape(B, T, hs, n_head).permute(0, 3, 1, 2) for t in (q, k, val))  # (B, nh, T, hs)
    else:
        q, k, val = (t.reshape(B, T, n_head, hs).transpose(1, 2) for t in (q, k, val))
    scores = q @ k.transpose(-2, -1)  # (B, nh, T, T)
    scores = scores / {"sqrt": hs ** 0.5, "none": 1.0, "extra": float(hs)}[v.scale]
    if v.causal:
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    y = torch.softmax(scores, dim=v.softmax_dim) @ val  # (B, nh, T, hs)
    if v.swap_heads and n_head > 1:
        y = y[:, [1, 0, *range(2, n_head)]]
    y = y.transpose(1, 2).reshape(B, T, C)
    wo = _p(block, "attn.c_proj.weight")
    out = y @ (wo.t() if v.c_proj_not_transposed else wo)
    if "attn.c_proj" not in v.no_bias:
        out = out + _p(block, "attn.c_proj.bias")
    return x.float() + out if v.attn_residual else out


def mlp_half(block: nn.Module, x: torch.Tensor, eps: float, gelu: str, v: Variant) -> torch.Tensor:
    """x + mlp(ln_2(x)) of HF's GPT2Block `block` (its weights, float32), computed as `v` says; x (B, T, C)."""
    C = x.size(-1)
    ln = "ln_1" if v.ln_2_from_ln_1 else "ln_2"
    h = F.layer_norm(x.float(), (C,), _p(block, f"{ln}.weight"), _p(block, f"{ln}.bias"),
                     v.ln_eps if v.ln_eps is not None else eps)
    a = h @ _p(block, "mlp.c_fc.weight")
    if "mlp.c_fc" not in v.no_bias:
        a = a + _p(block, "mlp.c_fc.bias")
    kind = v.gelu or gelu
    a = torch.relu(a) if kind == "relu" else F.gelu(a, approximate=kind)
    out = a @ _p(block, "mlp.c_proj.weight")
    if "mlp.c_proj" not in v.no_bias:
        out = out + _p(block, "mlp.c_proj.bias")
    return x.float() + out if v.mlp_residual else out


# ---------------------------------------------------------------------------------------------------------
# What the judge asks for


@dataclass
class Readings:
    """The tensors of a localisation (lists over blocks, (B, T, C) float32 each; noise: (B, T) each).

    mid: the model under test's residual stream after each block's attention, on its own stream (None: not seen).
    hf_mid: HF's, on the same token streams.
    iso_mid / iso_out: the model under test's blocks each run on HF's input at that block: after the attention
        (None: not seen) and after the block.
    noise_*: below float32, HF's own error at the precision at each place of mid, iso_mid, iso_out (None: float32).
    """

    mid: list | None
    hf_mid: list
    iso_mid: list | None
    iso_out: list
    noise_mid: list | None = None
    noise_iso_mid: list | None = None
    noise_iso_out: list | None = None
    notes: list[str] = field(default_factory=list)


class Localiser:
    """The model under test and HF's model, ready to be read inside and block by block once the judge asks.

    run: calls the model under test on ids (B, T) (its regime applied here); blocks: its blocks; attns: each block's
    attention module, or why they are not visible (a sentence); p: the regime it is judged in."""

    def __init__(self, run: Callable[[torch.Tensor], object], blocks: Sequence[nn.Module],
                 attns: list[nn.Module] | str, hf, streams: list[list[int]], fed: int, p: Precision = FLOAT32,
                 device_type: str = "cpu"):
        self.run, self.blocks, self.hf, self.p, self.dev = run, list(blocks), hf, p, device_type
        self.attns = attns if not isinstance(attns, str) else None
        self.why_no_sublayers = attns if isinstance(attns, str) else None
        hf_dev = next(hf.parameters()).device
        self.fed_ids = torch.tensor(streams, dtype=torch.long, device=hf_dev)[:, :fed]
        cfg = hf.config
        self.n_head, self.eps = int(cfg.n_head), float(cfg.layer_norm_epsilon)
        self.gelu = "none" if getattr(cfg, "activation_function", "gelu_new") == "gelu" else "tanh"
        self.candidates = catalogue(cfg)
        self.twin: Localiser | None = None  # below float32: the same model in float32 (for what only float32 shows)

    def _hf_run(self, model):
        return lambda ids: model(ids, use_cache=False)

    def _subject(self, inputs=None):
        ids = self.fed_ids.to(_device(self.blocks[0]))
        with regime(self.p, self.dev):
            return block_readings(self.run, self.blocks, self.attns, ids, inputs)

    def readings(self, hf_hidden: list[torch.Tensor]) -> Readings:
        """Every reading the judge compares; `hf_hidden`: HF's residual stream [embeddings, blocks..., ln_f]."""
        from .reference import hf_in_regime

        hf_blocks = list(self.hf.transformer.h)
        hf_attns = [b.attn for b in hf_blocks]
        inputs = [h for h in hf_hidden[: len(hf_blocks)]]
        with regime(FLOAT32, self.dev):
            hf_mid, _ = block_readings(self._hf_run(self.hf), hf_blocks, hf_attns, self.fed_ids)
        mid, _ = self._subject() if self.attns is not None else (None, None)
        iso_mid, iso_out = self._subject(inputs)
        r = Readings(mid=mid, hf_mid=hf_mid, iso_mid=iso_mid, iso_out=iso_out)
        if self.why_no_sublayers:
            r.notes.append(self.why_no_sublayers)
        if self.p.low:  # HF's own error at the precision, at the same places
            low = hf_in_regime(self.hf, self.p)
            lb = list(low.transformer.h)
            with regime(self.p, self.dev):
                low_mid, _ = block_readings(self._hf_run(low), lb, [b.attn for b in lb], self.fed_ids)
                low_iso_mid, low_iso_out = block_readings(self._hf_run(low), lb, [b.attn for b in lb], self.fed_ids,
                                                          inputs)
            err = lambda a, b: (a - b).abs().amax(dim=-1)  # noqa: E731
            r.noise_mid = [err(a, b) for a, b in zip(low_mid, hf_mid)]
            r.noise_iso_mid = [err(a, b) for a, b in zip(low_iso_mid, hf_mid)]
            r.noise_iso_out = [err(a, b) for a, b in zip(low_iso_out, hf_hidden[1: len(lb) + 1])]
        return r

    @torch.no_grad()
    def hf_mlp(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """HF's own MLP half of block k on x (B, T, C): what the block's output is with HF's MLP after its input."""
        return mlp_half(self.hf.transformer.h[k], x, self.eps, self.gelu, Variant())

    @torch.no_grad()
    def tries(self, k: int, part: str, x: torch.Tensor,
              first: list[str] | None = None) -> Iterator[tuple[Candidate, torch.Tensor]]:
        """Each catalogue candidate for `part` of HF's block k ("attention", "MLP", or "block": the whole block,
        one mistake in either half) on input x (B, T, C), with its output there; those named in `first` first."""
        block = self.hf.transformer.h[k]
        memo: dict = {}
        att = lambda v: attention_half(block, x, self.n_head, self.eps, v, memo)  # noqa: E731
        mlp = lambda h, v: mlp_half(block, h, self.eps, self.gelu, v)  # noqa: E731
        order = sorted(self.candidates, key=lambda c: c.name not in (first or ()))
        for c in order:
            if part not in (c.part, "block"):
                continue
            if part == "attention":
                y = att(c.variant)
            elif part == "MLP":
                y = mlp(x, c.variant)
            else:
                y = mlp(att(c.variant), Variant()) if c.part == "attention" else mlp(att(Variant()), c.variant)
            yield c, y


def _device(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------------------------
# Words


def where(k: int, part: str) -> str:
    return f"block {k}" if part == "block" else f"block {k}'s {part}"


def _blocks_words(ks: list[int]) -> str:
    return f"block {ks[0]}" if len(ks) == 1 else f"blocks {_ranges(ks)}"


def matched_sentence(ks: list[int], part: str, cands: list[Candidate]) -> str:
    """The diagnosis when candidates reproduce the output of `part` of blocks `ks`."""
    first = cands[0]
    if part == "block":
        subject = f"{_blocks_words(ks)} (its {first.part})" if len(ks) == 1 else \
            f"{_blocks_words(ks)} (their {first.part})"
    else:
        subject = f"{_blocks_words(ks)}'s {part}" if len(ks) == 1 else f"the {part} of {_blocks_words(ks)}"
    text = f"{subject} match{'es' if len(ks) == 1 else ''} HuggingFace with {first.says}"
    if len(cands) > 1:
        text += "; equally consistent: " + "; ".join(c.says for c in cands[1:])
    return text


def outside(flagged: list[tuple[str, bool]], diverging_blocks: list[int]) -> str | None:
    """Where the difference is when it is not in a block (each layer's name and whether it differs; no block
    differs on HF's input): a sentence, or None."""
    if diverging_blocks or not flagged:
        return None
    first = next((name for name, exceeds in flagged if exceeds), None)
    if first == "embeddings":
        return ("the embeddings already differ (before any block; e.g. positions counted from 1, wpe missing or "
                "wte/wpe swapped); every block matches HuggingFace on HuggingFace's own input")
    if first == "ln_f":
        return "every block matches HuggingFace on its own input; the difference starts at the final LayerNorm ln_f"
    if first == "lm_head":
        return ("every block and ln_f match HuggingFace; the difference is in lm_head (e.g. not tied to wte, "
                "or a padded vocabulary read wrongly)")
    return None


def diagnosis_sentences(found: list[tuple[int, str, object]], outside_words: str | None) -> list[str]:
    """found: (block, part, matched candidates best first, or diffs.error_shape's numbers) in block order -> the
    sentences; a mistake named first in several blocks is one sentence (with what is equally consistent in all)."""
    out, groups = [], {}
    for k, part, what in found:
        if isinstance(what, dict):
            out.append(unmatched_sentence(k, part, what))
            continue
        key = (part, what[0].name)
        if key not in groups:
            groups[key] = ([], list(what), len(out))
            out.append(None)
        ks, cands, _ = groups[key]
        ks.append(k)
        names = {c.name for c in what}
        cands[:] = [c for c in cands if c.name in names]
    for (part, _), (ks, cands, i) in groups.items():
        out[i] = matched_sentence(ks, part, cands)
    return out + ([outside_words] if outside_words else [])


def _ranges(xs: list[int]) -> str:
    out, start = [], None
    for i, x in enumerate(xs):
        if start is None:
            start = x
        if i == len(xs) - 1 or xs[i + 1] != x + 1:
            out.append(f"{start}" if start == x else f"{start}-{x}")
            start = None
    return ", ".join(out)


def unmatched_sentence(k: int, part: str, shape: dict) -> str:
    """The diagnosis when no candidate reproduces it: the error's shape (diffs.error_shape's numbers)."""
    pos, n_pos = shape["positions"], shape["n_positions"]
    ch, n_ch = shape["channels"], shape["n_channels"]
    pos_words = f"every position (0-{n_pos - 1})" if len(pos) == n_pos else \
        f"position{'s' if len(pos) > 1 else ''} {_ranges(pos)} of 0-{n_pos - 1}"
    if len(ch) == n_ch:
        ch_words = f"all {n_ch} channels"
    elif len(ch) > 8:
        ch_words = f"{len(ch)} of {n_ch} channels"
    else:
        ch_words = f"{len(ch)} of {n_ch} channels ({', '.join(map(str, ch))})"
    rel = shape["relative"]
    bf16 = rel / 2 ** -8
    size = f"max |Δ| {shape['max_abs']:.3g}, {rel:.2g} of the largest |value| there"
    if 0.05 <= bf16 <= 30:
        size += f" (about {bf16:.2g} bfloat16 rounding steps: the size of bfloat16 rounding)"
    return (f"{where(k, part)} differs on HF's own input, and no mistake in the catalogue reproduces it: the error "
            f"is at {pos_words}, in {ch_words}; {size}")


__all__ = ["ATTN_NAMES", "MLP_NAMES", "Candidate", "Localiser", "Readings", "Variant", "attention_half",
           "block_readings", "catalogue", "diagnosis_sentences", "find_sublayers", "matched_sentence",
           "mlp_half", "outside",
           "unmatched_sentence", "where"]
