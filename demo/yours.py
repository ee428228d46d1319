"""`python app.py --yours FILE.py:NAME`: the dashboard with the user's own GPT-2 in place of ours.

Knows the three command-line flags and what they load (through core.usercode, at start only: a visitor can never
make the server import code); the handlers only see a `Yours` attached to the model cache.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from core.usercode import load_model, load_step, parse_layers

LABEL = "Yours"


@dataclass
class Yours:
    """The user's model (and optional sampling step / layer names), loaded from the command line."""

    spec: str
    model: object
    step: object = None
    layers: dict | None = None
    label: str = LABEL

    def compare_kwargs(self) -> dict:
        return dict(sampling_step=self.step, layers=self.layers, label=self.label)


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--yours", default=None, metavar="FILE.py:NAME",
                    help="compare YOUR GPT-2 instead of ours: a model object or zero-argument factory in a Python "
                         "file; --model is then HuggingFace's checkpoint for it (the only one offered)")
    ap.add_argument("--yours-step", default=None, metavar="FILE.py:FUNC",
                    help="your own sampling step: (B, V) last-position logits -> (B,) ids")
    ap.add_argument("--yours-layers", default=None, metavar="blocks=PATH,final_norm=PATH",
                    help="your model's blocks and final norm, where they are not found by themselves")


def from_args(args: argparse.Namespace) -> Yours | None:
    """Load the user's code named on the command line (None without --yours). Errors are core.ParityLabError."""
    from core.usercode import UserCodeError

    if getattr(args, "yours", None) is None:
        if getattr(args, "yours_step", None) or getattr(args, "yours_layers", None):
            raise UserCodeError("--yours-step and --yours-layers go with --yours FILE.py:NAME")
        return None
    layers = parse_layers(args.yours_layers)
    return Yours(args.yours, load_model(args.yours), load_step(args.yours_step) if args.yours_step else None,
                 layers)


def attach(cache, yours: Yours | None, model: str) -> None:
    """Make the dashboard's model cache serve `yours` against HF's `model` only (one HF checkpoint fits it)."""
    cache.yours = yours
    if yours is not None:
        cache.allowed = [model]


def subject_for(cache, loaded) -> tuple[object, dict]:
    """(the model under test, extra compare() arguments) for a request: the user's model if attached, else ours."""
    yours = getattr(cache, "yours", None)
    if yours is None:
        return loaded.ours, {}
    return yours.model, yours.compare_kwargs()


def label_for(cache) -> str | None:
    yours = getattr(cache, "yours", None)
    return yours.label if yours is not None else None


def load_or_exit(args: argparse.Namespace) -> Yours | None:
    """from_args for app.py: a loading failure is one line on stderr and exit status 2, never a traceback."""
    import sys

    from core.errors import ParityLabError

    try:
        return from_args(args)
    except ParityLabError as exc:
        print(f"app.py: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
