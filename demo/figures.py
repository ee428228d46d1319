"""Pure functions: a parity report (the JSON-ready dict of core.ParityReport) -> plotly figures. No state, no I/O.

Fields that newer reports may add or drop are read with .get(); every log axis shows decades only, in one notation.
Every title sits under a strip kept free for plotly's toolbar (MODEBAR_PX), so that on a phone the toolbar never
covers it. An exact zero on a log axis is not drawn as a tiny bar or point: it is marked "exact 0" on the axis
floor in its own colour.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .divergence import effective_divergences, is_greedy, report_divergences

OURS = "#1f6feb"
OWN = "#6e7781"  # HF's own error at a precision below float32
HF = "#f59e0b"
BAD = "#d1242f"
MUTED = "#8c959f"
NOISE = "rgba(45, 164, 78, 0.13)"
SPREAD = "rgba(31, 111, 235, 0.18)"
EXACT = "#1a7f37"  # an exact zero difference
SETTINGS = "#8250df"  # what HF samples from under its own settings
TV_FLOOR = 1e-9  # total variation below this (float32 probabilities give ~1e-8 noise) is drawn at the floor
LOG_AXIS = dict(type="log", dtick=1, exponentformat="power", showexponent="all", minor=dict(showgrid=False))
MODEBAR_PX = 34  # plotly's toolbar, top right: titles start below it
TOKEN_LABEL_CHARS = 24  # a top-50 label shows this much of "rank. token" (the hover shows all of it)
TICK_CHAR_PX = 6.7  # width of one character of an 11 px monospace tick label


def _top(px: int) -> int:
    """A figure's top margin: the toolbar's strip, then `px` for the title and anything above the plot area."""
    return MODEBAR_PX + px


def _layout(fig: go.Figure, title: str, height: int = 360) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.01, xref="container", y=1, yref="container", yanchor="top",
                                 pad=dict(t=MODEBAR_PX), font=dict(size=15)), height=height + MODEBAR_PX,
                      margin=dict(l=64, r=16, t=_top(40), b=50), template="plotly_white",
                      # at the bottom of the figure: a legend that wraps on a phone then takes room from the plot,
                      # never from the title (a legend above the plot grows into the title when it wraps)
                      legend=dict(orientation="h", x=0, xanchor="left", yref="container", y=0, yanchor="bottom",
                                  font=dict(size=11)),
                      hoverlabel=dict(align="left"))
    return fig


def _empty(title: str) -> go.Figure:
    return _layout(go.Figure(), title, height=200)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _fmt(x) -> str:
    if x is None:
        return "∞"
    return f"{x:.3g}" if _finite(x) else str(x)


def _shorten(label: str, chars: int = TOKEN_LABEL_CHARS) -> str:
    return label if len(label) <= chars else label[: chars - 1] + "…"


def _decade_floor(x: float) -> float:
    return 10.0 ** math.floor(math.log10(x))


# ---------------------------------------------------------------------------------------------------------
# Per step: worst row at each step, the spread across rows as a band


def step_summary(report: dict) -> list[dict]:
    """One entry per step with any active row: the worst and best row's max |Δlogit|, the lowest tolerance, the
    worst row's total variation and Jensen-Shannon divergence, and which rows exceed / have differing supports."""
    divs = report_divergences(report)
    out = []
    for s, (diffs, dv) in enumerate(zip(report["steps"], divs)):
        pts = [(d, v) for d, v in zip(diffs, dv) if d is not None and v is not None]
        if not pts:
            continue
        worst = max(pts, key=lambda dv_: (dv_[0]["max_abs_dlogit"] if _finite(dv_[0]["max_abs_dlogit"]) else math.inf))
        worst_tv = max(pts, key=lambda dv_: dv_[1].tv)
        out.append({
            "step": s,
            "dlogit_max": worst[0]["max_abs_dlogit"], "dlogit_row": worst[0]["row"],
            "dlogit_min": min(d["max_abs_dlogit"] for d, _ in pts),
            "tolerance": min(d["tolerance"] for d, _ in pts),
            "exceeds_rows": [d["row"] for d, _ in pts if d.get("exceeds")],
            "tv_max": worst_tv[1].tv, "tv_row": worst_tv[0]["row"], "tv_min": min(v.tv for _, v in pts),
            "js": worst_tv[1].js, "kl": worst_tv[1].kl, "exact": all(v.exact for _, v in pts),
            "mismatch_rows": [d["row"] for d, v in pts if v.support_mismatch],
            # below float32: HF's own error at that precision at this step (largest over rows), else None
            "hf_own_error": max((d["hf_own_error"] for d, _ in pts if d.get("hf_own_error") is not None),
                                default=None),
        })
    return out


