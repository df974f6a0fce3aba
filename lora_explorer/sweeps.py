"""Sweeps: several methods (and seeds) on one model, task and budget, launched as one comparison group.

A sweep is saved as `<runs root>/sweeps/<id>.json` (what was asked for); its runs are the run
directories whose config.json carries `group: <id>`, so the group never has to be rewritten while
its runs train. Every run of a sweep has the same data order for a given seed (it depends only on
the seed) and the same steps, batch size and evaluation cadence.
"""
from __future__ import annotations

import dataclasses
import itertools
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from lora_explorer import store, tasks
from lora_explorer.config import COMMON_PARAMS, RunConfig, clean_label, resolve
from lora_explorer.errors import ConfigError
from lora_explorer.methods import REGISTRY

SWEEPS_DIR = "sweeps"
MAX_RUNS = 64  # methods x seeds x grid points in one sweep
METHOD_NAMES = {p.name for method in REGISTRY.values() for p in method.params}
COMMON_NAMES = {p.name for p in COMMON_PARAMS}
TASK_NAMES = {p.name for spec in tasks.TASKS.values() for p in spec.params} | {p.name for p in tasks.FILE_PARAMS}


@dataclass
class Sweep:
    id: str
    name: str
    methods: list[str]
    seeds: list[int]
    shared_params: dict  # method parameters given once, applied to every method that declares them
    base: dict  # the RunConfig every run starts from (its method, params and seed replaced)
    created_at: float
    grid: dict = dataclasses.field(default_factory=dict)  # name -> values: every combination is run
    preset: str = ""  # the lora_explorer.presets id this sweep was launched from, if any

    def configs(self) -> list[RunConfig]:
        """One resolved config per (seed, grid point, method), in launch order: seed-major, so a
        cancelled sweep still compares every method on the first seed. A method that declares none
        of the grid's method parameters (full FT in a rank grid) runs once per seed, not per point."""
        base = RunConfig.from_dict(self.base)
        configs, seen = [], set()
        for seed in self.seeds:
            for point in _grid_points(self.grid):
                for method in self.methods:
                    config, label = _apply(base, method, {**self.shared_params}, point)
                    key = (seed, method, label)
                    if key in seen:
                        continue
                    seen.add(key)
                    name = f"{self.name} · {label}" if label else self.name
                    configs.append(resolve(dataclasses.replace(config, seed=seed, group=self.id, name=name)))
        return configs

    def runs(self, root=None) -> list[store.RunInfo]:
        """This sweep's runs that exist so far, oldest first."""
        return sorted((info for info in store.list_runs(root) if info.config.get("group") == self.id),
                      key=lambda info: info.id)


def _grid_points(grid: dict) -> list[dict]:
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[name] for name in names))]


def _apply(base: RunConfig, method: str, shared: dict, point: dict) -> tuple[RunConfig, str]:
    """The config of one method at one grid point, and the point's label as it applies to that
    method ("rank=4"); each grid name is a method, task or training parameter."""
    declared = {p.name for p in REGISTRY[method].params}
    method_params = {k: v for k, v in shared.items() if k in declared}
    task_params, common, applied = dict(base.task_params), {}, []
    for name, value in point.items():
        if name in METHOD_NAMES:
            if name not in declared:
                continue
            method_params[name] = value
        elif name in COMMON_NAMES:
            common[name] = value
        else:
            task_params[name] = value
        applied.append(f"{name}={value}")
    config = dataclasses.replace(base, method=method, method_params=method_params, task_params=task_params, **common)
    return config, ", ".join(applied)


def _parse_list(value, kind, label) -> list:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    items = []
    for item in value or []:
        try:
            items.append(kind(item))
        except (TypeError, ValueError):
            raise ConfigError(f"{label} must be a comma-separated list of {kind.__name__}s, got {item!r}") from None
    return items


