"""Presets: saved sweeps that put a practitioner's claim or a paper's to the test on the built-in models.

Each preset is a sweep (methods, seeds, grid, budget) plus a `findings` function that reads the
finished runs and states, with their numbers, what they show, including where it differs from the
claim. Nothing here is tuned to make a claim come true: the text is computed from whatever the runs
measured.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Callable

from lora_explorer import compare, store, sweeps
from lora_explorer.config import RunConfig

EMA = 0.6  # the Compare page's default smoothing, so the numbers match its curves


@dataclass(frozen=True)
class Preset:
    id: str
    title: str
    claim: str  # what practitioners report or a paper claims
    look_for: str  # where to look in the app
    base: RunConfig
    methods: tuple[str, ...]
    findings: Callable[[list[store.RunInfo]], list[str]]
    seeds: tuple[int, ...] = (0,)
    shared_params: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)

    def plan(self) -> sweeps.Sweep:
        return sweeps.plan(self.base, list(self.methods), list(self.seeds), self.shared_params, self.title,
                           self.grid, preset=self.id)


# ---------------------------------------------------------------- reading finished runs
def smoothed_losses(records: list[dict], weight: float = EMA) -> list[tuple[int, float]]:
    """The Compare page's smoothed training loss (compare.ema), as (step, value)."""
    points = [(r["step"], r["loss"]) for r in records
              if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])]
    if not points:
        return []
    steps, losses = zip(*points)
    return list(zip(steps, (float(v) for v in compare.ema(losses, weight))))


def loss_at(info: store.RunInfo, fraction: float) -> float | None:
    """The smoothed training loss at `fraction` of the run's steps (the nearest logged step before)."""
    points = smoothed_losses(store.Run(info.path).metrics())
    if not points:
        return None
    target = fraction * info.config.get("steps", points[-1][0])
    before = [value for step, value in points if step <= target]
    return before[-1] if before else points[0][1]


def _mean(values) -> float | None:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return statistics.fmean(values) if values else None


def _by(infos, key: Callable[[store.RunInfo], str]) -> dict[str, list[store.RunInfo]]:
    groups: dict[str, list[store.RunInfo]] = {}
    for info in infos:
        if info.status == "completed":
            groups.setdefault(key(info), []).append(info)
    return groups


def _method(info) -> str:
    return info.config.get("method", "?")