def precision_label(report: dict) -> str | None:
    """The regime's name when the run was judged below float32 (HF's own error drawn as a band), else None."""
    p = report.get("precision") or {}
    return p.get("label") if p.get("factor") else None


def _temperature(report: dict) -> float:
    """The temperature the sampling distributions were divided by (1 for greedy: the model's own)."""
    t = (report.get("settings") or {}).get("temperature", 1.0)
    return 1.0 if is_greedy(report) or not t else float(t)


def _exact_zeros(fig: go.Figure, x: list, floor: float, what: list[str], **where) -> None:
    """Mark exact zeros on a log axis: a distinct marker on the axis floor, the hover saying so."""
    if x:
        fig.add_trace(go.Scatter(x=x, y=[floor] * len(x), mode="markers", name="exact 0 (bit-identical)",
                                 marker=dict(symbol="diamond", size=10, color=EXACT, line=dict(width=1, color="white")),
                                 customdata=what, cliponaxis=False,
                                 hovertemplate="%{customdata}: exactly 0, bit-identical<extra></extra>"), **where)


def step_diffs_figure(report: dict) -> go.Figure:
    """Two stacked panels over steps: max |Δlogit| against the tolerance (the noise region shaded under it), and
    the total variation between the two sampling distributions (finite even where KL is infinite). With several
    rows, the line is the worst row at each step and the band the spread across rows. When HF sampled with other
    settings than ours, the second panel also shows what those settings do: the total variation between what we
    sample from and what HF samples from under its own settings."""
    summ = step_summary(report)
    if not summ:
        return _empty("No steps to show")
    n_rows = len(report["rows"])
    many = n_rows > 1
    what = "sampling distributions" if not is_greedy(report) else "model distributions"
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.16, subplot_titles=(
        "max |Δlogit|" + (" (worst row; band: all rows)" if many else ""),
        f"total variation, {what}" + (" (worst row)" if many else "")))
    steps = [e["step"] for e in summ]

    # panel 1: |Δlogit| and the tolerance, noise shaded below it
    dmax = [e["dlogit_max"] for e in summ]
    tol = [e["tolerance"] for e in summ]
    own = [e["hf_own_error"] for e in summ if e["hf_own_error"] is not None]
    positive = [x for x in dmax + tol + own if _finite(x) and x > 0]
    floor = max(_decade_floor(min(positive)) / 10, 1e-12) if positive else 1e-12
    top = max([x for x in dmax + tol if _finite(x)] or [1.0])
    clip = lambda x: max(x, floor) if _finite(x) else None  # noqa: E731 - exact zeros sit on the floor

    fig.add_trace(go.Scatter(x=steps, y=[floor] * len(steps), mode="lines", line=dict(width=0), hoverinfo="skip",
                             showlegend=False), row=1, col=1)
    low = precision_label(report)
    fig.add_trace(go.Scatter(x=steps, y=tol, mode="lines", fill="tonexty", fillcolor=NOISE,
                             line=dict(color=BAD, dash="dash", width=1.5, shape="hvh"),
                             name=f"tolerance (below: {low} rounding)" if low else "tolerance (below: float noise)",
                             hovertemplate="tolerance %{y:.2g}<extra></extra>"), row=1, col=1)
    if low:
        fig.add_trace(go.Scatter(x=steps, y=[clip(e["hf_own_error"]) if e["hf_own_error"] is not None else None
                                             for e in summ], mode="lines", line=dict(color=OWN, width=1.5, shape="hvh"),
                                 name=f"HF's own error at {low}",
                                 hovertemplate=f"HF in {low} vs HF in float32: max |Δlogit| %{{y:.2g}}<extra></extra>"),
                      row=1, col=1)
    if many:
        fig.add_trace(go.Scatter(x=steps, y=[clip(e["dlogit_min"]) for e in summ], mode="lines", line=dict(width=0),
                                 hoverinfo="skip", showlegend=False), row=1, col=1)
        fig.add_trace(go.Scatter(x=steps, y=[clip(x) for x in dmax], mode="lines", line=dict(width=0),
                                 fill="tonexty", fillcolor=SPREAD, hoverinfo="skip", name="spread across rows"),
                      row=1, col=1)
    fig.add_trace(go.Scatter(
        x=steps, y=[clip(x) for x in dmax], mode="lines+markers" if len(steps) <= 60 else "lines",
        line=dict(color=OURS, width=1.5), marker=dict(size=5), name="max |Δlogit|",
        customdata=[[_fmt(e["dlogit_max"]) + (" (exact)" if e["dlogit_max"] == 0 else ""), e["dlogit_row"] + 1,
                     _fmt(e["dlogit_min"]), f"{e['tolerance']:.2g}"] for e in summ],
        hovertemplate="step %{x}<br>max |Δlogit| %{customdata[0]} (row %{customdata[1]})"
                      + ("<br>best row %{customdata[2]}" if many else "") + "<br>tolerance %{customdata[3]}<extra></extra>"),
        row=1, col=1)
    _exact_zeros(fig, [e["step"] for e in summ if e["dlogit_max"] == 0], floor,
                 [f"step {e['step']}, every row" for e in summ if e["dlogit_max"] == 0], row=1, col=1)
    bad = [e for e in summ if e["exceeds_rows"]]
    if bad:
        fig.add_trace(go.Scatter(x=[e["step"] for e in bad], y=[clip(e["dlogit_max"]) or top for e in bad],
                                 mode="markers", marker=dict(color=BAD, size=7, symbol="circle"),
                                 name="above tolerance", hoverinfo="skip"), row=1, col=1)
    fig.update_yaxes(**LOG_AXIS, range=[math.log10(floor), math.log10(top) + 0.5], title_text="|Δlogit|",
                     row=1, col=1)

    # panel 2: total variation (bounded, always finite), support mismatches marked. Within the logit tolerance
    # (|Δlogit| <= tol at every token, same support) the likelihood ratio of the two distributions lies in
    # [e^-2tol/T, e^2tol/T], so TV <= tanh(tol / T): the shaded noise band.
    temp = _temperature(report)
    tv_tol = [math.tanh(t / temp) for t in tol]
    fig.add_trace(go.Scatter(x=steps, y=[TV_FLOOR] * len(steps), mode="lines", line=dict(width=0), hoverinfo="skip",
                             showlegend=False), row=2, col=1)
    fig.add_trace(go.Scatter(x=steps, y=tv_tol, mode="lines", fill="tonexty", fillcolor=NOISE,
                             line=dict(color=BAD, dash="dot", width=1, shape="hvh"),
                             name="largest TV within the logit tolerance",
                             hovertemplate="TV within the logit tolerance: at most %{y:.2g}<extra></extra>"), row=2, col=1)
    if many:
        fig.add_trace(go.Scatter(x=steps, y=[max(e["tv_min"], TV_FLOOR) for e in summ], mode="lines",
                                 line=dict(width=0), hoverinfo="skip", showlegend=False), row=2, col=1)
    fig.add_trace(go.Scatter(
        x=steps, y=[max(e["tv_max"], TV_FLOOR) for e in summ], mode="lines+markers" if len(steps) <= 60 else "lines",
        line=dict(color=HF, width=1.5), marker=dict(size=5), name="total variation",
        fill="tonexty" if many else None, fillcolor="rgba(245, 158, 11, 0.18)",
        customdata=[[f"{e['tv_max']:.3g}", e["tv_row"] + 1, f"{e['js']:.3g}", _fmt(e["kl"]),
                     "exact" if e["exact"] else "lower bound (mass outside our top-50 lumped)"] for e in summ],
        hovertemplate="step %{x}<br>total variation %{customdata[0]} (row %{customdata[1]})"
                      "<br>0 = the same odds for every token, 1 = never the same token"
                      "<br>Jensen-Shannon %{customdata[2]} bits<br>KL(HF‖ours) %{customdata[3]}"
                      "<br>%{customdata[4]}<extra></extra>"),
        row=2, col=1)
    mism = [e for e in summ if e["mismatch_rows"]]
    if mism:
        fig.add_trace(go.Scatter(
            x=[e["step"] for e in mism], y=[max(e["tv_max"], TV_FLOOR) for e in mism], mode="markers",
            marker=dict(color=BAD, size=8, symbol="x-thin", line=dict(width=2, color=BAD)),
            name="supports differ (KL = ∞)",
            customdata=[", ".join(str(r + 1) for r in e["mismatch_rows"]) for e in mism],
            hovertemplate="step %{x}: HF can pick a token ours never would (so KL = ∞)<br>rows %{customdata}"
                          "<extra></extra>"),
            row=2, col=1)
    _settings_curve(fig, report, temp)
    fig.update_yaxes(**LOG_AXIS, range=[math.log10(TV_FLOOR), 0.05], title_text="total variation", row=2, col=1)
    fig.update_xaxes(title_text="step", row=2, col=1)
    fig.update_annotations(font=dict(size=12))  # the subplot titles
    fig = _layout(fig, "Where the two models differ, step by step", height=600)
    fig.update_layout(margin=dict(t=_top(48), b=40))
    return fig


