"""The dashboard as a program: `python app.py ...` and the installed `gpt2-parity-app ...` (same flags).

parse_args() knows the flags; build() parses them, loads `--yours` and builds the Blocks (never launches: Spaces and
tests import app.py's `demo`); serve() sets up logging, starts the default model's download and launches.
"""

from __future__ import annotations

import argparse
import sys

from . import yours
from .models import HUB_ALLOWLIST, TINY
from .yours import load_or_exit as load_yours


def parse_args(argv=None) -> argparse.Namespace:
    """The dashboard's flags (no Gradio needed: `--help` and a refused flag answer at once)."""
    ap = argparse.ArgumentParser(description="GPT-2 Parity Lab dashboard")
    ap.add_argument("--model", default="gpt2",
                    help=f"default model: a Hub id ({', '.join(HUB_ALLOWLIST)}), a local checkpoint directory, or {TINY}")
    ap.add_argument("--host", default=None,
                    help="address to listen on (default: $GRADIO_SERVER_NAME, which Spaces sets, else 127.0.0.1)")
    ap.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT, else 7860)")
    ap.add_argument("--bpe-dir", default=None,
                    help="directory with GPT-2's vocab.json + merges.txt (or encoder.json + vocab.bpe) for offline use; "
                         "defaults to $GPT2_BPE_DIR")
    ap.add_argument("--max-models", type=int, default=1, help="models kept in memory at once (switching evicts)")
    yours.add_args(ap)
    return ap.parse_args(argv)


def build(argv: list[str]):
    """(flags, the dashboard) for these command-line arguments."""
    from .ui import build_demo

    args = parse_args(argv)
    mine = load_yours(args)  # `--yours FILE.py:NAME`: the user's own GPT-2, loaded from the command line only
    return args, build_demo(model=args.model, bpe_dir=args.bpe_dir, max_models=args.max_models, mine=mine)


def serve(args, demo) -> None:
    """Launch `demo` as `args` say, blocking until the server stops."""
    import logging

    from .models import hub_offline
    from .ui import QUEUE, launch_kwargs

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("parity_lab").setLevel(logging.INFO)  # which model loaded, or why it fell back
    # huggingface_hub prints through its own handler, which core.loader quiets for a download it has given up on
    # (its retries go on in the background): not again through ours, which would print every "Retrying in 8s".
    logging.getLogger("huggingface_hub").propagate = False
    demo.model_cache.prefetch(args.model)  # start the default model's download now, in the background
    if hub_offline():
        demo.model_cache.prefetch(TINY)  # the page's fallback, ready for the first visitor
    demo.queue(**QUEUE).launch(server_name=args.host, server_port=args.port, **launch_kwargs())


def main(argv: list[str] | None = None) -> int:
    """The `gpt2-parity-app` console script."""
    args, demo = build(sys.argv[1:] if argv is None else list(argv))
    serve(args, demo)
    return 0
