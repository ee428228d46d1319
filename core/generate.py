"""`python -m core.generate`: sample from our GPT-2 on the command line (see core.cli for the flags)."""

from .cli import main_generate

if __name__ == "__main__":
    raise SystemExit(main_generate())
