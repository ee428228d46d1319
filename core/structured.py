"""Random HF GPT-2s for tests, benchmarks and the offline demo, built by changing weights only; knows no parity code.

`random_gpt2` is the one recipe for a random GPT2LMHeadModel: HF's own init under a fixed seed (drawn inside
torch.random.fork_rng, so the caller's global RNG is untouched), then optionally ln_f's gain raised so logits
have std ~logit_std (the 0.02-std init otherwise gives near-uniform next-token distributions; a trained GPT-2's
are peaked), and biases, LayerNorm gains and MLP input weights moved off their init values by a torch.Generator,
so that every mistake in loading a checkpoint can show.

`structured_gpt2` adds real GPT-2's massive activations to it. Real GPT-2 carries a few residual channels at
magnitudes in the thousands (~3,000 in GPT-2 small, channels 138, 378 and 447 of 768) at the first position
only, from an early block on, and its LayerNorms give those channels tiny gains so the rest of the model ignores
them (Sun et al. 2024, "Massive activations in large language models"). A parity tool must localise faults in
such a model; these models let the tests and bench/calibrate_tolerances.py check that without downloading GPT-2.

The recipe (`add_massive_activations`), on any GPT2LMHeadModel with n_embd = C:
  * massive channels: round(C * f) for f in (0.18, 0.49, 0.58, ...) (GPT-2 small's 138/768, 378/768, 447/768),
    one per requested magnitude (signed; 300 to 3,000 in VARIANTS);
  * onset "embeddings": wpe[0, c] = magnitude, so every sequence has them at position 0 from the start;
  * onset at block k: block k's MLP writes them, the way real GPT-2's early MLPs do. It sees position 0 through a
    marker channel m = round(0.9 * C) that only position 0 has: wpe[0, m] = 2 * sqrt(C) (so it dominates that
    position's variance), wpe[1:, m] = wte[:, m] = 0 and no block writes channel m (c_proj columns m zeroed). At
    block k's ln_2, the normalised marker is about sqrt(C - 1) at position 0 and |z| < 1 elsewhere; one MLP unit j
    (the last) reads it with c_fc weight w = 16 / sqrt(C - 1) and bias -w * sqrt(C - 1) / 2, so its pre-activation
    is about +8 at position 0 and below -6 elsewhere (GELU ~ 0 there), and its c_proj row writes
    magnitude / 8 * GELU(...) into each massive channel (about the magnitude at position 0, exactly 0 elsewhere);
  * ln_1 and ln_2 of every block and ln_f get gain 1e-3 and bias 0 on the massive channels and on the marker
    (except block k's ln_2 on the marker, gain 1, which reads it);
  * everything else is random_gpt2's, with `bias_std` (real GPT-2's biases are not zero: every Linear and
    LayerNorm bias gets N(0, bias_std^2)) and `sharpen` (its logit_std; 4.5 gives a mean next-token entropy of
    ~3 nats, like GPT-2 small's ~3.1-nat loss on OpenWebText).
The result is an honest HF model (only weights changed), so HF stays the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import GPT2Config, GPT2LMHeadModel

# Biases and LayerNorm gains off HF's init constants (zeros / ones) and MLP pre-activations of real GPT-2's order
# of magnitude (std ~2 rather than the 0.02-std init's ~0.2, where the GELU's shape matters): every mistake in
# loading a checkpoint changes the logits. Use as random_gpt2(**VARIED_PARAMS, ...).
VARIED_PARAMS = dict(bias_std=0.05, ln_gain_std=0.2, c_fc_scale=8.0)


@torch.no_grad()
def random_gpt2(*, seed: int = 0, logit_std: float | None = 3.0, wte_scale: float = 1.0, bias_std: float = 0.0,
                ln_gain_std: float = 0.0, c_fc_scale: float = 1.0, noise_seed: int | None = None,
                **config) -> GPT2LMHeadModel:
    """A random-init GPT2LMHeadModel in eval mode; `config` as GPT2Config kwargs (its defaults: the 124M shape).

    seed: HF's init draws from torch's global RNG seeded with it, inside fork_rng (the caller's state is kept).
    logit_std: ln_f's gain scaled so logits have std ~logit_std (None: HF's init, near-uniform distributions).
    wte_scale: the token embeddings (and the tied head) scaled, as a larger init; logit_std still holds.
    bias_std, ln_gain_std: every bias ~ N(0, bias_std^2), ln_1/ln_2 gains ~ 1 + N(0, ln_gain_std^2) (0: HF's
      init kept), drawn in named_parameters order from a torch.Generator seeded with noise_seed (default seed + 1).
    c_fc_scale: the MLPs' input weights scaled (their pre-activations with them)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = GPT2LMHeadModel(GPT2Config(**config)).eval()
    g = torch.Generator().manual_seed(seed + 1 if noise_seed is None else noise_seed)
    for name, p in hf.named_parameters():
        if name.endswith("bias"):
            if bias_std:
                p.copy_(torch.randn(p.shape, generator=g) * bias_std)
        elif ".ln_1." in name or ".ln_2." in name:
            if ln_gain_std:
                p.copy_(1 + torch.randn(p.shape, generator=g) * ln_gain_std)
        elif name.endswith("mlp.c_fc.weight") and c_fc_scale != 1.0:
            p.mul_(c_fc_scale)
    t = hf.transformer
    if wte_scale != 1.0:
        t.wte.weight.mul_(wte_scale)
    if logit_std is not None:  # logit std ~ ln_f's gain times the tied head's 0.02 * wte_scale * sqrt(C)
        t.ln_f.weight.mul_(logit_std / (0.02 * wte_scale * hf.config.n_embd**0.5))
    return hf


