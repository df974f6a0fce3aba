"""Comparing runs: curves on a common x, TensorBoard-style smoothing, seeds grouped into mean ± std,
the cost table, the Pareto front, the config diff and the CSV exports. No Streamlit here: the Compare
page draws what these functions compute, and notebooks can call them directly.

A run's metrics.jsonl is read into a DataFrame with one row per logged record (training steps,
evaluations, alignment lines), in file order and at full resolution; only the figures downsample.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lora_explorer import store, tasks

# ---------------------------------------------------------------- what can be drawn
X_AXES = {"step": "step", "elapsed_s": "wall-clock seconds", "examples": "examples seen", "tokens": "tokens seen"}
PANEL_TITLES = {"loss": "training loss", "eval_loss": "eval loss", "lr": "learning rate",
                "align_cos": "gradient alignment cos(g̃, g)"}
PANEL_ORDER = ("loss", "eval_loss", "<metric>", "lr", "align_cos")  # <metric>: each task's eval metric
LOWER_IS_BETTER = {"perplexity", "loss", "eval_loss", "mse", "rmse", "mae", "error"}
METRIC_FORMULAS = {
    "r2": "R² = 1 − Σ(y − ŷ)² / Σ(y − ȳ)² on the held-out set (1 = perfect, 0 = predicting the mean)",
    "accuracy": "accuracy = share of held-out examples whose predicted class is the label",
    "perplexity": "perplexity = exp(mean cross-entropy per token) on the held-out text (lower is better)",
}

# config.json keys that never make two runs different experiments
IGNORED_KEYS = ("run_id", "created_at", "versions")
REPLICATE_KEYS = ("seed", "name", "group")  # runs that differ only in these are seeds of one configuration


def higher_is_better(metric: str | None) -> bool:
    return (metric or "") not in LOWER_IS_BETTER


def task_name(task) -> str:
    """A built-in task's name, or the file name of a data file (as the pages show it)."""
    task = str(task or "")
    return task if task in tasks.TASKS or task.startswith("hf:") else Path(task).name


# ---------------------------------------------------------------- one run's data
@dataclass
class RunData:
    id: str
    path: Path
    config: dict
    summary: dict
    frame: pd.DataFrame  # metrics.jsonl: a row per record, a column per logged key (NaN where not logged)
    problems: tuple[str, ...] = ()  # unreadable files, said once on the page

    @property
    def method(self) -> str:
        return str(self.config.get("method") or self.summary.get("method") or "?")

    @property
    def status(self) -> str:
        return self.summary.get("status", "interrupted")

    @property
    def metric_name(self) -> str | None:
        return self.summary.get("eval_metric_name") or _logged_metric(self.frame)

    @property
    def model_task(self) -> tuple[str, str]:
        return (str(self.config.get("model") or self.summary.get("model") or "?"),
                task_name(self.config.get("task") or self.summary.get("task")))


def _logged_metric(frame: pd.DataFrame) -> str | None:
    """The eval metric of a run whose summary is unreadable: the one key besides eval_loss on its eval rows."""
    if "eval_loss" not in frame:
        return None
    known = {"step", "eval_loss", "elapsed_s", "examples", "tokens"}
    rows = frame[np.isfinite(numeric(frame, "eval_loss"))]
    others = [key for key in rows.columns if key not in known and np.isfinite(numeric(rows, key)).any()]
    return others[0] if len(others) == 1 else None


def metrics_frame(records: list[dict]) -> pd.DataFrame:
    """metrics.jsonl records as a DataFrame in file order, every logged key as it was logged (a diverged
    step's `nonfinite` text too); `step` first, then `elapsed_s`, `examples`, `tokens`, then the other
    keys in order of appearance. Curves read it through `numeric`."""
    if not records:
        return pd.DataFrame({"step": pd.Series(dtype=np.float64)})
    frame = pd.DataFrame.from_records(records)
    first = [key for key in ("step", "elapsed_s", "examples", "tokens") if key in frame]
    return frame[first + [key for key in frame.columns if key not in first]]


