"""The notebook API: `import lora_explorer as lx`, then lx.train, lx.sweep, lx.load_run, lx.runs.

The same engine as the app and the CLI (lora_explorer.train), blocking, with a progress bar in a
notebook; runs are ordinary run directories, so the app sees them too.
"""
from __future__ import annotations

import os
import sys

from lora_explorer import store as run_store
from lora_explorer import sweeps
from lora_explorer.config import RunConfig
from lora_explorer.train import train as train_run


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules


class RunProgress:
    """A tqdm bar per run, fed by train()'s callbacks (on_run=start, on_record=record, on_status=status):
    the notebook widget in Jupyter, a text bar on stderr elsewhere (the CLI). eval_lines: also print
    each evaluation as a line above the bar."""

    def __init__(self, enabled: bool = True, eval_lines: bool = False):
        self.enabled, self.eval_lines, self.bar = enabled, eval_lines, None

    def start(self, run: run_store.Run) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        self.close()
        config = run.config()
        self.bar = tqdm(total=config["steps"], unit="step", dynamic_ncols=True,
                        desc=f"{config['method']} seed {config['seed']}")

    def record(self, record: dict) -> None:
        if self.bar is None:
            return
        if record.get("loss") is not None:
            self.bar.update(record["step"] - self.bar.n)
            self.bar.set_postfix(loss=f"{record['loss']:.4g}")
        elif self.eval_lines and "eval_loss" in record:
            loss = record["eval_loss"]
            self.bar.write(f"step {record['step']}: eval_loss {'-' if loss is None else format(loss, '.4g')}",
                           file=sys.stderr)

    def status(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def train(config: RunConfig | None = None, runs_dir: str | os.PathLike | None = None, *,
          progress: bool | None = None, stop_event=None, on_record=None, on_status=None, on_run=None,
          **fields) -> run_store.Run:
    """Train one run and return it. Either a RunConfig or its fields as keywords:
    lx.train(model="toy", method="dora", steps=200, method_params={"rank": 4}).
    progress: show a progress bar (default: in a notebook). The callbacks are train()'s."""
    if config is not None and fields:
        raise TypeError(f"pass a RunConfig or its fields, not both (got {', '.join(fields)})")
    config = config if config is not None else RunConfig(**fields)
    bar = RunProgress(_in_notebook() if progress is None else progress)
    try:
        return train_run(config, runs_dir, stop_event=stop_event, on_status=on_status,
                         on_run=_both(bar.start, on_run), on_record=_both(bar.record, on_record))
    finally:
        bar.close()


def _both(first, second):
    return first if second is None else (lambda value: (first(value), second(value)))


def sweep(methods, seeds=(0,), runs_dir: str | os.PathLike | None = None, *, shared_params: dict | None = None,
          name: str = "", progress: bool | None = None, **fields) -> list[run_store.Run]:
    """Train several methods (and seeds) on the same data and budget, one after the other; returns
    the runs. lx.sweep(["lora", "lora-plus"], model="toy", steps=200, shared_params={"rank": 8})."""
    plan = sweeps.plan(RunConfig(**fields), methods, seeds, shared_params, name)
    bar = RunProgress(_in_notebook() if progress is None else progress)
    try:
        return sweeps.run(plan, runs_dir, on_run=bar.start, on_record=bar.record)
    finally:
        bar.close()


def load_run(path_or_id: str | os.PathLike, runs_dir: str | os.PathLike | None = None) -> run_store.Run:
    """A run by its directory or its id under the runs root."""
    return run_store.open_run(path_or_id, runs_dir)


def runs(runs_dir: str | os.PathLike | None = None, **where) -> list[run_store.Run]:
    """Every run under the root, newest first; keywords filter on config.json, e.g. runs(method="lora")."""
    return [run_store.Run(info.path) for info in run_store.list_runs(runs_dir)
            if all(info.config.get(key) == value for key, value in where.items())]
