"""HF GPT-2 weights -> our GPT: pure functions over tensors; knows key names and layouts, never files or the Hub.

HuggingFace stores the four projection matrices of each block as `Conv1D` weights, shaped (in, out); our
nn.Linear wants (out, in). Those keys are listed explicitly in TRANSPOSED and ported as transposed *views*, so
the ported model shares storage with the source (no second copy of the weights).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from .errors import ParityLabError
from .model import GPT, GPTConfig

# Per-block keys whose HF tensor is the transpose of ours (Conv1D (in, out) -> nn.Linear (out, in)).
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Per-block buffers old checkpoints carry (the causal mask and its fill value); the model builds its own mask.
IGNORABLE = ("attn.bias", "attn.masked_bias")

_BLOCK_KEY = re.compile(r"^transformer\.h\.(\d+)\.(.+)$")


class PortError(ParityLabError, ValueError):
    """The source state dict does not match the target architecture; the message lists every problem."""


def _normalize(key: str) -> str:
    """Old checkpoints (e.g. the Hub's `gpt2`) were saved from GPT2Model: keys lack the `transformer.` prefix."""
    if key.startswith("transformer.") or key.startswith("lm_head."):
        return key
    return "transformer." + key


def _is_ignorable(key: str) -> bool:
    m = _BLOCK_KEY.match(key)
    return bool(m) and m.group(2) in IGNORABLE


def _is_transposed(key: str) -> bool:
    m = _BLOCK_KEY.match(key)
    return bool(m) and m.group(2) in TRANSPOSED


def convert_state_dict(hf_state_dict: Mapping[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """HF GPT2LMHeadModel / GPT2Model state dict -> our state dict (views where possible, nothing copied).

    Every source key is consumed or known to be ignorable, every target key is filled, every shape checked;
    all problems are reported together in one PortError.
    """
    with torch.device("meta"):
        target_shapes = {k: v.shape for k, v in GPT(config).state_dict().items()}
    source = {}
    for key, tensor in hf_state_dict.items():
        source[_normalize(key)] = tensor

    out: dict[str, torch.Tensor] = {}
    unexpected, misshaped, misshaped_keys = [], [], set()
    for key, tensor in source.items():
        if _is_ignorable(key):
            continue
        if key == "lm_head.weight" and config.tie_word_embeddings:
            continue  # tied: HF itself uses wte here, whatever the file holds
        if key not in target_shapes:
            unexpected.append(key)
            continue
        value = tensor.t() if _is_transposed(key) else tensor
        if value.shape != target_shapes[key]:
            want = tuple(target_shapes[key])
            want = want[::-1] if _is_transposed(key) else want
            misshaped.append(f"{key}: got {tuple(tensor.shape)}, expected {want}")
            misshaped_keys.add(key)
            continue
        out[key] = value
    if config.tie_word_embeddings and "transformer.wte.weight" in out:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    derived = {"lm_head.weight"} if config.tie_word_embeddings else set()
    missing = sorted(set(target_shapes) - set(out) - misshaped_keys - derived)
    problems = []
    if missing:
        problems.append("missing keys: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(sorted(unexpected)))
    if misshaped:
        problems.append("wrong shapes: " + "; ".join(misshaped))
    if problems:
        raise PortError("cannot port this GPT-2 state dict: " + " | ".join(problems))
    return out


def port_from_hf(hf_model_or_state_dict, config: GPTConfig | None = None) -> GPT:
    """A loaded GPT2LMHeadModel (or its state dict plus `config`) -> our GPT, sharing the source's storage.

    `config` may be a GPTConfig or a transformers GPT2Config; with a model it is read from `model.config`.
    A bare state dict does not record the number of heads, so it needs `config`.
    """
    if isinstance(hf_model_or_state_dict, Mapping):
        state_dict = hf_model_or_state_dict
        if config is None:
            raise PortError("a state dict does not record n_head: pass config= (a GPTConfig or GPT2Config)")
    elif hasattr(hf_model_or_state_dict, "state_dict") and hasattr(hf_model_or_state_dict, "config"):
        state_dict = hf_model_or_state_dict.state_dict()
        config = config if config is not None else hf_model_or_state_dict.config
    else:
        raise TypeError(f"expected a GPT2LMHeadModel or a state dict, got {type(hf_model_or_state_dict).__name__}")
    if not isinstance(config, GPTConfig):
        config = GPTConfig.from_hf(config)
    converted = convert_state_dict(state_dict, config)
    with torch.device("meta"):
        model = GPT(config)
    model.load_state_dict(converted, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.transformer.wte.weight  # assign=True replaced both; re-tie them
    model.requires_grad_(False)
    return model.eval()
