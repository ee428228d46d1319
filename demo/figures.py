"""Pure functions: a parity report (the JSON-ready dict of core.ParityReport) -> plotly figures. No state, no I/O."""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

OURS = "#1f6feb"
HF = "#f59e0b"
BAD = "#d1242f"
MUTED = "#8c959f"
ROW_COLORS = ["#1f6feb", "#f59e0b", "#2da44e", "#a371f7", "#e85aad", "#0b7285", "#8c6d1f", "#57606a"]


def _layout(fig: go.Figure, title: str, height: int = 360) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.01), height=height, margin=dict(l=60, r=20, t=50, b=50),
                      template="plotly_white", legend=dict(orientation="h", y=-0.2))
    return fig


def _positive(x: float | None) -> float | None:
    """Log axes can't show 0: exact zeros are drawn at 1e-12 (hover shows the true value)."""
    if x is None or not math.isfinite(x):
        return None
    return max(x, 1e-12)


def step_diffs_figure(report: dict) -> go.Figure:
    """Per step: max |Δlogit| (left) and KL(HF‖ours) (right), one line per row, tolerance dashed."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("max |Δlogit| per step", "KL(HF ‖ ours) per step"))
    n_rows = len(report["rows"])
    for r in range(n_rows):
        pts = [st[r] for st in report["steps"] if st[r] is not None]
        color = ROW_COLORS[r % len(ROW_COLORS)]
        steps = [p["step"] for p in pts]
        fig.add_trace(go.Scatter(x=steps, y=[_positive(p["max_abs_dlogit"]) for p in pts], mode="lines+markers",
                                 name=f"row {r + 1}", line=dict(color=color), legendgroup=str(r),
                                 customdata=[p["max_abs_dlogit"] for p in pts],
                                 hovertemplate="step %{x}<br>max |Δlogit| %{customdata:.3g}<extra>row " + str(r + 1) + "</extra>"),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=steps, y=[_positive(p["kl"]) for p in pts], mode="lines+markers",
                                 name=f"row {r + 1}", line=dict(color=color), legendgroup=str(r), showlegend=False,
                                 customdata=[p["kl"] if p["kl"] is not None else float("nan") for p in pts],
                                 hovertemplate="step %{x}<br>KL %{customdata:.3g}<extra>row " + str(r + 1) + "</extra>"),
                      row=1, col=2)
    tolerances = [p["tolerance"] for st in report["steps"] for p in st if p is not None]
    if tolerances:
        tol = max(tolerances)
        fig.add_hline(y=tol, line=dict(color=BAD, dash="dash"), row=1, col=1)
        # on log axes plotly places annotations in log10 units
        fig.add_annotation(x=0, xref="x domain", y=math.log10(tol), yref="y", text=f"tolerance {tol:.2g}",
                           showarrow=False, xanchor="left", yanchor="bottom", font=dict(color=BAD))
    kls = [p["kl"] for st in report["steps"] for p in st if p is not None and p["kl"] is not None]
    fig.update_yaxes(type="log", row=1, col=1)
    # KL of float noise is ~1e-12..1e-8: a fixed floor keeps it flat at the bottom instead of a zig-zag
    fig.update_yaxes(type="log", range=[-12, math.log10(max([1e-3, *kls]) * 10)], row=1, col=2)
    fig.update_xaxes(title_text="step")
    return _layout(fig, "Where the two models differ, step by step")


def top50_figure(report: dict, step: int, row: int) -> go.Figure:
    """Top-50 tokens (by our model) at one step and row: our probabilities vs HF's, the sampled token outlined,
    the top-k / top-p cut-off drawn."""
    records = report["generation"]["records"]
    if not records:
        return _layout(go.Figure(), "No steps to show")
    step = max(0, min(int(step), len(records) - 1))
    row = max(0, min(int(row), len(records[step]) - 1))
    rec = records[step][row]
    diff = report["steps"][step][row] if report["steps"] else None
    if rec is None:
        return _layout(go.Figure(), f"Row {row + 1} had finished (eos) before step {step}")
    labels = [f"{i + 1}. {t}" for i, t in enumerate(rec["top_tokens"])]
    chosen = [tid == rec["token_id"] for tid in rec["top_ids"]]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=labels, y=rec["top_probs"], name="ours", marker_color=OURS,
                         marker_line=dict(color=[BAD if c else OURS for c in chosen], width=[3 if c else 0 for c in chosen]),
                         customdata=list(zip(rec["top_tokens"], rec["top_ids"], rec["top_logits"], rec["top_sample_probs"])),
                         hovertemplate="token %{customdata[0]} (id %{customdata[1]})<br>ours p=%{y:.4f}"
                                       "<br>logit %{customdata[2]:.3f}<br>sampling p=%{customdata[3]:.4f}<extra>ours</extra>"))
    if diff is not None:
        fig.add_trace(go.Bar(x=labels, y=diff["hf_top_probs"], name="HF", marker_color=HF,
                             customdata=list(zip(rec["top_tokens"], diff["hf_top_sample_probs"])),
                             hovertemplate="token %{customdata[0]}<br>HF p=%{y:.4f}<br>sampling p=%{customdata[1]:.4f}"
                                           "<extra>HF</extra>"))
    kept = sum(rec["top_kept"])
    if 0 < kept < len(labels):
        fig.add_vline(x=kept - 0.5, line=dict(color=MUTED, dash="dot"),
                      annotation_text=f"cut-off: {rec['n_kept']} kept", annotation_position="top right")
    picked = rec["token"]
    fig = _layout(fig, f"Step {step}, row {row + 1}: sampled '{picked}' (rank {rec['rank']}, p={rec['prob']:.3f})",
                  height=440)
    fig.update_layout(barmode="group", xaxis=dict(tickangle=-60, tickfont=dict(size=10), automargin=True),
                      yaxis_title="probability", margin=dict(l=70, b=110),
                      legend=dict(orientation="h", x=1, xanchor="right", y=1.02, yanchor="bottom"))
    return fig


def heatmap_figure(report: dict, row: int) -> go.Figure:
    """Sampling probabilities of the top-50 tokens over steps for one row (rank 1 on top)."""
    records = report["generation"]["records"]
    cols = [(s, st[row]) for s, st in enumerate(records) if row < len(st) and st[row] is not None]
    if not cols:
        return _layout(go.Figure(), "No steps to show")
    z = [[rec["top_sample_probs"][k] for _, rec in cols] for k in range(len(cols[0][1]["top_ids"]))]
    text = [[rec["top_tokens"][k] for _, rec in cols] for k in range(len(cols[0][1]["top_ids"]))]
    fig = go.Figure(go.Heatmap(z=z, x=[s for s, _ in cols], y=list(range(1, len(z) + 1)), text=text,
                               colorscale="Viridis", colorbar=dict(title="p"),
                               hovertemplate="step %{x}, rank %{y}<br>%{text}<br>p=%{z:.4f}<extra></extra>"))
    chosen_rank = [rec["rank"] if rec["rank"] <= len(z) else None for _, rec in cols]
    fig.add_trace(go.Scatter(x=[s for s, _ in cols], y=chosen_rank, mode="markers", name="sampled",
                             marker=dict(symbol="x", color="white", size=8, line=dict(color="black", width=1))))
    fig.update_yaxes(autorange="reversed", title_text="rank under our model")
    fig.update_xaxes(title_text="step")
    return _layout(fig, f"Top-50 sampling probabilities over steps, row {row + 1}", height=420)


def entropy_figure(report: dict, row: int) -> go.Figure:
    """Entropy of the sampling and model distributions, and the chosen token's probability and rank."""
    records = report["generation"]["records"]
    cols = [(s, st[row]) for s, st in enumerate(records) if row < len(st) and st[row] is not None]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    steps = [s for s, _ in cols]
    fig.add_trace(go.Scatter(x=steps, y=[r["entropy"] for _, r in cols], name="entropy (sampling dist.)",
                             line=dict(color=OURS)), secondary_y=False)
    fig.add_trace(go.Scatter(x=steps, y=[r["raw_entropy"] for _, r in cols], name="entropy (model)",
                             line=dict(color=OURS, dash="dot")), secondary_y=False)
    fig.add_trace(go.Scatter(x=steps, y=[r["prob"] for _, r in cols], name="chosen token p", mode="lines+markers",
                             line=dict(color=HF), customdata=[[r["token"], r["rank"]] for _, r in cols],
                             hovertemplate="step %{x}: %{customdata[0]}<br>p=%{y:.3f}, rank %{customdata[1]}<extra></extra>"),
                  secondary_y=True)
    fig.update_yaxes(title_text="entropy (nats)", secondary_y=False)
    fig.update_yaxes(title_text="probability", range=[0, 1.05], secondary_y=True)
    fig.update_xaxes(title_text="step")
    return _layout(fig, f"Entropy and the chosen token, row {row + 1}")


