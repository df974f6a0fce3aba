"""Every Plotly figure of LoRA Explorer, shared by the app and notebooks.

Pure functions: records (the dicts of `metrics.jsonl`, `spectra.jsonl`, `alignment.jsonl` or a job
snapshot) in, `go.Figure` out.
No Streamlit here. Series are NumPy arrays (Plotly sends them as compact typed arrays) and are
downsampled so that a live chart stays small on every refresh.
"""
from __future__ import annotations

import math
import os
import re
import zlib

import numpy as np
import plotly.graph_objects as go

MAX_POINTS = 2000  # per series shown; a live chart re-sends the whole figure on every tick
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
          "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
# One colour per method on every page, so a method is recognised at a glance in any chart. Tableau 10 for
# the first ten (full FT, the reference, in near-black), navy and dark goldenrod for the last two; any two
# differ by at least 28 in CIELAB ΔE.
METHOD_COLORS = {
    "full": "#3b3b3b", "lora": "#1f77b4", "lora-plus": "#ff7f0e", "rslora": "#2ca02c", "dora": "#d62728",
    "vera": "#9467bd", "lora-fa": "#8c564b", "lora-drop": "#e377c2", "adalora": "#bcbd22",
    "delta-lora": "#17becf", "lora-ga": "#00008b", "lora-pro": "#b8860b",
}
_OTHER_COLORS = ("#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2")
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")  # runs of one method: seeds, ranks


def method_color(method: str | None) -> str:
    """The colour of a method on every page; a method without its own (a plugin) gets a stable pale one."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    return _OTHER_COLORS[zlib.crc32(str(method).encode()) % len(_OTHER_COLORS)]


def method_dashes(method_by_label: dict[str, str]) -> dict[str, str]:
    """A line dash per label: the first run of each method solid, its next ones dashed, dotted, ...
    (runs of one method share its colour)."""
    seen: dict[str, int] = {}
    dashes = {}
    for label, method in method_by_label.items():
        dashes[label] = DASHES[seen.get(method, 0) % len(DASHES)]
        seen[method] = seen.get(method, 0) + 1
    return dashes


def _color(label: str, index: int, colors: dict[str, str] | None) -> str:
    """The colour of one run of a multi-run figure: the caller's (by method) if given, else by position."""
    if colors and label in colors:
        return colors[label]
    return COLORS[index % len(COLORS)]


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


def downsample_index(n: int, max_points: int = MAX_POINTS) -> np.ndarray | None:
    """The indices `downsample` keeps of n points (None: all of them)."""
    if max_points < 2 or n <= max_points:
        return None
    stride = math.ceil((n - 1) / (max_points - 1))
    keep = np.arange(0, n, stride)
    if keep[-1] != n - 1:
        keep = np.append(keep[: max_points - 1], n - 1)
    return keep


