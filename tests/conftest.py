import os
from pathlib import Path

import pytest
import torch

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped on CPU-only machines)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    path = tmp_path / "runs"
    monkeypatch.setenv("LORA_EXPLORER_RUNS", str(path))
    return path


@pytest.fixture
def app_runs(tmp_path, monkeypatch):
    """A private runs root, set before the (cached, process-wide) job manager is created."""
    root = tmp_path / "runs"
    monkeypatch.setenv("LORA_EXPLORER_RUNS", str(root))
    from lora_explorer import ui

    ui.get_manager.clear()
    yield root
    manager = ui.get_manager()  # the one the app used (created now if the test never made one)
    for snap in manager.snapshots():
        if not snap.finished:
            manager.stop(snap.id)
    for snap in manager.snapshots():
        manager.wait(snap.id, timeout=30)
    ui.get_manager.clear()


@pytest.fixture
def page_root(monkeypatch):
    """Point the app at a runs root (before its cached job manager is made)."""
    from lora_explorer import ui

    def use(root):
        monkeypatch.setenv("LORA_EXPLORER_RUNS", str(root))
        ui.get_manager.clear()
    yield use
    ui.get_manager.clear()


def assert_trained(run, steps):
    """The run completed all its steps, its loss fell by 40%, and it ends below where it started."""
    summary = run.summary()
    assert summary["status"] == "completed", summary.get("error")
    losses = [r["loss"] for r in run.metrics() if "loss" in r]
    assert len(losses) == steps
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    assert summary["final_eval_loss"] < losses[0]


def run_dirs(root):
    return [p for p in root.iterdir() if p.is_dir() and (p / "config.json").exists()] if root.exists() else []


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def patched_loss(monkeypatch, fail_at: int, result: str) -> None:
    """The toy teacher task's loss, with call number `fail_at` raising ("raise") or multiplied by
    float(result) ("nan", "inf"): a fault injected mid-step."""
    from lora_explorer import tasks

    calls = {"n": 0}
    original = tasks.TeacherTask.loss

    def loss(self, model, batch):
        calls["n"] += 1
        value, seen = original(self, model, batch)
        if calls["n"] == fail_at:
            if result == "raise":
                raise RuntimeError("injected failure\nsecond line")
            return value * float(result), seen
        return value, seen

    monkeypatch.setattr(tasks.TeacherTask, "loss", loss)


def open_page(page: str, query_params: dict | None = None, timeout: float = 60):
    """A page of the app, run once in AppTest (with ?key=value query parameters), checked for exceptions."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=timeout)
    for key, value in (query_params or {}).items():
        at.query_params[key] = value
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at
