"""Bug lab: named porting mistakes injected into a copy of *our* model; knows our modules, never HF's.

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
from .model import GPT, CausalSelfAttention, KVCache, Linear


class FaultError(ParityLabError, ValueError):
    """An unknown fault name."""


@dataclass(frozen=True)
class Fault:
    name: str
    title: str
    mistake: str  # what the porter did wrong, in one line
    first_layer: str  # where the comparison should first see it: "embeddings", "block 0", ..., "lm_head"


FAULTS: dict[str, Fault] = {
    f.name: f
    for f in [
        Fault("erf_gelu", "erf GELU", "used nn.GELU() (exact erf) instead of GPT-2's tanh approximation", "block 0"),
        Fault("ln_eps_1e-6", "LayerNorm eps 1e-6", "used LayerNorm eps=1e-6 instead of GPT-2's 1e-5", "block 0"),
        Fault("c_proj_not_transposed", "attn.c_proj not transposed",
              "copied HF's Conv1D weight of attn.c_proj into nn.Linear without transposing it", "block 0"),
        Fault("no_causal_mask", "no causal mask", "forgot the causal mask: every position sees the future", "block 0"),
        Fault("untied_lm_head", "lm_head untied (random)",
              "left lm_head as its own randomly initialised matrix instead of tying it to wte", "lm_head"),
        Fault("no_position_embeddings", "positional embeddings dropped", "forgot to add wpe", "embeddings"),
        Fault("qk_swapped", "q and k swapped", "split c_attn's output as (k, q, v) instead of (q, k, v)", "block 0"),
        Fault("bf16_autocast", "bf16 autocast", "ran the model under torch.autocast(bfloat16)", "block 0"),
        Fault("no_attention_scale", "attention scale missing", "forgot to divide scores by sqrt(head_dim)", "block 0"),
    ]
}


class FaultyAttention(CausalSelfAttention):
    """Attention with one of three mistakes switched on: no causal mask, q/k swapped, no 1/sqrt(hs) scale."""

    causal: bool = True
    swap_qk: bool = False
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
        mask = None
        if self.causal and T > 1:
            mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class _AutocastGPT(GPT):
    def forward(self, *args, **kwargs):
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
            out = super().forward(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            return out.float()
        out.logits = out.logits.float()
        out.hidden = [h.float() for h in out.hidden] if out.hidden is not None else None
        return out


def _faulty_attention(model: GPT, **flags) -> None:
    for block in model.transformer.h:
        block.attn.__class__ = FaultyAttention
        for key, value in flags.items():
            setattr(block.attn, key, value)


def apply_fault(model: GPT, name: str | None) -> GPT:
    """A copy of `model` with fault `name` injected (sharing all unchanged weights); `model` itself if None."""
    if name in (None, "", "none"):
        return model
    if name not in FAULTS:
        raise FaultError(f"unknown fault {name!r}; known faults: {', '.join(FAULTS)}")
    # deep-copy the modules but not the parameters: the copy shares every weight until a fault replaces one
    faulty = copy.deepcopy(model, memo={id(p): p for p in model.parameters()})
    h = faulty.transformer.h
    if name == "erf_gelu":
        for block in h:
            block.mlp.approximate = "none"
    elif name == "ln_eps_1e-6":
        for ln in faulty.modules():
            if isinstance(ln, nn.LayerNorm):
                ln.eps = 1e-6
    elif name == "c_proj_not_transposed":
        for block in h:
            w = block.attn.c_proj.weight
            block.attn.c_proj.weight = nn.Parameter(w.detach().t().contiguous(), requires_grad=False)
    elif name == "no_causal_mask":
        _faulty_attention(faulty, causal=False)
    elif name == "untied_lm_head":
        cfg = faulty.config
        head = Linear(cfg.n_embd, cfg.vocab_size, bias=False).to(device=model.device, dtype=model.dtype)
        g = torch.Generator().manual_seed(0)  # a fixed "random init", as nn.Linear would give (std 0.02 as GPT-2)
        head.weight = nn.Parameter(
            (torch.randn(cfg.vocab_size, cfg.n_embd, generator=g) * 0.02).to(model.device, model.dtype),
            requires_grad=False,
        )
        faulty.lm_head = head
    elif name == "no_position_embeddings":
        wpe = faulty.transformer.wpe
        wpe.weight = nn.Parameter(torch.zeros_like(wpe.weight), requires_grad=False)
    elif name == "qk_swapped":
        _faulty_attention(faulty, swap_qk=True)
    elif name == "bf16_autocast":
        faulty.__class__ = _AutocastGPT
    elif name == "no_attention_scale":
        _faulty_attention(faulty, scale=1.0)
    return faulty.eval()