def _f(value, spec=".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _compare(a: float | None, b: float | None, lower_is_better: bool = True) -> str:
    if a is None or b is None:
        return "cannot be compared"
    if abs(a - b) <= 0.01 * max(abs(a), abs(b)):
        return "about the same as"
    better = a < b if lower_is_better else a > b
    return "better than" if better else "worse than"


def _seeds_note(groups) -> str:
    counts = sorted({len(v) for v in groups.values()})
    if counts == [1]:
        return ""
    return f" (means over {counts[0]} seeds)" if len(counts) == 1 else f" (means over {counts[0]}–{counts[-1]} seeds)"


# ---------------------------------------------------------------- the findings of each preset
def _lora_plus(infos) -> list[str]:
    groups = _by(infos, _method)
    if not {"lora", "lora-plus"} <= set(groups):
        return []
    early = {m: _mean(loss_at(i, 0.2) for i in groups[m]) for m in ("lora", "lora-plus")}
    late = {m: _mean(loss_at(i, 1.0) for i in groups[m]) for m in ("lora", "lora-plus")}
    metric = {m: _mean(i.summary.get("final_eval_metric") for i in groups[m]) for m in ("lora", "lora-plus")}
    return [
        f"At 20% of the run the smoothed training loss of LoRA+ is {_f(early['lora-plus'])} against LoRA's "
        f"{_f(early['lora'])}: LoRA+ is {_compare(early['lora-plus'], early['lora'])} LoRA early{_seeds_note(groups)}.",
        f"At the end: {_f(late['lora-plus'])} against {_f(late['lora'])} ({_compare(late['lora-plus'], late['lora'])}); "
        f"final eval metric {_f(metric['lora-plus'])} against {_f(metric['lora'])}.",
    ]


def _dora_cost(infos) -> list[str]:
    groups = _by(infos, _method)
    if not {"lora", "dora"} <= set(groups):
        return []
    step = {m: _mean(i.summary.get("sec_per_step") for i in groups[m]) for m in ("lora", "dora")}
    memory = {m: _mean(i.summary.get("peak_mem_mb") for i in groups[m]) for m in ("lora", "dora")}
    ratio = step["dora"] / step["lora"] if step["dora"] and step["lora"] else None
    memory_ratio = memory["dora"] / memory["lora"] if memory["dora"] and memory["lora"] else None
    device = groups["dora"][0].summary.get("device", "?")
    # on a CPU, peak memory is the growth of the process's resident set: runs that share a process
    # (a sweep, the app) reuse each other's freed memory, so their peaks cannot be compared
    memory = (f", and {_f(memory_ratio, '.2f')}× LoRA's peak memory" if device.startswith("cuda") else
              "; peak memory is not compared on a CPU, where runs of one process reuse each other's memory")
    return [f"DoRA takes {_f(step['dora'] and step['dora'] * 1e3, '.1f')} ms per step against LoRA's "
            f"{_f(step['lora'] and step['lora'] * 1e3, '.1f')} ms: {_f(ratio, '.2f')}× on {device}{memory}.",
            "That is below the reported 2×–20×. DoRA's extra work is a norm of each adapted m×n weight per step: "
            "on MiniLM's 384×384 query/value layers it is small next to the rest of the model; the large ratios "
            "come from big layers."
            if ratio is not None and ratio < 2 else
            "That is within the 2×–20× practitioners report." if ratio is not None else ""]


def _adalora(infos) -> list[str]:
    groups = _by(infos, _method)
    if not {"lora", "adalora"} <= set(groups):
        return []
    lines = []
    for fraction in (0.25, 0.5, 1.0):
        a, b = (_mean(loss_at(i, fraction) for i in groups[m]) for m in ("adalora", "lora"))
        lines.append(f"At {int(fraction * 100)}% of the run AdaLoRA's smoothed loss is {_f(a)} against LoRA's "
                     f"{_f(b)} ({_compare(a, b)}).")
    ranks = store.read_metrics(groups["adalora"][0].path / "adalora_ranks.jsonl")
    if ranks:
        final = ranks[-1]["ranks"]
        top = max(final, key=final.get)
        lines.append(f"Its final rank allocation ranges from {min(final.values())} to {max(final.values())} per layer "
                     f"({sum(final.values())} in all); the most went to {top}.")
    return lines


def _rslora(infos) -> list[str]:
    groups = _by(infos, lambda i: f"{_method(i)} r={i.config.get('method_params', {}).get('rank')}")
    lines = []
    for method in ("lora", "rslora"):
        points = sorted((int(key.split("r=")[1]), _mean(loss_at(i, 1.0) for i in v))
                        for key, v in groups.items() if key.startswith(method + " "))
        if points:
            lines.append(f"{'rsLoRA' if method == 'rslora' else 'LoRA'}: final smoothed loss "
                         + ", ".join(f"{_f(loss)} at r={rank}" for rank, loss in points) + ".")
    if len(lines) == 2:
        lines.append("rsLoRA's claim is that its scale α/√r keeps larger ranks learning, where LoRA's α/r shrinks "
                     "the update as r grows: compare how each line changes from the smallest to the largest rank.")
    return lines


def _alignment(infos) -> list[str]:
    groups = _by(infos, _method)
    lines = []
    for method in ("lora", "lora-ga", "lora-pro", "full"):
        if method not in groups:
            continue
        start, mean = [], []
        for info in groups[method]:
            records = store.Run(info.path).alignment()
            start += [r["cos"] for r in records if r["step"] == 0 and r["cos"] is not None]
            mean += [r["cos"] for r in records if r["cos"] is not None]
        loss = _mean(loss_at(i, 1.0) for i in groups[method])
        lines.append(f"{method}: gradient alignment {_f(_mean(start))} at step 0, {_f(_mean(mean))} on average; "
                     f"final smoothed loss {_f(loss)}.")
    return lines


def _low_rank_target(infos) -> list[str]:
    groups = _by(infos, lambda i: f"{_method(i)} k={i.config.get('task_params', {}).get('target_rank')}")
    lines = []
    for key in sorted(groups):
        metric = _mean(i.summary.get("final_eval_metric") for i in groups[key])
        overlaps = []
        for info in groups[key]:
            records = store.Run(info.path).spectra()
            last = max((r["step"] for r in records), default=None)
            overlaps += [r.get("target_overlap") for r in records if r["step"] == last]
        method, target = key.split(" k=")
        label = "full-rank" if target == "0" else f"rank-{target}"
        lines.append(f"{method} on a {label} target: eval R² {_f(metric)}; share of its update's top directions "
                     f"inside the true ΔW*'s main subspace {_f(_mean(overlaps))}.")
    return lines


TOY, MINILM = RunConfig(model="toy"), RunConfig(model="minilm")
PRESETS = {preset.id: preset for preset in (
    Preset("lora-plus", "LoRA+ vs LoRA: faster early, similar at the end",
           "Practitioners report that LoRA+ (B's learning rate 16× A's) converges faster early and then ties LoRA.",
           "Compare: training loss, smoothed; look at the first fifth of the run, then the end.",
           RunConfig(model="minilm", steps=150), ("lora", "lora-plus"), _lora_plus, seeds=(0, 1)),
    Preset("dora-cost", "DoRA's cost per step",
           "DoRA is reported to cost 2×–20× LoRA's time per step.",
           "Compare: the cost table (s/step, × LoRA, peak memory).",
           RunConfig(model="minilm", steps=40), ("lora", "dora"), _dora_cost),
    Preset("adalora", "AdaLoRA: slower convergence, adaptive ranks",
           "AdaLoRA is reported to converge more slowly than LoRA, while it moves its rank budget to the layers "
           "that matter.",
           "Compare: training loss; Spectra: AdaLoRA's rank allocation heatmap.",
           RunConfig(model="minilm", steps=200), ("lora", "adalora"), _adalora),
    Preset("rslora-rank", "rsLoRA vs LoRA as the rank grows",
           "rsLoRA (scale α/√r) claims that larger ranks keep improving, while LoRA (α/r) stalls as r grows.",
           "Compare: final loss per rank; Spectra: effective rank.",
           RunConfig(model="minilm", steps=100), ("lora", "rslora"), _rslora, grid={"rank": [4, 16, 64]}),
    Preset("alignment", "LoRA-GA and LoRA-Pro vs LoRA vs full FT",
           "LoRA-GA's initialisation makes the first step the best low-rank approximation of full fine-tuning's; "
           "LoRA-Pro keeps every step as close to it as rank r allows. Both are described as theoretically best.",
           "Alignment: cos vs step and the step-0 bars; Compare: training loss against full FT.",
           RunConfig(model="toy", steps=300), ("lora", "lora-ga", "lora-pro", "full"), _alignment),
    Preset("low-rank-target", "What LoRA can and cannot recover",
           "LoRA's update has rank ≤ r: it can match a low-rank change of the weights, not a full-rank one.",
           "Spectra: the true spectrum overlay and the overlap with ΔW*; Compare: eval R².",
           RunConfig(model="toy", steps=300), ("lora", "full"), _low_rank_target, shared_params={"rank": 4},
           grid={"target_rank": [4, 0]}),
)}


def launch(preset_id: str, manager) -> tuple[sweeps.Sweep, list[str]]:
    """Queue a preset's sweep on a JobManager."""
    sweep = PRESETS[preset_id].plan()
    return sweep, sweeps.submit(manager, sweep)


def latest_sweep(preset_id: str, root=None) -> sweeps.Sweep | None:
    return next((s for s in sweeps.list_sweeps(root) if s.preset == preset_id), None)


def findings(preset_id: str, root=None) -> list[str]:
    """What the latest sweep of this preset measured, as sentences; [] until its runs have finished."""
    sweep = latest_sweep(preset_id, root)
    return PRESETS[preset_id].findings(sweep.runs(root)) if sweep else []