GPT2_SMALL_FRACTIONS = (138 / 768, 378 / 768, 447 / 768, 0.3, 0.7)  # where the massive channels go
MARKER_FRACTION = 0.9
TINY_GAIN = 1e-3
MARKER_SCALE = 2.0  # wpe[0, marker] = MARKER_SCALE * sqrt(C): it dominates position 0's variance


@dataclass(frozen=True)
class MassiveSpec:
    onset: str | int  # "embeddings" or the block whose MLP writes them
    magnitudes: tuple[float, ...]  # one signed magnitude per massive channel


VARIANTS: dict[str, MassiveSpec] = {
    "emb-1x3000": MassiveSpec("embeddings", (3000.0,)),
    "emb-3ch": MassiveSpec("embeddings", (2500.0, -1000.0, 300.0)),
    "block1-1x1000": MassiveSpec(1, (1000.0,)),
    "block2-2ch": MassiveSpec(2, (3000.0, -600.0)),
}


def massive_channels(n_embd: int, n: int) -> list[int]:
    return [round(n_embd * f) for f in GPT2_SMALL_FRACTIONS[:n]]


def marker_channel(n_embd: int) -> int:
    return round(n_embd * MARKER_FRACTION)


@torch.no_grad()
def add_massive_activations(hf: GPT2LMHeadModel, spec: MassiveSpec) -> GPT2LMHeadModel:
    """Give `hf` (in place; returned) massive activations at position 0 by the module docstring's recipe."""
    t = hf.transformer
    C, L = hf.config.n_embd, hf.config.n_layer
    if not 1 <= len(spec.magnitudes) <= len(GPT2_SMALL_FRACTIONS):
        raise ValueError(f"1 to {len(GPT2_SMALL_FRACTIONS)} massive channels, got {len(spec.magnitudes)}")
    if spec.onset != "embeddings" and not (isinstance(spec.onset, int) and 0 <= spec.onset < L):
        raise ValueError(f"onset must be 'embeddings' or a block 0..{L - 1}, got {spec.onset!r}")
    chans = massive_channels(C, len(spec.magnitudes))
    m = marker_channel(C)
    if len(set(chans + [m])) != len(chans) + 1:
        raise ValueError(f"n_embd={C} is too small for {len(chans)} massive channels and a marker")
    quiet = chans + [m]
    for block in t.h:
        for ln in (block.ln_1, block.ln_2):
            ln.weight[quiet] = TINY_GAIN
            ln.bias[quiet] = 0.0
    t.ln_f.weight[quiet] = TINY_GAIN
    t.ln_f.bias[quiet] = 0.0
    mags = torch.tensor(spec.magnitudes, dtype=t.wpe.weight.dtype)
    if spec.onset == "embeddings":
        t.wpe.weight[0, chans] = mags
        return hf
    k = spec.onset
    t.wte.weight[:, m] = 0.0  # the marker: only position 0 has it, and nothing writes it later
    t.wpe.weight[:, m] = 0.0
    t.wpe.weight[0, m] = MARKER_SCALE * math.sqrt(C)
    for block in t.h:  # Conv1D weights are (in, out): column m of c_proj is what a block writes to channel m
        for proj in (block.attn.c_proj, block.mlp.c_proj):
            proj.weight[:, m] = 0.0
            proj.bias[m] = 0.0
    blk = t.h[k]
    blk.ln_2.weight[m], blk.ln_2.bias[m] = 1.0, 0.0
    j = blk.mlp.c_fc.weight.size(1) - 1  # the unit that writes the massive values
    z0 = math.sqrt(C - 1)  # the normalised marker at position 0 (it dominates that position's variance)
    w = 16.0 / z0
    blk.mlp.c_fc.weight[:, j] = 0.0
    blk.mlp.c_fc.weight[m, j] = w
    blk.mlp.c_fc.bias[j] = -w * z0 / 2  # pre-activation ~ +8 at position 0, < -6 elsewhere
    blk.mlp.c_proj.weight[j, :] = 0.0
    blk.mlp.c_proj.weight[j, chans] = mags / 8.0
    return hf


@torch.no_grad()
def structured_gpt2(variant: str | MassiveSpec, *, seed: int = 0, sharpen: float = 4.5, bias_std: float = 0.02,
                    **shape) -> GPT2LMHeadModel:
    """A random GPT2LMHeadModel (eval mode, `shape` as GPT2Config kwargs) with a VARIANTS massive-activation
    structure: random_gpt2 with logits of std ~sharpen and biases of std bias_std, then add_massive_activations."""
    spec = VARIANTS[variant] if isinstance(variant, str) else variant
    return add_massive_activations(random_gpt2(seed=seed, logit_std=sharpen, bias_std=bias_std, **shape), spec)