def _settings_curve(fig: go.Figure, report: dict, temp: float) -> None:
    """Panel 2's line for HF's own settings (when they differ from ours): the worst row's total variation between
    what we sample from and what HF samples from, each under its own settings; or a note where the report cannot
    tell (HF applied a setting whose effect needs more than our top-50 tokens)."""
    hf, divs = effective_divergences(report)
    if hf is None:
        return
    pts = [(s, max((v for v in st if v is not None), key=lambda v: v.tv, default=None)) for s, st in enumerate(divs)]
    pts = [(s, v) for s, v in pts if v is not None]
    if not pts:
        fig.add_annotation(text=f"HF sampled with other settings ({hf.describe()}): see Settings. Their effect is "
                                "not drawn: it needs more than the top-50 tokens a report keeps",
                           xref="x2 domain", yref="y2 domain", x=0.01, y=0.98, xanchor="left", yanchor="top",
                           showarrow=False, font=dict(size=11, color=SETTINGS), align="left")
        return
    fig.add_trace(go.Scatter(
        x=[s for s, _ in pts], y=[max(v.tv, TV_FLOOR) for _, v in pts], mode="lines+markers" if len(pts) <= 60
        else "lines", line=dict(color=SETTINGS, width=2), marker=dict(size=5, symbol="square"),
        name=f"with HF's own settings ({hf.describe()})",
        customdata=[[f"{v.tv:.3g}", f"{v.js:.3g}", "" if v.exact else "<br>approximate: HF's top tokens are not all "
                     "among ours"] for _, v in pts],
        hovertemplate=f"step %{{x}}: what HF samples from with its own settings ({hf.describe()})"
                      "<br>against what we sample from: total variation %{customdata[0]} (worst row)"
                      "<br>Jensen-Shannon %{customdata[1]} bits%{customdata[2]}<extra></extra>"),
        row=2, col=1)


