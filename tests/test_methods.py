"""Each method's math and training behaviour, on the toy model (fast, CPU)."""
import math

import pytest
import torch
from safetensors.torch import load_file

import lora_explorer as lx
from lora_explorer import models, tasks
from lora_explorer.config import resolve
from lora_explorer.methods import get_method
from lora_explorer.methods.base import BuildContext
from lora_explorer.train import rebuild
from conftest import assert_trained

METHODS = ["full", "lora", "lora-plus", "rslora", "dora", "lora-fa", "lora-pro"]


def build(method_id, lr=1e-3, weight_decay=0.0, **params):
    bundle = models.load_model("toy")
    method = get_method(method_id)
    ctx = BuildContext(bundle, method.resolve_params(params), lr, weight_decay, steps=10)
    return bundle, method.build(ctx)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {m: lx.train(lx.RunConfig(model="toy", method=m, steps=80, eval_every=40), root) for m in METHODS}


@pytest.mark.parametrize("method_id", METHODS)
def test_each_method_trains_the_toy_and_its_loss_falls(trained, method_id):
    assert_trained(trained[method_id], 80)


@pytest.mark.parametrize("method_id", METHODS)
def test_evaluate_rebuilds_the_trained_model_exactly(trained, method_id):
    run = trained[method_id]
    result = lx.evaluate_run(run.path)
    assert abs(result["eval_loss"] - run.summary()["final_eval_loss"]) < 1e-4
    assert abs(result["metric"] - run.summary()["final_eval_metric"]) < 1e-4


def test_rslora_scales_by_alpha_over_sqrt_r():
    _, rs = build("rslora", rank=4, alpha=16)
    _, plain = build("lora", rank=4, alpha=16)
    assert rs.model.base_model.model.fc2.scaling["default"] == pytest.approx(16 / math.sqrt(4))
    assert plain.model.base_model.model.fc2.scaling["default"] == pytest.approx(16 / 4)


def test_lora_plus_gives_b_ratio_times_a_learning_rate_and_keeps_weight_decay():
    _, setup = build("lora-plus", lr=2e-3, weight_decay=0.05, ratio=8)
    names = {id(p): n for n, p in setup.model.named_parameters()}
    lr_of = {}
    for group in setup.optimizer.param_groups:
        for p in group["params"]:
            lr_of[names[id(p)]] = (group["lr"], group["weight_decay"])
    a = [v for n, v in lr_of.items() if "lora_A" in n]
    b = [v for n, v in lr_of.items() if "lora_B" in n]
    assert a and b
    assert all(lr == pytest.approx(2e-3) for lr, _ in a)
    assert all(lr == pytest.approx(16e-3) for lr, _ in b)
    assert all(wd == pytest.approx(0.05) for _, wd in a + b)  # peft ignores a plain weight_decay= (pitfall)


def test_dora_magnitude_vector_trains(trained):
    bundle, setup = build("dora")
    magnitude = {n: p.detach().clone() for n, p in setup.model.named_parameters() if "lora_magnitude_vector" in n}
    assert len(magnitude) == 4 and all(p.requires_grad for n, p in setup.model.named_parameters() if n in magnitude)
    # initialised to the row norms of W0
    assert torch.allclose(magnitude["base_model.model.fc1.lora_magnitude_vector.default.weight"],
                          bundle.model.fc1.base_layer.weight.norm(dim=1))
    model, _, _ = rebuild(trained["dora"].path)
    after = dict(model.named_parameters())
    assert all(not torch.allclose(after[n], before) for n, before in magnitude.items())


def test_full_ft_changes_base_weights_and_lora_does_not(trained):
    base = load_file(str(trained["full"].path / "base.safetensors"))
    full = load_file(str(trained["full"].path / "weights.safetensors"))
    assert all(not torch.equal(full[k], base[k]) for k in ("fc1.weight", "fc2.weight", "out.weight"))

    model, _, _ = rebuild(trained["lora"].path)
    inner = model.base_model.model
    for name in ("fc1", "fc2", "fc3", "out"):
        layer = getattr(inner, name)
        assert torch.equal(layer.base_layer.weight, base[f"{name}.weight"])
        assert layer.lora_B["default"].weight.abs().sum() > 0  # B started at zero and moved
    _, setup = build("lora")
    trainable = {n for n, p in setup.model.named_parameters() if p.requires_grad}
    assert len(trainable) == 8 and all("lora_A" in n or "lora_B" in n for n in trainable)


def test_identical_seeds_give_identical_data_order_across_methods(runs_dir, monkeypatch):
    seen = []
    original = tasks.Task.batch

    def spy(self, split, indices, device):
        if split is self.train:
            seen[-1].append(indices.tolist())
        return original(self, split, indices, device)

    monkeypatch.setattr(tasks.Task, "batch", spy)
    for method, seed in [("lora", 3), ("full", 3), ("dora", 3), ("lora", 4)]:
        seen.append([])
        lx.train(lx.RunConfig(model="toy", method=method, steps=5, seed=seed, batch_size=8), runs_dir)
    assert seen[0] == seen[1] == seen[2]
    assert seen[0] != seen[3]


def test_same_seed_same_head_init_for_minilm():
    from lora_explorer.train import load_base

    spec = tasks.TASKS["sentiment"]
    heads = []
    for seed in (0, 0, 1):
        config = resolve(lx.RunConfig(model="minilm", method="lora", seed=seed))
        heads.append(load_base(config, spec).model.classifier.weight.detach().clone())
    assert torch.equal(heads[0], heads[1])
    assert not torch.equal(heads[0], heads[2])


def test_lora_fa_keeps_a_bit_identical_and_moves_b(trained):
    bundle, setup = build("lora-fa")
    initial_a = {n: p.detach().clone() for n, p in setup.model.named_parameters() if "lora_A" in n}
    assert initial_a and not any(p.requires_grad for n, p in setup.model.named_parameters() if "lora_A" in n)
    task = tasks.build_task(tasks.TASKS["teacher"], bundle, resolve(lx.RunConfig()).task_params)
    for step in range(5):
        loss, _ = task.loss(setup.model, task.batch(task.train, torch.arange(step * 32, step * 32 + 32), "cpu"))
        loss.backward()
        setup.optimizer.step()
        setup.optimizer.zero_grad()
    after = dict(setup.model.named_parameters())
    assert all(torch.equal(after[n], a) for n, a in initial_a.items())
    assert all(after[n].abs().sum() > 0 for n in after if "lora_B" in n)
    # across a whole saved run too: the trained adapter's A equals the A that run started from
    from lora_explorer.train import load_base

    config = resolve(lx.RunConfig(model="toy", method="lora-fa", steps=80))
    start = load_base(config, tasks.TASKS["teacher"])
    tasks.build_task(tasks.TASKS["teacher"], start, config.task_params)
    method = get_method("lora-fa")
    initial = method.build(BuildContext(start, config.method_params, config.lr, 0.0, config.steps)).model
    model, _, _ = rebuild(trained["lora-fa"].path)
    trained_a = {n: p for n, p in model.named_parameters() if "lora_A" in n}
    assert len(trained_a) == 4
    assert all(torch.equal(p, trained_a[n]) for n, p in initial.named_parameters() if "lora_A" in n)
