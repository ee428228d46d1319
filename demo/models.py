"""Which models the dashboard may load, and a small bounded cache of loaded (ours, HF, tokenizer) triples.

Knows the allowlist, the offline fallback and memory bounds; knows nothing about the UI. Models are loaded
once and shared read-only by every request; at most `max_models` stay resident (switching evicts).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from core import GPT, Tokenizer, load_pair, load_tokenizer, port_from_hf
from core.errors import ParityLabError

HUB_ALLOWLIST = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")
TINY = "tiny-random-gpt2"
# The built-in offline model: GPT-2's architecture and vocabulary, small dimensions, a fixed random seed.
TINY_SHAPE = dict(n_layer=4, n_head=4, n_embd=128, n_positions=1024)
TINY_SEED = 1234
TINY_LOGIT_STD = 3.0  # ln_f's gain raised so distributions are peaked, like a trained model's


class ModelNotAllowedError(ParityLabError, ValueError):
    """A model name the dashboard does not serve."""


@dataclass
class LoadedModel:
    name: str
    ours: GPT
    hf: object
    tokenizer: Tokenizer
    is_tiny: bool


def build_tiny_pair() -> tuple[GPT, object]:
    """The built-in tiny random GPT-2, identical on every machine (its own RNG; global state restored)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        config = GPT2Config(**TINY_SHAPE)
        hf = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        hf.transformer.ln_f.weight.mul_(TINY_LOGIT_STD / (0.02 * config.n_embd**0.5))
    hf.config._name_or_path = TINY
    return port_from_hf(hf), hf


class ModelCache:
    """Loads allowlisted models on demand; keeps at most `max_models` resident (least recently used evicted)."""

    def __init__(self, extra: list[str] | None = None, max_models: int = 1, bpe_dir: str | None = None):
        self.allowed = list(dict.fromkeys([*(extra or []), *HUB_ALLOWLIST, TINY]))
        self.max_models = max_models
        self.bpe_dir = bpe_dir
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, name: str) -> str:
        if not isinstance(name, str) or name not in self.allowed:
            raise ModelNotAllowedError(f"model {name!r} is not available here; choose one of: {', '.join(self.allowed)}")
        return name

    def resident(self) -> list[str]:
        return list(self._models)

    def get(self, name: str) -> LoadedModel:
        self.check(name)
        with self._lock:  # one load at a time; requests for a resident model only wait for the dict lookup
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
            while len(self._models) >= self.max_models:
                self._models.popitem(last=False)  # evict before loading: never two big models at once
            loaded = self._load(name)
            self._models[name] = loaded
            return loaded

    def _tokenizer(self, name: str | None) -> Tokenizer:
        """The checkpoint's own vocab.json/merges.txt first; the BPE directory given at start-up otherwise."""
        if name is None:
            return load_tokenizer(self.bpe_dir)
        try:
            return load_tokenizer(name)
        except ParityLabError:
            if self.bpe_dir is None:
                raise
            return load_tokenizer(self.bpe_dir)

    def _load(self, name: str) -> LoadedModel:
        if name == TINY:
            ours, hf = build_tiny_pair()
            return LoadedModel(name, ours, hf, self._tokenizer(None), True)
        ours, hf = load_pair(name)
        return LoadedModel(name, ours, hf, self._tokenizer(name), False)