# ---------------------------------------------------------------------------------------------------------
# Top-50 at one step


def top50_figure(report: dict, step: int, row: int, log_scale: bool = False) -> go.Figure:
    """Our 50 most likely tokens at one step and row, rank 1 on top: model probabilities (bars) and sampling
    probabilities after temperature / top-k / top-p (markers), ours and HF's for the same tokens. The sampled
    token is outlined and marked ▶; the dotted line is the top-k / top-p cut-off."""
    records = report["generation"]["records"]
    if not records:
        return _empty("No steps to show")
    step = max(0, min(int(step), len(records) - 1))
    row = max(0, min(int(row), len(records[step]) - 1))
    rec = records[step][row]
    if rec is None:
        return _empty(f"Row {row + 1} had finished (end of text) before step {step}")
    diff = report["steps"][step][row] if step < len(report["steps"]) else None
    n = len(rec["top_ids"])
    chosen = [tid == rec["token_id"] for tid in rec["top_ids"]]
    # a long token is shortened on the axis (each label stays unique: it starts with its rank), whole in the hover
    names = [f"{i + 1}. {t}" for i, t in enumerate(rec["top_tokens"])]
    labels = [f"{'▶ ' if c else ''}{_shorten(name)}" for name, c in zip(names, chosen)]
    pos = lambda xs: [x if x > 0 else None for x in xs] if log_scale else list(xs)  # noqa: E731
    ids = rec["top_ids"]
    fig = go.Figure()
    fig.add_trace(go.Bar(
        y=labels, x=pos(rec["top_probs"]), orientation="h", name="ours: model p", marker_color=OURS,
        marker_line=dict(color=[BAD if c else OURS for c in chosen], width=[3 if c else 0 for c in chosen]),
        customdata=list(zip(ids, rec["top_logits"], rec["top_sample_probs"], names)),
        hovertemplate="%{customdata[3]} (id %{customdata[0]})<br>ours: model p %{x:.4g}, logit %{customdata[1]:.4g}"
                      "<br>ours: sampling p %{customdata[2]:.4g}<extra></extra>"))
    if diff is not None:
        fig.add_trace(go.Bar(
            y=labels, x=pos(diff["hf_top_probs"]), orientation="h", name="HF: model p", marker_color=HF,
            customdata=list(zip(ids, diff["hf_top_sample_probs"], names)),
            hovertemplate="%{customdata[2]} (id %{customdata[0]})<br>HF: model p %{x:.4g}"
                          "<br>HF: sampling p %{customdata[1]:.4g}<extra></extra>"))
    fig.add_trace(go.Scatter(y=labels, x=pos(rec["top_sample_probs"]), mode="markers", name="ours: sampling p",
                             marker=dict(symbol="line-ns", size=14, line=dict(width=3, color="#0a3069")),
                             hovertemplate="%{y}<br>ours: sampling p %{x:.4g}<extra></extra>"))
    if diff is not None:
        fig.add_trace(go.Scatter(y=labels, x=pos(diff["hf_top_sample_probs"]), mode="markers", name="HF: sampling p",
                                 marker=dict(symbol="line-ns", size=10, line=dict(width=3, color="#9a3412")),
                                 hovertemplate="%{y}<br>HF: sampling p %{x:.4g}<extra></extra>"))
    kept = sum(1 for p in rec["top_sample_probs"] if p > 0)
    if 0 < kept < n:
        fig.add_hline(y=kept - 0.5, line=dict(color=MUTED, dash="dot"), annotation_text=f"cut-off: {rec['n_kept']} kept",
                      annotation_position="bottom right", annotation_font=dict(color=MUTED, size=11))
    title = (f"Step {step}, row {row + 1}: sampled '{rec['token']}', rank {rec['rank']}"
             f"<br><sup>ours: model p {rec['raw_prob']:.3g}, sampling p {rec['prob']:.3g}</sup>")
    if diff is not None:
        hf_model = diff["hf_top_probs"][ids.index(rec["token_id"])] if rec["token_id"] in ids else None
        title += (f"<br><sup>HF: model p {_fmt(hf_model) if hf_model is not None else '(outside top-50)'}, "
                  f"sampling p {diff['hf_prob']:.3g} (rank {diff['hf_rank']})</sup>")
    fig = _layout(fig, title, height=18 * n + 170)
    fig.update_layout(title_pad_t=MODEBAR_PX + 16)  # plotly raises a title of several lines: lower it as much
    xaxis = dict(title_text="probability" + (" (log scale)" if log_scale else ""), side="top")
    if log_scale:
        xaxis.update(LOG_AXIS, range=[-8, 0.05])
    else:  # up to the largest probability shown (a peaked step reads like a flat one otherwise)
        shown = [*rec["top_probs"], *rec["top_sample_probs"]]
        if diff is not None:
            shown += [*diff["hf_top_probs"], *diff["hf_top_sample_probs"]]
        xaxis.update(range=[0, min(1.0, max(shown) * 1.1) or 1.0])
    # the labels' room set from their length (monospace), not left to automargin, which may shrink it when narrow
    label_px = 14 + math.ceil(TICK_CHAR_PX * max(len(label) for label in labels))
    fig.update_layout(barmode="group", bargap=0.25, bargroupgap=0.0, xaxis=xaxis,
                      yaxis=dict(autorange="reversed", categoryorder="array", categoryarray=labels,
                                 tickfont=dict(size=11, family="monospace"), automargin=True),
                      margin=dict(l=label_px, r=16, t=_top(118), b=60))
    return fig


