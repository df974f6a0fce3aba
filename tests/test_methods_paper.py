"""VeRA, AdaLoRA, Delta-LoRA and LoRA-drop: each checked against what its paper says it does."""
import json
import threading

import pytest
import torch

import lora_explorer as lx
from lora_explorer import tasks
from lora_explorer.config import resolve
from lora_explorer.methods import _lora, adalora
from test_methods import build


def toy_task(bundle):
    return tasks.build_task(tasks.TASKS["teacher"], bundle, resolve(lx.RunConfig()).task_params)


def test_vera_matrices_are_frozen_shared_and_only_b_d_train():
    bundle, setup = build("vera", lr=1e-2, rank=16)
    trainable = {n: p for n, p in setup.model.named_parameters() if p.requires_grad}
    assert trainable and all("vera_lambda_b" in n or "vera_lambda_d" in n for n in trainable)
    assert sum(p.numel() for p in trainable.values()) == sum(d_out + 16 for d_out in (64, 64, 64, 16))
    layers = [m for m in setup.model.modules() if hasattr(m, "vera_lambda_b")]
    assert len(layers) == 4
    assert len({id(m.vera_A) for m in layers}) == 1 and len({id(m.vera_B) for m in layers}) == 1  # shared
    shared = {"A": layers[0].vera_A["default"].clone(), "B": layers[0].vera_B["default"].clone()}
    b_before = [m.vera_lambda_b["default"].detach().clone() for m in layers]
    task = toy_task(bundle)
    for step in range(5):
        loss, _ = task.loss(setup.model, task.batch(task.train, torch.arange(32 * step, 32 * step + 32), "cpu"))
        loss.backward()
        setup.optimizer.step()
        setup.optimizer.zero_grad()
    assert torch.equal(layers[0].vera_A["default"], shared["A"]) and torch.equal(layers[0].vera_B["default"],
                                                                                  shared["B"])
    assert all(not torch.equal(m.vera_lambda_b["default"], b) for m, b in zip(layers, b_before))


def test_vera_default_rank_is_capped_by_the_layers():
    assert resolve(lx.RunConfig(model="toy", method="vera")).method_params["rank"] == 16
    assert resolve(lx.RunConfig(model="minilm", method="vera")).method_params["rank"] == 256


def test_adalora_prunes_from_the_initial_budget_to_the_target_on_schedule(runs_dir):
    run = lx.train(lx.RunConfig(model="toy", method="adalora", steps=100,
                                method_params={"rank": 6, "final_rank": 2}), runs_dir)
    assert run.summary()["status"] == "completed"
    records = [json.loads(line) for line in (run.path / adalora.RANKS_FILE).read_text().splitlines()]
    assert sum(records[0]["ranks"].values()) == 6 * 4  # every λ is alive before pruning starts
    assert records[0]["step"] == 1 and records[-1]["step"] == 100
    first_prune = next(r["step"] for r in records if sum(r["ranks"].values()) < 24)
    assert first_prune > 10  # tinit = 10% of total_step
    final_phase = [r for r in records if r["step"] >= 80]
    assert all(sum(r["ranks"].values()) == 2 * 4 for r in final_phase)  # budget reached by T - tfinal
    assert sum(records[-1]["ranks"].values()) == 8 and len(set(records[-1]["ranks"].values())) > 1
    assert abs(lx.evaluate_run(run.path)["eval_loss"] - run.summary()["final_eval_loss"]) < 1e-4


def test_a_stopped_adalora_run_between_masking_steps_evaluates_the_model_it_saves(runs_dir):
    """With ΔT > 1 the optimizer regrows pruned λ between PEFT's masking steps, and the saved rank
    pattern drops them on load: a stop there masks them first, so evaluate_run reproduces the run."""
    stop = threading.Event()
    run = lx.train(lx.RunConfig(model="toy", method="adalora", steps=200, device="cpu", eval_every=43,
                                analysis_every=43, method_params={"delta_t": 10}), runs_dir, stop_event=stop,
                   on_record=lambda r: stop.set() if r.get("step") == 43 and "loss" in r else None)
    summary = run.summary()
    assert summary["status"] == "stopped" and summary["steps_done"] == 43  # pruning runs over steps 20-160
    assert abs(lx.evaluate_run(run.path)["eval_loss"] - summary["final_eval_loss"]) < 1e-6
    assert [r["step"] for r in run.metrics() if "eval_loss" in r] == [43]  # one evaluation, after the mask
    # the last logged ranks and the last spectrum are those of the saved model, not of the regrown λ
    ranks = [json.loads(line) for line in (run.path / adalora.RANKS_FILE).read_text().splitlines()]
    saved = json.loads((run.path / "adapter" / "adapter_config.json").read_text())["rank_pattern"]
    kept = {key.split(".lora_E")[0].removeprefix("model."): sum(mask) for key, mask in saved.items()}
    assert ranks[-1]["step"] == 43 and ranks[-1]["ranks"] == kept and min(kept.values()) < 12
    assert all(max(r["ranks"].values()) <= 12 for r in ranks)
    last = {r["layer"]: r["numerical_rank"] for r in run.spectra() if r["step"] == 43}
    assert last == kept and [r["step"] for r in run.spectra()].count(43) == len(kept)


def test_adalora_regularizer_is_peft_orthogonality_penalty():
    bundle, setup = build("adalora", rank=4, final_rank=2)
    expected, count = 0.0, 0
    for name, p in setup.model.named_parameters():
        if "lora_A" in name or "lora_B" in name:
            gram = p @ p.T if "lora_A" in name else p.T @ p
            expected += torch.norm(gram - torch.eye(len(gram)), p="fro")
            count += 1
    assert torch.allclose(setup.hooks.regularizer(), 0.5 * expected / count)


