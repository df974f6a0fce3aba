"""The run directory contract, faults during training, and interrupted runs."""
import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

import lora_explorer as lx
from lora_explorer import store
from conftest import patched_loss, run_dirs

SUMMARY_KEYS = {"status", "steps_done", "final_loss", "final_eval_loss", "eval_metric_name", "final_eval_metric",
                "trainable_params", "total_params", "sec_per_step", "peak_mem_mb"}


def test_run_files_follow_the_contract(runs_dir):
    run = lx.train(lx.RunConfig(model="toy", method="lora", steps=20, log_every=2, eval_every=10, seed=7), runs_dir)
    files = {p.name for p in run.path.iterdir()}
    assert {"config.json", "metrics.jsonl", "summary.json", "adapter", "base.safetensors",
            "target_delta.safetensors"} <= files
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (run.path / "adapter").iterdir()}
    assert not [p for p in run.path.rglob("*") if p.suffix in (".bin", ".pt", ".pkl", ".pickle")]  # no pickle

    config = json.loads((run.path / "config.json").read_text())
    assert config["model"] == "toy" and config["method"] == "lora" and config["task"] == "teacher"
    assert config["method_params"] == {"rank": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": "auto"}
    assert config["lr"] == 3e-3 and config["steps"] == 20 and config["batch_size"] == 64 and config["seed"] == 7
    assert config["resolved_device"] == "cpu" and set(config["versions"]) == {"torch", "transformers", "peft"}

    lines = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in lines if "loss" in r]
    eval_lines = [r for r in lines if "eval_loss" in r]
    assert [r["step"] for r in train_lines] == list(range(2, 21, 2))
    assert all({"step", "loss", "lr", "elapsed_s", "examples", "step_time_s"} <= set(r) for r in train_lines)
    assert train_lines[-1]["examples"] == 20 * 64
    assert [r["step"] for r in eval_lines] == [10, 20] and all("r2" in r for r in eval_lines)

    summary = json.loads((run.path / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["status"] == "completed" and summary["steps_done"] == 20
    assert summary["final_loss"] == train_lines[-1]["loss"]
    assert summary["final_eval_loss"] == eval_lines[-1]["eval_loss"]
    assert summary["eval_metric_name"] == "r2" and summary["final_eval_metric"] == eval_lines[-1]["r2"]
    assert summary["trainable_params"] == 8 * (32 + 64) + 8 * (64 + 64) * 2 + 8 * (64 + 16)
    assert summary["total_params"] > summary["trainable_params"] and summary["sec_per_step"] > 0


def test_toy_target_update_has_the_chosen_rank(runs_dir):
    import torch
    from safetensors.torch import load_file

    for rank, expected in [(3, {3}), (0, {32, 64, 16})]:  # decay 0.95 keeps the full rank numerically visible
        run = lx.train(lx.RunConfig(model="toy", method="lora", steps=1, task_params={"target_rank": rank, "decay": 0.95}), runs_dir)
        deltas = load_file(str(run.path / "target_delta.safetensors"))
        ranks = {torch.linalg.matrix_rank(d).item() for d in deltas.values()}
        assert ranks == expected


def test_exception_mid_training_marks_the_run_failed_and_keeps_files_readable(runs_dir, monkeypatch):
    patched_loss(monkeypatch, 4, "raise")
    run = lx.train(lx.RunConfig(model="toy", method="lora", steps=10), runs_dir)
    summary = json.loads((run.path / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["error"] == "RuntimeError: injected failure"
    assert [r["step"] for r in run.metrics() if "loss" in r] == [1, 2, 3]
    assert not (run.path / "adapter").exists()


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_non_finite_loss_stops_the_run_as_diverged(runs_dir, monkeypatch, bad):
    patched_loss(monkeypatch, 5, bad)
    run = lx.train(lx.RunConfig(model="toy", method="lora", steps=10), runs_dir)
    summary = json.loads((run.path / "summary.json").read_text())  # strict JSON: no NaN written
    assert summary["status"] == "diverged" and summary["steps_done"] == 4
    assert bad in summary["error"] and "step 5" in summary["error"]
    assert run.metrics()[-1] == {**run.metrics()[-1], "step": 5, "loss": None}


def test_stop_event_stops_after_the_current_step_and_saves(runs_dir):
    import threading

    stop = threading.Event()
    run = lx.train(lx.RunConfig(model="toy", method="dora", steps=500), runs_dir, stop_event=stop,
                   on_record=lambda r: r.get("step") == 6 and stop.set())
    summary = run.summary()
    assert summary["status"] == "stopped" and summary["steps_done"] == 6
    assert summary["final_eval_loss"] is not None  # a stopped run is still evaluated
    assert abs(lx.evaluate_run(run.path)["eval_loss"] - summary["final_eval_loss"]) < 1e-4


def test_a_run_whose_process_died_reads_as_interrupted(runs_dir):
    script = ("import os, lora_explorer as lx\n"
              "lx.train(lx.RunConfig(model='toy', method='lora', steps=100000), "
              "on_record=lambda r: r['step'] == 3 and os._exit(9))")
    subprocess.run([sys.executable, "-c", script], cwd=os.getcwd(), env={**os.environ}, timeout=120)
    (run,) = run_dirs(runs_dir)
    assert json.loads((run / "summary.json").read_text())["status"] == "running"  # what the dead process left
    (info,) = store.list_runs(runs_dir)
    assert info.status == "interrupted"
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="process start times come from /proc")
def test_a_run_whose_pid_another_process_reuses_reads_as_interrupted(tmp_path):
    own = store.Run(tmp_path / "own")
    own.path.mkdir()
    own.write_summary({"status": "completed"})
    assert own.summary()["pid_start"] == store.process_start_time(os.getpid())

    stranger = subprocess.Popen(["sleep", "60"])  # alive, and holding the pid the summary names
    try:
        started = store.process_start_time(stranger.pid)
        for name, pid_start, expected in [("same-process", started, "running"),
                                          ("reused-pid", started - 1, "interrupted")]:
            run = store.Run(tmp_path / name)
            run.path.mkdir()
            store.write_json(run.path / "summary.json", {"status": "running", "pid": stranger.pid,
                                                         "pid_start": pid_start, "host": socket.gethostname()})
            assert run.summary()["status"] == expected, name
    finally:
        stranger.kill()
        stranger.wait()


def test_a_stop_during_the_build_ends_the_run_before_training(runs_dir, monkeypatch):
    from lora_explorer import crossrun
    from lora_explorer.train import BUILD_LOCK
    from lora_explorer.methods import REGISTRY

    stop, build_reports, runs = threading.Event(), [], []

    def endless_build(ctx):  # a build only a stop ends; bounded, so a missed stop fails instead of hanging
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ctx.status(f"building {len(build_reports)}")
            time.sleep(0.01)
        raise AssertionError("the stop never reached the build")

    def on_status(text):
        if text.startswith("building"):
            build_reports.append(text)
            stop.set()

    monkeypatch.setitem(REGISTRY, "lora", dataclasses.replace(REGISTRY["lora"], build=endless_build))
    config = lx.RunConfig(model="toy", method="lora", steps=100)
    worker = threading.Thread(target=lambda: runs.append(lx.train(config, runs_dir, stop_event=stop,
                                                                  on_status=on_status)))
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive() and build_reports == ["building 0"]  # ended at the first report after the stop
    (run,) = runs
    summary = json.loads((run.path / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["steps_done"] == 0
    assert "before training" in summary["error"]
    assert run.summary() == summary and run.metrics() == []
    assert not (run.path / "adapter").exists() and not (run.path / "weights.safetensors").exists()
    assert BUILD_LOCK.acquire(blocking=False)
    BUILD_LOCK.release()
    with pytest.raises(lx.ConfigError):  # the pages' comparisons: one line, no crash
        crossrun.final_weights(run.path)


def test_a_stop_that_lands_as_the_build_ends_still_means_before_training(runs_dir):
    """A model load reports no progress (MiniLM): a stop during it is seen when training would start."""
    stop = threading.Event()
    run = lx.train(lx.RunConfig(model="toy", method="lora", steps=50), runs_dir, stop_event=stop,
                   on_status=lambda text: stop.set() if text == "training" else None)
    summary = run.summary()
    assert summary["status"] == "stopped" and summary["steps_done"] == 0 and "before training" in summary["error"]
    assert not (run.path / "adapter").exists() and run.spectra() == [] and run.metrics() == []


def test_a_stop_before_the_first_step_saves_nothing(runs_dir, monkeypatch):
    """The last gap: a stop that lands after the build, while step 0's spectrum is measured."""
    from lora_explorer.train import Spectra

    stop, original = threading.Event(), Spectra.record

    def record(self, step):
        original(self, step)
        stop.set()

    monkeypatch.setattr(Spectra, "record", record)
    run = lx.train(lx.RunConfig(model="toy", method="lora", steps=50), runs_dir, stop_event=stop)
    summary = run.summary()
    assert summary["status"] == "stopped" and summary["steps_done"] == 0 and "before training" in summary["error"]
    assert not (run.path / "adapter").exists() and run.metrics() == []


def test_truncated_last_metrics_line_is_skipped(runs_dir):
    run = lx.train(lx.RunConfig(model="toy", method="lora", steps=5), runs_dir)
    with open(run.path / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 6, "loss": 0.')
    assert [r["step"] for r in run.metrics() if "loss" in r] == [1, 2, 3, 4, 5]


def test_run_ids_cannot_escape_the_runs_root(runs_dir):
    runs_dir.mkdir()
    with pytest.raises(lx.ConfigError):
        store.open_run("../../etc", runs_dir)


def test_tiny_lm_starts_from_a_trained_base_and_the_task_is_shifted():
    import torch

    from lora_explorer import tiny_lm

    model = tiny_lm.pretrained_model()
    torch.manual_seed(0)
    untrained = tiny_lm.new_model()
    with torch.no_grad():
        base = tiny_lm.windows("base", seed=99, count=64)
        shifted = tiny_lm.windows("shifted", seed=99, count=64)
        trained_base = tiny_lm.lm_loss(model, base).item()
        assert trained_base < tiny_lm.lm_loss(untrained, base).item() - 1.0
        assert tiny_lm.lm_loss(model, shifted).item() > trained_base + 0.3


def test_tiny_lm_and_minilm_train_and_evaluate_reproduces(runs_dir):
    for model, method in [("tiny-lm", "lora"), ("minilm", "rslora")]:
        run = lx.train(lx.RunConfig(model=model, method=method, steps=6, eval_every=6), runs_dir)
        summary = run.summary()
        assert summary["status"] == "completed", summary.get("error")
        assert summary["eval_metric_name"] == ("perplexity" if model == "tiny-lm" else "accuracy")
        if model == "tiny-lm":
            assert all("tokens" in r for r in run.metrics() if "loss" in r)
        result = lx.evaluate_run(run.path)
        assert abs(result["eval_loss"] - summary["final_eval_loss"]) < 1e-4
