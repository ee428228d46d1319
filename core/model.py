"""GPT-2 in plain PyTorch (inference only): knows the architecture and a KV cache, not where weights come from.

Modules are named exactly as in HuggingFace's GPT2LMHeadModel (`transformer.wte`, `transformer.h.N.attn.c_attn`,
... `lm_head`), so a state dict maps onto it one key for one key; only the four Conv1D weights per block are
stored transposed (nn.Linear layout). Dropout is not implemented: this model never trains.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ParityLabError

EPS32 = float(torch.finfo(torch.float32).eps)

# HF activation names we implement, and how. gelu_new and gelu_pytorch_tanh are the same function (tanh
# approximation); HF computes the first in Python ops, the second in C: they agree to float rounding.
_ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}


class UnsupportedConfigError(ParityLabError, ValueError):
    """An HF GPT2Config asks for something this model does not implement."""


class ContextLengthError(ParityLabError, ValueError):
    """A sequence would run past the model's n_positions."""


@dataclass(frozen=True)
class GPTConfig:
    n_positions: int = 1024  # max sequence length (block size)
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_inner: int | None = None  # MLP hidden width; None means 4 * n_embd
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"
    tie_word_embeddings: bool = True
    eos_token_id: int = 50256

    def __post_init__(self):
        if self.activation_function not in _ACTIVATIONS:
            raise UnsupportedConfigError(
                f"activation_function={self.activation_function!r} is not supported "
                f"(supported: {', '.join(sorted(_ACTIVATIONS))})"
            )
        if self.n_embd % self.n_head:
            raise UnsupportedConfigError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")

    @property
    def mlp_width(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @property
    def gelu_approximate(self) -> str:
        return _ACTIVATIONS[self.activation_function]

    @classmethod
    def from_hf(cls, hf_config) -> "GPTConfig":
        """From a transformers GPT2Config; refuses every option whose effect this model would silently drop."""
        get = lambda name, default=None: getattr(hf_config, name, default)  # noqa: E731
        model_type = get("model_type")
        if model_type not in (None, "gpt2"):
            raise UnsupportedConfigError(f"model_type={model_type!r}: only GPT-2 checkpoints are supported")
        refused = {
            "scale_attn_by_inverse_layer_idx": (get("scale_attn_by_inverse_layer_idx", False), False),
            "reorder_and_upcast_attn": (get("reorder_and_upcast_attn", False), False),
            "add_cross_attention": (get("add_cross_attention", False), False),
            "scale_attn_weights": (get("scale_attn_weights", True), True),
            "is_encoder_decoder": (get("is_encoder_decoder", False), False),
        }
        for name, (value, supported) in refused.items():
            if bool(value) != supported:
                raise UnsupportedConfigError(f"{name}={value!r} is not supported (only {supported})")
        eos = get("eos_token_id", 50256)
        if isinstance(eos, (list, tuple)):
            eos = eos[0] if eos else 50256
        return cls(
            n_positions=int(get("n_positions")),
            vocab_size=int(get("vocab_size")),
            n_layer=int(get("n_layer")),
            n_head=int(get("n_head")),
            n_embd=int(get("n_embd")),
            n_inner=get("n_inner"),
            layer_norm_epsilon=float(get("layer_norm_epsilon")),
            activation_function=str(get("activation_function")),
            tie_word_embeddings=bool(get("tie_word_embeddings", True)),
            eos_token_id=int(eos if eos is not None else 50256),
        )


class KVCache:
    """Preallocated keys/values for every layer: (n_layer, B, nh, max_len, hs); `pos` tokens are filled."""

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, *, device=None, dtype=torch.float32):
        if max_len > config.n_positions:
            raise ContextLengthError(f"KV cache of {max_len} tokens exceeds n_positions={config.n_positions}")
        hs = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.n_head, max_len, hs)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.pos = 0
        self.max_len = max_len


# ---------------------------------------------------------------------------------------------------------
# Kernels. The product's numbers must not depend on which BLAS runs them beyond float rounding, nor on the thread
# count at all (the parity engine runs our side beside HF's on a share of the cores: same bits either way).
#   - MKL (F.linear): at 2-16 rows it splits the dot products across threads, so its bits change with the thread
#     count; on an AMD EPYC (Zen 4) it ran GPT-2's decode-sized products 2-5x slower than oneDNN.
#   - oneDNN's fp32 matmul (torch.ops.mkldnn._linear_pointwise, the kernel torch.compile emits for CPU linears):
#     reads the weight where it is (HF's (in, out) Conv1D storage seen transposed: no copy), fp32 accumulation,
#     the same bits at any thread count (checked).
# linear_kernel() picks one per process: oneDNN when it is available, accurate to fp32, thread-invariant and not
# clearly slower than F.linear on this CPU (a check of ~130 ms at first use, timed on one thread, best of
# interleaved runs, so that a busy machine cannot tip it); $PARITY_LAB_LINEAR=onednn|aten forces one.

KERNELS = ("onednn", "aten")
ONEDNN_SLOWER_OK = 1.25  # oneDNN is chosen unless it is more than this much slower than F.linear
_KERNEL: str | None = None
_KERNEL_LOCK = threading.Lock()


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")