def downsample(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Every k-th point so that at most `max_points` remain; the last point is always kept."""
    keep = downsample_index(len(x), max_points)
    return (x, y) if keep is None else (x[keep], y[keep])


def loss_figure(records_by_label: dict[str, list[dict]], *, log_y: bool = False, max_points: int = MAX_POINTS,
                title: str | None = None, height: int = 360, colors: dict[str, str] | None = None) -> go.Figure:
    """Training loss (a line per run) and evaluation loss (markers in the same colour) against step."""
    fig = go.Figure()
    for index, (label, records) in enumerate(records_by_label.items()):
        color = _color(label, index, colors)
        steps, losses = downsample(*series(records, "loss"), max_points)
        fig.add_trace(go.Scatter(x=steps, y=losses, mode="lines", name=f"{label} train", legendgroup=label,
                                 line={"color": color, "width": 1.5},
                                 hovertemplate="step %{x}<br>loss %{y:.4g}<extra>" + label + "</extra>"))
        eval_steps, eval_losses = downsample(*series(records, "eval_loss"), max_points)
        if len(eval_steps):
            fig.add_trace(go.Scatter(x=eval_steps, y=eval_losses, mode="markers", name=f"{label} eval",
                                     legendgroup=label,
                                     marker={"color": color, "size": 8, "symbol": "diamond",
                                             "line": {"color": "white", "width": 1}},
                                     hovertemplate="step %{x}<br>eval loss %{y:.4g}<extra>" + label + "</extra>"))
    empty = not any(len(trace.x) for trace in fig.data)
    fig.update_layout(
        title=title, height=height, margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
        xaxis_title="step", yaxis_title="loss", yaxis_type="log" if log_y else "linear",
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0},
        hovermode="closest", uirevision="loss",  # keep the user's zoom across live refreshes
    )
    if empty:
        fig.add_annotation(text="no training steps logged yet", showarrow=False,
                           xref="paper", yref="paper", x=0.5, y=0.5)
    return fig


# ---------------------------------------------------------------- weight-update spectra (spectra.jsonl)
SPECTRUM_MODES = ("absolute", "normalised", "cumulative")
NUMERICAL_ZERO = 1e-6  # σ_i ≤ this × σ_1 is not drawn: the numerical rank's own cut-off (analysis.stats)


def _empty(fig: go.Figure, text: str) -> go.Figure:
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    return fig


def _layout(fig: go.Figure, *, title: str | None, height: int, **axes) -> go.Figure:
    fig.update_layout(title=title, height=height, margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0},
                      hovermode="closest", **axes)
    fig.update_xaxes(automargin=True)  # room for tick labels and titles within the small margins
    fig.update_yaxes(automargin=True)
    return fig


def natural_order(names) -> list[str]:
    """Layer names with their numbers in numeric order: layer.2 before layer.10."""
    return sorted(set(names), key=lambda name: [int(part) if part.isdigit() else part
                                                for part in re.split(r"(\d+)", name)])


def short_names(names: list[str]) -> dict[str, str]:
    """Layer names without the dotted prefix they all share ("bert.encoder.layer.")."""
    if len(names) < 2:
        return {name: name for name in names}
    prefix = os.path.commonprefix(list(names))
    prefix = prefix[: prefix.rfind(".") + 1]
    return {name: name[len(prefix):] or name for name in names}


def _sigma(record: dict) -> np.ndarray | None:
    sigma = record.get("sigma")
    if not isinstance(sigma, list) or not all(_finite(s) for s in sigma):
        return None
    return np.asarray(sigma, dtype=np.float64)


def _layer_records(records, layer: str) -> list[dict]:
    return sorted((record for record in records if record.get("layer") == layer and _finite(record.get("step"))),
                  key=lambda record: record["step"])


def record_at(records, layer: str, step: int) -> dict | None:
    """The layer's record at the last recorded step at or before `step` (else its first one): runs
    with different analysis cadences still show their nearest spectrum."""
    chosen = _layer_records(records, layer)
    before = [record for record in chosen if record["step"] <= step]
    return before[-1] if before else (chosen[0] if chosen else None)


def spectrum_values(sigma: np.ndarray, frobenius: float, mode: str) -> np.ndarray:
    """σ_i (absolute), σ_i/‖ΔW‖_F (normalised) or Σ_{j≤i} σ_j²/‖ΔW‖²_F (cumulative energy)."""
    if mode == "absolute":
        return sigma
    if mode == "normalised":
        return sigma / frobenius
    if mode == "cumulative":
        return np.cumsum(sigma ** 2) / frobenius ** 2
    raise ValueError(f"unknown spectrum mode {mode!r}; one of {', '.join(SPECTRUM_MODES)}")


def _frobenius(record: dict, sigma: np.ndarray) -> float:
    """‖ΔW‖_F = σ_1·√(stable rank): exact even though spectra.jsonl keeps only the top 64 σ."""
    stable_rank = record.get("stable_rank")
    if _finite(stable_rank) and stable_rank > 0:
        return float(sigma[0]) * math.sqrt(stable_rank)
    return float(np.sqrt(np.sum(sigma ** 2)))


def _spectrum_trace(sigma: np.ndarray, frobenius: float, mode: str, name: str, **style) -> go.Scatter | None:
    if not len(sigma) or sigma[0] <= 0 or frobenius <= 0:
        return None
    sigma = sigma[sigma > NUMERICAL_ZERO * sigma[0]]
    index = np.arange(1, len(sigma) + 1)
    return go.Scatter(x=index, y=spectrum_values(sigma, frobenius, mode), mode="lines+markers", name=name,
                      hovertemplate="i = %{x}<br>%{y:.4g}<extra>" + name + "</extra>", **style)


def spectrum_figure(spectra_by_label: dict[str, list[dict]], layer: str, step: int, *, mode: str = "absolute",
                    true_sigma=None, title: str | None = None, height: int = 380,
                    colors: dict[str, str] | None = None) -> go.Figure:
    """Singular values of one layer's ΔW for several runs at one step, against their index; log-y for
    the absolute and normalised modes. `true_sigma`: the toy teacher's ΔW* spectrum, drawn dashed."""
    fig = go.Figure()
    for index, (label, records) in enumerate(spectra_by_label.items()):
        record = record_at(records, layer, step)
        sigma = _sigma(record) if record else None
        if sigma is None:
            continue
        name = label if record["step"] == step else f"{label} (step {record['step']})"
        trace = _spectrum_trace(sigma, _frobenius(record, sigma), mode, name,
                                line={"color": _color(label, index, colors), "width": 1.5}, marker={"size": 4})
        if trace is not None:
            fig.add_trace(trace)
    if true_sigma is not None and len(true_sigma):
        truth = np.asarray(true_sigma, dtype=np.float64)
        trace = _spectrum_trace(truth, float(np.sqrt(np.sum(truth ** 2))), mode, "true ΔW*",
                                line={"color": "black", "dash": "dash", "width": 1.5}, marker={"size": 4})
        if trace is not None:
            fig.add_trace(trace)
    y_title = {"absolute": "σᵢ of ΔW", "normalised": "σᵢ / ‖ΔW‖_F", "cumulative": "share of ‖ΔW‖²_F in σ₁…σᵢ"}
    _layout(fig, title=title, height=height, xaxis_title="singular value index i", yaxis_title=y_title[mode],
            yaxis_type="linear" if mode == "cumulative" else "log", uirevision="spectrum")
    if not fig.data:
        _empty(fig, f"no non-zero update of {layer} recorded at step {step}")
    return fig


def configured_ranks(config: dict) -> dict[str, int]:
    """The ranks a run was configured with ({"r": 8}; AdaLoRA adds its "final r"); {} for full FT."""
    params = config.get("method_params") or {}
    ranks = {}
    for key, name in (("rank", "r"), ("final_rank", "final r")):
        if isinstance(params.get(key), int) and not isinstance(params[key], bool) and params[key] > 0:
            ranks[name] = params[key]
    return ranks


def rank_figure(spectra_by_label: dict[str, list[dict]], layer: str, *,
                ranks_by_label: dict[str, dict[str, int]] | None = None,
                title: str | None = None, height: int = 360, colors: dict[str, str] | None = None) -> go.Figure:
    """Effective rank (solid) and stable rank (dotted) of one layer's ΔW against step, a colour and one
    legend entry per run; the configured rank r of each run is a dashed line in its colour (AdaLoRA's
    final r dash-dotted)."""
    fig = go.Figure()
    ranks_by_label = ranks_by_label or {}
    for index, (label, records) in enumerate(spectra_by_label.items()):
        color = _color(label, index, colors)
        chosen = _layer_records(records, layer)
        for key, name, dash in (("effective_rank", label, "solid"), ("stable_rank", f"{label} stable rank", "dot")):
            steps, values = series(chosen, key)
            if len(steps):
                fig.add_trace(go.Scatter(x=steps, y=values, mode="lines+markers", name=name, legendgroup=label,
                                         showlegend=key == "effective_rank",
                                         line={"color": color, "dash": dash, "width": 1.5}, marker={"size": 4},
                                         hovertemplate="step %{x}<br>" + key.replace("_", " ")
                                                       + " %{y:.3g}<extra>" + label + "</extra>"))
        steps = [record["step"] for record in chosen]
        for rank_name, rank in ranks_by_label.get(label, {}).items():
            if steps:
                fig.add_trace(go.Scatter(x=np.array([min(steps), max(steps)]), y=np.array([rank, rank]),
                                         mode="lines", name=f"{label} {rank_name} = {rank}", legendgroup=label,
                                         showlegend=False, hoverinfo="name",
                                         line={"color": color, "dash": "dash" if rank_name == "r" else "dashdot",
                                               "width": 1}))
    _layout(fig, title=title, height=height, xaxis_title="step", yaxis_title="rank of ΔW", uirevision="ranks")
    if not fig.data:
        _empty(fig, f"no spectra recorded for {layer}")
    return fig


def _heatmap(z: np.ndarray, steps: np.ndarray, layers: list[str], colorbar: str, hover: str) -> go.Heatmap:
    names = short_names(layers)
    full_names = np.array(layers)[:, None].repeat(len(steps), axis=1)  # the hover shows the whole name
    return go.Heatmap(z=z, x=steps, y=[names[layer] for layer in layers], customdata=full_names,
                      colorscale="Viridis", colorbar={"title": colorbar},
                      hovertemplate="%{customdata}<br>step %{x}<br>" + hover + " %{z:.3g}<extra></extra>")


def rank_heatmap_figure(records: list[dict], key: str = "effective_rank", *, title: str | None = None,
                        height: int = 380) -> go.Figure:
    """One run: a layer × step grid of `key` (effective rank by default) from spectra.jsonl."""
    valid = [record for record in records if isinstance(record.get("layer"), str)
             and _finite(record.get("step")) and _finite(record.get(key))]
    fig = go.Figure()
    if valid:
        layers = natural_order(record["layer"] for record in valid)
        steps = np.array(sorted({record["step"] for record in valid}))
        z = np.full((len(layers), len(steps)), np.nan)
        rows, columns = {layer: i for i, layer in enumerate(layers)}, {step: j for j, step in enumerate(steps)}
        for record in valid:
            z[rows[record["layer"]], columns[record["step"]]] = record[key]
        fig.add_trace(_heatmap(z, steps, layers, key.replace("_", " "), key.replace("_", " ")))
    _layout(fig, title=title, height=height, xaxis_title="step", yaxis_title="layer")
    if not fig.data:
        _empty(fig, "no spectra recorded")
    return fig


def adalora_ranks_figure(rank_records: list[dict], *, max_columns: int = 600, title: str | None = None,
                         height: int = 380) -> go.Figure:
    """AdaLoRA's rank allocation: a layer × step grid of the rank each layer keeps. The file records
    only the steps where the allocation changed; every step in between keeps the last allocation."""
    valid = sorted((record for record in rank_records
                    if _finite(record.get("step")) and isinstance(record.get("ranks"), dict)),
                   key=lambda record: record["step"])
    fig = go.Figure()
    if valid:
        layers = natural_order(layer for record in valid for layer in record["ranks"])
        change_steps = np.array([record["step"] for record in valid])
        steps = np.arange(change_steps[0], change_steps[-1] + 1)
        steps = steps[:: math.ceil(len(steps) / max_columns)]
        latest = np.searchsorted(change_steps, steps, side="right") - 1
        z = np.array([[valid[i]["ranks"].get(layer, np.nan) for i in latest] for layer in layers], dtype=np.float64)
        fig.add_trace(_heatmap(z, steps, layers, "kept rank", "kept rank"))
        fig.data[0].zmin = 0
    _layout(fig, title=title, height=height, xaxis_title="step", yaxis_title="layer")
    if not fig.data:
        _empty(fig, "no AdaLoRA rank allocation recorded")
    return fig


def lora_drop_figure(split: dict, *, title: str | None = None, height: int = 340) -> go.Figure:
    """LoRA-drop's stage-1 importance share per layer, largest first; kept layers (own LoRA) and
    layers that share one LoRA in different colours."""
    importance = {layer: share for layer, share in (split.get("importance") or {}).items() if _finite(share)}
    kept = set(split.get("kept") or [])
    partners = {layer: group for group in split.get("shared") or [] if isinstance(group, list) for layer in group}
    order = sorted(importance, key=importance.get, reverse=True)
    names = short_names(order)
    fig = go.Figure()
    for is_kept, name, color in ((True, "own LoRA (kept)", COLORS[0]), (False, "shares one LoRA", COLORS[1])):
        layers = [layer for layer in order if (layer in kept) == is_kept]
        if layers:
            fig.add_trace(go.Bar(
                x=[names[layer] for layer in layers], y=np.array([importance[layer] for layer in layers]),
                name=name, marker_color=color,
                customdata=[", ".join(short_names(partners.get(layer, [layer])).values()) for layer in layers],
                hovertemplate="%{x}<br>importance %{y:.3f}" + ("" if is_kept else "<br>group: %{customdata}")
                              + "<extra>" + name + "</extra>"))
    _layout(fig, title=title, height=height, xaxis_title="layer", yaxis_title="share of importance",
            xaxis={"categoryorder": "array", "categoryarray": [names[layer] for layer in order]})
    if not fig.data:
        _empty(fig, "no LoRA-drop importances recorded")
    return fig


def mean_by_step(records, key: str, layer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(steps, mean of the finite `key` over layers at each step); one layer's values if `layer` is given."""
    values = {}
    for record in records:
        wanted = layer is None or record.get("layer") == layer
        if wanted and _finite(record.get("step")) and _finite(record.get(key)):
            values.setdefault(record["step"], []).append(record[key])
    steps = np.array(sorted(values), dtype=np.int64)
    return steps, np.array([np.mean(values[step]) for step in steps], dtype=np.float64)


def dora_figure(spectra_by_label: dict[str, list[dict]], layer: str | None = None, *, title: str | None = None,
                height: int = 380, colors: dict[str, str] | None = None) -> go.Figure:
    """DoRA's learning pattern (Liu et al. 2024): magnitude change ΔM against direction change ΔD of the
    effective weight, a point per layer and recorded step (one layer's steps if `layer`), a colour per run."""
    fig = go.Figure()
    for index, (label, records) in enumerate(spectra_by_label.items()):
        points = [record for record in records if (layer is None or record.get("layer") == layer)
                  and _finite(record.get("step")) and _finite(record.get("delta_m")) and _finite(record.get("delta_d"))]
        if not points:
            continue
        fig.add_trace(go.Scatter(
            x=np.array([point["delta_d"] for point in points]), y=np.array([point["delta_m"] for point in points]),
            mode="markers", name=label, marker={"color": _color(label, index, colors), "size": 7},
            customdata=[[point["step"], point.get("layer", "")] for point in points],
            hovertemplate="%{customdata[1]}<br>step %{customdata[0]}<br>ΔD %{x:.3g}<br>ΔM %{y:.3g}<extra>"
                          + label + "</extra>"))
    _layout(fig, title=title, height=height, xaxis_title="ΔD (direction change)",
            yaxis_title="ΔM (magnitude change)")
    if not fig.data:
        _empty(fig, "no ΔM/ΔD recorded")
    return fig


# ---------------------------------------------------------------- gradient alignment (alignment.jsonl) and cross-run
def alignment_figure(alignment_by_label: dict[str, list[dict]], *, per_layer: bool = False, bounds: bool = True,
                     title: str | None = None, height: int = 380, colors: dict[str, str] | None = None) -> go.Figure:
    """cos(g̃, g) between each run's equivalent gradient and the full gradient against step: the mean
    over layers (or a thin line per layer), with the best cos a rank-r (dashed) and rank-2r (dotted)
    update could reach, averaged over layers."""
    fig = go.Figure()
    for index, (label, records) in enumerate(alignment_by_label.items()):
        color = _color(label, index, colors)
        if per_layer:
            layers = natural_order(record["layer"] for record in records if isinstance(record.get("layer"), str))
            lines = [(f"{name}<br>", *mean_by_step(records, "cos", layer))
                     for layer, name in short_names(layers).items()]
        else:
            lines = [("", *mean_by_step(records, "cos"))]
        lines = [line for line in lines if len(line[1])]
        for position, (layer_text, steps, cos) in enumerate(lines):
            # one legend entry per run: its layer lines and bounds show and hide with it
            fig.add_trace(go.Scatter(x=steps, y=cos, mode="lines+markers", name=label, legendgroup=label,
                                     showlegend=position == 0,
                                     line={"color": color, "width": 1 if per_layer else 2}, marker={"size": 4},
                                     hovertemplate=layer_text + "step %{x}<br>cos %{y:.3f}<extra>" + label
                                                   + "</extra>"))
        for key, dash, rank in (("bound_r", "dash", "r"), ("bound_2r", "dot", "2r")) if bounds else ():
            steps, bound = mean_by_step(records, key)
            if len(steps):
                name = f"{label} best rank-{rank}"
                fig.add_trace(go.Scatter(x=steps, y=bound, mode="lines", name=name, legendgroup=label,
                                         showlegend=False,
                                         line={"color": color, "dash": dash, "width": 1},
                                         hovertemplate="step %{x}<br>bound %{y:.3f}<extra>" + name + "</extra>"))
    _layout(fig, title=title, height=height, xaxis_title="step", yaxis_title="cos(g̃, g)", uirevision="alignment")
    if not fig.data:
        _empty(fig, "no gradient alignment recorded")
    return fig


def first_step_alignment_figure(alignment_by_label: dict[str, list[dict]], *, title: str | None = None,
                                height: int = 340, colors: dict[str, str] | None = None) -> go.Figure:
    """cos(g̃, g) at step 0 (the initial point), mean over layers, a bar per run; markers show the
    rank-r and rank-2r bounds."""
    labels, cos, bound_r, bound_2r = [], [], [], []
    for label, records in alignment_by_label.items():
        first = [record for record in records if record.get("step") == 0]
        steps, values = mean_by_step(first, "cos")
        if len(steps):
            labels.append(label)
            cos.append(values[0])
            bound_r.append(_first_or_nan(mean_by_step(first, "bound_r")[1]))
            bound_2r.append(_first_or_nan(mean_by_step(first, "bound_2r")[1]))
    fig = go.Figure()
    if labels:
        bar_colors = [_color(label, i, colors) for i, label in enumerate(labels)] if colors else COLORS[0]
        fig.add_trace(go.Bar(x=labels, y=np.array(cos), name="cos at step 0", marker_color=bar_colors,
                             hovertemplate="%{x}<br>cos %{y:.3f}<extra></extra>"))
        for values, name, symbol in ((bound_r, "best rank-r", "line-ew-open"),
                                     (bound_2r, "best rank-2r", "diamond-open")):
            if not np.all(np.isnan(values)):
                fig.add_trace(go.Scatter(x=labels, y=np.array(values), mode="markers", name=name,
                                         marker={"symbol": symbol, "size": 16, "color": "black",
                                                 "line": {"width": 2}},
                                         hovertemplate="%{x}<br>" + name + " %{y:.3f}<extra></extra>"))
    _layout(fig, title=title, height=height, yaxis_title="cos(g̃, g) at step 0")
    if not fig.data:
        _empty(fig, "no alignment recorded at step 0")
    return fig


def _first_or_nan(values: np.ndarray) -> float:
    return float(values[0]) if len(values) else math.nan


def _layer_bars(values_by_label: dict[str, dict[str, float | None]], hover: str,
                colors: dict[str, str] | None = None) -> go.Figure:
    """Grouped bars: a group per layer, a bar per run; None values draw no bar."""
    layers = natural_order(layer for values in values_by_label.values() for layer in values)
    names = short_names(layers)
    fig = go.Figure()
    for index, (label, values) in enumerate(values_by_label.items()):
        if values:
            fig.add_trace(go.Bar(x=[names[layer] for layer in layers],
                                 y=np.array([values.get(layer) if _finite(values.get(layer)) else np.nan
                                             for layer in layers], dtype=np.float64),
                                 name=label, marker_color=_color(label, index, colors), customdata=layers,
                                 hovertemplate="%{customdata}<br>" + hover + " %{y:.3g}<extra>" + label + "</extra>"))
    return fig


def overlap_figure(overlap_by_label: dict[str, dict[str, float | None]], k: int, *, reference: str = "full FT",
                   title: str | None = None, height: int = 340, colors: dict[str, str] | None = None) -> go.Figure:
    """Subspace overlap φ between each run's final ΔW and the reference run's, per layer (1 = same top-k
    directions, about k/m for unrelated ones)."""
    fig = _layer_bars(overlap_by_label, "φ", colors)
    _layout(fig, title=title, height=height, barmode="group", xaxis_title="layer",
            yaxis={"title": f"φ with {reference}, top-{k}", "range": [0, 1.05]})
    if not fig.data:
        _empty(fig, "no overlap computed")
    return fig


def intruder_figure(counts_by_label: dict[str, dict[str, int]], top_k: int, *, title: str | None = None,
                    height: int = 340, colors: dict[str, str] | None = None) -> go.Figure:
    """Intruder dimensions per layer: how many of the top-k singular vectors of the trained weight are
    new directions, far from every pretrained one; a bar per run."""
    fig = _layer_bars(counts_by_label, "intruders", colors)
    _layout(fig, title=title, height=height, barmode="group", xaxis_title="layer",
            yaxis={"title": f"intruders among the top {top_k}", "range": [0, top_k + 0.5], "dtick": 1})
    if not fig.data:
        _empty(fig, "no intruder counts computed")
    return fig


# ---------------------------------------------------------------- comparing runs (the Compare page)
COMPARE_POINTS = 600  # per series on the Compare page: 12 runs x (curve + raw + band) stay light on every refresh


def curves_figure(curves_by_label: dict[str, dict], *, x_title: str = "step", y_title: str = "",
                  log_y: bool = False, colors: dict[str, str] | None = None, dashes: dict[str, str] | None = None,
                  max_points: int = COMPARE_POINTS, title: str | None = None, height: int = 380,
                  uirevision: str = "curves") -> go.Figure:
    """One curve per label against a common x: `y` (smoothed, or a group's mean) as the line, `raw` (the
    unsmoothed values) faint behind it, and a band from `lower` to `upper` (mean ± std over seeds) when
    given. A curve is a dict of arrays {"x", "y", "raw"?, "n"?} of one length (n: how many runs each
    point averages, shown on hover) and {"band_x"?, "lower"?, "upper"?} of another (default x).
    Downsampled to `max_points` per series for display only."""
    fig = go.Figure()
    for index, (label, curve) in enumerate(curves_by_label.items()):
        x, y = np.asarray(curve["x"], dtype=np.float64), np.asarray(curve["y"], dtype=np.float64)
        if not len(x):
            continue
        keep = downsample_index(len(x), max_points)

        def pick(values, keep=keep):
            return np.asarray(values, dtype=np.float64) if keep is None else np.asarray(values, dtype=np.float64)[keep]
        color = _color(label, index, colors)
        dash = (dashes or {}).get(label, "solid")
        markers = len(x) <= 50  # sparse series (evaluations) read better with their points marked
        if curve.get("lower") is not None and curve.get("upper") is not None and len(curve["lower"]):
            bx = np.asarray(curve["band_x"] if curve.get("band_x") is not None else x, dtype=np.float64)
            band_keep = downsample_index(len(bx), max_points)
            band = slice(None) if band_keep is None else band_keep
            lower = np.asarray(curve["lower"], dtype=np.float64)[band]
            upper = np.asarray(curve["upper"], dtype=np.float64)[band]
            bx = bx[band]
            if log_y:  # a log axis drops values ≤ 0, which would tear the band open
                floor = np.nanmin(np.where(y > 0, y, np.nan)) / 2 if np.any(y > 0) else 1e-12
                lower = np.maximum(lower, floor)
            fig.add_trace(go.Scatter(x=np.concatenate([bx, bx[::-1]]), y=np.concatenate([upper, lower[::-1]]),
                                     mode="lines", fill="toself", fillcolor=color, opacity=0.18,
                                     line={"width": 0, "color": color}, name=f"{label} ± std", legendgroup=label,
                                     showlegend=False, hoverinfo="skip"))
        if curve.get("raw") is not None:
            fig.add_trace(go.Scatter(x=pick(x), y=pick(curve["raw"]), mode="lines",
                                     name=f"{label} raw", legendgroup=label, showlegend=False, opacity=0.25,
                                     line={"color": color, "width": 1, "dash": dash}, hoverinfo="skip"))
        n = curve.get("n")
        hover = (f"{x_title} %{{x:.4g}}<br>{y_title or 'y'} %{{y:.4g}}"
                 + ("<br>mean of %{customdata} runs" if n is not None else "") + "<extra>" + label + "</extra>")
        fig.add_trace(go.Scatter(x=pick(x), y=pick(y), mode="lines+markers" if markers else "lines", name=label,
                                 legendgroup=label, line={"color": color, "width": 2, "dash": dash},
                                 marker={"size": 6}, hovertemplate=hover,
                                 customdata=None if n is None else pick(n).astype(np.int64)))
    _layout(fig, title=title, height=height, xaxis_title=x_title, yaxis_title=y_title,
            yaxis_type="log" if log_y else "linear", uirevision=uirevision)
    if not fig.data:
        _empty(fig, f"no {y_title or 'values'} logged yet")
    return fig


def pareto_figure(points_by_label: dict[str, tuple[float, float]], front: list[str], *, x_title: str,
                  y_title: str, log_x: bool = False, colors: dict[str, str] | None = None,
                  title: str | None = None, height: int = 380) -> go.Figure:
    """A point per run (x = a cost, y = a result), coloured by `colors`; the runs on the Pareto front
    (no other run is at least as cheap and at least as good) ringed and joined by a dashed step line."""
    fig = go.Figure()
    on_front = set(front)
    for index, (label, (x, y)) in enumerate(points_by_label.items()):
        if not (_finite(x) and _finite(y)):
            continue
        color = _color(label, index, colors)
        fig.add_trace(go.Scatter(
            x=np.array([x], dtype=np.float64), y=np.array([y], dtype=np.float64), mode="markers", name=label,
            marker={"color": color, "size": 13 if label in on_front else 9,
                    "line": {"color": "black", "width": 2} if label in on_front else {"color": "white", "width": 1}},
            hovertemplate=f"{x_title} %{{x:.4g}}<br>{y_title} %{{y:.4g}}"
                          + ("<br>on the Pareto front" if label in on_front else "") + "<extra>" + label + "</extra>"))
    front_points = [points_by_label[label] for label in front if label in points_by_label]
    if len(front_points) > 1:
        xs, ys = zip(*sorted(front_points))
        fig.add_trace(go.Scatter(x=np.array(xs, dtype=np.float64), y=np.array(ys, dtype=np.float64), mode="lines",
                                 name="Pareto front", line={"color": "black", "dash": "dash", "width": 1,
                                                            "shape": "hv"},
                                 hoverinfo="skip"))
    _layout(fig, title=title, height=height, xaxis_title=x_title, yaxis_title=y_title,
            xaxis_type="log" if log_x else "linear")
    if not fig.data:
        _empty(fig, "no run has both numbers yet")
    return fig


# ---------------------------------------------------------------- notebooks: runs in, the app's figures out
def _by_run(runs, read) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """{label: records} and {label: method colour} for run objects (lora_explorer.store.Run):
    labelled by method, and by seed or name where those tell runs of one method apart."""
    configs = [run.config() for run in runs]
    repeated = {c.get("method") for c in configs if sum(d.get("method") == c.get("method") for d in configs) > 1}
    records, colors = {}, {}
    for run, config in zip(runs, configs):
        label = config.get("method", "?")
        if label in repeated:
            label += f" · seed {config.get('seed')}" + (f" · {config['name']}" if config.get("name") else "")
        if label in records:
            label += f" · {run.id.rsplit('-', 1)[-1]}"
        records[label], colors[label] = read(run), method_color(config.get("method"))
    return records, colors


def loss(runs, **options) -> go.Figure:
    """loss_figure for a list of runs: `lx.plots.loss(lx.runs(group=sweep_id))`."""
    records, colors = _by_run(runs, lambda run: run.metrics())
    return loss_figure(records, colors=colors, **options)


def spectrum(runs, layer: str, step: int | None = None, **options) -> go.Figure:
    """spectrum_figure for a list of runs at `step` (default: each run's last recorded step)."""
    records, colors = _by_run(runs, lambda run: run.spectra())
    if step is None:
        step = max((r["step"] for rs in records.values() for r in rs if r.get("layer") == layer), default=0)
    return spectrum_figure(records, layer, step, colors=colors, **options)


def alignment(runs, **options) -> go.Figure:
    """alignment_figure for a list of runs (cos of each method's step with full FT's gradient)."""
    records, colors = _by_run(runs, lambda run: run.alignment())
    return alignment_figure(records, colors=colors, **options)
