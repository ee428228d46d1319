"""An independent GPT-2, written the way many people write their first one (not the lab's core/model.py):
separate q/k/v projections, attention spelled out with masked_fill, its own module names, forward returning
(logits, loss), and its own loader from a HuggingFace state dict. The lab's "bring your own model" example.

`mistake=` switches on one porting mistake, written in this file's own style, to show what the lab finds.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

MISTAKES = {  # name -> (what went wrong, where the lab should first see it; "last block" = block n_layer-1)
    "none": ("a correct port", None),
    "positions_off_by_one": ("positions counted from 1 instead of 0", "embeddings"),
    "no_mask": ("forgot the causal mask (invisible in a no-cache loop's samples, visible per layer)", "block 0"),
    "v_bias_dropped": ("dropped the value projection's bias when splitting c_attn", "block 0"),
    "eps_1e-6": ("LayerNorm eps 1e-6 instead of GPT-2's 1e-5", "block 0"),
    "softmax_over_queries": ("softmax over the query axis instead of the key axis", "block 0"),
    "erf_gelu_last_block": ("exact (erf) GELU in the last block only, tanh elsewhere", "last block"),
    "ln_2_from_ln_1_last_block": ("copy-paste: the last block's norm2 loaded from ln_1", "last block"),
    "head_not_tied": ("lm_head left as its own random matrix instead of tied to the token embeddings", "lm_head"),
}


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, *, masked: bool = True, softmax_dim: int = -1):
        super().__init__()
        self.n_heads, self.masked, self.softmax_dim = n_heads, masked, softmax_dim
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x):
        b, t, d = x.shape
        h = self.n_heads
        q = self.query(x).view(b, t, h, d // h).permute(0, 2, 1, 3)
        k = self.key(x).view(b, t, h, d // h).permute(0, 2, 1, 3)
        v = self.value(x).view(b, t, h, d // h).permute(0, 2, 1, 3)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // h)  # (b, h, t, t)
        if self.masked:
            future = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), diagonal=1)
            scores = scores.masked_fill(future, float("-inf"))
        weights = torch.softmax(scores, dim=self.softmax_dim)
        y = (weights @ v).permute(0, 2, 1, 3).reshape(b, t, d)
        return self.out(y)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, gelu: str = "tanh"):
        super().__init__()
        self.up = nn.Linear(d_model, d_ff)
        self.down = nn.Linear(d_ff, d_model)
        self.gelu = gelu

    def forward(self, x):
        return self.down(F.gelu(self.up(x), approximate=self.gelu))


class DecoderLayer(nn.Module):
    def __init__(self, d_model, n_heads, d_ff, eps, **attn):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model, eps=eps)
        self.attention = Attention(d_model, n_heads, **attn)
        self.norm2 = nn.LayerNorm(d_model, eps=eps)
        self.ffn = FeedForward(d_model, d_ff)

    def forward(self, x):
        x = x + self.attention(self.norm1(x))
        x = x + self.ffn(self.norm2(x))
        return x


class Decoder(nn.Module):
    def __init__(self, vocab, context, d_model, n_heads, n_layers, d_ff, eps, **attn):
        super().__init__()
        self.tokens = nn.Embedding(vocab, d_model)
        self.positions = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList([DecoderLayer(d_model, n_heads, d_ff, eps, **attn) for _ in range(n_layers)])
        self.norm = nn.LayerNorm(d_model, eps=eps)


class MyGPT2(nn.Module):
    """GPT-2 small-or-any-size; `decoder.blocks` and `decoder.norm` hold the residual stream."""

    def __init__(self, vocab=50257, context=1024, d_model=768, n_heads=12, n_layers=12, eps=1e-5,
                 first_position=0, **attn):
        super().__init__()
        self.context, self.first_position = context, first_position
        self.decoder = Decoder(vocab, context, d_model, n_heads, n_layers, 4 * d_model, eps, **attn)
        self.head = nn.Linear(d_model, vocab, bias=False)
        self.head.weight = self.decoder.tokens.weight

    def forward(self, ids, targets=None):
        b, t = ids.shape
        assert t <= self.context, f"sequence of {t} tokens is longer than the context {self.context}"
        x = self.decoder.tokens(ids) + self.decoder.positions(torch.arange(t, device=ids.device) + self.first_position)
        for block in self.decoder.blocks:
            x = block(x)
        logits = self.head(self.decoder.norm(x))
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss


def from_hf_state_dict(sd: dict, config, mistake: str = "none") -> MyGPT2:
    """Build MyGPT2 from GPT2LMHeadModel's state_dict() and config (HF's Conv1D weights are (in, out): transpose)."""
    if mistake not in MISTAKES:
        raise ValueError(f"unknown mistake {mistake!r}; known: {', '.join(MISTAKES)}")
    d, n = config.n_embd, config.n_layer
    model = MyGPT2(config.vocab_size, config.n_positions, d, config.n_head, n,
                   eps=1e-6 if mistake == "eps_1e-6" else config.layer_norm_epsilon,
                   first_position=1 if mistake == "positions_off_by_one" else 0,
                   masked=mistake != "no_mask", softmax_dim=-2 if mistake == "softmax_over_queries" else -1)
    g = lambda k: sd["transformer." + k].detach().clone()  # noqa: E731
    with torch.no_grad():
        model.decoder.tokens.weight.copy_(g("wte.weight"))
        model.decoder.positions.weight.copy_(g("wpe.weight"))
        for i, layer in enumerate(model.decoder.blocks):
            p = f"h.{i}."
            layer.norm1.weight.copy_(g(p + "ln_1.weight")); layer.norm1.bias.copy_(g(p + "ln_1.bias"))  # noqa: E702
            ln2 = "ln_1" if mistake == "ln_2_from_ln_1_last_block" and i == n - 1 else "ln_2"
            layer.norm2.weight.copy_(g(p + ln2 + ".weight")); layer.norm2.bias.copy_(g(p + ln2 + ".bias"))  # noqa: E702
            w, bias = g(p + "attn.c_attn.weight"), g(p + "attn.c_attn.bias")  # (d, 3d), (3d,)
            for j, lin in enumerate((layer.attention.query, layer.attention.key, layer.attention.value)):
                lin.weight.copy_(w[:, j * d:(j + 1) * d].t())
                lin.bias.copy_(bias[j * d:(j + 1) * d])
            if mistake == "v_bias_dropped":
                layer.attention.value.bias.zero_()
            layer.attention.out.weight.copy_(g(p + "attn.c_proj.weight").t())
            layer.attention.out.bias.copy_(g(p + "attn.c_proj.bias"))
            layer.ffn.up.weight.copy_(g(p + "mlp.c_fc.weight").t())
            layer.ffn.up.bias.copy_(g(p + "mlp.c_fc.bias"))
            down = g(p + "mlp.c_proj.weight")  # (4d, d)
            layer.ffn.down.weight.copy_(down.t())
            layer.ffn.down.bias.copy_(g(p + "mlp.c_proj.bias"))
        if mistake == "erf_gelu_last_block":
            model.decoder.blocks[n - 1].ffn.gelu = "none"
        model.decoder.norm.weight.copy_(g("ln_f.weight"))
        model.decoder.norm.bias.copy_(g("ln_f.bias"))
        if mistake == "head_not_tied":
            g0 = torch.Generator().manual_seed(0)
            model.head.weight = nn.Parameter(torch.randn(model.head.weight.shape, generator=g0) * 0.02)
    return model.eval()


def load(name_or_path: str = "gpt2", mistake: str = "none") -> MyGPT2:
    """From a Hub id or checkpoint directory, through transformers (as people do in their notebooks)."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(name_or_path)
    return from_hf_state_dict(hf.state_dict(), hf.config, mistake)