def _best_ms(fns: list, reps: int = 9) -> list[float]:
    """Each function's best time of `reps`, interleaved: a busy machine slows some runs, never speeds one up."""
    for fn in fns:
        fn()  # oneDNN builds its kernel for a shape at first use
    best = [math.inf] * len(fns)
    for _ in range(reps):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t)
    return [b * 1e3 for b in best]


def _check_onednn() -> str | None:
    """Why oneDNN must not run our linears here (None: it may). Accuracy against float64, bits at 1 thread
    against the current count, then speed against F.linear on decode-sized products in both weight layouts."""
    try:
        if not torch.backends.mkldnn.is_available():
            return "oneDNN is not available in this torch build"
        g = torch.Generator().manual_seed(0)
        w_in_out = torch.randn(768, 3072, generator=g)  # HF's Conv1D storage; the weight is its transposed view
        w_out_in = torch.randn(3072, 768, generator=g)
        bias = torch.randn(3072, generator=g)
        cases = [(torch.randn(rows, 768, generator=g), w) for rows in (1, 5, 37) for w in (w_in_out.t(), w_out_in)]
        n = torch.get_num_threads()
        for x, w in cases:
            got = _onednn(x, w, bias)
            exact = torch.addmm(bias.double(), x.double(), w.double().t())
            # fp32 accumulation of 768 products stays within ~eps * sqrt(K) of the scale; bf16 would be ~1e-3 off
            if not (got - exact).abs().max() <= 4 * EPS32 * math.sqrt(768) * exact.abs().max():
                return "oneDNN's fp32 matmul is not accurate to fp32 here"
            if n > 1:
                torch.set_num_threads(1)
                try:
                    single = _onednn(x, w, bias)
                finally:
                    torch.set_num_threads(n)
                if not torch.equal(got, single):
                    return "oneDNN's results change with the thread count here"
        x5 = torch.randn(5, 768, generator=g)
        products = [(x, w) for x in (x5, x5[:1]) for w in (w_in_out.t(), w_out_in)]
        torch.set_num_threads(1)  # each kernel's own speed: on a busy machine a thread team waits for its slowest
        try:
            times = _best_ms([lambda x=x, w=w: _onednn(x, w, bias) for x, w in products]
                             + [lambda x=x, w=w: F.linear(x, w, bias) for x, w in products])
        finally:
            torch.set_num_threads(n)
        ours, aten = sum(times[: len(products)]), sum(times[len(products):])
        if ours > ONEDNN_SLOWER_OK * aten:  # a little slower still wins: its bits let us run beside HF
            return f"oneDNN is slower than F.linear here ({ours:.2f} ms vs {aten:.2f} ms)"
        return None
    except (RuntimeError, AttributeError) as exc:  # an op missing from this build, or refusing these inputs
        return f"oneDNN's linear failed here: {exc}"


