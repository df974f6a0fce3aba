"""Gradient alignment: full FT's gradient g from hooks, each method's equivalent gradient g~, and
what alignment.jsonl records, checked against independent dense computations."""
import pytest
import torch

import lora_explorer as lx
from lora_explorer import analysis
from lora_explorer.methods import _lora, lora_fa
from test_analysis import build_with_task, train_steps

LOW_RANK = ["lora", "lora-plus", "rslora", "vera", "lora-fa", "lora-drop", "adalora", "delta-lora", "lora-ga",
            "lora-pro"]


def forward_backward(setup, task, step, modules):
    """One training step's forward and backward with the gradient recorder on; returns g per layer."""
    batch = task.batch(task.train, torch.arange(32 * step, 32 * step + 32), "cpu")
    with analysis.GradientRecorder(modules) as recorder:
        loss, _ = task.loss(setup.model, batch)
        if setup.hooks.regularizer:
            loss = loss + setup.hooks.regularizer()
        loss.backward()
    return recorder.grads


def test_recorded_gradient_is_dl_dw_through_peft_layers():
    """g from the hooks reproduces PEFT's own factor grads: g_A = s Bᵀ g and g_B = s g Aᵀ."""
    setup, (w0, task) = build_with_task("lora")
    train_steps(setup, task, 3)  # B ≠ 0
    layers = _lora.adapted_layers(setup.model)
    grads = forward_backward(setup, task, 4, analysis.outer_modules(setup.model, w0))
    assert set(grads) == set(w0)
    for name, layer in layers.items():
        A, B, s = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.scaling["default"]
        torch.testing.assert_close(A.grad, s * B.detach().T @ grads[name], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(B.grad, s * grads[name] @ A.detach().T, rtol=1e-4, atol=1e-7)


def test_full_ft_gradient_is_the_weight_grad():
    setup, (w0, task) = build_with_task("full")
    grads = forward_backward(setup, task, 1, analysis.outer_modules(setup.model, w0))
    for name, g_tilde in setup.equivalent_gradients(1).items():
        record = analysis.alignment_record(0, name, grads[name], g_tilde, None)
        assert record["cos"] == pytest.approx(1.0, abs=1e-6) and record["rel_err"] < 1e-5
        assert record["bound_r"] is None


def test_finite_difference_matches_lora_closed_form():
    """The finite difference J Jᵀ g through the identity probe equals s(B g_A + g_B A) for LoRA."""
    setup, (w0, task) = build_with_task("lora")
    train_steps(setup, task, 3)
    modules = analysis.outer_modules(setup.model, w0)
    forward_backward(setup, task, 4, modules)
    closed = setup.equivalent_gradients(4)
    for name, module in modules.items():
        finite = analysis.finite_difference_gradient(module)
        torch.testing.assert_close(finite, closed[name], rtol=2e-3, atol=2e-3 * float(closed[name].abs().max()))


def sgd_change(setup, task, step, lr, lrs_by_param=None):
    """W_eff after one plain SGD step minus W_eff before, with the method's own hooks."""
    modules = analysis.outer_modules(setup.model, setup.updates())
    before = {name: analysis.effective_weight(m).clone() for name, m in modules.items()}
    params = [p for p in setup.model.parameters() if p.requires_grad]
    groups = [{"params": [p], "lr": (lrs_by_param or {}).get(id(p), lr)} for p in params]
    optimizer = torch.optim.SGD(groups, lr=lr)
    forward_backward(setup, task, step, modules)
    if setup.hooks.before_optimizer_step:
        setup.hooks.before_optimizer_step(step)
    equivalent = setup.equivalent_gradients(step)
    optimizer.step()
    if setup.hooks.after_optimizer_step:
        setup.hooks.after_optimizer_step(step)
    optimizer.zero_grad()
    return {name: analysis.effective_weight(m) - before[name] for name, m in modules.items()}, equivalent


def test_lora_plus_equivalent_gradient_is_its_first_order_step():
    """With lr_B = ratio·lr_A, one SGD step changes W_eff by −lr·g~ (to first order)."""
    setup, (_, task) = build_with_task("lora-plus", ratio=16.0)
    train_steps(setup, task, 3)
    lr, ratio = 1e-4, 16.0
    lrs = {id(layer.lora_B["default"].weight): ratio * lr for layer in _lora.adapted_layers(setup.model).values()}
    change, equivalent = sgd_change(setup, task, 4, lr, lrs)
    for name in change:
        torch.testing.assert_close(change[name] / -lr, equivalent[name], rtol=0.02,
                                   atol=0.02 * float(equivalent[name].abs().max()))


def test_delta_lora_equivalent_gradient_includes_the_moving_base():
    """After step K, W moves by λ·Δ(sBA) too: one SGD step changes W_eff by −lr·(1 + λ)·s(B g_A + g_B A)."""
    setup, (_, task) = build_with_task("delta-lora", start_step=2, update_ratio=2.0)
    train_steps(setup, task, 3)
    change, equivalent = sgd_change(setup, task, 4, 1e-4)
    for name in change:
        torch.testing.assert_close(change[name] / -1e-4, equivalent[name], rtol=0.02,
                                   atol=0.02 * float(equivalent[name].abs().max()))


def tangent_projection(g, A, B):
    """P_B g + g P_A − P_B g P_A: the projection of g onto {B Y + Z A}, by dense pseudo-inverses."""
    g, A, B = g.double(), A.double(), B.double()
    p_b, p_a = B @ torch.linalg.pinv(B), torch.linalg.pinv(A) @ A
    return p_b @ g + g @ p_a - p_b @ g @ p_a


@pytest.mark.parametrize("method", ["lora-pro", "lora-fa"])
def test_projection_methods_reach_their_projection(method):
    """LoRA-Pro's g~ is g's projection onto the tangent space at (A, B); LoRA-FA's is g·A⁺A (B's
    column space plays no part: A is frozen). cos(g~, g) then equals ‖projection‖/‖g‖."""
    setup, (w0, task) = build_with_task(method)
    train_steps(setup, task, 4)
    grads = forward_backward(setup, task, 5, analysis.outer_modules(setup.model, w0))
    equivalent = setup.equivalent_gradients(5)
    for name, layer in _lora.adapted_layers(setup.model).items():
        A, B = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
        g = grads[name]
        expected = tangent_projection(g, A, B) if method == "lora-pro" else g.double() @ torch.linalg.pinv(
            A.double()) @ A.double()
        torch.testing.assert_close(equivalent[name].double(), expected, rtol=1e-3,
                                   atol=1e-4 * float(expected.abs().max()))
        record = analysis.alignment_record(4, name, g, equivalent[name], 8)
        assert record["cos"] == pytest.approx(float(expected.norm() / g.double().norm()), rel=1e-4)
        assert record["cos"] <= record["bound_2r"] + 1e-6


def test_lora_fa_formula_is_pefts_corrected_step():
    """lora_fa.equivalent_gradients uses the same correction PEFT's optimizer applies to g_B."""
    setup, (w0, task) = build_with_task("lora-fa")
    forward_backward(setup, task, 1, analysis.outer_modules(setup.model, w0))
    layers = _lora.adapted_layers(setup.model)
    before = {n: layer.lora_B["default"].weight.detach().clone() for n, layer in layers.items()}
    equivalent = lora_fa.equivalent_gradients(setup.model)
    for group in setup.optimizer.param_groups:
        group["lr"] = 1e-3
    setup.optimizer.step()  # first Adam step: exp_avg/sqrt(exp_avg_sq) = sign, so compare signs
    for name, layer in layers.items():
        step_b = layer.lora_B["default"].weight.detach() - before[name]
        direction = equivalent[name] @ torch.linalg.pinv(layer.lora_A["default"].weight.detach())
        agree = (torch.sign(step_b) == -torch.sign(direction)) | (direction.abs() < 1e-6 * direction.abs().max())
        assert agree.float().mean() > 0.99


def test_attainable_cos_on_a_known_spectrum():
    energy = torch.tensor([3.0, 2.0, 1.0, 1.0]) ** 2
    assert analysis.attainable_cos(energy, 1) == pytest.approx((9 / 15) ** 0.5)
    assert analysis.attainable_cos(energy, 2) == pytest.approx((13 / 15) ** 0.5)
    assert analysis.attainable_cos(energy, 8) == pytest.approx(1.0)
    g = torch.randn(40, 24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for matrix in (g, g.T):
        expected = torch.linalg.svdvals(matrix) ** 2
        torch.testing.assert_close(analysis.squared_singular_values(matrix), expected, rtol=1e-9, atol=1e-9)
    g = torch.diag(torch.tensor([3.0, 2.0, 1.0, 1.0]))
    best_rank_2 = torch.diag(torch.tensor([3.0, 2.0, 0.0, 0.0]))
    record = analysis.alignment_record(0, "x", g, best_rank_2, 1)
    assert record["cos"] == pytest.approx(record["bound_2r"]) and record["bound_r"] == pytest.approx(0.6 ** 0.5)


@pytest.fixture(scope="module")
def aligned_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("aligned")
    params = {"vera": {}, "full": {}, "adalora": {"rank": 6, "final_rank": 4}}
    return {method: lx.train(lx.RunConfig(model="toy", method=method, steps=20,
                                          method_params=params.get(method, {"rank": 4})), root)
            for method in LOW_RANK + ["full", "dora"]}


@pytest.mark.parametrize("method", LOW_RANK)
def test_recorded_cos_never_exceeds_the_rank_2r_bound(aligned_runs, method):
    records = aligned_runs[method].alignment()
    assert records and all(r["cos"] is not None for r in records)
    for record in records:
        assert -1 <= record["cos"] <= record["bound_2r"] + 1e-5, record
        assert record["bound_r"] <= record["bound_2r"] <= 1 + 1e-9


def test_alignment_file_and_metrics(aligned_runs):
    run = aligned_runs["lora"]
    records = run.alignment()
    layers = sorted({r["layer"] for r in run.spectra()})
    points = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]  # after p updates, every analysis_every = 2 steps, p < steps
    assert sorted({r["step"] for r in records}) == points
    assert len(records) == len(points) * len(layers) and sorted({r["layer"] for r in records}) == layers
    assert set(records[0]) == {"step", "layer", "cos", "rel_err", "bound_r", "bound_2r", "grad_norm"}
    mean_cos = {r["step"]: r["align_cos"] for r in run.metrics() if "align_cos" in r}
    assert sorted(mean_cos) == points
    for point in points:
        expected = sum(r["cos"] for r in records if r["step"] == point) / len(layers)
        assert mean_cos[point] == pytest.approx(expected)
    full = aligned_runs["full"].alignment()
    assert all(r["cos"] == pytest.approx(1.0, abs=1e-6) and r["bound_r"] is None for r in full)


def test_dora_alignment_comes_from_the_finite_difference(aligned_runs):
    """DoRA has no closed form; its g~ (finite difference) is recorded and its magnitude vector
    makes it differ from LoRA's at the same starting point."""
    dora = {r["layer"]: r["cos"] for r in aligned_runs["dora"].alignment() if r["step"] == 0}
    lora = {r["layer"]: r["cos"] for r in aligned_runs["lora"].alignment() if r["step"] == 0}
    assert all(0 < value <= 1 for value in dora.values())
    assert any(abs(dora[name] - lora[name]) > 1e-3 for name in dora)


def test_no_alignment_without_analysis(tmp_path):
    run = lx.train(lx.RunConfig(model="toy", method="lora", steps=4, analysis_every=0), tmp_path)
    assert not (run.path / "alignment.jsonl").exists() and not any("align_cos" in r for r in run.metrics())
