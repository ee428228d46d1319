"""What the dashboard shows, as pure functions of a report's records: the verdict panel and status lines, both
texts as HTML (a span per token, with its numbers on hover), the settings table, the summary, the upload panel's
list of cases, and core's messages in the UI's words.

Knows the report's fields, the HTML classes ui.py's CSS styles, and the inputs' labels (inputs.py); fixed prose is
in text.py. Knows nothing of Gradio events, models, files (downloads.py) or plots (figures.py).
"""

from __future__ import annotations

import html
import re

from core.faults import FAULTS

from . import text
from .inputs import UI_NAMES, readable

_LONG_NUMBER = re.compile(r"(?<![\w+=\[.,-])(\d{6,})(?![\w.,])")


def ui_message(message: str) -> str:
    """A core message as the dashboard says it: its labels instead of argument names, long numbers grouped."""
    for name, label in UI_NAMES.items():
        message = re.sub(rf"\b{name}=", f"{label} = ", message)
        message = re.sub(rf"\b{name}\b", label, message)
    return _LONG_NUMBER.sub(lambda m: readable(int(m.group(1))), message)


def verdict_html(report: dict) -> str:
    """The verdict panel after a run: agree or not, the largest logit difference, where the models part."""
    bg, fg, icon = text.VERDICT_STYLE[bool(report["agree"])]
    detail = f"max |Δlogit| {report['max_abs_dlogit']:.2g}"
    if report["first_diverging_layer"] and not names_layer(report["verdict"], report["first_diverging_layer"]):
        detail += f" · first diverging layer: <b>{html.escape(report['first_diverging_layer'])}</b>"
    if report["fault"]:
        detail += f" · bug lab: <b>{html.escape(FAULTS[report['fault']].title)}</b> injected into our model"
    prec = report.get("precision") or {}
    if prec.get("factor"):  # judged below float32: the regime, how it was known, the yardstick, the re-check
        check = report.get("float32_check") or {}
        redo = check.get("verdict") if check.get("possible") else f"not possible ({check.get('why_not')})"
        detail += (f"<br>precision: <b>{html.escape(prec['label'])}</b> ({html.escape(prec['how'])}); tolerance "
                   f"{prec['factor']:g} × HF's own error at {html.escape(prec['label'])} "
                   f"(max {prec['hf_own_error']:.2g}); float32 re-check: {html.escape(str(redo))}")
    elif prec.get("how", "asked") != "asked":
        detail += f" · precision: {html.escape(prec['label'])} ({html.escape(prec['how'])})"
    detail += localisation_html(report)
    return (f'<div id="verdict" class="verdict-{"ok" if report["agree"] else "bad"}" style="background:{bg};color:{fg};'
            f'padding:14px 18px;border-radius:10px;font-size:1.15em"><b>{icon} {html.escape(report["verdict"])}</b><br>'
            f'<span style="font-size:0.8em">{detail}</span></div>')


def localisation_html(report: dict) -> str:
    """Where inside the model it differs and the likely mistake (after a verdict that the models differ): a line
    while it is worked out, then the sub-layer, the blocks that differ on HF's own input and the diagnosis."""
    status = report.get("localisation")
    if status is None:
        return ""
    if status == "pending":
        return f'<br><span id="localisation">{html.escape(text.LOCALISING)}</span>'
    if status != "done":
        sub = report.get("first_diverging_sublayer")
        where = f"first diverging sub-layer: <b>{html.escape(sub)}</b> · " if sub else ""
        return f'<br><span id="localisation">{where}localisation {html.escape(status)}</span>'
    blocks = report.get("diverging_blocks") or []
    out = '<br><span id="localisation">'
    if report.get("first_diverging_sublayer"):
        out += f"first diverging sub-layer: <b>{html.escape(report['first_diverging_sublayer'])}</b> · "
    out += ("blocks that differ on HF's own input: <b>" + (", ".join(map(str, blocks)) if blocks else "none")
            + "</b></span>")
    items = "".join(f"<li>{html.escape(s)}</li>" for s in report.get("diagnosis") or [])
    if items:
        out += f'<div id="diagnosis">likely mistake:<ul style="margin:2px 0 0 0">{items}</ul></div>'
    return out


