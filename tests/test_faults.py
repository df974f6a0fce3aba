"""Faults through the app: a job whose step raises or whose loss goes NaN shows why and the app goes
on; a server killed with SIGKILL in the middle of a run, then started again: the app stays up, the run
directory is consistent, and the killed run lists as interrupted on every page."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import open_page, patched_loss, run_dirs
from lora_explorer import store
from test_app import progress, run_until, start, train_page

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


@pytest.mark.parametrize("fault, status, message", [("raise", "failed", "RuntimeError: injected failure"),
                                                    ("nan", "diverged", "loss became nan at step 5")])
def test_a_job_that_fails_mid_step_shows_why_and_the_app_goes_on(app_runs, fault, status, message):
    at = train_page()
    with pytest.MonkeyPatch.context() as patch:
        patched_loss(patch, 5, fault)  # the 5th training step raises, or its loss is NaN
        start(at, 30)
        run_until(at, lambda at: progress(at).startswith(status), what=f"the job to end {status}")
    assert len(at.error) == 1 and message in at.error[0].value and "Traceback" not in at.error[0].value
    (run,) = run_dirs(app_runs)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == status and summary["steps_done"] == 4 and not (run / "adapter").exists()
    assert [r["step"] for r in store.read_metrics(run / "metrics.jsonl") if r.get("loss") is not None] == [1, 2, 3, 4]

    start(at, 10)  # the same app, the next job: it trains normally
    run_until(at, lambda at: progress(at).startswith("completed"), what="the next job to complete")
    assert not at.error
    assert sorted(store.Run(path).summary()["status"] for path in run_dirs(app_runs)) == sorted(["completed", status])
