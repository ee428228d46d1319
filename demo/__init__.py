"""GPT-2 Parity Lab dashboard (Gradio), one module per concern:

ui.py         build_demo(): the layout and the wiring of every event (building never loads a model or launches)
inputs.py     every input: type, default, limits, labels, validation and the message refusing a bad value
handlers.py   the events: inputs -> one core call -> records -> views (upload.py: the same for a result file)
render.py     what is shown from a report: verdict panel, status lines, both texts, settings table, summary
figures.py    pure plotly figures from a report (divergence.py: the bounded divergences they and the CSV use)
downloads.py  the JSON and CSV files of a run, and their temporary folders
text.py       fixed prose: introduction, help, banners
models.py     which models may be loaded, and the bounded cache that loads them (yours.py: app.py --yours)
"""

from .ui import QUEUE, build_demo, launch_kwargs, parse_args

__all__ = ["build_demo", "parse_args", "launch_kwargs", "QUEUE"]
