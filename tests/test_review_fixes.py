"""Regressions found in review: each of these once failed a run, lost a job or mislabelled data."""
import json

import pytest

import lora_explorer as lx
from lora_explorer.jobs import JobManager


def test_a_failing_display_callback_does_not_fail_the_run(runs_dir):
    def broken(_record):
        raise TypeError("a display bug")

    run = lx.train(lx.RunConfig(model="toy", method="lora", steps=5), runs_dir, on_record=broken, on_status=broken)
    assert run.summary()["status"] == "completed" and (run.path / "adapter").is_dir()


def test_keyboard_interrupt_marks_the_run_interrupted_and_propagates(runs_dir, monkeypatch):
    def interrupt(record):
        if record.get("step") == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train_raising(runs_dir, interrupt, monkeypatch)
    (info,) = lx.list_runs(runs_dir)
    assert info.status == "interrupted" and info.summary["steps_done"] == 2  # step 3 never finished


def _train_raising(runs_dir, hook, monkeypatch):
    """Train the toy with `hook({"step": n})` called in step n's loss (display callbacks cannot raise)."""
    from lora_explorer import tasks

    original = tasks.TeacherTask.loss
    calls = {"n": 0}

    def loss(self, model, batch):
        calls["n"] += 1
        hook({"step": calls["n"]})
        return original(self, model, batch)

    monkeypatch.setattr(tasks.TeacherTask, "loss", loss)
    return lx.train(lx.RunConfig(model="toy", method="lora", steps=50), runs_dir)


def test_logged_lr_is_the_lr_the_step_used(runs_dir):
    run = lx.train(lx.RunConfig(model="toy", method="lora", steps=5, lr=1.0e-3, warmup_steps=3,
                                lr_schedule="linear"), runs_dir)
    logged = [round(r["lr"] / 1e-3, 6) for r in run.metrics() if "loss" in r]
    assert logged == [0.25, 0.5, 0.75, 1.0, 0.5]


def test_the_worker_survives_a_cancelled_job_that_was_pruned(runs_dir):
    manager = JobManager(runs_dir, keep_finished=1)
    first = manager.submit(lx.RunConfig(model="toy", method="lora", steps=150))
    second = manager.submit(lx.RunConfig(model="toy", method="lora", steps=5))
    third = manager.submit(lx.RunConfig(model="toy", method="lora", steps=5))
    manager.stop(second)
    manager.stop(third)
    last = manager.submit(lx.RunConfig(model="toy", method="lora", steps=5))  # prunes a cancelled job
    assert manager.wait(first, 120).status == "completed"
    assert manager.wait(last, 120).status == "completed"


@pytest.mark.parametrize("overrides,message", [
    (dict(method="adalora", steps=1), "too few for AdaLoRA"),
    (dict(method="adalora", steps=10, method_params={"warmup_fraction": 0.0, "final_fraction": 0.9}), "too few"),
    (dict(device="mps"), "MPS is not available"),
    (dict(model="minilm", task="/dev/zero"), "not a regular file"),
])
def test_more_bad_input_is_caught_before_launch(runs_dir, overrides, message):
    with pytest.raises(lx.ConfigError, match=message):
        lx.resolve(lx.RunConfig(**{"model": "toy", **overrides}))


def test_failed_run_counts_the_steps_it_did(runs_dir, monkeypatch):
    def fail(record):
        if record["step"] == 4:
            raise RuntimeError("boom")

    run = _train_raising(runs_dir, fail, monkeypatch)
    summary = json.loads((run.path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["steps_done"] == 3
