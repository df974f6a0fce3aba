"""Every Plotly figure of LoRA Explorer, shared by the app and notebooks.

Pure functions: metrics records (the dicts of `metrics.jsonl` or a job snapshot) in, `go.Figure` out.
No Streamlit here. Series are NumPy arrays (Plotly sends them as compact typed arrays) and are
downsampled so that a live chart stays small on every refresh.
"""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

MAX_POINTS = 2000  # per series shown; a live chart re-sends the whole figure on every tick
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
          "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def series(records, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of every record that has a finite `key`, in step order."""
    points = [(record["step"], record[key]) for record in records
              if _finite(record.get(key)) and _finite(record.get("step"))]
    if not points:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
    steps, values = zip(*points)
    return np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64)


def downsample(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Every k-th point so that at most `max_points` remain; the last point is always kept."""
    n = len(x)
    if max_points < 2 or n <= max_points:
        return x, y
    stride = math.ceil((n - 1) / (max_points - 1))
    keep = np.arange(0, n, stride)
    if keep[-1] != n - 1:
        keep = np.append(keep[: max_points - 1], n - 1)
    return x[keep], y[keep]


def loss_figure(records_by_label: dict[str, list[dict]], *, log_y: bool = False, max_points: int = MAX_POINTS,
                title: str | None = None, height: int = 360) -> go.Figure:
    """Training loss (a line per run) and evaluation loss (markers in the same colour) against step."""
    fig = go.Figure()
    for index, (label, records) in enumerate(records_by_label.items()):
        color = COLORS[index % len(COLORS)]
        steps, losses = downsample(*series(records, "loss"), max_points)
        fig.add_trace(go.Scatter(x=steps, y=losses, mode="lines", name=f"{label} train", legendgroup=label,
                                 line=dict(color=color, width=1.5),
                                 hovertemplate="step %{x}<br>loss %{y:.4g}<extra>" + label + "</extra>"))
        eval_steps, eval_losses = downsample(*series(records, "eval_loss"), max_points)
        if len(eval_steps):
            fig.add_trace(go.Scatter(x=eval_steps, y=eval_losses, mode="markers", name=f"{label} eval",
                                     legendgroup=label,
                                     marker=dict(color=color, size=8, symbol="diamond",
                                                 line=dict(color="white", width=1)),
                                     hovertemplate="step %{x}<br>eval loss %{y:.4g}<extra>" + label + "</extra>"))
    empty = not any(len(trace.x) for trace in fig.data)
    fig.update_layout(
        title=title, height=height, margin=dict(l=10, r=10, t=40 if title else 10, b=10),
        xaxis_title="step", yaxis_title="loss", yaxis_type="log" if log_y else "linear",
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0),
        hovermode="closest", uirevision="loss",  # keep the user's zoom across live refreshes
    )
    if empty:
        fig.add_annotation(text="no training steps logged yet", showarrow=False,
                           xref="paper", yref="paper", x=0.5, y=0.5)
    return fig
