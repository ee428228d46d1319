"""Bug lab: porting mistakes, everywhere or in one block, injected into a copy of *our* model; knows our modules,
never HF's.

Each fault is a real mistake people make when porting GPT-2. The faulty copy shares every weight it does not
change with the original (no second copy of the model), and the original is never modified.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ParityLabError
from .kernels import Linear, attend
from .model import GPT, Block, CausalSelfAttention, KVCache


class FaultError(ParityLabError, ValueError):
    """An unknown fault name, or a block the model does not have."""


@dataclass(frozen=True)
class Fault:
    name: str  # "erf_gelu" (every block) or "erf_gelu@3" / "erf_gelu@last" (one block only)
    title: str
    mistake: str  # what the porter did wrong, in one line
    first_layer: str  # where the comparison should first see it: "embeddings", "block 0", "block last", "lm_head"
    block: int | str | None = None  # the one block it is confined to (an index or "last"); None: not confined

    def expected_layer(self, n_layer: int) -> str:
        """first_layer in a model of n_layer blocks ("block last" -> "block {n_layer - 1}")."""
        if self.block is None:
            return self.first_layer
        return f"block {_block_index(self.block, n_layer, self.name)}"


# Mistakes that live in every block, and can be confined to one: name -> (title, mistake)
_BLOCK_FAULTS = {
    "erf_gelu": ("erf GELU", "used nn.GELU() (exact erf) instead of GPT-2's tanh approximation"),
    "ln_eps_1e-6": ("LayerNorm eps 1e-6", "used LayerNorm eps=1e-6 instead of GPT-2's 1e-5"),
    "c_proj_not_transposed": ("attn.c_proj not transposed",
                              "copied HF's Conv1D weight of attn.c_proj into nn.Linear without transposing it"),
    "no_causal_mask": ("no causal mask", "forgot the causal mask: every position sees the future"),
    "qk_swapped": ("q and k swapped", "split c_attn's output as (k, q, v) instead of (q, k, v)"),
    "heads_swapped": ("heads 0 and 1 swapped", "merged the attention heads in the wrong order (heads 0 and 1 swapped)"),
    "bf16_autocast": ("bf16 autocast", "ran the model under torch.autocast(bfloat16)"),
    "no_attention_scale": ("attention scale missing", "forgot to divide scores by sqrt(head_dim)"),
}
# The listing (CLI --list-faults, the dashboard's dropdown): every mistake everywhere, and a few confined to the
# last block. Any "<mistake>@<block>" with a mistake of _BLOCK_FAULTS is also accepted by get_fault, apply_fault and
# FAULTS["erf_gelu@2"], though not listed (so `"erf_gelu@2" in FAULTS` is False).
_LISTED_IN_LAST_BLOCK = ("erf_gelu", "ln_eps_1e-6", "qk_swapped", "heads_swapped")


def _block_index(block: int | str, n_layer: int, name: str) -> int:
    k = n_layer - 1 if block == "last" else int(block)
    if not 0 <= k < n_layer:
        raise FaultError(f"fault {name!r}: the model has blocks 0 to {n_layer - 1}, not {block}")
    return k


def _confined(base: str, block: int | str) -> Fault:
    title, mistake = _BLOCK_FAULTS[base]
    where = "the last block" if block == "last" else f"block {block}"
    return Fault(f"{base}@{block}", f"{title}, {where} only", f"{mistake}, in {where} only",
                 "block last" if block == "last" else f"block {block}", block)


class _Faults(dict):
    """The listed faults (iteration, len, keys, `in`); FAULTS[name] also resolves any "<mistake>@<block>"."""

    def __missing__(self, name):
        base, sep, block = str(name).partition("@")
        if sep and base in _BLOCK_FAULTS and (block == "last" or (block.isdigit() and block == str(int(block)))):
            return _confined(base, "last" if block == "last" else int(block))
        raise KeyError(name)


FAULTS: dict[str, Fault] = _Faults(
    {f.name: f for f in [
        *(Fault(name, title, mistake, "block 0") for name, (title, mistake) in _BLOCK_FAULTS.items()),
        Fault("untied_lm_head", "lm_head untied (random)",
              "left lm_head as its own randomly initialised matrix instead of tying it to wte", "lm_head"),
        Fault("no_position_embeddings", "positional embeddings dropped", "forgot to add wpe", "embeddings"),
        *(_confined(name, "last") for name in _LISTED_IN_LAST_BLOCK),
    ]}
)


def get_fault(name: str) -> Fault:
    """The fault called `name` (listed, or "<mistake>@<block>"); FaultError names the known ones otherwise."""
    try:
        return FAULTS[name]
    except (KeyError, TypeError):
        raise FaultError(f"unknown fault {name!r}; known faults: {', '.join(FAULTS)} "
                         f"(and any of {', '.join(_BLOCK_FAULTS)} confined to one block, as name@3 or name@last)") from None


class FaultyAttention(CausalSelfAttention):
    """Attention with one of three mistakes switched on: no causal mask, q/k swapped, no 1/sqrt(hs) scale."""

    causal: bool = True
    swap_qk: bool = False
    swap_heads: bool = False
    scale: float | None = None  # None: SDPA's default 1/sqrt(hs)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.size()
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        if self.swap_qk:
            q, k = k, q
        q, k, v = (t.reshape(B, T, self.n_head, hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        start = 0
        if cache is not None:
            start, end = cache.pos, cache.pos + T
            cache.k[self.layer_idx, :, :, start:end] = k
            cache.v[self.layer_idx, :, :, start:end] = v
            k, v = cache.k[self.layer_idx, :, :, :end], cache.v[self.layer_idx, :, :, :end]
        y = attend(q, k, v, start, causal=self.causal, scale=self.scale)  # (B, nh, T, hs)
        if self.swap_heads:
            y = y[:, [1, 0, *range(2, self.n_head)]]
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


# Both run aten's bf16 kernels, whose bits are not checked to be the same at any thread count: `uses_autocast` tells
# core.kernels.thread_invariant so (the parity engine then runs HF's reference after our generation, not beside it).
class _AutocastGPT(GPT):
    uses_autocast = True

    def forward(self, *args, **kwargs):
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
            out = super().forward(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            return out.float()
        out.logits = out.logits.float()
        out.hidden = [h.float() for h in out.hidden] if out.hidden is not None else None
        return out


class _AutocastBlock(Block):
    uses_autocast = True

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
            out = super().forward(x, cache)
        return out.to(x.dtype)


def _inject(faulty: GPT, base: str, blocks: list[Block]) -> None:
    """Mistake `base` (one of _BLOCK_FAULTS) in each of `blocks` (modules of `faulty`, already copied)."""
    for block in blocks:
        if base == "erf_gelu":
            block.mlp.approximate = "none"
        elif base == "ln_eps_1e-6":
            block.ln_1.eps = block.ln_2.eps = 1e-6
        elif base == "c_proj_not_transposed":
            w = block.attn.c_proj.weight
            block.attn.c_proj.weight = nn.Parameter(w.detach().t().contiguous(), requires_grad=False)
        elif base == "bf16_autocast":
            block.__class__ = _AutocastBlock
        else:
            flags = {"no_causal_mask": dict(causal=False), "qk_swapped": dict(swap_qk=True),
                     "heads_swapped": dict(swap_heads=True), "no_attention_scale": dict(scale=1.0)}[base]
            block.attn.__class__ = FaultyAttention
            for key, value in flags.items():
                setattr(block.attn, key, value)


def apply_fault(model: GPT, name: str | None) -> GPT:
    """A copy of `model` with fault `name` injected (sharing all unchanged weights); `model` itself if None.
    `name` is a listed fault or "<mistake>@<block>" (block index or "last") for a mistake in that block only."""
    if name in (None, "", "none"):
        return model
    fault = get_fault(name)
    base = fault.name.partition("@")[0]
    if base == "heads_swapped" and model.config.n_head < 2:
        raise FaultError(f"fault {name!r} needs at least 2 attention heads; the model has {model.config.n_head}")
    k = None if fault.block is None else _block_index(fault.block, model.config.n_layer, name)
    # deep-copy the modules but not the parameters: the copy shares every weight until a fault replaces one
    faulty = copy.deepcopy(model, memo={id(p): p for p in model.parameters()})
    h = faulty.transformer.h
    if k is not None:
        _inject(faulty, base, [h[k]])
    elif base == "bf16_autocast":
        faulty.__class__ = _AutocastGPT
    elif base == "ln_eps_1e-6":
        for ln in faulty.modules():
            if isinstance(ln, nn.LayerNorm):
                ln.eps = 1e-6
    elif base in _BLOCK_FAULTS:
        _inject(faulty, base, list(h))
    elif base == "untied_lm_head":
        cfg = faulty.config
        head = Linear(cfg.n_embd, cfg.vocab_size, bias=False).to(device=model.device, dtype=model.dtype)
        g = torch.Generator().manual_seed(0)  # a fixed "random init", as nn.Linear would give (std 0.02 as GPT-2)
        head.weight = nn.Parameter(
            (torch.randn(cfg.vocab_size, cfg.n_embd, generator=g) * 0.02).to(model.device, model.dtype),
            requires_grad=False,
        )
        faulty.lm_head = head
    elif base == "no_position_embeddings":
        wpe = faulty.transformer.wpe
        wpe.weight = nn.Parameter(torch.zeros_like(wpe.weight), requires_grad=False)
    return faulty.eval()


# ---------------------------------------------------------------------------------------------------------
# Training faults: mistakes that pass the forward check (eval mode, no gradients) and show only when training.
# Judged by core.parity.compare_training; each names where the training comparison should first see it.


@dataclass(frozen=True)
class TrainingFault:
    name: str  # "detach" (every block), "detach@1" / "detach@last" (one block)
    title: str
    mistake: str
    first_layer: str | None  # "block 0", "block last", "lm_head"; None: no layer (the stream's gradient agrees)
    first_parameter: str | None  # HF's name ("{k}": the fault's block); None: not one parameter
    block: int | str | None = None
    needs_steps: bool = False  # only an optimizer step shows it

    def expected_layer(self, n_layer: int) -> str | None:
        if self.first_layer is None or self.block is None:
            return self.first_layer
        return f"block {_block_index(self.block, n_layer, self.name)}"

    def expected_parameter(self, n_layer: int) -> str | None:
        if self.first_parameter is None:
            return None
        k = _block_index(self.block, n_layer, self.name) if self.block is not None else 0
        return self.first_parameter.format(k=k)


_TRAINING = {
    "untied_head_copy": ("lm_head a copy of wte",
                         "made lm_head its own parameter initialised as a copy of wte instead of tying the two",
                         None, "transformer.wte.weight"),
    "detach": (".detach() in a block", "left a .detach() on the attention branch: x = x + attn(ln_1(x)).detach()",
               "block 0", "transformer.h.{k}.ln_1.weight"),
    "dropout": ("dropout left on", "applied F.dropout(p=0.1, training=self.training) after attention and MLP, a "
                "dropout that nn.Dropout's switch cannot reach", "block 0", None),
    "decay_all": ("weight decay on every parameter", "gave AdamW every parameter with weight_decay=0.1, biases and "
                  "LayerNorm gains included", None, "transformer.ln_f.weight"),
    "unshifted_loss": ("loss on unshifted targets", "computed the loss against the inputs themselves instead of the "
                       "next tokens (targets not shifted by one)", "lm_head", "transformer.ln_f.weight"),
}


def _training_fault(base: str, block: int | str | None) -> TrainingFault:
    title, mistake, layer, param = _TRAINING[base]
    if block is None:
        return TrainingFault(base, title, mistake, layer, param, needs_steps=base == "decay_all")
    where = "the last block" if block == "last" else f"block {block}"
    return TrainingFault(f"{base}@{block}", f"{title}, {where} only", f"{mistake}, in {where} only",
                         "block last" if block == "last" else f"block {block}", param, block)


TRAINING_FAULTS: dict[str, TrainingFault] = {
    f.name: f for f in [_training_fault("untied_head_copy", None), _training_fault("detach", "last"),
                        _training_fault("dropout", None), _training_fault("decay_all", None),
                        _training_fault("unshifted_loss", None)]
}
_CONFINABLE = ("detach", "dropout")


def get_training_fault(name: str) -> TrainingFault:
    """A listed training fault, or "detach@3" / "dropout@last" confined to one block; FaultError otherwise."""
    if name in TRAINING_FAULTS:
        return TRAINING_FAULTS[name]
    base, sep, block = str(name).partition("@")
    if sep and base in _CONFINABLE and (block == "last" or (block.isdigit() and block == str(int(block)))):
        return _training_fault(base, "last" if block == "last" else int(block))
    if base in _CONFINABLE and not sep:
        return _training_fault(base, None)
    raise FaultError(f"unknown training fault {name!r}; known: {', '.join(TRAINING_FAULTS)} (detach and dropout "
                     "also as name@3 or name@last)")


class _DetachBlock(Block):
    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache).detach()
        return x + self.mlp(self.ln_2(x))


class _DropoutBlock(Block):
    p: float = 0.1

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + F.dropout(self.attn(self.ln_1(x), cache), self.p, self.training)
        return x + F.dropout(self.mlp(self.ln_2(x)), self.p, self.training)


class _UnshiftedLossGPT(GPT):
    """forward(idx, targets) -> (logits, loss), the loss against idx itself; without targets, GPT's forward."""

    def forward(self, idx: torch.Tensor, *args, targets: torch.Tensor | None = None, **kwargs):
        out = super().forward(idx, *args, **kwargs)
        if targets is None:
            return out
        return out, F.cross_entropy(out.flatten(0, 1), idx.flatten())


