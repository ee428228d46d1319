"""The dashboard as a program: `python app.py ...` and the installed `gpt2-parity-app ...` (same flags).

build() parses the flags, loads `--yours` and builds the Blocks (never launches: Spaces and tests import app.py's
`demo`); serve() sets up logging, starts the default model's download and launches.
"""

from __future__ import annotations

import sys

from . import QUEUE, build_demo, launch_kwargs, parse_args
from .yours import load_or_exit as load_yours


def build(argv: list[str]):
    """(flags, the dashboard) for these command-line arguments."""
    args = parse_args(argv)
    mine = load_yours(args)  # `--yours FILE.py:NAME`: the user's own GPT-2, loaded from the command line only
    return args, build_demo(model=args.model, bpe_dir=args.bpe_dir, max_models=args.max_models, mine=mine)


def serve(args, demo) -> None:
    """Launch `demo` as `args` say, blocking until the server stops."""
    import logging

    from .models import TINY, hub_offline

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
