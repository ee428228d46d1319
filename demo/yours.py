"""`python app.py --yours FILE.py:NAME`: the dashboard with the user's own GPT-2 in place of ours.

Knows the three command-line flags and what they load (through core.usercode, at start only: a visitor can never
make the server import code); the handlers only see a `Yours` attached to the model cache.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

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
    """The CLI's own --yours / --yours-step / --yours-layers flags (one definition for both front ends)."""
    from core.cli import add_yours_args

    add_yours_args(ap)


def from_args(args: argparse.Namespace) -> Yours | None:
    """Load the user's code named on the command line (None without --yours). Errors are core.ParityLabError."""
    from core.cli import load_yours

    loaded = load_yours(args)
    return None if loaded is None else Yours(args.yours, loaded["model"], loaded["step"], loaded["layers"])


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