def linear_kernel() -> str:
    """The kernel our fp32 CPU linears use in this process: "onednn" or "aten" (F.linear); decided once."""
    global _KERNEL
    if _KERNEL is None:
        with _KERNEL_LOCK:
            if _KERNEL is None:
                forced = os.environ.get("PARITY_LAB_LINEAR", "auto").strip().lower() or "auto"
                if forced not in (*KERNELS, "auto"):
                    raise ValueError(f"PARITY_LAB_LINEAR must be onednn, aten or auto, got {forced!r}")
                if forced == "aten" or (forced == "auto" and _check_onednn() is not None):
                    _KERNEL = "aten"
                else:
                    _KERNEL = "onednn"
    return _KERNEL


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, computed by linear_kernel()'s choice for fp32 on the CPU. Autocast and autograd need aten's op
    (oneDNN's has no backward, and autocast does not see it), so they always get F.linear."""
    if (weight.dtype == torch.float32 and x.dtype == torch.float32 and weight.device.type == "cpu"
            and (weight.is_contiguous() or weight.t().is_contiguous())
            and not torch.is_autocast_enabled("cpu")
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and linear_kernel() == "onednn"):
        return _onednn(x, weight, bias)
    return F.linear(x, weight, bias)


def thread_invariant(model: "GPT | None" = None) -> bool:
    """Does our forward (of `model`, if given) give the same bits at any thread count? Yes for an fp32 CPU model
    whose linears run on oneDNN (attention never splits a dot product across threads), unless any of it runs under
    autocast (aten's bf16 kernels are not checked). The parity engine runs us beside HF only when it does."""
    if linear_kernel() != "onednn":
        return False
    if model is None:
        return True
    return model.dtype == torch.float32 and model.device.type == "cpu" and not model.uses_autocast


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int, *, causal: bool = True,
           scale: float | None = None) -> torch.Tensor:
    """Attention of T queries at positions start.. over the keys 0 .. start+T-1: (B, nh, T, hs) -> (B, nh, T, hs).
    One fp32 query (a decoding step) is q @ k^T, softmax, @ v: SDPA's one-query kernel splits the keys across
    threads, which makes its bits depend on the thread count (bf16, never run beside HF, keeps SDPA: ~10% faster)."""
    T = q.size(2)
    if T == 1 and start > 0 and q.dtype == torch.float32:  # one new token sees every cached one
        att = (q @ k.transpose(-2, -1)) * (scale if scale is not None else 1.0 / math.sqrt(q.size(-1)))
        return att.softmax(dim=-1) @ v  # (B, nh, 1, hs)
    if not causal or T == 1:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    if start == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    # a chunk after a cached prefix: query i sees keys 0 .. start+i
    mask = torch.ones(T, start + T, dtype=torch.bool, device=q.device).tril(diagonal=start)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _bf16_prepack_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        return False


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state-dict keys) computed with `linear` above, or, for bf16 on the CPU
    after GPT.use_decode_layout, with a oneDNN-prepacked copy of the weight (bit-identical to F.linear, ~1.4x
    faster at decode batch sizes; this is the kernel torch.compile's inductor emits for bf16 linears)."""

    packed: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None and x.dtype == torch.bfloat16:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return linear(x, self.weight, self.bias)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.layer_idx = layer_idx
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd)  # q, k, v for all heads
        self.c_proj = Linear(config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.size()
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.reshape(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.reshape(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.reshape(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        start = 0
        if cache is not None:
            start = cache.pos
            end = start + T
            cache.k[self.layer_idx, :, :, start:end] = k
            cache.v[self.layer_idx, :, :, start:end] = v
            k = cache.k[self.layer_idx, :, :, :end]  # (B, nh, start+T, hs)
            v = cache.v[self.layer_idx, :, :, :end]
        y = attend(q, k, v, start)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = Linear(config.n_embd, config.mlp_width)
        self.c_proj = Linear(config.mlp_width, config.n_embd)
        self.approximate = config.gelu_approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)  # (B, T, C)
        return x + self.mlp(self.ln_2(x))


@dataclass
class GPTOutput:
    """logits: (B, T or 1, vocab); hidden: residual stream after embeddings, after each block, after ln_f."""

    logits: torch.Tensor
    hidden: list[torch.Tensor] | None = None


class GPT(nn.Module):
    uses_autocast = False  # the bug lab's bf16_autocast fault sets it on its copy (see thread_invariant)

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.n_positions, config.n_embd),
                h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
            )
        )
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight  # weight tying, as in GPT-2
        self.eval()  # inference only; there is no dropout to switch off, but keep the flag honest

    @property
    def device(self) -> torch.device:
        return self.transformer.wte.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.wte.weight.dtype

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        return KVCache(self.config, batch_size, max_len, device=self.device, dtype=self.dtype)

    def check_length(self, total: int) -> None:
        if total > self.config.n_positions:
            raise ContextLengthError(
                f"sequence of {total} tokens exceeds the model's context of n_positions={self.config.n_positions}"
            )

    def forward(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        *,
        last_only: bool = False,
        return_hidden: bool = False,
    ) -> torch.Tensor | GPTOutput:
        """idx (B, T) token ids -> logits (B, T, vocab_size); with last_only, logits of the last position only.

        With `cache`, idx continues the cached sequence and the cache advances by T. With return_hidden, a
        GPTOutput with the residual stream: [embeddings, block 0, ..., block n-1, ln_f] (n_layer + 2 tensors).
        """
        B, T = idx.size()
        start = cache.pos if cache is not None else 0
        self.check_length(start + T)
        if cache is not None and start + T > cache.max_len:
            raise ContextLengthError(f"KV cache holds {cache.max_len} tokens; {start + T} requested")
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
        hidden = [x] if return_hidden else None
        for block in self.transformer.h:
            x = block(x, cache)
            if hidden is not None:
                hidden.append(x)
        if cache is not None:
            cache.pos += T
        x = self.transformer.ln_f(x)
        if hidden is not None:
            hidden.append(x)
        if last_only:
            x = x[:, -1:, :]  # (B, 1, C): the head is the widest matmul; skip it where it isn't needed
        logits = self.lm_head(x)  # (B, T, vocab_size)
        return GPTOutput(logits, hidden) if return_hidden else logits

    @torch.no_grad()
    def use_decode_layout(self) -> "GPT":
        """Store every weight contiguous in nn.Linear's (out, in) layout, in place; returns self.

        The port gives the four Conv1D weights per block as transposed views of HF's (in, out) storage. For
        decoding on the CPU the (out, in) layout is faster (see `linear`; bench/bench_generate.py), but each
        re-laid weight is a copy: a model that shares HF's storage (the parity pair) stops sharing it. So
        `load_pretrained`, whose model shares nothing, uses this; the pair does not.
        """
        for block in self.transformer.h:
            for lin in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
                lin.weight = nn.Parameter(lin.weight.contiguous(), requires_grad=False)
        if self.dtype == torch.bfloat16 and self.device.type == "cpu" and _bf16_prepack_available():
            for lin in self.modules():  # a prepacked copy per weight: bf16 decoding keeps two copies
                if isinstance(lin, Linear):
                    lin.packed = torch.ops.mkldnn._reorder_linear_weight(lin.weight, 1)
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # a tied lm_head is counted once
