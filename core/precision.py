"""Precision: the numeric regime a GPT-2 runs in, how the lab puts a model into one, and how it tells which one a
user's module runs in.

Regimes: "float32"; "bfloat16" / "float16" (weights and activations in that dtype); "bfloat16-autocast" /
"float16-autocast" (float32 weights, torch.autocast around each forward); "tf32" (CUDA matmuls and convolutions in
TF32; on a CPU it changes nothing). Knows torch's dtypes, autocast and TF32 flags; knows nothing about HuggingFace,
the parity judge or the UI. Detection is by observation (parameter dtypes, what the linear layers return on a probe
forward, the ambient autocast and TF32 state), never by reading the user's source.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from .errors import ParityLabError

PRECISIONS = ("float32", "bfloat16", "float16", "bfloat16-autocast", "float16-autocast", "tf32")
CHOICES = ("auto", *PRECISIONS)
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


class PrecisionError(ParityLabError, ValueError):
    """An unknown precision, or one that cannot be applied to this model or device."""


@dataclass(frozen=True)
class Precision:
    """A regime and how the lab knows it ("asked", or "detected: <evidence>")."""

    name: str
    how: str = "asked"

    def __post_init__(self):
        if self.name not in PRECISIONS:
            raise PrecisionError(f"precision must be one of {', '.join(CHOICES)}, got {self.name!r}")

    @property
    def low(self) -> bool:
        """Below float32 somewhere (TF32 counts: its matmuls round inputs to 10 mantissa bits)."""
        return self.name != "float32"

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the arithmetic runs in (float32 for float32 and TF32)."""
        return _DTYPES.get(self.name.removesuffix("-autocast"), torch.float32)

    @property
    def autocast(self) -> bool:
        return self.name.endswith("-autocast")

    @property
    def weights_cast(self) -> bool:
        return self.name in _DTYPES

    @property
    def label(self) -> str:
        """Plain words: "bfloat16", "bfloat16 autocast", "TF32", "float32"."""
        return {"tf32": "TF32"}.get(self.name, self.name.replace("-", " "))

    def describe(self) -> str:
        return self.label + ("" if self.how == "asked" else f", {self.how}")

    def to_dict(self) -> dict:
        return {**asdict(self), "label": self.label}


FLOAT32 = Precision("float32")


def parse(name: str | None) -> str:
    """A precision name as given by a user ("auto" when None) -> the checked name."""
    name = "auto" if name is None else str(name).strip().lower().replace("_", "-")
    name = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32",
            "bf16-autocast": "bfloat16-autocast", "fp16-autocast": "float16-autocast"}.get(name, name)
    if name not in CHOICES:
        raise PrecisionError(f"precision must be one of {', '.join(CHOICES)}, got {name!r}")
    return name


@contextlib.contextmanager
def regime(p: Precision, device_type: str):
    """The ambient state a regime needs while a model runs: autocast for the *-autocast regimes, TF32 matmuls for
    tf32 (CUDA only), and autocast explicitly off for the others (so a caller's autocast cannot leak in)."""
    with contextlib.ExitStack() as stack:
        if p.autocast:
            stack.enter_context(torch.autocast(device_type=device_type, dtype=p.dtype))
        else:
            stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        if device_type == "cuda":
            old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            tf32 = p.name == "tf32"
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
            stack.callback(lambda: _set_tf32(*old))
        yield


def _set_tf32(matmul: bool, cudnn: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def cast_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of `module` with its floating-point parameters and buffers in `dtype` (the original is untouched)."""
    return copy.deepcopy(module).to(dtype)


class InRegime(nn.Module):
    """A model (a module or a callable ids -> logits) called inside a regime: every call runs under regime(p). Its
    submodules stay reachable as `inner` (hooks on them see the regime's dtypes)."""

    def __init__(self, inner, p: Precision, device_type: str):
        super().__init__()
        self.inner, self.p, self.device_type = inner, p, device_type

    def forward(self, *args, **kwargs):
        with regime(self.p, self.device_type):
            return self.inner(*args, **kwargs)


def _floating_dtypes(model) -> set[torch.dtype]:
    if not isinstance(model, nn.Module):
        return set()
    return {t.dtype for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()}


def linear_output_dtypes(model, probe) -> set[tuple[torch.dtype, torch.dtype]]:
    """(weight dtype, output dtype) of every nn.Linear (and HF-style Conv1D: any module with a 2-D `weight` whose
    forward returns a tensor) that ran during `probe()`."""
    seen: set[tuple[torch.dtype, torch.dtype]] = set()
    hooks = []

    def hook(module, args, out):
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            seen.add((module.weight.dtype, out.dtype))

    if isinstance(model, nn.Module):
        for m in model.modules():
            w = getattr(m, "weight", None)
            if isinstance(w, torch.Tensor) and w.dim() == 2 and not isinstance(m, nn.Embedding):
                hooks.append(m.register_forward_hook(hook))
    try:
        probe()
    finally:
        for h in hooks:
            h.remove()
    return seen


def detect(model, probe, device_type: str) -> Precision:
    """What regime does `model` run in? `probe()` runs it once on a short input (its output is ignored)."""
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        name = _NAMES.get(dtype)
        if name in _DTYPES:
            return Precision(f"{name}-autocast", f"detected: compare was called inside torch.autocast({name})")
    params = _floating_dtypes(model)
    low = params & set(_DTYPES.values())
    if low and torch.float32 not in params:
        name = _NAMES[next(iter(low))] if len(low) == 1 else "bfloat16" if torch.bfloat16 in low else "float16"
        return Precision(name, f"detected: your model's parameters are {name}")
    seen = linear_output_dtypes(model, probe)
    for weight, out in sorted(seen, key=str):
        if weight == torch.float32 and out in _DTYPES.values():
            name = _NAMES[out]
            return Precision(f"{name}-autocast",
                             f"detected: your linear layers return {name} from float32 weights (autocast inside "
                             "your forward)")
    if low:  # some parameters low, some float32, linears not low: a partly cast model
        name = _NAMES[next(iter(sorted(low, key=str)))]
        return Precision(name, f"detected: some of your model's parameters are {name}")
    if device_type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return Precision("tf32", "detected: torch.backends.cuda.matmul.allow_tf32 is on")
    what = "your linear layers return float32" if seen else "your model's parameters are float32"
    return Precision("float32", f"detected: {what}")
