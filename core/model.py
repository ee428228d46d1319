"""GPT-2 in plain PyTorch (inference only): knows the architecture and a KV cache, not where weights come from,
nor which kernels compute its linears and attention (core/kernels.py).

Modules are named exactly as in HuggingFace's GPT2LMHeadModel (`transformer.wte`, `transformer.h.N.attn.c_attn`,
... `lm_head`), so a state dict maps onto it one key for one key; only the four Conv1D weights per block are
stored transposed (nn.Linear layout). Dropout is not implemented: this model never trains.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ParityLabError
from .kernels import Linear, attend, prepack_bf16

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


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.layer_idx = layer_idx
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd)  # q, k, v for all heads
        self.c_proj = Linear(config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.size()  # batch, sequence length, embedding width (n_embd)
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
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
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C): the heads side by side
        return self.c_proj(y)  # (B, T, C)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = Linear(config.n_embd, config.mlp_width)
        self.c_proj = Linear(config.mlp_width, config.n_embd)
        self.approximate = config.gelu_approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.c_fc(x), approximate=self.approximate)  # (B, T, mlp_width)
        return self.c_proj(h)  # (B, T, C)


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)  # (B, T, C)
        return x + self.mlp(self.ln_2(x))  # (B, T, C)


@dataclass
class GPTOutput:
    """logits: (B, T or 1, vocab); hidden: residual stream after embeddings, after each block, after ln_f."""

    logits: torch.Tensor
    hidden: list[torch.Tensor] | None = None


class GPT(nn.Module):
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
        decoding on the CPU the (out, in) layout is faster (core/kernels.py; bench/bench_generate.py), but each
        re-laid weight is a copy: a model that shares HF's storage (the parity pair) stops sharing it. So
        `load_pretrained`, whose model shares nothing, uses this; the pair does not.
        """
        for block in self.transformer.h:
            for lin in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
                lin.weight = nn.Parameter(lin.weight.contiguous(), requires_grad=False)
        prepack_bf16(self)  # bf16 on the CPU: a oneDNN-prepacked copy per weight (core/kernels.py)
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # a tied lm_head is counted once