# ---------------------------------------------------------------------------------------------------------
# Over steps, for one row


def _mark_step(fig: go.Figure, step: int | None) -> None:
    """A dotted line at the selected step, labelled just inside the plot's top edge (clear of title and legend)."""
    if step is not None:
        fig.add_vline(x=step, line=dict(color=BAD, width=1.5, dash="dot"))
        fig.add_annotation(x=step, xref="x", y=1, yref="paper", yanchor="top", xanchor="left", xshift=3,
                           text=f"step {step}", showarrow=False, font=dict(color=BAD, size=11),
                           bgcolor="rgba(255, 255, 255, 0.8)")


def heatmap_figure(report: dict, row: int, step: int | None = None) -> go.Figure:
    """Sampling probabilities of the top-50 tokens over steps for one row (rank 1 on top), the selected step marked."""
    records = report["generation"]["records"]
    cols = [(s, st[row]) for s, st in enumerate(records) if row < len(st) and st[row] is not None]
    if not cols:
        return _empty("No steps to show")
    n = len(cols[0][1]["top_ids"])
    z = [[rec["top_sample_probs"][k] for _, rec in cols] for k in range(n)]
    text = [[rec["top_tokens"][k] for _, rec in cols] for k in range(n)]
    fig = go.Figure(go.Heatmap(z=z, x=[s for s, _ in cols], y=list(range(1, n + 1)), text=text,
                               colorscale="Viridis", colorbar=dict(title="p", thickness=12),
                               hovertemplate="step %{x}, rank %{y}<br>%{text}<br>sampling p %{z:.4f}<extra></extra>"))
    chosen_rank = [rec["rank"] if rec["rank"] <= n else None for _, rec in cols]
    fig.add_trace(go.Scatter(x=[s for s, _ in cols], y=chosen_rank, mode="markers", name="sampled token",
                             marker=dict(symbol="x", color="white", size=8, line=dict(color="black", width=1))))
    _mark_step(fig, step)
    fig.update_yaxes(autorange="reversed", title_text="rank under our model")
    fig.update_xaxes(title_text="step")
    return _layout(fig, f"Top-50 sampling probabilities over steps, row {row + 1}", height=420)