def plan(base: RunConfig, methods, seeds=(0,), shared_params: dict | None = None, name: str = "",
         grid: dict | None = None, preset: str = "") -> Sweep:
    """Check a sweep completely (every run's config resolves) before anything is written or launched.
    grid: parameter name -> list of values (method, task or training parameters), e.g.
    {"rank": [4, 16, 64]}. Raises ConfigError with one line."""
    methods = _parse_list(methods, str, "--methods")
    seeds = _parse_list(seeds, int, "--seeds") or [0]
    shared_params = dict(shared_params or {})
    grid = {key: list(values) if isinstance(values, (list, tuple)) else [values] for key, values in (grid or {}).items()}
    for key, values in grid.items():
        if not values:
            raise ConfigError(f"the sweep's {key} values are empty")
        if key in ("method", "seed", "group", "name", "model", "task"):
            raise ConfigError(f"{key} cannot be a grid parameter")
        if key not in METHOD_NAMES | COMMON_NAMES | TASK_NAMES:
            raise ConfigError(f"unknown sweep parameter {key!r}")
    if not methods:
        raise ConfigError("choose at least one method for the sweep")
    unknown = [m for m in methods if m not in REGISTRY]
    if unknown:
        raise ConfigError(f"unknown method '{unknown[0]}'; choose from: {', '.join(REGISTRY)}")
    for label, items in (("method", methods), ("seed", seeds)):
        repeated = sorted({str(i) for i in items if items.count(i) > 1})
        if repeated:
            raise ConfigError(f"{label} {repeated[0]} is listed twice in the sweep")
    points = len(_grid_points(grid))
    if len(methods) * len(seeds) * points > MAX_RUNS:
        raise ConfigError(f"a sweep may have at most {MAX_RUNS} runs, asked for {len(methods) * len(seeds) * points}")
    for key in shared_params:
        if not any(key in {p.name for p in REGISTRY[m].params} for m in methods):
            raise ConfigError(f"no method in the sweep has the parameter --{key.replace('_', '-')}")
    clean_name = clean_label(name)
    sweep_id = f"{time.strftime('%Y%m%d-%H%M%S')}-sweep-{secrets.token_hex(3)}"
    base_dict = {**base.to_dict(), "method_params": {}}
    sweep = Sweep(sweep_id, clean_name or f"{' vs '.join(methods)}", methods, seeds, shared_params, base_dict,
                  time.time(), grid, preset)
    sweep.configs()  # raises on the first invalid run
    return sweep


def save(sweep: Sweep, root=None) -> Path:
    folder = store.runs_root(root) / SWEEPS_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create {str(folder)!r}: {error.strerror or error}") from None
    path = folder / f"{sweep.id}.json"
    store.write_json(path, dataclasses.asdict(sweep))
    return path


def submit(manager, sweep: Sweep) -> list[str]:
    """Save the sweep and queue all its runs on a JobManager; returns the job ids in launch order."""
    configs = sweep.configs()
    save(sweep, manager.runs_dir)
    return [manager.submit(config) for config in configs]


def load(sweep_id: str, root=None) -> Sweep:
    """A saved sweep by id; the id may not leave the sweeps folder."""
    folder = store.runs_root(root) / SWEEPS_DIR
    path = (folder / f"{sweep_id}.json").resolve()
    if path.parent != folder.resolve():
        raise ConfigError(f"sweep {sweep_id!r} is outside the sweeps folder")
    data = store.read_json(path)
    if data is None:
        raise ConfigError(f"no sweep {sweep_id!r} under {folder}")
    try:
        return Sweep(**{f.name: data[f.name] for f in dataclasses.fields(Sweep)})
    except KeyError as missing:
        raise ConfigError(f"sweep file {path.name} is incomplete (no {missing})") from None


def list_sweeps(root=None) -> list[Sweep]:
    """Every readable saved sweep, newest first; unreadable files are skipped."""
    folder = store.runs_root(root) / SWEEPS_DIR
    found = []
    for path in sorted(folder.glob("*.json"), reverse=True) if folder.is_dir() else []:
        try:
            found.append(load(path.stem, root))
        except ConfigError:
            continue
    return found


def run(sweep: Sweep, root=None, *, stop_event=None, on_run=None, on_record=None, on_status=None) -> list:
    """Train a sweep's runs one after the other in this process (CLI, notebooks); returns the runs.
    A stop request ends the current run and launches no more."""
    from lora_explorer.train import train

    configs = sweep.configs()
    save(sweep, root)
    done = []
    for config in configs:
        if stop_event is not None and stop_event.is_set():
            break
        done.append(train(config, root, stop_event=stop_event, on_run=on_run, on_record=on_record,
                          on_status=on_status))
    return done
