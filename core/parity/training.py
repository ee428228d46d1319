"""Training parity: one batch through the model under test and HF's GPT2LMHeadModel in train mode; the loss, the
gradient of the loss along the residual stream and on every parameter, and N optimizer steps on both.

compare_training(model, ...) runs both sides into typed records (SideRun: what a side did; StepRun: each optimizer
step) and hands them to train_judge.judge_training, the one place where a training comparison becomes a verdict.

Knows how to run a training step on any GPT-2 module: the batch (build-nanogpt's convention, y = x shifted by one),
the return conventions (logits, (logits, loss), a `targets` argument), dropout switched off (or on, both sides
drawing from one seed), the residual stream and its gradient by hooks (foreign.find_layers), parameters matched to
HF's by the values they were loaded with (transposed, split into q/k/v, padded vocabulary, tied) or by a name map,
build-nanogpt's AdamW. Knows nothing about tolerances or verdicts (train_judge.py, diffs.py).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..precision import FLOAT32, Precision, parse, regime
from .foreign import _describe, _full_logits, find_layers
from .diffs import tensor_gap
from .report import ParityError

# build-nanogpt's optimizer: AdamW, weight decay on 2-D parameters only (matmuls and embeddings), betas (0.9, 0.95),
# eps 1e-8; its max learning rate 6e-4.
LR = 6e-4
WEIGHT_DECAY = 0.1
BETAS = (0.9, 0.95)
ADAM_EPS = 1e-8
OPTIMIZERS = ("adamw",)


# ---------------------------------------------------------------------------------------------------------
# The batch


def make_batch(batch_size: int, seq_len: int, vocab: int, seed: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y), both (B, T) int64: B*(T+1) tokens drawn from an explicit generator, x = buf[:, :-1], y = buf[:, 1:]
    (build-nanogpt's DataLoaderLite: the targets are the inputs shifted by one)."""
    g = torch.Generator().manual_seed(int(seed))
    buf = torch.randint(0, vocab, (batch_size, seq_len + 1), generator=g)
    return buf[:, :-1].contiguous().to(device), buf[:, 1:].contiguous().to(device)