def entropy_figure(report: dict, row: int, step: int | None = None) -> go.Figure:
    """Entropy of the sampling and model distributions, and the chosen token's probability and rank."""
    records = report["generation"]["records"]
    cols = [(s, st[row]) for s, st in enumerate(records) if row < len(st) and st[row] is not None]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    steps = [s for s, _ in cols]
    fig.add_trace(go.Scatter(x=steps, y=[r["entropy"] for _, r in cols], name="entropy (sampling)",
                             line=dict(color=OURS)), secondary_y=False)
    fig.add_trace(go.Scatter(x=steps, y=[r["raw_entropy"] for _, r in cols], name="entropy (model)",
                             line=dict(color=OURS, dash="dot")), secondary_y=False)
    fig.add_trace(go.Scatter(x=steps, y=[r["prob"] for _, r in cols], name="chosen token: sampling p",
                             mode="lines+markers" if len(steps) <= 60 else "lines",
                             line=dict(color=HF), customdata=[[r["token"], r["rank"]] for _, r in cols],
                             hovertemplate="step %{x}: %{customdata[0]}<br>sampling p %{y:.3f}, rank %{customdata[1]}"
                                           "<extra></extra>"),
                  secondary_y=True)
    _mark_step(fig, step)
    fig.update_yaxes(title_text="entropy (nats)", secondary_y=False)
    # its own ticks (plotly would sync them to the entropy axis' grid, at odd values), no second grid
    fig.update_yaxes(title_text="probability", range=[0, 1.05], tickmode="linear", tick0=0, dtick=0.2,
                     showgrid=False, secondary_y=True)
    fig.update_xaxes(title_text="step")
    return _layout(fig, f"Entropy and the chosen token, row {row + 1}")


# ---------------------------------------------------------------------------------------------------------
# Per layer


