"""GPT-2 Parity Lab dashboard (Gradio): layout in ui.py, thin handlers, pure plotly figures, prose in text.py."""

from .ui import QUEUE, build_demo, launch_kwargs, parse_args

__all__ = ["build_demo", "parse_args", "launch_kwargs", "QUEUE"]
