"""One run as a page of its own: the self-contained HTML report (`ParityReport.to_html()`, `--html FILE`, the
dashboard's HTML download) and the notebook's view of a report or a generation (`_repr_html_`).

Built from the same pieces as the dashboard: render.py's verdict panel, texts (a span per token, its numbers on
hover) and settings rows, figures.py's figures, downloads.py's compact JSON, which the page carries so that
read_report_html() (and the dashboard's upload panel) can load the run back. Pages work offline: plotly's JS is
inlined (once per page; in a notebook, once per kernel: the first output that draws a figure carries it; on Colab,
whose outputs are separate frames, every output).

Knows the report's dict (ParityReport.to_dict()) and HTML; knows nothing of Gradio, models or tensors.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable

from . import figures, render, text
from .downloads import compact_report, expand_report

DATA_ID = "parity-report-data"  # the <script type="application/json"> element holding the run's compact JSON
PAGE_CSS = """
body {font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px;
  padding: 16px; color: #1f2328}
h1 {font-size: 1.4em} h2 {font-size: 1.1em; margin-top: 1.6em; border-bottom: 1px solid #d0d7de}
.pl-texts {display: flex; gap: 16px; flex-wrap: wrap}
.pl-texts > .pl-text {flex: 1 1 320px; min-width: 280px; border: 1px solid #d0d7de; border-radius: 8px;
  padding: 8px 12px; max-height: 420px; overflow: auto}
.pl-table {border-collapse: collapse; font-size: 0.9em} .pl-table td, .pl-table th {border: 1px solid #d0d7de;
  padding: 3px 8px; text-align: left} .pl-table tr.differs td {background: #ffe2e0; color: #82071e; font-weight: 600}
.pl-caption {font-size: 0.85em; color: #57606a} .pl-facts {font-size: 0.9em; color: #57606a}
@media (max-width: 720px) {.pl-texts {flex-direction: column}}
"""
# In a notebook the texts sit in the notebook's own page: the same layout, scoped to the output
NOTEBOOK_CSS = """
.parity-report .pl-texts {display: flex; gap: 16px; flex-wrap: wrap}
.parity-report .pl-texts > .pl-text {flex: 1 1 320px; min-width: 280px; max-height: 320px; overflow: auto;
  border: 1px solid #d0d7de; border-radius: 8px; padding: 8px 12px}
.parity-report .pl-facts {font-size: 0.9em; color: #57606a}
"""
_plotly_js_sent = False  # this process has emitted plotly's JS into a notebook output already


# ---------------------------------------------------------------------------------------------------------
# Pieces


def token_text_for(report: dict) -> Callable[[int], str]:
    """id -> its text: from the report's own records (every sampled and top-50 token), else GPT-2's bundled
    tokenizer (for HF's tokens outside our top-50), else `<id>`."""
    known: dict[int, str] = {}
    for step in report["generation"]["records"]:
        for rec in step:
            if rec is not None:
                known[rec["token_id"]] = rec["token"]
                known.update(zip(rec["top_ids"], rec["top_tokens"]))
    tokenizer: list = []

    def token_text(tid: int) -> str:
        if tid in known:
            return known[tid]
        if not tokenizer:
            tokenizer.append(_bundled_tokenizer())
        return tokenizer[0].decode([tid]) if tokenizer[0] is not None else f"<{tid}>"

    return token_text


def _bundled_tokenizer():
    from core.errors import ParityLabError
    from core.tokenizer import load_tokenizer

    try:
        return load_tokenizer(None)
    except ParityLabError:
        return None


def plotly_js() -> str:
    """plotly.js itself, inline (no CDN): one <script> that every figure of the page then uses."""
    from plotly.offline import get_plotlyjs

    return f'<script type="text/javascript">{get_plotlyjs()}</script>'


def figure_html(fig) -> str:
    """A figure as a <div> and the script that draws it with the page's plotly.js."""
    import plotly.io as pio

    return pio.to_html(fig, full_html=False, include_plotlyjs=False, config={"displaylogo": False})


def markdown_html(source: str) -> str:
    """The dashboard's captions (Markdown) as HTML."""
    from markdown_it import MarkdownIt

    return MarkdownIt().render(source)


def settings_html(report: dict) -> str:
    """The settings table (render.settings_rows), rows where HF differs from ours highlighted."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in render.SETTINGS_HEADERS)
    rows = "".join(f'<tr{" class=differs" if r[-1] else ""}>' + "".join(f"<td>{html.escape(str(x))}</td>" for x in r)
                   + "</tr>" for r in render.settings_rows(report))
    return f'<table class="pl-table" id="settings-table"><tr>{head}</tr>{rows}</table>'


def facts_html(report: dict) -> str:
    """What was run: model, who was under test, reference, precision, sampling settings, time."""
    s = report["settings"]
    prec = (report.get("precision") or {}).get("label", "float32")
    keys = ("method", "seed", "num_return_sequences", "max_new_tokens", "max_length", "top_k", "top_p", "temperature")
    sampling = ", ".join(f"{k} {s[k]}" for k in keys if k in s and s[k] is not None)
    seconds = report["timings"].get("total_s")
    took = f" · {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
    return (f'<p class="pl-facts">model <b>{html.escape(str(report["model"]))}</b> · under test: '
            f'{html.escape(report.get("subject", "Ours"))} · reference: {html.escape(report["reference"])} · '
            f'precision: {html.escape(str(prec))} · fault: {html.escape(str(report["fault"] or "none"))}{took}<br>'
            f'prompt {html.escape(repr(report["prompt"]))} · {html.escape(sampling)}</p>')


def texts_html(report: dict, token_text: Callable[[int], str]) -> str:
    """Both texts side by side, as the dashboard shows them."""
    return ('<div class="pl-texts">' + "".join(
        f'<div class="pl-text" id="{side}-text">{render.texts_html(report, token_text, side)}</div>'
        for side in ("ours", "hf")) + "</div>")


def first_step_row(report: dict) -> tuple[int, int]:
    """The (step, row) the dashboard opens first: the first difference of the first differing row, else 0, 0."""
    n_steps = max(len(report["generation"]["records"]), 1)
    first = next((r["first_divergent_step"] for r in report["rows"] if r["first_divergent_step"] is not None), 0)
    row = next((r["row"] for r in report["rows"] if not r["identical"]), 0)
    return min(first, n_steps - 1), row


def report_figures(report: dict) -> dict:
    """Every figure the dashboard draws after a run, at the step and row it opens first."""
    step, row = first_step_row(report)
    return {"step": figures.step_diffs_figure(report), "top50": figures.top50_figure(report, step, row),
            "heat": figures.heatmap_figure(report, row, step), "entropy": figures.entropy_figure(report, row, step),
            "layers": figures.layers_figure(report)}


def data_script(report: dict) -> str:
    """The run's compact JSON (the dashboard's JSON download) in the page, for read_report_html()."""
    data = json.dumps(compact_report(report), ensure_ascii=False, separators=(",", ":"), allow_nan=True)
    data = data.replace("</", "<\\/")  # a "</script>" inside a token's text must not end the element
    return f'<script type="application/json" id="{DATA_ID}">{data}</script>'


# ---------------------------------------------------------------------------------------------------------
# The page, the notebook's view, and back


def page_html(report: dict) -> str:
    """One self-contained HTML document with everything the dashboard shows for this run."""
    token_text = token_text_for(report)
    figs = {k: figure_html(f) for k, f in report_figures(report).items()}
    words = dict(our="your", ours="yours") if report.get("subject", "Ours") != "Ours" else dict(our="our", ours="ours")
    step, row = first_step_row(report)
    body = [
        f"<h1>{html.escape(text.TITLE)}: {html.escape(str(report['model']))}</h1>",
        render.verdict_html(report),
        facts_html(report),
        "<h2>Texts</h2>", '<p class="pl-caption">Hover a token for its id, probability and rank under both models.</p>',
        texts_html(report, token_text),
        "<h2>Per step</h2>", figs["step"], f'<div class="pl-caption">{markdown_html(text.CAPTION_STEPS.format(**words))}</div>',
        f"<h2>Top-50 at step {step}, row {row + 1}</h2>",
        f'<div class="pl-caption">{markdown_html(text.CAPTION_TOP50.format(**words))}</div>', figs["top50"],
        "<h2>Over steps</h2>", figs["heat"], figs["entropy"],
        "<h2>Per layer</h2>", figs["layers"], f'<div class="pl-caption">{markdown_html(text.CAPTION_LAYERS)}</div>',
        "<h2>Settings</h2>", settings_html(report),
        "<h2>Summary</h2>", f"<pre>{html.escape(json.dumps(render.summary(report), indent=1, ensure_ascii=False))}</pre>",
        f'<p class="pl-caption">The run\'s data is in this file (script #{DATA_ID}: the dashboard\'s JSON download; '
        "load it back with demo.report.read_report_html or the dashboard's result-file panel).</p>",
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(text.TITLE)}: {html.escape(report['verdict'])}</title>"
            f"<style>{PAGE_CSS}{render.TEXT_CSS}</style>{plotly_js()}</head><body>"
            + "\n".join(body) + data_script(report) + "</body></html>\n")


def notebook_html(report: dict) -> str:
    """A report in a notebook: the verdict, both texts with the first difference marked, and the key figures (per
    step, per layer). plotly's JS comes with the kernel's first such output only."""
    global _plotly_js_sent
    figs = [figures.step_diffs_figure(report), figures.layers_figure(report)]
    js = "" if _plotly_js_sent and not _own_frame_per_output() else plotly_js()
    _plotly_js_sent = True
    return (f'<div class="parity-report"><style>{render.TEXT_CSS}{NOTEBOOK_CSS}</style>{js}'
            + render.verdict_html(report) + facts_html(report) + texts_html(report, token_text_for(report))
            + "".join(figure_html(f) for f in figs) + "</div>")


def training_notebook_html(report: dict) -> str:
    """A training report in a notebook: the verdict panel of the Training step tab and its two figures (the loss
    over the steps, each parameter's gradient difference). plotly's JS as for a parity report."""
    global _plotly_js_sent
    figs = [figures.training_loss_figure(report), figures.training_grads_figure(report)]
    js = "" if _plotly_js_sent and not _own_frame_per_output() else plotly_js()
    _plotly_js_sent = True
    return (f'<div class="parity-report"><style>{render.TEXT_CSS}{NOTEBOOK_CSS}</style>{js}'
            + render.training_verdict_html(report) + "".join(figure_html(f) for f in figs) + "</div>")


def _own_frame_per_output() -> bool:
    """Google Colab draws each output in a frame of its own: there every output needs plotly's JS."""
    import sys

    return "google.colab" in sys.modules


def generation_html(gen: dict) -> str:
    """A generation in a notebook: one line per row, the prompt in grey, and the settings it was sampled with."""
    prompt = html.escape(gen["prompt"] or "")
    rows = "".join(f'<div class="pl-row"><span class="pl-n">[{r + 1}]</span> <span style="color:#57606a">{prompt}'
                   f"</span>{html.escape(c)}{' <i>(eos)</i>' if eos else ''}</div>"
                   for r, (c, eos) in enumerate(zip(gen["completions"], gen["finished_by_eos"])))
    s = gen["settings"]
    keys = ("method", "seed", "top_k", "top_p", "temperature", "max_new_tokens", "max_length")
    facts = ", ".join(f"{k} {s[k]}" for k in keys if s.get(k) is not None)
    return (f'<div class="parity-generation"><style>{render.TEXT_CSS}</style><div class="pl-text">{rows}</div>'
            f'<p style="font-size:0.85em;color:#57606a">{len(gen["completions"])} row(s) · {html.escape(facts)} · '
            f'{gen.get("seconds", 0):.2f} s</p></div>')


class ReportPageError(ValueError):
    """A file that is not an HTML report written by this lab (no run data in it)."""


_DATA = re.compile(rf'<script type="application/json" id="{DATA_ID}">(.*?)</script>', re.S)


def read_report_html(page: str) -> dict:
    """The report dict (ParityReport.from_dict reads it) carried by a page written by page_html()."""
    m = _DATA.search(page)
    if m is None:
        raise ReportPageError("this HTML file carries no GPT-2 Parity Lab run (it was not written by to_html / "
                              "--html / the dashboard's HTML download)")
    try:
        return expand_report(json.loads(m.group(1)))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ReportPageError(f"the run data in this HTML file is damaged ({type(exc).__name__}: {exc})") from None