def layers_figure(report: dict) -> go.Figure:
    """Per layer, max|Δ| at its worst place (the row and position with the largest |Δ| relative to the tolerance
    there, which decides the layer; log scale) against the tolerance at that same place (rtol x max|HF value|
    there); the first diverging layer marked, an exact 0 marked on the axis floor."""
    layers = report["layers"]
    if not layers:
        return _empty("No layers to show")
    names = [l["name"] for l in layers]
    first = report.get("first_diverging_layer")
    subject = report.get("subject") or "Ours"
    at_all = [l.get("worst_abs_diff", l["max_abs_diff"]) for l in layers]  # max |Δ| at the place that decides
    shown = [x for x in at_all + [l.get("tolerance") for l in layers] + [l.get("hf_own_error") for l in layers]
             if x is not None and _finite(x) and x > 0]
    floor = max(_decade_floor(min(shown)) / 10, 1e-15) if shown else 1e-12
    top = max(shown or [1.0])
    fig = go.Figure()
    for exceeds, label, color in ((False, "within tolerance", OURS), (True, "exceeds tolerance", BAD)):
        sel = [l for l in layers if bool(l.get("exceeds")) == exceeds]
        at = [l.get("worst_abs_diff", l["max_abs_diff"]) for l in sel]
        fig.add_trace(go.Bar(x=[l["name"] for l in sel],
                             y=[d if _finite(d) and d > 0 else None for d in at],  # exact zeros: marked below
                             marker_color=color, name=label, legendgroup="accumulated",
                             legendgrouptitle_text="accumulated: the model on its own stream" + (
                                 f" (first: {report['first_diverging_sublayer']})"
                                 if report.get("first_diverging_sublayer") else ""),
                             customdata=[[_fmt(d), _fmt(l.get("tolerance")), _fmt(l.get("worst_scale", l.get("scale"))),
                                          l.get("worst_row", 0) + 1, l.get("worst_position", 0), _fmt(l.get("ratio")),
                                          _fmt(l["max_abs_diff"]), _fmt(l.get("scale"))] for d, l in zip(at, sel)],
                             hovertemplate="%{x}, worst place: row %{customdata[3]}, position %{customdata[4]}"
                                           "<br>max |Δ| there %{customdata[0]}"
                                           "<br>tolerance there %{customdata[1]} (max |HF| there %{customdata[2]})"
                                           "<br>ratio %{customdata[5]}"
                                           "<br>whole layer: max |Δ| %{customdata[6]}, max |HF| %{customdata[7]}"
                                           "<extra></extra>"))
    _exact_zeros(fig, [n for n, d in zip(names, at_all) if d == 0], floor,
                 [n for n, d in zip(names, at_all) if d == 0])
    fig.add_trace(go.Scatter(x=names, y=[l.get("tolerance") for l in layers], mode="lines+markers",
                             name="tolerance there", line=dict(color="#24292f", dash="dash")))
    isolated = report.get("isolated") or []
    blocks = report.get("diverging_blocks") or []
    which = (f"block {blocks[0]} differs" if len(blocks) == 1 else
             f"blocks {', '.join(map(str, blocks))} differ" if blocks else "every block matches")
    iso_title = f"isolated: each block on HF's own input ({which})"
    for exceeds, label, color in ((False, "block alone: within tolerance", OURS), (True, "block alone: differs", BAD)):
        sel = [l for l in isolated if bool(l.get("exceeds")) == exceeds]
        if not sel:
            continue
        at = [l.get("worst_abs_diff", l["max_abs_diff"]) for l in sel]
        fig.add_trace(go.Scatter(x=[l["name"] for l in sel], y=[d if _finite(d) and d > 0 else None for d in at],
                                 mode="markers", name=label, legendgroup="isolated",
                                 legendgrouptitle_text=iso_title,
                                 marker=dict(symbol="diamond", size=12, color=color,
                                             line=dict(color="#24292f", width=1)),
                                 customdata=[[_fmt(d), _fmt(l.get("tolerance")), _fmt(l.get("ratio"))]
                                             for d, l in zip(at, sel)],
                                 hovertemplate="%{x} alone, on HF's own input: max |Δ| %{customdata[0]}"
                                               "<br>tolerance there %{customdata[1]}, ratio %{customdata[2]}"
                                               "<extra></extra>"))
    low = precision_label(report)
    if low:  # below float32 the tolerance is a multiple of HF's own error at that precision, drawn here
        fig.add_trace(go.Scatter(x=names, y=[l.get("hf_own_error") or None for l in layers], mode="lines+markers",
                                 name=f"HF's own error at {low}", line=dict(color=OWN),
                                 hovertemplate=f"%{{x}}: HF in {low} vs HF in float32 there, %{{y:.2g}}"
                                               "<extra></extra>"))
    # slanted names never run into each other, whatever the width (the first diverging one is in the title)
    fig.update_xaxes(categoryorder="array", categoryarray=names, tickangle=-45, automargin=True)
    fig.update_yaxes(**LOG_AXIS, range=[math.log10(floor), math.log10(top) + 0.3],
                     title_text=f"max |Δ| at its worst place ({subject} vs HF)")
    title = f"Per layer: first diverging layer {first}" if first else "Per layer: every layer within tolerance"
    if low and not any(l.get("exceeds") for l in layers):  # the first layer named comes from the float32 re-check
        title = f"Per layer at {low}: every layer within {low}'s band" + (
            f"; in float32, first diverging layer {first}" if first else "")
    elif low:
        title += f" (at {low}: tolerance = {report['precision']['factor']:g} x HF's own error)"
    fig = _layout(fig, title, height=420)
    fig.update_layout(margin=dict(b=60))
    return fig