def names_layer(verdict: str, layer: str) -> bool:
    """Whether a verdict already names its first diverging layer (then a status line does not repeat it)."""
    return re.search(rf"\b{re.escape(layer)}\b", verdict) is not None


def status_html(message: str) -> str:
    """The verdict panel while nothing is decided yet (before a run, while it runs)."""
    return f'<div id="verdict" style="padding:14px 18px;border-radius:10px;background:#f6f8fa">{message}</div>'


def error_html(message: str, action: str = "run") -> str:
    """The verdict panel after a refused request (`action`: "run" for Generate, "check" for Check result): the
    page's one message about it, saying which button to press again."""
    return (f'<div id="verdict" class="verdict-error" role="alert" style="background:#fff4e5;color:#8a4b00;'
            f'padding:14px 18px;border-radius:10px;font-size:1.1em;border:1px solid #f0b35b"><b>⚠ '
            f'{text.ERROR_PREFIX[action]}: {html.escape(message)}</b><br><span style="font-size:0.8em">'
            f'{text.ERROR_HINT[action]}</span></div>')


def _token_tip(step: int, row: int, tid: int, token: str, rec: dict | None, diff: dict | None) -> str:
    """Hover text for a token of OUR text: its id, and its probability and rank under both models."""
    tip = f"step {step} · row {row + 1} · id {tid} {token!r}"
    if rec is not None:
        tip += f"\nours: sampling p {rec['prob']:.3g}, model p {rec['raw_prob']:.3g}, rank {rec['rank']}"
    if diff is not None:
        tip += f"\nHF:   sampling p {diff['hf_prob']:.3g}, rank {diff['hf_rank']}"
    return tip + "\nclick: top-50 at this step"


def _hf_token_tip(step: int, row: int, tid: int, token: str, rec: dict | None, diff: dict | None, first) -> str:
    """Hover text for a token of HF's text. Up to the first difference both saw the same context."""
    if rec is None or diff is None:
        return f"step {step} · row {row + 1} · id {tid} {token!r}"
    if tid == rec["token_id"]:
        return _token_tip(step, row, tid, token, rec, diff)
    if first is not None and step > first:
        return (f"step {step} · row {row + 1} · id {tid} {token!r}\nafter the first difference HF's context is its own "
                "text, not ours: no per-token comparison\nclick: top-50 at this step (our context)")
    tip = f"step {step} · row {row + 1} · id {tid} {token!r} (ours sampled id {rec['token_id']} {rec['token']!r})"
    if tid in rec["top_ids"]:
        k = rec["top_ids"].index(tid)
        tip += (f"\nours: sampling p {rec['top_sample_probs'][k]:.3g}, model p {rec['top_probs'][k]:.3g}, rank {k + 1}"
                f"\nHF:   sampling p {diff['hf_top_sample_probs'][k]:.3g}, model p {diff['hf_top_probs'][k]:.3g}")
    else:
        tip += "\noutside our top-50"
    return tip + "\nclick: top-50 at this step"


# The texts' styles (the dashboard's CSS and the HTML report's both include them): one line per row, tokens inline,
# the first difference red, later tokens grey.
TEXT_CSS = """
.pl-text .pl-row {white-space: pre-wrap; overflow-wrap: anywhere; margin: 0 0 0.45em 0; line-height: 1.55}
.pl-text .pl-n {color: #57606a; font-size: 0.85em}
.pl-text .tok {cursor: pointer; border-radius: 3px}
.pl-text .tok:hover {outline: 1px solid #1f6feb; background: #ddf4ff}
.pl-text .tok.first {background: #ff6b6b; color: #fff}
.pl-text .tok.after {background: #d0d7de}
.pl-text .tok.picked {outline: 2px solid #1f6feb}
.pl-text .pl-head {position: sticky; top: 0; z-index: 1; background: var(--block-background-fill, #fff);
  font-weight: 600; padding: 2px 0 6px 0}
.pl-text .pl-legend {margin-bottom: 0.5em; font-size: 0.85em}
.pl-text .pl-legend .tok {padding: 1px 6px; cursor: default}
"""