def numeric(frame: pd.DataFrame, key: str) -> np.ndarray:
    """A column as float64: NaN where the key was not logged or is not a number (text, true/false)."""
    if key not in frame:
        return np.full(len(frame), np.nan)
    column = frame[key]
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        return column.to_numpy(dtype=np.float64)
    return pd.to_numeric(column.where(column.map(_is_number)), errors="coerce").to_numpy(dtype=np.float64)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_run(path: str | Path, info: store.RunInfo | None = None, frame: pd.DataFrame | None = None) -> RunData:
    """One run directory; its summary and config from `info`, its metrics from `frame` (metrics_frame of
    its metrics.jsonl) when the caller has them."""
    path = Path(path)
    run = store.Run(path)
    config = info.config if info is not None else run.config()
    summary = info.summary if info is not None else run.summary()
    if frame is None:
        frame = metrics_frame(run.metrics())
    problems = []
    if store.read_json(path / "summary.json") is None:
        problems.append("summary.json is missing or unreadable, so the run is listed as interrupted")
    if not len(frame) and summary.get("status") != "running":  # a run just started has logged nothing yet
        problems.append("metrics.jsonl has no readable line" if (path / "metrics.jsonl").exists()
                        else "no metrics.jsonl")
    return RunData(path.name, path, config, summary, frame, tuple(problems))


# ---------------------------------------------------------------- curves
def ema(values, weight: float) -> np.ndarray:
    """TensorBoard's debiased exponential moving average: s_t = w·s_{t−1} + (1 − w)·y_t from s_0 = 0,
    shown as s_t / (1 − w^t), t counting the finite values so far. Non-finite values are passed through
    and do not move the average; a constant series stays constant."""
    values = np.asarray(values, dtype=np.float64)
    if weight <= 0 or not len(values):
        return values.copy()
    finite = np.isfinite(values)
    if finite.any() and np.all(values[finite] == values[finite][0]):
        return values.copy()
    out = values.copy()
    last = 0.0
    for count, i in enumerate(np.flatnonzero(finite), start=1):
        last = last * weight + (1 - weight) * values[i]
        out[i] = last / (1 - weight ** count)
    return out


def x_values(frame: pd.DataFrame, axis: str) -> np.ndarray:
    """Every row's position on the x axis. Rows that did not log it (evaluation and alignment lines
    log no `examples`) get it interpolated over step from the rows that did; examples and tokens are 0
    at step 0. NaN where the run never logged the axis."""
    steps = numeric(frame, "step")
    if axis == "step":
        return steps
    if axis not in frame:
        return np.full(len(frame), np.nan)
    values = numeric(frame, axis)
    missing = ~np.isfinite(values)
    if missing.any():
        known = np.isfinite(values) & np.isfinite(steps)
        known_steps, known_values = steps[known], values[known]
        if axis in ("examples", "tokens") and len(known_steps) and not np.any(known_steps == 0):
            known_steps, known_values = np.append(known_steps, 0.0), np.append(known_values, 0.0)
        if len(known_steps):
            order = np.argsort(known_steps, kind="stable")
            values = values.copy()
            values[missing] = np.interp(steps[missing], known_steps[order], known_values[order])
            values[missing & ~np.isfinite(steps)] = np.nan
    return values


def curve(frame: pd.DataFrame, y_key: str, axis: str = "step") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, x, y) of the rows with a finite `y_key` and a finite x, in step order (file order within
    a step)."""
    if y_key not in frame or "step" not in frame:
        empty = np.empty(0)
        return empty, empty, empty
    y = numeric(frame, y_key)
    x = x_values(frame, axis)
    steps = numeric(frame, "step")
    keep = np.isfinite(y) & np.isfinite(x) & np.isfinite(steps)
    steps, x, y = steps[keep], x[keep], y[keep]
    order = np.argsort(steps, kind="stable")
    return steps[order], x[order], y[order]


def mean_std(curves: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Mean and sample standard deviation (n − 1) over runs of (steps, x, y) curves, aligned on step: at
    every step any run logged (a run's last value at a step counts), over the n runs that logged it; std
    is NaN where n < 2 (a seed still running, or not evaluated yet). x is the runs' mean x there (their
    wall-clock times differ). Returns {"step", "x", "mean", "std", "n"}."""
    ys, xs = {}, {}
    for index, (steps, x, y) in enumerate(curves):
        ys[index] = pd.Series(y, index=steps).groupby(level=0).last()
        xs[index] = pd.Series(x, index=steps).groupby(level=0).last()
    if not ys:
        return {key: np.empty(0) for key in ("step", "x", "mean", "std", "n")}
    y_table, x_table = pd.DataFrame(ys).sort_index(), pd.DataFrame(xs).sort_index()
    return {"step": y_table.index.to_numpy(dtype=np.float64),
            "x": x_table.mean(axis=1).to_numpy(dtype=np.float64),
            "mean": y_table.mean(axis=1).to_numpy(dtype=np.float64),
            "std": y_table.std(axis=1, ddof=1).to_numpy(dtype=np.float64),
            "n": y_table.notna().sum(axis=1).to_numpy()}


