"""Progress on the terminal for the command lines' long work (a big model's compare on a CPU, an export of many
prompts): a tqdm bar on stderr, shown only where someone watches it.

Knows when a bar may be shown (not under --json, only when both stdout and stderr are terminals) and tqdm; knows
nothing of what is being counted.
"""

from __future__ import annotations

import sys


def wanted(json_output: bool, stdout=None, stderr=None) -> bool:
    """A bar only for a person at a terminal: never under --json, nor when output goes to a file or a pipe."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    return not json_output and _tty(stdout) and _tty(stderr)


def _tty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


class Bar:
    """A counter with a description; a no-op unless `shown`. Closed by `with`."""

    def __init__(self, total: int | None, desc: str, unit: str, shown: bool):
        self._bar = None
        if shown:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def describe(self, desc: str) -> None:
        if self._bar is not None:
            self._bar.set_description_str(desc)

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
