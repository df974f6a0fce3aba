"""Sweeps: several methods and seeds as one comparison group, on identical data and budget."""
import json
import subprocess
import sys

import pytest

from lora_explorer import sweeps
from lora_explorer.config import RunConfig
from lora_explorer.errors import ConfigError
from lora_explorer.jobs import JobManager

BASE = RunConfig(model="toy", steps=6, eval_every=6)


@pytest.mark.parametrize("methods, seeds, shared, message", [
    ([], [0], {}, "at least one method"),
    ("lora,nope", [0], {}, "unknown method 'nope'"),
    (["lora", "lora"], [0], {}, "method lora is listed twice"),
    (["lora"], [1, 1], {}, "seed 1 is listed twice"),
    (["lora"], "0,x", {}, "--seeds must be a comma-separated list of ints"),
    (["lora"], list(range(65)), {}, "at most 64 runs"),
    (["full"], [0], {"rank": 4}, "no method in the sweep has the parameter --rank"),
    (["lora", "dora"], [0], {"rank": 0}, "--rank must be at least 1"),
    (["lora", "adalora"], [0], {"rank": 2}, "--final-rank 8 is larger than the initial --rank 2"),
])
def test_a_bad_sweep_is_refused_whole(tmp_path, methods, seeds, shared, message):
    with pytest.raises(ConfigError, match=message):
        sweeps.plan(BASE, methods, seeds, shared)
    assert not (tmp_path / "sweeps").exists()


def test_a_sweep_trains_every_method_on_the_same_data(tmp_path):
    sweep = sweeps.plan(BASE, "lora,lora-plus,full", [0, 1], {"rank": 4}, name="plus vs plain")
    done = sweeps.run(sweep, tmp_path)
    assert [(r.config()["method"], r.config()["seed"]) for r in done] == [
        ("lora", 0), ("lora-plus", 0), ("full", 0), ("lora", 1), ("lora-plus", 1), ("full", 1)]
    assert all(r.summary()["status"] == "completed" for r in done)
    configs = [r.config() for r in done]
    assert {c["group"] for c in configs} == {sweep.id} and {c["name"] for c in configs} == {"plus vs plain"}
    assert [c["method_params"].get("rank") for c in configs[:3]] == [4, 4, None]  # shared where declared
    assert len({(c["steps"], c["batch_size"], c["eval_every"], c["task"]) for c in configs}) == 1
    # same seed: same head init and the same first batch; B = 0, so LoRA and LoRA+ start at the same loss
    first = {(c["method"], c["seed"]): next(m["loss"] for m in r.metrics() if "loss" in m)
             for c, r in zip(configs, done)}
    assert first[("lora", 0)] == first[("lora-plus", 0)] == first[("full", 0)]
    assert first[("lora", 1)] == first[("lora-plus", 1)] != first[("lora", 0)]

    saved = sweeps.load(sweep.id, tmp_path)
    assert saved.methods == ["lora", "lora-plus", "full"] and saved.seeds == [0, 1]
    assert [info.id for info in saved.runs(tmp_path)] == sorted(r.id for r in done)
    assert [s.id for s in sweeps.list_sweeps(tmp_path)] == [sweep.id]


def test_a_sweep_through_the_job_manager(tmp_path):
    manager = JobManager(tmp_path)
    sweep = sweeps.plan(BASE, ["lora", "dora"], [3])
    job_ids = sweeps.submit(manager, sweep)
    assert len(job_ids) == 2
    snaps = [manager.wait(job_id, timeout=120) for job_id in job_ids]
    assert [s.status for s in snaps] == ["completed", "completed"]
    assert {s.config.group for s in snaps} == {sweep.id}
    assert len(sweep.runs(tmp_path)) == 2


def test_sweep_files_cannot_leave_the_sweeps_folder(tmp_path):
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "secret.json").write_text(json.dumps({"id": "x"}))
    (tmp_path / "sweeps" / "broken.json").write_text("{not json")
    with pytest.raises(ConfigError, match="outside the sweeps folder"):
        sweeps.load("../secret", tmp_path)
    with pytest.raises(ConfigError, match="no sweep"):
        sweeps.load("broken", tmp_path)
    assert sweeps.list_sweeps(tmp_path) == []


def test_cli_sweep(tmp_path):
    command = [sys.executable, "-m", "lora_explorer", "sweep", "--methods", "lora,rslora", "--steps", "4",
               "--rank", "2", "--runs-dir", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    sweep_id = result.stdout.strip().splitlines()[-1]
    table = result.stdout.splitlines()
    assert table[0].split()[:4] == ["method", "seed", "name", "status"]
    assert [line.split()[:2] for line in table[1:3]] == [["lora", "0"], ["rslora", "0"]]
    assert all(" completed " in line for line in table[1:3])
    assert len(sweeps.load(sweep_id, tmp_path).runs(tmp_path)) == 2

    bad = subprocess.run(command[:5] + ["lora,rslora", "--rank", "-1", "--runs-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --rank must be at least 1, got -1"


def test_notebook_api(tmp_path, capsys):
    import lora_explorer as lx

    run = lx.train(model="toy", method="lora", steps=3, method_params={"rank": 2}, runs_dir=tmp_path, progress=True)
    assert run.summary()["status"] == "completed" and "lora seed 0" in capsys.readouterr().err  # the bar
    done = lx.sweep(["lora", "vera"], seeds=[5], runs_dir=tmp_path, model="toy", steps=3, shared_params={"rank": 2})
    assert [(r.config()["method"], r.config()["seed"]) for r in done] == [("lora", 5), ("vera", 5)]
    assert {r.id for r in lx.runs(tmp_path)} == {run.id, *(r.id for r in done)}
    assert [r.id for r in lx.runs(tmp_path, method="vera")] == [done[1].id]
    assert lx.load_run(run.id, tmp_path).path == run.path
    with pytest.raises(lx.ConfigError, match="outside the runs directory"):
        lx.load_run("../elsewhere", tmp_path)
    with pytest.raises(TypeError, match="not both"):
        lx.train(lx.RunConfig(model="toy"), tmp_path, steps=3)


def test_a_grid_varies_a_parameter_for_the_methods_that_have_it():
    sweep = sweeps.plan(BASE, ["lora", "rslora", "full"], [0], grid={"rank": [2, 8], "target_rank": [0, 4]})
    configs = sweep.configs()
    got = [(c.method, c.method_params.get("rank"), c.task_params["target_rank"]) for c in configs]
    # full FT has no rank: once per task point, not once per rank
    assert got == [("lora", 2, 0), ("rslora", 2, 0), ("full", None, 0), ("lora", 2, 4), ("rslora", 2, 4),
                   ("full", None, 4), ("lora", 8, 0), ("rslora", 8, 0), ("lora", 8, 4), ("rslora", 8, 4)]
    assert configs[0].name.endswith("rank=2, target_rank=0") and configs[2].name.endswith("· target_rank=0")
    for grid, message in [({"bogus": [1]}, "unknown sweep parameter 'bogus'"), ({"rank": []}, "values are empty"),
                          ({"method": ["lora"]}, "method cannot be a grid parameter"),
                          ({"rank": [2, 0]}, "--rank must be at least 1"),
                          ({"rank": list(range(1, 40))}, "at most 64 runs")]:
        with pytest.raises(ConfigError, match=message):
            sweeps.plan(BASE, ["lora", "rslora"], [0], grid=grid)
