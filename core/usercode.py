"""Loading a user's own model (and sampling step) from `path/to/file.py:NAME`, for the command lines only.

Knows importlib and the two shapes NAME may have (an object, or a zero-argument factory); never called from the
UI: the dashboard only uses what `python app.py --yours ...` loaded at start.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path

import torch.nn as nn

from .errors import ParityLabError


class UserCodeError(ParityLabError, ValueError):
    """A `file.py:NAME` that cannot be loaded: missing file or name, or an error while importing it."""


def parse_spec(spec: str) -> tuple[Path, str]:
    path, sep, name = str(spec).rpartition(":")
    if not sep or not path or not name:
        raise UserCodeError(f"expected path/to/file.py:NAME, got {spec!r}")
    if not name.isidentifier():
        raise UserCodeError(f"{name!r} in {spec!r} is not a Python name")
    return Path(path).expanduser(), name


def load_object(spec: str):
    """The object NAME defined by the Python file (the file's folder is importable while it runs)."""
    path, name = parse_spec(spec)
    if not path.is_file():
        raise UserCodeError(f"no such file: {path}")
    if path.suffix != ".py":
        raise UserCodeError(f"{path} is not a .py file")
    module_name = f"_parity_lab_user_{abs(hash(str(path.resolve())))}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(loader_spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except SystemExit as exc:
        raise UserCodeError(f"importing {path} called exit({exc.code}): guard the script part with "
                            "if __name__ == '__main__':") from None
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise UserCodeError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if sys.path and sys.path[0] == folder:
            sys.path.pop(0)
    if not hasattr(module, name):
        public = sorted(n for n in vars(module) if not n.startswith("_"))
        raise UserCodeError(f"{path} defines no {name!r} (it defines: {', '.join(public[:12]) or 'nothing'})")
    return getattr(module, name)


def _zero_arg(obj) -> bool:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for p in sig.parameters.values())


def load_model(spec: str):
    """A model under test from `file.py:NAME`: NAME is a model (an nn.Module, or a function ids -> logits) or a
    zero-argument factory (a function or class) returning one with its weights loaded."""
    obj = load_object(spec)
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, type) or (callable(obj) and _zero_arg(obj)):
        try:
            model = obj()
        except Exception as exc:
            raise UserCodeError(f"{spec}: calling {getattr(obj, '__name__', 'it')}() to build the model failed: "
                                f"{type(exc).__name__}: {exc}") from exc
        if not callable(model):
            raise UserCodeError(f"{spec}: {getattr(obj, '__name__', 'it')}() returned a {type(model).__name__}, "
                                "not a model (an nn.Module or a function ids -> logits)")
        return model
    if callable(obj):
        return obj  # a bare function ids -> logits
    raise UserCodeError(f"{spec} is a {type(obj).__name__}, not a model, a function or a factory")


def load_step(spec: str):
    """A sampling step from `file.py:FUNC`: a function (B, V) logits -> (B,) ids."""
    obj = load_object(spec)
    if not callable(obj) or isinstance(obj, type):
        raise UserCodeError(f"{spec} is a {type(obj).__name__}, not a function (B, V) logits -> (B,) ids")
    return obj


def parse_layers(text: str | None) -> dict | None:
    """`blocks=decoder.blocks,final_norm=decoder.norm[,attn=attention,mlp=ffn]` -> dict (None when not given); attn
    and mlp are paths inside a block."""
    if not text:
        return None
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in ("blocks", "final_norm", "attn", "mlp") or not value.strip():
            raise UserCodeError("--yours-layers takes blocks=MODULE.PATH,final_norm=MODULE.PATH (and attn=, mlp=: "
                                f"paths inside a block), got {text!r}")
        out[key.strip()] = value.strip()
    return out
