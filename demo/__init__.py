"""GPT-2 Parity Lab dashboard (Gradio), one module per concern:

ui.py         build_demo(): the layout and the wiring of every event (building never loads a model or launches)
inputs.py     every input: type, default, limits, labels, validation and the message refusing a bad value
handlers.py   the events: inputs -> one core call -> records -> views (upload.py: the same for a result file)
render.py     what is shown from a report: verdict panel, status lines, both texts, settings table, summary
figures.py    pure plotly figures from a report (divergence.py: the bounded divergences they and the CSV use)
downloads.py  the JSON and CSV files of a run, and their temporary folders
text.py       fixed prose: introduction, help, banners
models.py     which models may be loaded, and the bounded cache that loads them (yours.py: app.py --yours)

app.py        the dashboard as a program (build, serve; the `gpt2-parity-app` command)
report.py     one run as a page of its own: the self-contained HTML report and the notebook's view of a report

Importing `demo` imports no Gradio: ui.py's names below load on first use, so that a notebook or report.py
(render.py, figures.py) stays light.
"""

__all__ = ["build_demo", "parse_args", "launch_kwargs", "QUEUE"]


def __getattr__(name: str):
    if name in __all__:
        from . import app, ui

        return getattr(app if name == "parse_args" else ui, name)
    raise AttributeError(f"module 'demo' has no attribute {name!r}")