def check_batch(batch, vocab: int, n_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A given (x, y) checked: integer (B, T) tensors of the same shape, ids in [0, vocab), T <= n_positions."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ParityError(f"batch must be a pair (x, y) of token id tensors, got {type(batch).__name__}")
    x, y = (torch.as_tensor(t) for t in batch)
    for name, t in (("x", x), ("y", y)):
        if t.is_floating_point() or t.is_complex() or t.dim() != 2:
            raise ParityError(f"batch {name} must be integer token ids of shape (B, T), got {t.dtype} "
                              f"{tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= vocab):
            raise ParityError(f"batch {name} holds ids outside GPT-2's vocabulary [0, {vocab})")
    if x.shape != y.shape:
        raise ParityError(f"batch x {tuple(x.shape)} and y {tuple(y.shape)} must have the same shape")
    if x.size(1) > n_positions:
        raise ParityError(f"batch of {x.size(1)} positions exceeds the model's context of {n_positions}")
    if x.numel() == 0:
        raise ParityError("batch is empty")
    return x.long().contiguous(), y.long().contiguous()


# ---------------------------------------------------------------------------------------------------------
# Parameters matched to HF's


@dataclass(frozen=True)
class Piece:
    """Where a parameter of yours sits in one of HF's: `how` is "same", "transposed", "rows" (your first rows are
    HF's: a padded vocabulary) or "q"/"k"/"v" (a third of HF's fused c_attn, transposed for a weight)."""

    hf_name: str
    how: str


@dataclass
class Matching:
    """Your parameters (by name) -> their place in HF's; HF's names in the order the report walks them."""

    pieces: dict[str, Piece]  # your parameter name -> piece
    aliases: dict[str, list[str]]  # your parameter name -> every name of the same tensor (tying)
    hf_order: list[str]  # HF's parameter names, from the loss towards the embeddings
    hf_layer: dict[str, str]  # HF name -> its layer ("lm_head", "ln_f", "block 3", "embeddings")
    unmatched: list[str]  # your parameters with no counterpart in HF's
    missing: list[str]  # HF's parameters (or parts) with no counterpart in yours
    notes: list[str] = field(default_factory=list)


_HF_BLOCK = re.compile(r"^transformer\.h\.(\d+)\.")


def hf_layer_of(name: str) -> str:
    m = _HF_BLOCK.match(name)
    if m:
        return f"block {m.group(1)}"
    if name.startswith("transformer.ln_f."):
        return "ln_f"
    if name.startswith("lm_head."):
        return "lm_head"
    return "embeddings"


def hf_parameters(hf) -> dict[str, torch.Tensor]:
    """HF's parameters by name, each tensor once (a tied lm_head.weight is transformer.wte.weight)."""
    return dict(hf.named_parameters())  # named_parameters skips a tied duplicate


def backward_order(names: list[str], n_layer: int) -> list[str]:
    """HF's parameter names from the loss towards the embeddings: lm_head (untied), ln_f, the blocks last to first
    (HF's order inside a block), then wpe and wte (a tied wte's gradient also holds the head's part)."""
    layer_rank = {"lm_head": 0, "ln_f": 1, **{f"block {i}": 2 + (n_layer - 1 - i) for i in range(n_layer)},
                  "embeddings": 2 + n_layer}
    emb_rank = {"transformer.wpe.weight": 0, "transformer.wte.weight": 1}
    return sorted(names, key=lambda n: (layer_rank[hf_layer_of(n)], emb_rank.get(n, 0), names.index(n)))


def _views(name: str, t: torch.Tensor, width: int):
    """(how, tensor) for each way a parameter of yours may hold HF's parameter `name`."""
    yield "same", t
    if t.dim() == 2:
        yield "transposed", t.t()
    if name.endswith("attn.c_attn.weight") and t.dim() == 2 and t.size(1) == 3 * width:
        for j, part in enumerate("qkv"):
            yield part, t[:, j * width:(j + 1) * width].t()
    if name.endswith("attn.c_attn.bias") and t.size(0) == 3 * width:
        for j, part in enumerate("qkv"):
            yield part, t[j * width:(j + 1) * width]


def _number(name: str) -> int | None:
    m = re.search(r"(?:^|\.)(\d+)(?:\.|$)", name)
    return int(m.group(1)) if m else None


def match_parameters(model: nn.Module, hf, name_map: Mapping[str, str] | None = None) -> Matching:
    """Each of your parameters -> the HF parameter (and part) holding the same values, found by value (equal
    after a transpose, a q/k/v split, or on a padded vocabulary's first rows) or named in `name_map` (your name ->
    HF's name; how is then found by value, else by shape). Equal candidates (LayerNorm gains all 1 at init) go to the
    first unused one, in HF's order, of the block with your name's number."""
    width, n_layer = int(hf.config.n_embd), int(hf.config.n_layer)
    hf_params = {k: v.detach() for k, v in hf_parameters(hf).items()}
    aliases: dict[int, list[str]] = {}
    mine: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)
        if len(aliases[id(p)]) == 1:
            mine[name] = p.detach()
    candidates = [(hf_name, how, v) for hf_name, t in hf_params.items() for how, v in _views(hf_name, t, width)]
    name_map = dict(name_map or {})
    unknown = sorted(set(name_map.values()) - set(hf_params))
    if unknown:
        raise ParityError(f"name map: HF's GPT-2 has no parameter {', '.join(map(repr, unknown))} (its names: "
                          f"{', '.join(list(hf_params)[:4])}, ...)")
    bad = sorted(set(name_map) - {n for names in aliases.values() for n in names})
    if bad:
        raise ParityError(f"name map: your model has no parameter {', '.join(map(repr, bad))}")
    position = {(hf_name, how): i for i, (hf_name, how, _) in enumerate(candidates)}
    used: set[tuple[str, str]] = set()
    last = -1  # the position of the previous match: equal candidates go to the next free one in HF's order
    pieces: dict[str, Piece] = {}
    unmatched: list[str] = []
    notes: list[str] = []
    for name, t in mine.items():
        t32 = t.float()
        want = next((name_map[n] for n in _all_names(aliases, name) if n in name_map), None)
        found = []
        for hf_name, how, v in candidates:
            if want is not None and hf_name != want:
                continue
            if _equal(t32, v):
                found.append((hf_name, how))
            elif how == "same" and hf_name.endswith("wte.weight") and t.dim() == 2 and t.size(0) > v.size(0) \
                    and t.size(1) == v.size(1) and _equal(t32[: v.size(0)], v):
                found.append((hf_name, "rows"))
        if not found and want is not None:  # named, but not equal in value: place it by shape
            for how, v in _views(want, hf_params[want], width):
                if tuple(v.shape) == tuple(t.shape):
                    found.append((want, how))
                    notes.append(f"your {name} does not hold HF's {want} values; compared by the name map")
                    break
            else:
                raise ParityError(f"name map: your {name} {tuple(t.shape)} fits no part of HF's {want} "
                                  f"{tuple(hf_params[want].shape)}")
        # a tied HF tensor may be held by two of yours (an untied copy of wte): reuse is allowed for wte only
        free = [c for c in found if c not in used] or [c for c in found if c[0].endswith("wte.weight")]
        if not free:
            unmatched.append(name)
            continue
        k = _number(name)
        pos = lambda c: position.get(c, position.get((c[0], "same"), 0))  # noqa: E731
        best = min(free, key=lambda c: (c[0] not in (name, "transformer." + name), _block_mismatch(c[0], k),
                                        pos(c) < last, pos(c)))
        used.add(best)
        last = pos(best)
        pieces[name] = Piece(*best)
    missing = _missing(hf_params, pieces, width)
    order = backward_order(list(hf_params), n_layer)
    return Matching(pieces=pieces, aliases={n: aliases[id(p)] for n, p in _by_name(model, mine).items()},
                    hf_order=order, hf_layer={n: hf_layer_of(n) for n in order}, unmatched=unmatched,
                    missing=missing, notes=notes)


def _by_name(model: nn.Module, mine: dict) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {n: params[n] for n in mine if n in params}


def _all_names(aliases: dict[int, list[str]], name: str) -> list[str]:
    for names in aliases.values():
        if name in names:
            return names
    return [name]


def _block_mismatch(hf_name: str, k: int | None) -> bool:
    m = _HF_BLOCK.match(hf_name)
    return k is not None and m is not None and int(m.group(1)) != k


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape and values; the first row first (most candidates differ there, and it costs nothing)."""
    if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
        return False
    b = b.to(a.device)
    if a.dim() >= 1 and a.size(0) and not torch.equal(a[0], b[0]):
        return False
    return bool(torch.equal(a, b))


def _missing(hf_params: dict[str, torch.Tensor], pieces: dict[str, Piece], width: int) -> list[str]:
    have: dict[str, set[str]] = {}
    for p in pieces.values():
        have.setdefault(p.hf_name, set()).add(p.how)
    out = []
    for name in hf_params:
        hows = have.get(name, set())
        if not hows:
            out.append(name)
        elif hows & {"q", "k", "v"} and not {"same", "transposed"} & hows and hows & {"q", "k", "v"} != {"q", "k", "v"}:
            out.append(f"{name} ({', '.join(sorted({'q', 'k', 'v'} - hows))} part)")
    return out


def to_hf_layout(tensors: Mapping[str, torch.Tensor | None], matching: Matching, hf_params: Mapping[str, torch.Tensor],
                 width: int) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Your tensors (by your parameter name: gradients, or values after a step) in HF's layout, by HF name, in
    float32; a None (no gradient reached it) counts as zeros and its HF name is listed. HF names held by two of your
    tensors (an untied copy of a tied wte) take the first."""
    out: dict[str, torch.Tensor] = {}
    none: list[str] = []
    for name, piece in matching.pieces.items():
        t = tensors.get(name)
        ref = hf_params[piece.hf_name]
        if piece.hf_name not in out:
            out[piece.hf_name] = torch.zeros(ref.shape, dtype=torch.float32, device=ref.device)
        elif piece.how in ("same", "transposed", "rows"):
            continue  # a second holder of the same HF tensor: the first decides
        if t is None:
            none.append(piece.hf_name)
            continue
        t = t.detach().float().to(ref.device)
        dst = out[piece.hf_name]
        if piece.how == "same":
            dst.copy_(t)
        elif piece.how == "transposed":
            dst.copy_(t.t())
        elif piece.how == "rows":
            dst.copy_(t[: ref.size(0)])
        else:
            j = "qkv".index(piece.how)
            if ref.dim() == 2:
                dst[:, j * width:(j + 1) * width].copy_(t.t())
            else:
                dst[j * width:(j + 1) * width].copy_(t)
    return out, sorted(set(none))


# ---------------------------------------------------------------------------------------------------------
# One side's training step


@dataclass
class StepRun:
    """After optimizer step `step` (1..N): the loss on the same batch, and per HF parameter the measured gaps the
    judge needs: your parameter against HF's after the same steps, and your update against build-nanogpt's AdamW
    applied to your own gradients (None where the lab's AdamW ran on both)."""

    step: int
    loss: float
    hf_loss: float
    hf_low_loss: float | None
    params: dict[str, tuple[float, float]]  # HF name -> (max |yours - HF's|, max |HF's|)
    updates: dict[str, tuple[float, float]] | None  # HF name -> (max |your update - AdamW's|, max |param|)


@dataclass
class SideRun:
    """What one side did on the batch (step 0): its loss, logits, train-mode residual stream, the gradient of the
    loss along that stream (from the loss towards the embeddings: logits, ln_f's input, block n-1's input, ...,
    block 0's input) and every parameter's gradient in HF's layout by HF name."""

    loss: float
    logits: torch.Tensor  # (B, T, V) float32, the first V columns
    hidden: list[torch.Tensor] | None  # [embeddings, block 0, ..., block n-1, ln_f] (B, T, C), train mode
    stream_grads: list[torch.Tensor] | None  # [d logits, d ln_f input, d block n-1 input, ..., d block 0 input]
    grads: dict[str, torch.Tensor]  # HF name -> gradient (HF layout, float32)
    no_grad: list[str] = field(default_factory=list)  # HF names whose counterpart got no gradient at all
    own_loss: float | None = None  # the model's own loss, where it returned one that was not the one judged
    loss_source: str = "cross-entropy of the logits over GPT-2's vocabulary against y"
    notes: list[str] = field(default_factory=list)
    why_no_layers: str | None = None
    eval_logits: torch.Tensor | None = None  # the model under test in eval mode (the forward check's mode)


class _StreamTaps:
    """Hooks on the blocks and the final norm: the forward values (detached) and the gradient of the loss with
    respect to each block's input and the final norm's input."""

    def __init__(self, taps):
        self.taps = taps
        n = len(taps.blocks)
        self.values: list[torch.Tensor | None] = [None] * (n + 2)
        self.grads: list[torch.Tensor | None] = [None] * (n + 1)  # block 0..n-1 inputs, ln_f input

    def _grab_input(self, slot_value: int | None, slot_grad: int):
        def hook(module, args, kwargs):
            x = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
            if not isinstance(x, torch.Tensor):
                return
            if slot_value is not None:
                self.values[slot_value] = x.detach().float()
            if x.requires_grad:
                x.register_hook(lambda g: self.grads.__setitem__(slot_grad, g.detach().float()))
        return hook

    def _grab_output(self, slot: int):
        def hook(module, args, out):
            if isinstance(out, (tuple, list)):
                out = out[0] if out else None
            if isinstance(out, torch.Tensor):
                self.values[slot] = out.detach().float()
        return hook

    @contextlib.contextmanager
    def recording(self):
        n = len(self.taps.blocks)
        handles = []
        try:
            for i, block in enumerate(self.taps.blocks):
                handles.append(block.register_forward_pre_hook(self._grab_input(0 if i == 0 else None, i),
                                                               with_kwargs=True))
                handles.append(block.register_forward_hook(self._grab_output(i + 1)))
            handles.append(self.taps.final_norm.register_forward_pre_hook(self._grab_input(None, n),
                                                                          with_kwargs=True))
            handles.append(self.taps.final_norm.register_forward_hook(self._grab_output(n + 1)))
            yield self
        finally:
            for h in handles:
                h.remove()


@contextlib.contextmanager
def train_mode_without_dropout(model: nn.Module):
    """`model` in train mode with every nn.Dropout's p at 0 (restored after, with the training flag)."""
    was = model.training
    drops = [(m, m.p) for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    try:
        model.train()
        for m, _ in drops:
            m.p = 0.0
        yield
    finally:
        for m, p in drops:
            m.p = p
        model.train(was)


@contextlib.contextmanager
def train_mode(model: nn.Module, dropout_seed: int | None = None):
    """`model` in train mode: dropout off (train_mode_without_dropout) or, with `dropout_seed`, dropout as the model
    has it, its random draws from torch's global RNG seeded with `dropout_seed` inside a fork of that RNG (nn.Dropout
    takes no generator; the caller's RNG state is restored after). Every forward of either side draws from the same
    seed, so two models that drop the same places at the same rates in the same order draw the same masks."""
    if dropout_seed is None:
        with train_mode_without_dropout(model):
            yield
        return
    was = model.training
    cuda = sorted({q.device.index or 0 for q in model.parameters() if q.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(dropout_seed)
        model.train()
        try:
            yield
        finally:
            model.train(was)


def takes_targets(model) -> bool:
    try:
        sig = inspect.signature(model.forward if isinstance(model, nn.Module) else model)
    except (TypeError, ValueError):
        return False
    return "targets" in sig.parameters


def own_loss_of(out) -> torch.Tensor | None:
    """The loss a forward returned: (logits, loss), {"loss": ...} or .loss, a scalar tensor; else None."""
    loss = None
    if isinstance(out, (tuple, list)) and len(out) >= 2:
        loss = out[1]
    elif isinstance(out, Mapping):
        loss = out.get("loss")
    elif hasattr(out, "loss") and not isinstance(out, torch.Tensor):
        loss = out.loss
    if isinstance(loss, torch.Tensor) and loss.numel() == 1 and loss.is_floating_point():
        return loss.reshape(())
    return None


def _call(fn, *args, what: str, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ParityError:
        raise
    except Exception as exc:
        raise ParityError(f"{what} raised {type(exc).__name__}: {exc}") from exc


@dataclass
class Side:
    """One model being trained: the module, how it is called, its matching to HF, its optimizer."""

    model: nn.Module
    label: str
    matching: Matching | None  # None for HF itself (its names are HF's)
    layers: Mapping[str, str] | None = None
    optimizer: object = None
    lab_optimizer: bool = True
    reference_state: dict | None = None  # the reference AdamW's state fed with this side's gradients
    dropout_seed: int | None = None  # None: dropout off; else dropout on, drawn from this seed (train_mode)


def forward_backward(side: Side, x: torch.Tensor, y: torch.Tensor, vocab: int, hf_params, width: int,
                     n_layer: int, p: Precision, *, want_streams: bool, keep: bool = True) -> SideRun:
    """One forward (train mode, dropout off, in regime p) and backward on (x, y), with side.model's gradients left
    in .grad for an optimizer step; without `keep`, only the loss is recorded (a later step's forward)."""
    model = side.model
    notes: list[str] = []
    taps_or_why = find_layers(model, n_layer, side.layers) if want_streams else "not asked"
    recorder = None if isinstance(taps_or_why, str) else _StreamTaps(taps_or_why)
    model.zero_grad(set_to_none=True)
    is_hf = side.matching is None
    dev = x.device.type
    hooks = recorder.recording() if recorder is not None else contextlib.nullcontext()
    with train_mode(model, side.dropout_seed), hooks:
        with regime(p, dev):
            if is_hf:
                out = model(input_ids=x)
                full = out.logits
            else:
                kwargs = {"targets": y} if takes_targets(model) else {}
                out = _call(model, x, **kwargs, what=f"your model (input of shape {tuple(x.shape)}, train mode)")
                full = _full_logits(out, x.size(0), x.size(1), vocab)
                if full is None:
                    raise ParityError("for training, your model must return every position's logits, shape "
                                      f"({x.size(0)}, {x.size(1)}, {vocab}) (alone, first in (logits, loss), or as "
                                      f".logits); got {_describe(out)}")
            logits = full[..., :vocab]
            lab_loss = F.cross_entropy(logits.reshape(-1, vocab).float(), y.reshape(-1))
            own = None if is_hf else own_loss_of(out)
        run_loss, source, own_value = lab_loss, "cross-entropy of the logits over GPT-2's vocabulary against y", None
        if own is not None:
            if full.size(-1) == vocab:
                run_loss, source = own, "your model's own loss (it was given targets=y)" if takes_targets(model) \
                    else "your model's own loss"
            else:
                own_value = float(own.detach())
                notes.append(f"your model returns {full.size(-1)} logits per position (a padded vocabulary) and its "
                             f"own loss ({own_value:.6g}) is over all of them; judged: the cross-entropy over GPT-2's "
                             f"{vocab} tokens, as HF computes it")
        if not run_loss.requires_grad:
            raise ParityError("your model's loss does not depend on any parameter that requires a gradient "
                              "(was it run under torch.no_grad(), or are its parameters frozen?)")
        logits_grad: list[torch.Tensor] = []
        if full.requires_grad:
            full.register_hook(lambda g: logits_grad.append(g[..., :vocab].detach().float()))
        run_loss.backward()
    if not keep:
        return SideRun(loss=float(run_loss.detach()), logits=None, hidden=None, stream_grads=None, grads={})
    grads_mine = {name: p_.grad for name, p_ in model.named_parameters()}
    if is_hf:
        grads = {k: (v.float().clone() if v is not None else torch.zeros_like(hf_params[k], dtype=torch.float32))
                 for k, v in grads_mine.items()}
        no_grad = [k for k, v in grads_mine.items() if v is None]
    else:
        grads, no_grad = to_hf_layout(grads_mine, side.matching, hf_params, width)
    hidden = streams = None
    why = taps_or_why if isinstance(taps_or_why, str) else None
    if recorder is not None:
        B, T = x.shape
        vals, gs = recorder.values, recorder.grads
        bad = next((i for i, v in enumerate(vals) if v is None or tuple(v.shape) != (B, T, width)), None)
        if bad is None:
            hidden = vals
        else:
            why = "the hooks on your blocks did not record (B, T, C) tensors"
        if hidden is not None and logits_grad and all(g is not None for g in gs):
            streams = [logits_grad[0], gs[-1]] + [gs[i] for i in reversed(range(len(gs) - 1))]
        elif hidden is not None:
            missing = [i for i, g in enumerate(gs) if g is None]
            streams = None
            why = (f"no gradient reached the input of {_tap_name(missing[0], len(gs) - 1)}" if missing
                   else "the logits carry no gradient")
    return SideRun(loss=float(run_loss.detach()), logits=logits.detach().float(), hidden=hidden,
                   stream_grads=streams, grads=grads, no_grad=no_grad, own_loss=own_value, loss_source=source,
                   notes=notes, why_no_layers=why)


def _tap_name(i: int, n: int) -> str:
    return "ln_f" if i == n else f"block {i}"


def loss_only(side: Side, x: torch.Tensor, y: torch.Tensor, vocab: int, p: Precision) -> float:
    """The loss on (x, y) in train mode without dropout (after a step), as forward_backward computes it."""
    model, is_hf = side.model, side.matching is None
    with train_mode(model, side.dropout_seed), torch.no_grad(), regime(p, x.device.type):
        if is_hf:
            out = model(input_ids=x)
            full = out.logits
            own = None
        else:
            kwargs = {"targets": y} if takes_targets(model) else {}
            out = _call(model, x, **kwargs, what="your model (after an optimizer step)")
            full = _full_logits(out, x.size(0), x.size(1), vocab)
            own = own_loss_of(out)
        if own is not None and full.size(-1) == vocab:
            return float(own)
        return float(F.cross_entropy(full[..., :vocab].reshape(-1, vocab).float(), y.reshape(-1)))


# ---------------------------------------------------------------------------------------------------------
# Optimizers


def adamw_groups(params: list[nn.Parameter], weight_decay: float = WEIGHT_DECAY) -> list[dict]:
    """build-nanogpt's configure_optimizers groups: weight decay on parameters of 2 or more dimensions only."""
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def build_adamw(params: list[nn.Parameter], lr: float = LR) -> torch.optim.Optimizer:
    """build-nanogpt's AdamW: betas (0.9, 0.95), eps 1e-8, decay 0.1 on 2-D parameters; the for-loop kernel
    (the same arithmetic on any device)."""
    return torch.optim.AdamW(adamw_groups(params), lr=lr, betas=BETAS, eps=ADAM_EPS, foreach=False)


def _unique_params(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _build_optimizer(side: Side, optimizer, lr: float) -> None:
    params = _unique_params(side.model)
    if optimizer in (None, "adamw"):
        side.optimizer, side.lab_optimizer = build_adamw(params, lr), True
        return
    if not callable(optimizer):
        raise ParityError(f"optimizer must be 'adamw' or a function building your optimizer from a parameter "
                          f"list, got {optimizer!r}")
    opt = _call(optimizer, params, what="your optimizer function")
    if not hasattr(opt, "step") or not hasattr(opt, "zero_grad"):
        raise ParityError(f"your optimizer function returned a {type(opt).__name__}, not an optimizer "
                          "(it needs .step() and .zero_grad())")
    side.optimizer, side.lab_optimizer = opt, False


def _reference_update(side: Side, before: dict[str, torch.Tensor], lr: float) -> dict[str, torch.Tensor]:
    """build-nanogpt's AdamW applied to your own parameters (as they were before the step) and gradients, its state
    (moments) carried across steps: the update your optimizer should have made."""
    named = {n: p for n, p in side.model.named_parameters() if p.requires_grad}
    if side.reference_state is None:
        shadow = {n: nn.Parameter(before[n].clone()) for n in named}
        side.reference_state = {"params": shadow, "opt": build_adamw(list(shadow.values()), lr)}
    shadow = side.reference_state["params"]
    with torch.no_grad():
        for n, p in named.items():
            shadow[n].copy_(before[n])
            shadow[n].grad = None if p.grad is None else p.grad.detach().clone()
    side.reference_state["opt"].step()
    return {n: t.detach() for n, t in shadow.items()}


# ---------------------------------------------------------------------------------------------------------
# compare_training


def _hf_model(hf_model):
    if isinstance(hf_model, (str, bytes)) or hasattr(hf_model, "__fspath__"):
        from ..loader import load_hf_model

        return load_hf_model(hf_model)
    if not (hasattr(hf_model, "config") and hasattr(hf_model, "transformer")):
        raise ParityError(f"hf_model must be a checkpoint name/path or a GPT2LMHeadModel, got "
                          f"{type(hf_model).__name__}")
    return hf_model


def training_copy(module: nn.Module, what: str) -> nn.Module:
    """A trainable copy (its own tensors, requires_grad on every floating parameter): the original is never
    trained, nor are its .grad fields touched."""
    try:
        twin = copy.deepcopy(module)
    except Exception as exc:
        raise ParityError(f"{what} cannot be copied for training (copy.deepcopy failed: {type(exc).__name__}: "
                          f"{exc})") from exc
    for p in twin.parameters():
        if p.is_floating_point():
            p.requires_grad_(True)
    return twin


def _precision(precision) -> Precision:
    name = parse(precision if precision is not None else "float32")
    name = "float32" if name == "auto" else name
    p = Precision(name)
    if p.weights_cast:
        raise ParityError(f"training parity runs float32 weights, alone or under autocast: precision {name!r} "
                          f"(weights in {name}) is not supported; use {name}-autocast, as build-nanogpt trains")
    return p


def _gaps(ours: Mapping[str, torch.Tensor], ref: Mapping[str, torch.Tensor]) -> dict[str, tuple[float, float]]:
    """Per name both have: (max |ours - ref|, max |ref|)."""
    return {name: tensor_gap(ours[name], r) for name, r in ref.items() if name in ours}


def eval_logits(model: nn.Module, x: torch.Tensor, vocab: int) -> torch.Tensor | None:
    """Your model's logits on x in eval mode (the forward check's mode), or None if it does not return them all."""
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = _call(model, x, what="your model (eval mode)")
    finally:
        model.train(was)
    full = _full_logits(out, x.size(0), x.size(1), vocab)
    return None if full is None else full[..., :vocab].float()


def compare_training(model, hf_model="gpt2", batch=None, batch_size: int = 4, seq_len: int = 64, steps: int = 0,
                     seed: int = 0, optimizer="adamw", lr: float = LR, precision: str | None = "float32", *,
                     name_map: Mapping[str, str] | None = None, layers: Mapping[str, str] | None = None,
                     model_name: str | None = None, fault: str | None = None, label: str = "Yours",
                     dropout: bool = False):
    """One training step (and `steps` optimizer steps) of `model` (an nn.Module whose parameters hold HF's values,
    in any layout) against HF's GPT2LMHeadModel (`hf_model`: a checkpoint name/path or the model) on one batch:
    `batch` (x, y), or B x T tokens drawn from `seed` with y = x shifted by one. Both run in train mode with
    dropout off; neither given model is changed (each side trains a copy). `optimizer`: "adamw" (build-nanogpt's,
    on both) or a function params -> your optimizer (HF keeps build-nanogpt's AdamW); `precision`: "float32" or an
    autocast regime ("bfloat16-autocast"), judged against HF's own error there. `dropout=True`: dropout on, as each
    model has it (HF's config rates, HF in eager attention), both sides drawing from `seed`: agreement then needs the
    same dropout places, rates and order of random draws as GPT-2's. Returns a TrainingReport."""
    from .train_judge import judge_training

    t0 = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise ParityError("training parity needs your model as a torch.nn.Module (a plain function has no "
                          "parameters to train)")
    if not isinstance(steps, int) or steps < 0 or steps > 100:
        raise ParityError(f"steps must be an integer from 0 to 100, got {steps!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ParityError(f"lr must be a positive number, got {lr!r}")
    p = _precision(precision)
    hf_src = _hf_model(hf_model)
    cfg = hf_src.config
    vocab, width, n_layer = int(cfg.vocab_size), int(cfg.n_embd), int(cfg.n_layer)
    device = next(model.parameters()).device if any(True for _ in model.parameters()) else torch.device("cpu")
    if batch is None:
        for what, v in (("batch_size", batch_size), ("seq_len", seq_len)):
            if not isinstance(v, int) or v < 1:
                raise ParityError(f"{what} must be a positive integer, got {v!r}")
        if seq_len > int(cfg.n_positions):
            raise ParityError(f"seq_len {seq_len} exceeds the model's context of {cfg.n_positions}")
        x, y = make_batch(batch_size, seq_len, vocab, seed, device)
    else:
        x, y = check_batch(batch, vocab, int(cfg.n_positions))
        x, y = x.to(device), y.to(device)
    hf_params = {k: v.detach() for k, v in hf_parameters(hf_src).items()}
    matching = match_parameters(model, hf_src, name_map)
    if not isinstance(dropout, bool):
        raise ParityError(f"dropout must be True or False, got {dropout!r}")
    drop = seed if dropout else None
    hf = training_copy(hf_src, "HF's model").to(device).float()
    mine = Side(training_copy(model, "your model"), label, matching, layers=layers, dropout_seed=drop)
    sides = [mine, Side(hf, "HF", None, dropout_seed=drop)]
    if p.low:
        sides.append(Side(training_copy(hf_src, "HF's model").to(device).float(), "HF low", None, dropout_seed=drop))
    if dropout:  # HF's reference draws: its eager attention, whose attention-weight dropout is an nn.Dropout
        for side in sides[1:]:
            side.model.config._attn_implementation = "eager"
    runs = []
    for i, side in enumerate(sides):
        regime_p = FLOAT32 if side.label == "HF" and p.low else p
        runs.append(forward_backward(side, x, y, vocab, hf_params, width, n_layer, regime_p, want_streams=True))
    with regime(p, device.type):
        runs[0].eval_logits = eval_logits(mine.model, x, vocab)
    if dropout:  # with dropout on, the eval-mode check is against HF in eval mode
        with regime(FLOAT32 if p.low else p, device.type):
            runs[1].eval_logits = eval_logits(hf, x, vocab)
    step_runs: list[StepRun] = []
    if steps:
        _build_optimizer(mine, optimizer, lr)
        for side in sides[1:]:
            _build_optimizer(side, "adamw", lr)
        regime_of = {id(s): FLOAT32 if s.label == "HF" and p.low else p for s in sides}
        for k in range(1, steps + 1):
            before = {n: q.detach().clone() for n, q in mine.model.named_parameters() if q.requires_grad} \
                if not mine.lab_optimizer else None
            for side in sides:
                _call(side.optimizer.step, what="your optimizer's step()") if side is mine else side.optimizer.step()
            updates = None
            if before is not None:
                ref_after = _reference_update(mine, before, lr)
                after = {n: q.detach() for n, q in mine.model.named_parameters() if q.requires_grad}
                mine_hf, _ = to_hf_layout(after, matching, hf_params, width)
                ref_hf, _ = to_hf_layout(ref_after, matching, hf_params, width)
                updates = {n: (g[0], float(hf_params[n].abs().max())) for n, g in _gaps(mine_hf, ref_hf).items()}
            mine_now, _ = to_hf_layout({n: q.detach() for n, q in mine.model.named_parameters()}, matching,
                                       hf_params, width)
            gaps = _gaps(mine_now, {n: q.detach() for n, q in hf.named_parameters()})
            del mine_now
            if k < steps:  # the next step's forward and backward give the loss after this one
                losses = [forward_backward(s, x, y, vocab, hf_params, width, n_layer, regime_of[id(s)],
                                           want_streams=False, keep=False).loss for s in sides]
            else:
                losses = [loss_only(s, x, y, vocab, regime_of[id(s)]) for s in sides]
            step_runs.append(StepRun(step=k, loss=losses[0], hf_loss=losses[1],
                                     hf_low_loss=losses[2] if p.low else None, params=gaps, updates=updates))
    timings = {"total_s": time.perf_counter() - t0}
    return judge_training(runs[0], runs[1], runs[2] if p.low else None, step_runs, matching, cfg,
                          precision=p, batch=(x, y), model_name=model_name or getattr(cfg, "_name_or_path", None)
                          or "custom", fault=fault, label=label, optimizer="adamw" if mine.lab_optimizer or not steps
                          else "yours", lr=lr, timings=timings, dropout=dropout)