TEXT_HEADS = {"ours": "Ours", "hf": "HuggingFace"}


def text_head(side: str, legend: bool = False, label: str | None = None) -> str:
    """The panel's title (`label` for the model under test, e.g. "Yours"); the legend chips only when there is a
    difference to mark."""
    chips = (' <span class="pl-legend"><span class="tok first">first difference</span> '
             '<span class="tok after">after</span></span>') if legend else ""
    return f'<div class="pl-head">{html.escape(label or TEXT_HEADS[side])}{chips}</div>'


def texts_html(report: dict, token_text, side: str) -> str:
    """Both texts as HTML: one line per row, each generated token a span that knows its step and row (click it
    to inspect that step), with its id, probability and rank under both models on hover. The first token that
    differs from the other side is red, later ones grey."""
    records = report["generation"]["records"]
    steps = report["steps"]
    prompt = html.escape(report["prompt"] or "")
    lines = [text_head(side, legend=any(r["first_divergent_step"] is not None for r in report["rows"]),
                       label=report.get("subject") if side == "ours" else None)]
    for row in report["rows"]:
        r = row["row"]
        if side == "hf" and report["reference"] == "logits":
            lines.append(f'<div class="pl-row"><span class="pl-n">[{r + 1}]</span> '
                         '(logits only: HF did not sample)</div>')
            continue
        ids = row["ours_new_ids"] if side == "ours" else row["ref_new_ids"]
        first = row["first_divergent_step"]
        parts = [f'<div class="pl-row"><span class="pl-n">[{r + 1}]</span> <span class="pl-prompt">{prompt}</span>']
        for i, tid in enumerate(ids):
            rec = records[i][r] if i < len(records) and r < len(records[i]) else None
            diff = steps[i][r] if i < len(steps) and r < len(steps[i]) else None
            tok = token_text(tid)
            cls = "tok" + (" first" if first is not None and i == first
                           else " after" if first is not None and i > first else "")
            tip = (_token_tip(i, r, tid, tok, rec, diff) if side == "ours"
                   else _hf_token_tip(i, r, tid, tok, rec, diff, first))
            data = f' data-s="{i}" data-r="{r}"' if rec is not None else ""
            parts.append(f'<span class="{cls}"{data} title="{html.escape(tip)}">{html.escape(tok)}</span>')
        parts.append("</div>")
        lines.append("".join(parts))
    return "".join(lines)


def partial_html(prompt: str, completions: list[str], label: str | None = None) -> str:
    """Our text while it streams in (no per-token data yet)."""
    return text_head("ours", label=label) + "".join(
        f'<div class="pl-row"><span class="pl-n">[{r + 1}]</span> {html.escape(prompt + c)}</div>'
        for r, c in enumerate(completions))


def settings_rows(report: dict) -> list[list]:
    """[setting, ours, HF, HF's source, differs?]. The source of max_length is put right here: with max new
    tokens given, HF's effective max_length is prompt + those tokens (whoever gave them), not a default."""
    table = report["settings_table"]
    by_name = {r["name"]: r for r in table}
    new = by_name.get("max_new_tokens")
    rows = []
    for r in table:
        source = r["source"]
        if r["name"] == "max_length" and new is not None and new.get("hf") is not None:
            who = "you" if new["source"] == "you" else new["source"]
            source = f"{who}: prompt ({len(report['prompt_ids'])} tokens) + {new['hf']} new tokens"
        elif source == "transformers default":
            source = "transformers' own default"
        rows.append([r["name"], str(r["ours"]), str(r["hf"]), source, "⚠ differs" if r["differs"] else ""])
    return rows


