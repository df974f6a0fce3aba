"""The job manager: validation before launch, a queue with one worker, stop and cancel."""
import time

import pytest

import lora_explorer as lx
from lora_explorer.jobs import JobManager
from conftest import run_dirs


def test_bad_config_raises_and_launches_nothing(runs_dir):
    manager = JobManager(runs_dir)
    with pytest.raises(lx.ConfigError):
        manager.submit(lx.RunConfig(model="toy", method="lora", method_params={"rank": -1}))
    assert manager.snapshots() == [] and run_dirs(runs_dir) == []


def test_queue_runs_one_job_at_a_time_and_stop_cancels(runs_dir):
    manager = JobManager(runs_dir)
    first = manager.submit(lx.RunConfig(model="toy", method="lora", steps=100_000))
    second = manager.submit(lx.RunConfig(model="toy", method="full", steps=20))
    third = manager.submit(lx.RunConfig(model="toy", method="dora", steps=20))
    deadline = time.time() + 60
    while manager.snapshot(first).step < 3 and time.time() < deadline:
        time.sleep(0.05)
    snap = manager.snapshot(first)
    assert snap.status == "running" and snap.run_dir is not None and snap.records
    assert manager.snapshot(second).queue_position == 1 and manager.snapshot(third).queue_position == 2

    manager.stop(third)  # queued: cancelled, never started
    manager.stop(first)  # running: stops after its current step
    assert manager.wait(first, 60).status == "stopped"
    done = manager.wait(second, 120)
    assert done.status == "completed" and done.step == 20
    assert manager.snapshot(third).status == "cancelled"
    assert len(run_dirs(runs_dir)) == 2
    assert {s.id for s in manager.snapshots()} == {first, second, third}


def test_stop_during_the_build_ends_the_job_before_training(runs_dir):
    manager = JobManager(runs_dir)
    # LoRA-GA estimates its gradient over many batches before the first training step
    job = manager.submit(lx.RunConfig(model="toy", method="lora-ga", steps=100_000,
                                      method_params={"estimation_batches": 10_000}))
    deadline = time.time() + 60
    while not manager.snapshot(job).phase.startswith("estimating the gradient") and time.time() < deadline:
        time.sleep(0.01)
    manager.stop(job)
    snap = manager.wait(job, 60)
    assert snap.status == "stopped" and snap.step == 0 and "before training" in snap.error
    assert not (snap.run_dir / "adapter").exists()
    after = manager.submit(lx.RunConfig(model="toy", method="lora", steps=5))  # the worker and the build lock are free
    assert manager.wait(after, 60).status == "completed"
