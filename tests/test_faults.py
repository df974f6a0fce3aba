"""A server killed with SIGKILL in the middle of a run, then the app started again: the app stays up,
the run directory is consistent, and the killed run lists as interrupted on every page."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import run_dirs
from lora_explorer import store
from test_app import train_page
from test_insight import open_page

ROOT = Path(__file__).resolve().parents[1]
SERVER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from lora_explorer.config import RunConfig
from lora_explorer.jobs import JobManager
manager = JobManager(sys.argv[2])
manager.submit(RunConfig(model="toy", steps=1_000_000))
time.sleep(600)
"""


def logged(root) -> int:
    runs = run_dirs(root)
    return len(store.read_metrics(runs[0] / "metrics.jsonl")) if runs else 0


def test_sigkill_mid_run_then_restart(app_runs):
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(ROOT), str(app_runs)])
    try:
        deadline = time.monotonic() + 120
        while logged(app_runs) < 20:  # kill it once the run is well under way
            assert time.monotonic() < deadline and server.poll() is None
            time.sleep(0.2)
    finally:
        os.kill(server.pid, signal.SIGKILL)
        server.wait(30)
    (run,) = run_dirs(app_runs)
    assert json.loads((run / "summary.json").read_text())["status"] == "running"  # what the killed process left
    records = store.read_metrics(run / "metrics.jsonl")
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == list(range(1, len(steps) + 1))  # parseable up to its last complete line
    assert not (run / "adapter").exists()  # weights absent, not half-written

    at = train_page()  # the app, started again
    table = at.dataframe[0].value
    assert list(table["status"]) == ["interrupted"]
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    compare = open_page("pages/4_Compare.py", {"run": run.name})
    assert not compare.exception
