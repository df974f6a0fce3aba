"""Weight-update spectra, checked against an independent dense computation."""
import pytest
import torch
from safetensors.torch import load_file

import lora_explorer as lx
from lora_explorer import analysis, tasks
from lora_explorer.config import resolve


def test_factored_spectrum_equals_dense_svdvals_in_float64():
    generator = torch.Generator().manual_seed(0)
    for m, n, k in [(64, 32, 8), (384, 384, 16), (16, 64, 24)]:
        left = torch.randn(m, k, generator=generator, dtype=torch.float64)
        right = torch.randn(k, n, generator=generator, dtype=torch.float64)
        factored = analysis.singular_values(analysis.Update(left=left, right=right))
        dense = torch.linalg.svdvals(left @ right)[: len(factored)]
        assert torch.allclose(factored, dense, rtol=1e-5, atol=1e-10 * float(dense[0]))


def test_stats_on_a_known_spectrum():
    sigma = torch.tensor([4.0, 2.0, 2.0, 0.0])
    s = analysis.stats(sigma, w0_norm=2 * 24 ** 0.5)
    p = torch.tensor([0.5, 0.25, 0.25])
    assert s["effective_rank"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())))
    assert s["stable_rank"] == pytest.approx(24 / 16) and s["numerical_rank"] == 3
    assert s["rank90"] == 3 and s["rel_norm"] == pytest.approx(0.5)


@pytest.mark.parametrize("method", ["lora", "lora-plus", "rslora", "vera", "lora-fa", "adalora", "delta-lora",
                                    "lora-ga", "lora-pro", "lora-drop"])
def test_each_methods_factored_update_is_its_effective_update(method):
    params = {"start_step": 2} if method == "delta-lora" else {}
    model_setup, (w0, task) = build_with_task(method, **params)
    train_steps(model_setup, task, 6)
    factored = model_setup.updates()
    dense = analysis.dense_updates(model_setup.model, w0)
    assert set(factored) == set(dense) == set(w0)
    for name in dense:
        assert factored[name].dense is None  # really factored
        torch.testing.assert_close(factored[name].matrix(), dense[name].matrix(), atol=2e-5, rtol=1e-4)


def train_steps(setup, task, steps):
    """`steps` steps the way the training loop takes them, on fixed toy batches."""
    for step in range(1, steps + 1):
        batch = task.batch(task.train, torch.arange(32 * step, 32 * step + 32), "cpu")
        loss, _ = task.loss(setup.model, batch)
        if setup.hooks.regularizer:
            loss = loss + setup.hooks.regularizer()
        loss.backward()
        if setup.hooks.before_optimizer_step:
            setup.hooks.before_optimizer_step(step)
        setup.optimizer.step()
        if setup.hooks.after_optimizer_step:
            setup.hooks.after_optimizer_step(step)
        setup.optimizer.zero_grad()


def build_with_task(method, **params):
    """A method built the way train() builds it (W0 copied first), with the toy task."""
    from lora_explorer.methods import get_method
    from lora_explorer.methods.base import BuildContext
    from lora_explorer.train import load_base, original_weights

    config = resolve(lx.RunConfig(model="toy", method=method, method_params=params, steps=6))
    bundle = load_base(config, tasks.TASKS["teacher"])
    task = tasks.build_task(tasks.TASKS["teacher"], bundle, config.task_params)
    w0 = original_weights(bundle, config)
    setup = get_method(method).build(BuildContext(bundle, config.method_params, 1e-2, 0.0, 6, task, 32, 0))
    return setup, (w0, task)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {m: lx.train(lx.RunConfig(model="toy", method=m, steps=60, method_params=p), root)
            for m, p in [("lora", {"rank": 4}), ("lora-ga", {"rank": 4}), ("delta-lora", {"rank": 4}),
                         ("dora", {"rank": 4}), ("full", {})]}


def last_spectra(run):
    records = run.spectra()
    last = max(r["step"] for r in records)
    return {r["layer"]: r for r in records if r["step"] == last}


def test_numerical_ranks_follow_each_methods_structure(runs):
    for method, bound in [("lora", 4), ("lora-ga", 8), ("delta-lora", 8)]:
        ranks = [r["numerical_rank"] for r in last_spectra(runs[method]).values()]
        assert max(ranks) <= bound and max(ranks) == bound, (method, ranks)
    for method in ("dora", "full"):
        assert min(r["numerical_rank"] for r in last_spectra(runs[method]).values()) > 8


def test_spectra_are_recorded_at_step_0_the_cadence_and_the_end(runs):
    steps = sorted({r["step"] for r in runs["lora"].spectra()})
    assert steps == [0, 6, 12, 18, 24, 30, 36, 42, 48, 54, 60]
    first = [r for r in runs["lora"].spectra() if r["step"] == 0]
    assert len(first) == 4 and all(r["rel_norm"] == 0 for r in first)  # B = 0 at init
    assert all(r["rel_norm"] < 1e-6 for r in runs["lora-ga"].spectra() if r["step"] == 0)  # the offset cancels


@pytest.mark.parametrize("method", ["lora", "lora-ga", "delta-lora", "dora", "full"])
def test_recorded_sigma_equals_the_saved_weights(runs, method):
    run = runs[method]
    model, _, _ = lx.rebuild(run.path)
    base = load_file(str(run.path / "base.safetensors"))
    w0 = {name: base[f"{name}.weight"] for name in last_spectra(run)}
    for name, update in analysis.dense_updates(model, w0).items():
        recomputed = analysis.singular_values(update)[:analysis.TOP_SIGMA]
        recorded = torch.tensor(last_spectra(run)[name]["sigma"], dtype=torch.float64)
        assert torch.allclose(recorded, recomputed[: len(recorded)], atol=1e-4 * float(recomputed[0]))


def test_toy_full_ft_recovers_the_true_update(tmp_path):
    run = lx.train(lx.RunConfig(model="toy", method="full", steps=600, task_params={"noise": 0.0}), tmp_path)
    for name, record in last_spectra(run).items():
        sigma = record["sigma"]
        assert record["target_overlap"] > 0.8, name  # the top-4 subspace of ΔW* is found
        assert sigma[3] / sigma[4] > 1.8, name  # and a gap after the true rank 4


def test_target_overlap_uses_the_directions_that_hold_the_targets_energy():
    generator = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(64, 64, generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(32, 32, generator=generator, dtype=torch.float64))
    flat = u[:, :32] @ v.T  # a full-rank target with a flat spectrum: any 29 of its 32 directions hold 90%
    inside = u[:, :2] @ v[:, :2].T * 3  # a rank-2 update inside the target's column space
    assert 0.8 < analysis.target_overlap(inside, flat, 2) <= 1.0  # ~29/32, not the trivial 1 of k = 64
    other = u[:, 40:42] @ v[:, :2].T  # directions the target does not use
    assert analysis.target_overlap(other, flat, 2) == pytest.approx(0.0, abs=1e-12)
    decaying = u[:, :4] @ torch.diag(torch.tensor([1.0, 0.8, 0.64, 0.512], dtype=torch.float64)) @ v[:, :4].T
    assert analysis.target_overlap(decaying, decaying, 4) == pytest.approx(1.0)  # rank90 = 4
    assert analysis.target_overlap(torch.zeros(64, 32, dtype=torch.float64), decaying, 0) == 0.0