def test_delta_lora_base_change_equals_lambda_times_the_change_of_sba():
    bundle, setup = build("delta-lora", lr=1e-2, update_ratio=2.0, start_step=3)
    task = toy_task(bundle)
    layers = _lora.adapted_layers(setup.model)
    w0 = {n: l.get_base_layer().weight.detach().clone() for n, l in layers.items()}

    def sba():
        return {n: l.scaling["default"] * (l.lora_B["default"].weight @ l.lora_A["default"].weight).detach().clone()
                for n, l in layers.items()}

    for step in range(1, 11):
        if step == 4:
            at_k = sba()  # the product after step K = 3
            assert all(torch.equal(l.get_base_layer().weight, w0[n]) for n, l in layers.items())
        loss, _ = task.loss(setup.model, task.batch(task.train, torch.arange(32 * step, 32 * step + 32), "cpu"))
        loss.backward()
        setup.hooks.before_optimizer_step(step)
        setup.optimizer.step()
        setup.hooks.after_optimizer_step(step)
        setup.optimizer.zero_grad()
    final = sba()
    for name, layer in layers.items():
        change = layer.get_base_layer().weight - w0[name]
        assert change.abs().max() > 0
        torch.testing.assert_close(change, 2.0 * (final[name] - at_k[name]), atol=1e-6, rtol=1e-4)


def test_delta_lora_evaluate_restores_the_moved_base(runs_dir):
    run = lx.train(lx.RunConfig(model="toy", method="delta-lora", steps=30), runs_dir)
    assert abs(lx.evaluate_run(run.path)["eval_loss"] - run.summary()["final_eval_loss"]) < 1e-4


def test_lora_drop_ties_shared_layers_and_trains_fewer_parameters(runs_dir):
    config = dict(model="minilm", steps=3, eval_every=3, batch_size=8)
    lora = lx.train(lx.RunConfig(method="lora", **config), runs_dir)
    drop = lx.train(lx.RunConfig(method="lora-drop", method_params={"threshold": 0.5, "stage1_steps": 3},
                                 **config), runs_dir)
    plan = json.loads((drop.path / "lora_drop.json").read_text())
    assert abs(sum(plan["importance"].values()) - 1) < 1e-6 and len(plan["importance"]) == 12
    kept_share = sum(plan["importance"][n] for n in plan["kept"])
    assert kept_share >= 0.5 and kept_share - min(plan["importance"][n] for n in plan["kept"]) < 0.5
    shared = [n for group in plan["shared"] for n in group]
    assert sorted(shared + plan["kept"]) == sorted(plan["importance"]) and len(plan["shared"]) == 1
    per_layer = 8 * (384 + 384)
    expected = lora.summary()["trainable_params"] - per_layer * (len(shared) - 1)
    assert drop.summary()["trainable_params"] == expected

    model, _, _ = lx.rebuild(drop.path)
    layers = _lora.adapted_layers(model)
    first = layers[shared[0]]
    assert all(layers[n].lora_A["default"].weight is first.lora_A["default"].weight for n in shared)
    assert all(layers[n].lora_B["default"].weight is first.lora_B["default"].weight for n in shared)
    assert abs(lx.evaluate_run(drop.path)["eval_loss"] - drop.summary()["final_eval_loss"]) < 1e-4
    # stage 1 trained an adapter of its own and left no trace in the frozen base
    from lora_explorer import models

    fresh = models.load_model("minilm").model
    for name, layer in layers.items():
        assert torch.equal(layer.get_base_layer().weight, fresh.get_submodule(name).weight)


BAD = [
    (dict(method="vera", method_params={"rank": 17}), "larger than layer"),
    (dict(method="lora", method_params={"rank": 17}), "larger than layer"),
    (dict(method="adalora", method_params={"rank": 4, "final_rank": 8}), "larger than the initial"),
    (dict(method="adalora", steps=4, method_params={"warmup_fraction": 0.5, "final_fraction": 0.5}),
     "too few for AdaLoRA"),
    (dict(method="lora-drop", method_params={"threshold": 0}), "--threshold must be at least"),
    (dict(method="lora-drop", method_params={"threshold": 1.5}), "--threshold must be at most 1"),
    (dict(method="delta-lora", steps=50, method_params={"start_step": 50}), "must be less than --steps"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[m for _, m in BAD])
def test_invalid_combinations_are_one_clear_error(overrides, message):
    with pytest.raises(lx.ConfigError, match=message):
        resolve(lx.RunConfig(model="toy", **overrides))


ALL = ["full", "lora", "lora-plus", "rslora", "dora", "vera", "lora-fa", "lora-drop", "adalora", "delta-lora",
       "lora-ga", "lora-pro"]


def test_all_twelve_methods_are_registered_in_order():
    from lora_explorer.methods import REGISTRY

    assert list(REGISTRY) == ALL


@pytest.mark.parametrize("method", ALL)
def test_every_method_trains_toy_and_minilm_and_evaluate_reproduces(runs_dir, method):
    toy = lx.train(lx.RunConfig(model="toy", method=method, steps=12, eval_every=12), runs_dir)
    summary = toy.summary()
    assert summary["status"] == "completed", summary.get("error")
    assert abs(lx.evaluate_run(toy.path)["eval_loss"] - summary["final_eval_loss"]) < 1e-4

    minilm = lx.train(lx.RunConfig(model="minilm", method=method, steps=2, eval_every=2, batch_size=8,
                                   task_params={"eval_size": 16}), runs_dir)
    summary = minilm.summary()
    assert summary["status"] == "completed", summary.get("error")
    assert summary["final_eval_metric"] is not None