# ---------------------------------------------------------------- seeds of one configuration
def flatten(config: dict, prefix: str = "") -> dict:
    """Nested dicts as dotted keys: {"method_params": {"rank": 8}} -> {"method_params.rank": 8}."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _ignored(key: str) -> bool:
    return any(key == base or key.startswith(base + ".") for base in IGNORED_KEYS)


def replicate_key(config: dict) -> str:
    """What makes two runs the same experiment: their config apart from seed, name, group, id, creation
    time and library versions."""
    flat = {key: value for key, value in flatten(config).items()
            if not _ignored(key) and key not in REPLICATE_KEYS}
    return json.dumps(flat, sort_keys=True, default=str)


def seed_groups(configs: dict[str, dict]) -> list[list[str]]:
    """Run ids grouped by replicate_key (runs that differ only by seed), in order of first appearance."""
    groups: dict[str, list[str]] = {}
    for run_id, config in configs.items():
        groups.setdefault(replicate_key(config), []).append(run_id)
    return list(groups.values())


def group_label(runs: list[RunData], labels: dict[str, str]) -> str:
    """The legend label of a group of seeds: 'lora · <name> · seeds 0, 1' (a single run keeps its label)."""
    if len(runs) == 1:
        return labels[runs[0].id]
    names = {str(run.config.get("name") or "") for run in runs}
    seeds = ", ".join(str(seed) for seed in sorted((run.config.get("seed") for run in runs),
                                                   key=lambda seed: (not isinstance(seed, int), str(seed))))
    parts = [runs[0].method, names.pop() if len(names) == 1 else "", f"seeds {seeds}"]
    return " · ".join(part for part in parts if part)


def _unique(label: str, taken: set[str], suffix: str) -> str:
    if label in taken:
        label = f"{label} · {suffix}"
    while label in taken:
        label += "'"
    taken.add(label)
    return label


def panel_curves(runs: list[RunData], labels: dict[str, str], y_key: str, axis: str = "step", *,
                 smoothing: float = 0.0, groups: list[list[str]] | None = None,
                 bands: bool = False) -> tuple[dict[str, dict], dict[str, str]]:
    """The curves of one panel: ({label: {"x", "y", "raw", ["n", "band_x", "lower", "upper"]}}, {label:
    method}). Each run is smoothed on its own (EMA over its logged values); with `bands`, each group of
    seeds becomes one curve: the mean of its smoothed runs (n of them at each point), ± one standard
    deviation where at least two runs logged the step (band_x), the mean of the raw values faint behind."""
    by_id = {run.id: run for run in runs}
    groups = groups if groups is not None else [[run.id] for run in runs]
    curves, methods, taken = {}, {}, set()
    for group in groups:
        members = [by_id[run_id] for run_id in group if run_id in by_id]
        if not members:
            continue
        if bands and len(members) > 1:
            raw_curves, smooth_curves = [], []
            for run in members:
                steps, x, y = curve(run.frame, y_key, axis)
                raw_curves.append((steps, x, y))
                smooth_curves.append((steps, x, ema(y, smoothing)))
            smooth, raw = mean_std(smooth_curves), mean_std(raw_curves)
            label = _unique(group_label(members, labels), taken, members[0].id.rsplit("-", 1)[-1])
            both = smooth["n"] >= 2
            curves[label] = {"x": smooth["x"], "y": smooth["mean"], "raw": raw["mean"] if smoothing > 0 else None,
                             "n": smooth["n"], "band_x": smooth["x"][both],
                             "lower": (smooth["mean"] - smooth["std"])[both],
                             "upper": (smooth["mean"] + smooth["std"])[both]}
            methods[label] = members[0].method
            continue
        for run in members:
            steps, x, y = curve(run.frame, y_key, axis)
            label = _unique(labels[run.id], taken, run.id)
            curves[label] = {"x": x, "y": ema(y, smoothing), "raw": y if smoothing > 0 else None}
            methods[label] = run.method
    return curves, methods


def panels(runs: list[RunData]) -> dict[str, str]:
    """{y key: title} of what at least one run logged: training loss, eval loss, each eval metric,
    learning rate, gradient alignment."""
    found = {}
    for key in PANEL_ORDER:
        if key == "<metric>":
            for metric in dict.fromkeys(run.metric_name for run in runs if run.metric_name):
                if any(metric in run.frame for run in runs):
                    found[metric] = f"eval {metric}"
        elif any(np.isfinite(numeric(run.frame, key)).any() for run in runs):
            found[key] = PANEL_TITLES[key]
    return found


def x_axes(runs: list[RunData]) -> dict[str, str]:
    """The x axes every run can be drawn on (tokens only when a run logs them: language models)."""
    return {key: title for key, title in X_AXES.items()
            if key in ("step", "elapsed_s", "examples") or any(key in run.frame for run in runs)}


def model_task_groups(runs: list[RunData]) -> dict[tuple[str, str], list[str]]:
    """{(model, task): run ids}: more than one entry means the runs are not comparable."""
    found: dict[tuple[str, str], list[str]] = {}
    for run in runs:
        found.setdefault(run.model_task, []).append(run.id)
    return found


# ---------------------------------------------------------------- costs
OPTIMIZER_STATE_HELP = (
    "Estimated bytes of optimizer state. AdamW keeps two fp32 moments (m and v) per trainable parameter: "
    "8 bytes × trainable params (every method but LoRA-Pro; LoRA-FA's A is frozen and has none). LoRA-Pro "
    "with moments=full keeps two fp32 m×n moments per adapted m×n layer instead of its factors': "
    "8 × (Σ m·n + the other trainable params), shapes read from the saved adapter. ≈: a LoRA-Pro run whose "
    "adapter is not saved yet, shown at the factor size (its real state is larger). Gradients, activations "
    "and the step counter are not included.")


def adapter_shapes(path: str | Path) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """{layer: (A shape, B shape)} of a run's saved PEFT adapter, read from the safetensors header only
    (no tensor is loaded); {} when there is none or it is unreadable."""
    file = Path(path) / "adapter" / "adapter_model.safetensors"
    try:
        with open(file, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            if size > 100_000_000:
                return {}
            header = json.loads(handle.read(size))
    except (OSError, ValueError, struct.error):
        return {}
    factors: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, entry in header.items():
        for factor in ("lora_A", "lora_B"):
            marker = f".{factor}."
            if marker in name and isinstance(entry, dict) and isinstance(entry.get("shape"), list):
                factors.setdefault(name.split(marker)[0], {})[factor] = tuple(entry["shape"])
    return {layer: (shapes["lora_A"], shapes["lora_B"]) for layer, shapes in factors.items()
            if len(shapes) == 2 and len(shapes["lora_A"]) == 2 and len(shapes["lora_B"]) == 2}


def optimizer_state_bytes(config: dict, summary: dict, path: str | Path | None = None) -> tuple[int | None, bool]:
    """(bytes, estimated): see OPTIMIZER_STATE_HELP. `estimated` is True when LoRA-Pro's layer shapes
    are unknown; bytes is None without a trainable-parameter count."""
    trainable = summary.get("trainable_params")
    if not _number(trainable):
        return None, False
    trainable = int(trainable)
    params = config.get("method_params") or {}
    if config.get("method") != "lora-pro" or params.get("moments", "full") != "full":
        return 8 * trainable, False
    shapes = adapter_shapes(path) if path is not None else {}
    if not shapes:
        return 8 * trainable, True
    factor_params = sum(a[0] * a[1] + b[0] * b[1] for a, b in shapes.values())
    full_size = sum(b[0] * a[1] for a, b in shapes.values())  # B: m×r, A: r×n -> m×n
    return 8 * (max(0, trainable - factor_params) + full_size), False


def _number(value) -> bool:
    return _is_number(value) and math.isfinite(value)


def cost_table(runs: list[RunData], labels: dict[str, str]) -> pd.DataFrame:
    """One row per run: s/step, × LoRA (s/step over the mean s/step of the LoRA runs in `runs` on the same
    model and task; NaN when there is none), peak memory, trainable params, optimizer state (MB, and
    whether it is an estimate), time = s/step × steps done, final loss and final eval metric."""
    lora_times: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        if run.method == "lora" and _number(run.summary.get("sec_per_step")):
            lora_times.setdefault(run.model_task, []).append(run.summary["sec_per_step"])
    rows = []
    for run in runs:
        summary = run.summary
        sec = summary.get("sec_per_step") if _number(summary.get("sec_per_step")) else math.nan
        reference = lora_times.get(run.model_task)
        state, estimated = optimizer_state_bytes(run.config, summary, run.path)
        steps = summary.get("steps_done") if _number(summary.get("steps_done")) else math.nan
        rows.append({
            "run": labels.get(run.id, run.id), "run_id": run.id, "method": run.method,
            "model": run.model_task[0], "task": run.model_task[1], "status": run.status,
            "steps": steps,
            "sec_per_step": sec,
            "x_lora": sec / float(np.mean(reference)) if reference and math.isfinite(sec) else math.nan,
            "peak_mem_mb": _float(summary.get("peak_mem_mb")),
            "trainable_params": _float(summary.get("trainable_params")),
            "optimizer_state_mb": state / 2 ** 20 if state is not None else math.nan,
            "optimizer_state_estimated": estimated,
            "time_s": sec * steps,
            "final_loss": _float(summary.get("final_loss")),
            "eval_metric": run.metric_name or "",
            "final_eval_metric": _float(summary.get("final_eval_metric")),
        })
    return pd.DataFrame(rows, columns=COST_COLUMNS)


COST_COLUMNS = ("run", "run_id", "method", "model", "task", "status", "steps", "sec_per_step", "x_lora",
                "peak_mem_mb", "trainable_params", "optimizer_state_mb", "optimizer_state_estimated", "time_s",
                "final_loss", "eval_metric", "final_eval_metric")


def _float(value) -> float:
    return float(value) if _number(value) else math.nan


PARETO_X = {"time_s": "time = s/step × steps (s)", "trainable_params": "trainable params",
            "peak_mem_mb": "peak memory (MB)"}


def pareto_front(points: dict[str, tuple[float, float]], *, higher_is_better: bool = True) -> list[str]:
    """The labels of the points no other point dominates (x at most as large and y at least as good,
    one of them strictly), in increasing x. Points with a non-finite coordinate are ignored."""
    valid = {label: (x, y if higher_is_better else -y) for label, (x, y) in points.items()
             if _number(x) and _number(y)}
    front = [label for label, (x, y) in valid.items()
             if not any(ox <= x and oy >= y and (ox < x or oy > y) for ox, oy in valid.values())]
    return sorted(front, key=lambda label: (valid[label][0], -valid[label][1]))


# ---------------------------------------------------------------- the config diff
def config_table(configs: dict[str, dict], *, differences_only: bool = False) -> pd.DataFrame:
    """A row per run (index: its label), a column per flattened config.json key in order of first
    appearance; None where a run lacks the key. differences_only keeps the keys whose values are not
    all equal, without run_id, created_at and the library versions."""
    flat = {label: flatten(config) for label, config in configs.items()}
    keys = list(dict.fromkeys(key for values in flat.values() for key in values))
    if differences_only:
        keys = [key for key in keys if not _ignored(key)
                and len({json.dumps(values.get(key, _MISSING), sort_keys=True, default=str)
                         for values in flat.values()}) > 1]
    return pd.DataFrame([[values.get(key) for key in keys] for values in flat.values()], index=list(flat),
                        columns=keys, dtype=object)


_MISSING = "\x00missing"


def cell_text(value) -> str:
    """A config value as the table shows it: lists and dicts as JSON, None as empty."""
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


# ---------------------------------------------------------------- exports (full resolution, never downsampled)
def curves_frame(runs: list[RunData]) -> pd.DataFrame:
    """Every logged record of every run: run_id, method, step, elapsed_s, examples, (tokens), then every
    other logged key; one row per metrics.jsonl line."""
    frames = [run.frame.assign(run_id=run.id, method=run.method) for run in runs if len(run.frame)]
    if not frames:
        return pd.DataFrame(columns=["run_id", "method", "step", "elapsed_s", "examples"])
    table = pd.concat(frames, ignore_index=True, sort=False)
    first = ["run_id", "method", "step", "elapsed_s", "examples", "tokens"]
    for column in first[2:5]:
        if column not in table:
            table[column] = np.nan
    first = [column for column in first if column in table]
    table = table[first + [column for column in table.columns if column not in first]]
    for column in ("step", "examples", "tokens"):  # counts: written as 64, not 64.0, blank where not logged
        if column in table and pd.api.types.is_numeric_dtype(table[column]):
            values = table[column].to_numpy(dtype=np.float64)
            finite = values[np.isfinite(values)]
            if not np.isinf(values).any() and np.all(finite == np.round(finite)):
                table[column] = table[column].astype("Int64")
    return table


def curves_csv(runs: list[RunData]) -> str:
    return curves_frame(runs).to_csv(index=False)


def cost_csv(table: pd.DataFrame) -> str:
    return table.to_csv(index=False)