SETTINGS_HEADERS = ["setting", "ours", "HF", "HF's source", ""]
DIFFERS_STYLE = "background-color: #ffe2e0; color: #82071e; font-weight: 600"


def settings_table(report: dict):
    """The settings as a pandas Styler: rows where HF's effective value differs from ours highlighted."""
    import pandas as pd

    df = pd.DataFrame(settings_rows(report), columns=SETTINGS_HEADERS)
    return df.style.apply(lambda row: [DIFFERS_STYLE if row.iloc[-1] else ""] * len(row), axis=1)


def summary(report: dict) -> dict:
    """The Download tab's summary: the verdict and both texts, without the per-token records."""
    return {
        "verdict": report["verdict"],
        "agree": report["agree"],
        "subject": report.get("subject", "Ours"),  # "Yours" when the app runs with --yours
        "ours_texts": report["generation"]["texts"],
        "hf_texts": [r["ref_text"] for r in report["rows"]],
        "first_divergent_steps": [r["first_divergent_step"] for r in report["rows"]],
        "causes": [r["cause"] for r in report["rows"]],
        "max_abs_dlogit": report["max_abs_dlogit"],
        "first_diverging_layer": report["first_diverging_layer"],
        "first_diverging_sublayer": report.get("first_diverging_sublayer"),
        "diverging_blocks": report.get("diverging_blocks") or [],
        "diagnosis": report.get("diagnosis") or [],
        "seconds": report["timings"].get("total_s"),
    }


def cases_markdown(check: dict) -> str:
    """The upload panel's status: the uploaded result's verdict, then one line per case."""
    impl = check["implementation"]
    name = " · ".join(str(impl[k]) for k in ("name", "framework", "dtype") if impl.get(k)) or "your result"
    lines = [f"**{'✅ agrees' if check['agree'] else '❌ differs'}**: {name} against HF's reference "
             f"`{check['reference_id']}`"]
    for i, r in enumerate(check["cases"]):
        mark = "✅" if r["agree"] else "❌"
        layer = r["first_diverging_layer"]
        layer = f" · first diverging layer **{layer}**" if layer and not names_layer(r["verdict"], layer) else ""
        lines.append(f"- case {i} (seed {r['settings']['seed']}): {mark} {r['verdict']}{layer}")
    return "\n".join(lines)


def training_verdict_html(report: dict) -> str:
    """The Training step tab's verdict: agree or differ, the first layer and parameter, each finding."""
    ok = report["agree"]
    color, bg = ("#1a7f37", "#dafbe1") if ok else ("#82071e", "#ffebe9")
    where = ""
    if not ok:
        where = (f"<br>first diverging layer: <b>{html.escape(str(report.get('first_diverging_layer') or 'none'))}</b>"
                 f" · first diverging parameter: <b>"
                 f"{html.escape(str(report.get('first_diverging_parameter') or 'none'))}</b>")
    more = "".join(f"<li>{html.escape(m)}</li>" for m in report.get("mistakes", [])[1:] + report.get("structure", []))
    return (f'<div id="train-verdict" style="padding:14px 18px;border-radius:10px;background:{bg};color:{color}">'
            f"<b>{'AGREE' if ok else 'DIFFER'}</b>: {html.escape(report['verdict'])}{where}"
            f"<br><span style='font-size:0.85em'>loss {report['loss']:.6f} · HF {report['hf_loss']:.6f} · "
            f"batch {report['batch']['batch_size']} x {report['batch']['seq_len']}</span>"
            + (f"<ul style='font-size:0.85em;margin:6px 0 0 0'>{more}</ul>" if more else "") + "</div>")


def training_error_html(message: str) -> str:
    return (f'<div id="train-verdict" class="verdict-error" role="alert" style="background:#fff4e5;color:#8a4b00;'
            f'padding:14px 18px;border-radius:10px;border:1px solid #f0b35b"><b>⚠ Training step refused: '
            f"{html.escape(message)}</b></div>")