# ---------------------------------------------------------------------------------------------------------
# Training parity (a core.TrainingReport's dict)


def training_loss_figure(report: dict) -> go.Figure:
    """The loss on the batch before and after each optimizer step, yours and HF's, and |Δloss| against its
    tolerance (right axis, log)."""
    steps = [0] + [s["step"] for s in report.get("steps", [])]
    mine = [report["loss"]] + [s["loss"] for s in report.get("steps", [])]
    hf = [report["hf_loss"]] + [s["hf_loss"] for s in report.get("steps", [])]
    diffs = [report["loss_diff"]] + [s["loss_diff"] for s in report.get("steps", [])]
    tols = [report["loss_tolerance"]] + [s["loss_tolerance"] for s in report.get("steps", [])]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    label = report.get("subject") or "Yours"
    fig.add_trace(go.Scatter(x=steps, y=hf, name="HF loss", mode="lines+markers", line=dict(color=HF, width=3)))
    fig.add_trace(go.Scatter(x=steps, y=mine, name=f"{label} loss", mode="lines+markers",
                             line=dict(color=OURS, dash="dot")))
    floor = min([d for d in diffs if _finite(d) and d > 0] + [t for t in tols if _finite(t)] + [1e-12]) / 10
    fig.add_trace(go.Bar(x=steps, y=[d if _finite(d) and d > 0 else floor for d in diffs], name="|Δloss|",
                         marker_color=[BAD if not d <= t else MUTED for d, t in zip(diffs, tols)], opacity=0.5),
                  secondary_y=True)
    fig.add_trace(go.Scatter(x=steps, y=tols, name="tolerance", mode="lines", line=dict(color=MUTED, dash="dash")),
                  secondary_y=True)
    fig.update_xaxes(title_text="after optimizer step", dtick=1)
    fig.update_yaxes(title_text="loss", secondary_y=False)
    fig.update_yaxes(title_text="|Δloss|", secondary_y=True, **LOG_AXIS)
    return _layout(fig, "Loss on the batch, step by step")


def training_grads_figure(report: dict) -> go.Figure:
    """Every parameter's gradient: max |Δ| / tolerance (log), grouped by layer from the loss towards the embeddings;
    over 1 (red) differs. The residual stream's gradient per layer is drawn as a line on the same axis."""
    params = report.get("params", [])
    if not params:
        return _empty("No parameter gradients")
    names = [p["name"].removeprefix("transformer.") for p in params]
    ratios = [p["ratio"] if _finite(p["ratio"]) else None for p in params]
    finite = [r for r in ratios if r is not None and r > 0]
    floor = _decade_floor(min(finite)) if finite else 1e-3
    top = max(finite + [1.0]) * 3
    y = [r if r is not None and r > 0 else (top if r is None else floor) for r in ratios]
    colors = [BAD if p["exceeds"] else OURS for p in params]
    hover = [f"{p['name']}<br>{p['layer']}<br>max |Δ| {_fmt(p['max_abs_diff'])} / tolerance {_fmt(p['tolerance'])}"
             + (f"<br>{p['note']}" if p.get("note") else "") for p in params]
    fig = go.Figure(go.Bar(x=names, y=y, marker_color=colors, hovertext=hover, hoverinfo="text",
                           name="parameter gradient"))
    grads = report.get("grad_layers", [])
    if grads:
        first_of = {}
        for i, p in enumerate(params):
            first_of.setdefault(p["layer"], names[i])
        xs = [first_of[g["name"]] for g in grads if g["name"] in first_of]
        ys = [max(g["ratio"], floor) if _finite(g["ratio"]) else top for g in grads if g["name"] in first_of]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers+lines", name="stream gradient (layer input)",
                                 marker=dict(symbol="diamond", size=9, color=HF), line=dict(color=HF, width=1)))
    fig.add_hline(y=1.0, line=dict(color=BAD, dash="dash"), annotation_text="tolerance",
                  annotation_position="top left")
    fig.update_yaxes(title_text="max |Δgrad| / tolerance", **LOG_AXIS)
    fig.update_xaxes(tickangle=-60, tickfont=dict(size=9), title_text="from the loss towards the embeddings")
    return _layout(fig, "Gradient differences by parameter (HF's names), layer by layer", height=460)