def apply_training_fault(model: GPT, name: str | None, lr: float | None = None):
    """(a copy of `model` with training fault `name`, the optimizer function it brings or None); the model itself
    and None for no fault. The copy shares every weight it does not replace (compare_training trains a copy)."""
    if name in (None, "", "none"):
        return model, None
    fault = get_training_fault(name)
    base = fault.name.partition("@")[0]
    faulty = copy.deepcopy(model, memo={id(p): p for p in model.parameters()})
    h = faulty.transformer.h
    blocks = list(h) if fault.block is None else [h[_block_index(fault.block, model.config.n_layer, name)]]
    optimizer = None
    if base == "detach":
        for b in blocks:
            b.__class__ = _DetachBlock
    elif base == "dropout":
        for b in blocks:
            b.__class__ = _DropoutBlock
    elif base == "untied_head_copy":
        faulty.lm_head = Linear(model.config.n_embd, model.config.vocab_size, bias=False).to(model.device)
        faulty.lm_head.weight = nn.Parameter(model.transformer.wte.weight.detach().clone(), requires_grad=False)
    elif base == "unshifted_loss":
        faulty.__class__ = _UnshiftedLossGPT
    elif base == "decay_all":
        from .parity.training import ADAM_EPS, BETAS, LR, WEIGHT_DECAY

        rate = LR if lr is None else lr

        def optimizer(params):
            return torch.optim.AdamW([{"params": list(params), "weight_decay": WEIGHT_DECAY}], lr=rate, betas=BETAS,
                                     eps=ADAM_EPS)
    return faulty.eval(), optimizer
