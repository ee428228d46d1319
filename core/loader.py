"""The one loader that touches the outside world: Hub id or local directory -> checkpoint files -> models.

Everything else in `core` works on tensors and paths this module hands it. Hub downloads go through the
huggingface_hub cache (with its progress bars); offline with nothing cached is a ModelNotAvailableError that
says what to do instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .errors import ParityLabError
from .model import GPT, GPTConfig
from .port import port_from_hf

# What a GPT-2 checkpoint needs from the Hub: config, weights (one format is enough), tokenizer, generation defaults.
_HUB_PATTERNS = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
    "vocab.json",
    "merges.txt",
]
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


class ModelNotAvailableError(ParityLabError, RuntimeError):
    """A checkpoint could not be found locally nor downloaded."""


def _has_weights(path: Path) -> bool:
    return any((path / f).is_file() for f in _WEIGHT_FILES)


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A local checkpoint directory, or a Hub model id downloaded into (or found in) the Hub cache."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotAvailableError(f"{path} has no config.json: not a HuggingFace checkpoint directory")
        if not _has_weights(path):
            raise ModelNotAvailableError(
                f"{path} has no weights (expected one of {', '.join(_WEIGHT_FILES)})"
            )
        return path
    name = str(name_or_path)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:  # a path, not a Hub id
        raise ModelNotAvailableError(f"no checkpoint directory at {name}")
    from huggingface_hub import snapshot_download  # imported here: only this function talks to the Hub

    try:
        local = Path(snapshot_download(repo_id=name, allow_patterns=_HUB_PATTERNS))
    except Exception as exc:  # offline, unknown id, gated, HTTP error: one clear message for each
        raise ModelNotAvailableError(f"could not get model {name!r} from the Hugging Face Hub ({_why(exc)}). "
                                     "Without internet, pass a local checkpoint directory instead (config.json + "
                                     "model.safetensors or pytorch_model.bin), e.g. one written by "
                                     "GPT2LMHeadModel.save_pretrained().") from exc
    if not _has_weights(local):
        raise ModelNotAvailableError(f"Hub model {name!r} has no safetensors weights")
    return local


def _why(exc: Exception) -> str:
    from huggingface_hub import errors

    if isinstance(exc, (errors.RepositoryNotFoundError, errors.GatedRepoError)):
        return "no such public model on the Hub"
    if isinstance(exc, errors.LocalEntryNotFoundError):
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
        return ("HF_HUB_OFFLINE is set and it is not in the local Hub cache" if offline
                else "the Hub could not be reached and it is not in the local Hub cache")
    return type(exc).__name__


def load_hf_config(checkpoint: Path):
    from transformers import GPT2Config

    with open(checkpoint / "config.json") as f:
        raw = json.load(f)
    if raw.get("model_type") not in (None, "gpt2"):
        raise ModelNotAvailableError(f"{checkpoint}: model_type={raw.get('model_type')!r} is not GPT-2")
    return GPT2Config.from_pretrained(checkpoint)


def load_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Weights of a checkpoint directory as saved (safetensors preferred; .bin only with weights_only)."""
    from safetensors.torch import load_file

    if (checkpoint / "model.safetensors").is_file():
        return load_file(checkpoint / "model.safetensors")
    index = checkpoint / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(checkpoint / shard))
        return state
    return torch.load(checkpoint / "pytorch_model.bin", map_location="cpu", weights_only=True, mmap=True)


def load_pretrained(
    name_or_path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> GPT:
    """Our GPT from a Hub id (`gpt2`, `openai-community/gpt2-medium`, `distilgpt2`, ...) or a local directory."""
    checkpoint = resolve_checkpoint(name_or_path)
    config = GPTConfig.from_hf(load_hf_config(checkpoint))
    model = port_from_hf(load_state_dict(checkpoint), config).to(device=device, dtype=dtype)
    return model.use_decode_layout() if torch.device(device).type == "cpu" else model


def load_hf_model(name_or_path: str | os.PathLike, *, attn_implementation: str = "sdpa", dtype=torch.float32):
    """HuggingFace's own GPT2LMHeadModel for the same checkpoint (the reference we compare with)."""
    from transformers import GPT2LMHeadModel

    checkpoint = resolve_checkpoint(name_or_path)
    GPTConfig.from_hf(load_hf_config(checkpoint))  # refuse unsupported options before the expensive part
    model = GPT2LMHeadModel.from_pretrained(checkpoint, attn_implementation=attn_implementation, dtype=dtype)
    return model.eval()


def load_pair(name_or_path: str | os.PathLike, *, dtype=torch.float32):
    """(ours, HF's) for one checkpoint; ours is a view of HF's weights, so the pair costs one model's memory."""
    hf = load_hf_model(name_or_path, dtype=dtype)
    return port_from_hf(hf), hf
