"""Sweeps: several methods (and seeds) on one model, task and budget, launched as one comparison group.

A sweep is saved as `<runs root>/sweeps/<id>.json` (what was asked for); its runs are the run
directories whose config.json carries `group: <id>`, so the group never has to be rewritten while
its runs train. Every run of a sweep has the same data order for a given seed (it depends only on
the seed) and the same steps, batch size and evaluation cadence.
"""
from __future__ import annotations

import dataclasses
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from lora_explorer import runs
from lora_explorer.config import RunConfig, clean_label, resolve
from lora_explorer.errors import ConfigError
from lora_explorer.methods import REGISTRY

SWEEPS_DIR = "sweeps"
MAX_RUNS = 64  # methods x seeds in one sweep


@dataclass
class Sweep:
    id: str
    name: str
    methods: list[str]
    seeds: list[int]
    shared_params: dict  # method parameters given once, applied to every method that declares them
    base: dict  # the RunConfig every run starts from (its method, params and seed replaced)
    created_at: float

    def configs(self) -> list[RunConfig]:
        """One resolved config per (method, seed), in launch order (seed-major: all methods of the
        first seed come first, so a cancelled sweep still compares every method)."""
        base = RunConfig.from_dict(self.base)
        configs = []
        for seed in self.seeds:
            for method in self.methods:
                declared = {p.name for p in REGISTRY[method].params}
                params = {k: v for k, v in self.shared_params.items() if k in declared}
                configs.append(resolve(dataclasses.replace(base, method=method, method_params=params, seed=seed,
                                                           group=self.id, name=self.name)))
        return configs

    def runs(self, root=None) -> list[runs.RunInfo]:
        """This sweep's runs that exist so far, oldest first."""
        return sorted((info for info in runs.list_runs(root) if info.config.get("group") == self.id),
                      key=lambda info: info.id)


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


def plan(base: RunConfig, methods, seeds=(0,), shared_params: dict | None = None, name: str = "") -> Sweep:
    """Check a sweep completely (every run's config resolves) before anything is written or launched.
    Raises ConfigError with one line."""
    methods = _parse_list(methods, str, "--methods")
    seeds = _parse_list(seeds, int, "--seeds") or [0]
    shared_params = dict(shared_params or {})
    if not methods:
        raise ConfigError("choose at least one method for the sweep")
    unknown = [m for m in methods if m not in REGISTRY]
    if unknown:
        raise ConfigError(f"unknown method '{unknown[0]}'; choose from: {', '.join(REGISTRY)}")
    for label, items in (("method", methods), ("seed", seeds)):
        repeated = sorted({str(i) for i in items if items.count(i) > 1})
        if repeated:
            raise ConfigError(f"{label} {repeated[0]} is listed twice in the sweep")
    if len(methods) * len(seeds) > MAX_RUNS:
        raise ConfigError(f"a sweep may have at most {MAX_RUNS} runs, asked for {len(methods) * len(seeds)}")
    for key in shared_params:
        if not any(key in {p.name for p in REGISTRY[m].params} for m in methods):
            raise ConfigError(f"no method in the sweep has the parameter --{key.replace('_', '-')}")
    clean_name = clean_label(name)
    sweep_id = f"{time.strftime('%Y%m%d-%H%M%S')}-sweep-{secrets.token_hex(3)}"
    base_dict = {**base.to_dict(), "method_params": {}}
    sweep = Sweep(sweep_id, clean_name or f"{' vs '.join(methods)}", methods, seeds, shared_params, base_dict,
                  time.time())
    sweep.configs()  # raises on the first invalid run
    return sweep


def save(sweep: Sweep, root=None) -> Path:
    folder = runs.runs_root(root) / SWEEPS_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create {str(folder)!r}: {error.strerror or error}") from None
    path = folder / f"{sweep.id}.json"
    runs.write_json(path, dataclasses.asdict(sweep))
    return path


def submit(manager, sweep: Sweep) -> list[str]:
    """Save the sweep and queue all its runs on a JobManager; returns the job ids in launch order."""
    configs = sweep.configs()
    save(sweep, manager.runs_dir)
    return [manager.submit(config) for config in configs]


def load(sweep_id: str, root=None) -> Sweep:
    """A saved sweep by id; the id may not leave the sweeps folder."""
    folder = runs.runs_root(root) / SWEEPS_DIR
    path = (folder / f"{sweep_id}.json").resolve()
    if path.parent != folder.resolve():
        raise ConfigError(f"sweep {sweep_id!r} is outside the sweeps folder")
    data = runs.read_json(path)
    if data is None:
        raise ConfigError(f"no sweep {sweep_id!r} under {folder}")
    try:
        return Sweep(**{f.name: data[f.name] for f in dataclasses.fields(Sweep)})
    except KeyError as missing:
        raise ConfigError(f"sweep file {path.name} is incomplete (no {missing})") from None


def list_sweeps(root=None) -> list[Sweep]:
    """Every readable saved sweep, newest first; unreadable files are skipped."""
    folder = runs.runs_root(root) / SWEEPS_DIR
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
