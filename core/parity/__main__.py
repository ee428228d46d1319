"""`python -m core.parity`: the parity CLI (core/cli.py does the work)."""

from ..cli import main_parity

raise SystemExit(main_parity())