def layers_figure(report: dict) -> go.Figure:
    """Per layer, max|Δ| at the place (row, position) that decides the layer (log scale) against the tolerance at
    that same place (rtol x max|HF value| there); the first diverging layer marked."""
    layers = report["layers"]
    names = [l["name"] for l in layers]
    first = report.get("first_diverging_layer")
    fig = go.Figure()
    for exceeds, label, color in ((False, "within tolerance", OURS), (True, "exceeds tolerance", BAD)):
        sel = [l for l in layers if l["exceeds"] == exceeds]
        fig.add_trace(go.Bar(x=[l["name"] for l in sel],
                             y=[_positive(l.get("worst_abs_diff", l["max_abs_diff"])) for l in sel],
                             marker_color=color, name=label,
                             customdata=[[l.get("worst_abs_diff", l["max_abs_diff"]), l["tolerance"],
                                          l.get("worst_scale", l["scale"]), l.get("worst_row", 0) + 1,
                                          l.get("worst_position", 0), l.get("ratio", 0.0), l["max_abs_diff"],
                                          l["scale"]] for l in sel],
                             hovertemplate="%{x}, row %{customdata[3]}, position %{customdata[4]}"
                                           "<br>max |Δ| there %{customdata[0]:.3g}"
                                           "<br>tolerance there %{customdata[1]:.3g}"
                                           " (max |HF| there %{customdata[2]:.3g})"
                                           "<br>ratio %{customdata[5]:.3g}"
                                           "<br>whole layer: max |Δ| %{customdata[6]:.3g},"
                                           " max |HF| %{customdata[7]:.3g}"
                                           "<extra></extra>"))
    fig.add_trace(go.Scatter(x=names, y=[l["tolerance"] for l in layers], mode="lines+markers",
                             name="tolerance at that place",
                             line=dict(color="#24292f", dash="dash")))
    fig.update_xaxes(categoryorder="array", categoryarray=names)
    if first is not None:
        fig.add_annotation(x=first, y=1, yref="paper", text=f"first diverging: {first}", showarrow=True,
                           arrowhead=2, font=dict(color=BAD))
    fig.update_yaxes(type="log", title_text="max |Δ| at the deciding place (ours vs HF)")
    title = f"Per layer: first diverging layer {first}" if first else "Per layer: every layer within tolerance"
    return _layout(fig, title)
