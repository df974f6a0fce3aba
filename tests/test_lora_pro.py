"""LoRA-Pro (arXiv:2407.18242): the closed-form math in float64, the optimizer against an independent
reference of Algorithm 2, the B = 0 start, and training runs."""
import pytest
import torch

import lora_explorer as lx
from lora_explorer import models
from lora_explorer.methods import _lora, get_method
from lora_explorer.methods import lora_pro as lp
from lora_explorer.methods.base import BuildContext

M, N, R, S = 24, 17, 4, 2.5  # rectangular, s != 1: catches transposes and misplaced scalings


def point(seed=0, dtype=torch.float64):
    """Random full-rank A (r x n), B (m x r), a full gradient g (m x n), and the LoRA grads it induces."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(R, N, generator=gen, dtype=dtype)
    B = torch.randn(M, R, generator=gen, dtype=dtype)
    g = torch.randn(M, N, generator=gen, dtype=dtype)
    return A, B, g, S * B.T @ g, S * g @ A.T


def row_space(A):
    """P_A = A^T (A A^T)^-1 A, the projection onto A's row space."""
    return A.T @ torch.linalg.inv(A @ A.T) @ A


def projections(A, B):
    return row_space(B.T), row_space(A)  # P_B = B (B^T B)^-1 B^T, P_A


def cos(x, y):
    return float((x * y).sum() / (x.norm() * y.norm()))


def rel(x, y):
    return float((x - y).norm() / y.norm())


# ------------------------------------------------------------------ closed form (Theorems 2.1, 2.3)
@pytest.mark.parametrize("solve_x", [True, False])
def test_equivalent_gradient_is_the_tangent_space_projection_of_g(solve_x):
    A, B, g, gA, gB = point()
    P_B, P_A = projections(A, B)
    target = P_B @ g + (g - P_B @ g) @ P_A
    new_gA, new_gB = lp.adjusted_grads(A, B, gA, gB, S, solve_x=solve_x, damping=0.0)
    tilde = _lora.equivalent_grad(A, B, new_gA, new_gB, S)
    assert rel(tilde, target) < 1e-10  # X cancels in g~
    # an orthogonal projection: cos(g~, g) = |g~| / |g|, and g - g~ is orthogonal to the tangent space
    assert cos(tilde, g) == pytest.approx(float(tilde.norm() / g.norm()), abs=1e-12)
    residual = g - tilde
    assert float((B.T @ residual).norm()) < 1e-10 * float(g.norm() * B.norm())
    assert float((residual @ A.T).norm()) < 1e-10 * float(g.norm() * A.norm())
    # the default (small relative) damping changes this only slightly
    damped = _lora.equivalent_grad(A, B, *lp.adjusted_grads(A, B, gA, gB, S, solve_x=solve_x), S)
    assert rel(damped, target) < 1e-4
    assert rel(lp._points([(A, B)])[0].equivalent(new_gA, new_gB, S), tilde) < 1e-12  # the optimizer's fused form


def test_x_solves_the_sylvester_equation_and_keeps_closest_to_the_lora_grads():
    A, B, g, gA, gB = point(1)
    BtB, AAt = B.T @ B, A @ A.T
    X = lp.sylvester_x(A, B, gA, S, damping=0.0)
    C = -torch.linalg.inv(BtB) @ gA @ A.T / S**2
    assert rel(BtB @ X + X @ AAt, C) < 1e-10

    with_x = lp.adjusted_grads(A, B, gA, gB, S, solve_x=True, damping=0.0)
    without = lp.adjusted_grads(A, B, gA, gB, S, solve_x=False, damping=0.0)
    assert rel(with_x[0] - without[0], X @ A) < 1e-10  # the X that adjusted_grads uses is this one
    assert rel(without[1] - with_x[1], B @ X) < 1e-10

    def distance(Y):  # to the plain LoRA grads, as a function of the free matrix
        return (without[0] + Y @ A - gA).square().sum() + (without[1] - B @ Y - gB).square().sum()

    assert distance(X) < distance(torch.zeros_like(X))
    Y = X.clone().requires_grad_(True)
    distance(Y).backward()  # X is the minimiser: zero gradient (the objective is convex in X)
    assert float(Y.grad.norm()) < 1e-8 * float(gA.norm() * A.norm())


def test_solve_sylvester_on_random_spd_matrices():
    gen = torch.Generator().manual_seed(2)
    P = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    Q = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    P, Q = P @ P.T + 0.1 * torch.eye(5, dtype=torch.float64), Q @ Q.T + 0.1 * torch.eye(5, dtype=torch.float64)
    C = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    X = lp.solve_sylvester(P, Q, C)
    assert rel(P @ X + X @ Q, C) < 1e-12


@pytest.mark.parametrize("seed", [0, 3, 4])
def test_lora_pro_is_at_least_as_aligned_with_g_as_plain_lora(seed):
    A, B, g, gA, gB = point(seed)
    plain = _lora.equivalent_grad(A, B, gA, gB, S)
    assert rel(plain, S**2 * (B @ B.T @ g + g @ A.T @ A)) < 1e-12
    pro = _lora.equivalent_grad(A, B, *lp.adjusted_grads(A, B, gA, gB, S), S)
    assert cos(pro, g) >= cos(plain, g) - 1e-12
    assert cos(pro, g) > cos(plain, g) + 1e-3  # strictly, at a generic point
    P_B, P_A = projections(A, B)
    assert cos(pro, g) >= cos(g @ P_A, g)  # and LoRA-FA v2's projection, a subspace of the tangent space


def test_at_b_zero_the_step_is_finite_and_reduces_to_lora_fa_v2():
    A, _, g, _, _ = point(5, torch.float32)  # the default path: float32 with the default damping
    B = torch.zeros(M, R)
    gA, gB = S * B.T @ g, S * g @ A.T
    new_gA, new_gB = lp.adjusted_grads(A, B, gA, gB, S)
    assert torch.isfinite(new_gA).all() and torch.isfinite(new_gB).all()
    assert torch.equal(new_gA, torch.zeros_like(new_gA))
    lora_fa = gB @ torch.linalg.inv(A @ A.T) / S**2
    assert rel(new_gB, lora_fa) < 1e-4
    # the update s g_B A is g's projection onto A's row space
    P_A = row_space(A.double()).float()
    assert rel(_lora.equivalent_grad(A, B, new_gA, new_gB, S), g @ P_A) < 1e-4

    # a first optimizer step from B = 0 leaves A untouched and moves B (finite) along -(d P_A)
    Ap, Bp = torch.nn.Parameter(A.clone()), torch.nn.Parameter(B.clone())
    Ap.grad, Bp.grad = gA.clone(), gB.clone()
    opt = lp.LoraProAdamW([(Ap, Bp, S)], lr=1e-3)
    opt.step()
    assert torch.equal(Ap.detach(), A)
    assert torch.isfinite(Bp).all() and Bp.abs().sum() > 0
    step_one_direction = torch.sign(g @ P_A)  # Adam's first direction is m/sqrt(v) = sign, up to eps
    assert rel(S * Bp.detach() @ A, -1e-3 * step_one_direction @ P_A) < 1e-3


# ------------------------------------------------------------------ the optimizer = Algorithm 2
def reference_adjust(A, B, gA, gB, s):
    """Theorems 2.1/2.3 written independently: explicit inverses and a Kronecker-form Sylvester solve."""
    BtB_inv, AAt_inv = torch.linalg.inv(B.T @ B), torch.linalg.inv(A @ A.T)
    r = A.shape[0]
    eye = torch.eye(r, dtype=A.dtype)
    C = -BtB_inv @ gA @ A.T / s**2
    P, Q = (B.T @ B).contiguous(), (A @ A.T).contiguous()
    kron = torch.kron(P, eye) + torch.kron(eye, Q.T.contiguous())  # row-major vec(P X + X Q)
    X = torch.linalg.solve(kron, C.reshape(-1)).reshape(r, r)
    new_gA = BtB_inv @ gA / s**2 + X @ A
    new_gB = (torch.eye(B.shape[0], dtype=A.dtype) - B @ BtB_inv @ B.T) @ gB @ AAt_inv / s**2 - B @ X
    return new_gA, new_gB


def reference_algorithm2(A, B, grads, s, lr, wd, betas=(0.9, 0.999), eps=1e-8):
    m = v = torch.zeros(B.shape[0], A.shape[1], dtype=A.dtype)
    for t, (gA, gB) in enumerate(grads, start=1):
        adj_A, adj_B = reference_adjust(A, B, gA, gB, s)
        tilde = s * B @ adj_A + s * adj_B @ A
        m = betas[0] * m + (1 - betas[0]) * tilde
        v = betas[1] * v + (1 - betas[1]) * tilde**2
        d = (m / (1 - betas[0] ** t)) / ((v / (1 - betas[1] ** t)).sqrt() + eps)
        dA, dB = reference_adjust(A, B, s * B.T @ d, s * d @ A.T, s)
        A, B = A * (1 - lr * wd) - lr * dA, B * (1 - lr * wd) - lr * dB
    return A, B


def test_optimizer_matches_an_independent_algorithm_2():
    gen = torch.Generator().manual_seed(7)
    shapes = [(M, N, R), (N, M, R), (9, 11, 2)]  # layers of different shapes and ranks, one optimizer
    layers = []
    for m, n, r in shapes:
        A0 = torch.randn(r, n, generator=gen, dtype=torch.float64)
        B0 = torch.randn(m, r, generator=gen, dtype=torch.float64)
        grads = [(torch.randn(r, n, generator=gen, dtype=torch.float64),
                  torch.randn(m, r, generator=gen, dtype=torch.float64)) for _ in range(3)]
        layers.append((A0, B0, grads, torch.nn.Parameter(A0.clone()), torch.nn.Parameter(B0.clone())))
    lr, wd = 1e-2, 0.1
    head = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = lp.LoraProAdamW([(A, B, S + k) for k, (*_, A, B) in enumerate(layers)], [head],
                          lr=lr, weight_decay=wd, damping=0.0)
    for step in range(3):
        for _, _, grads, A, B in layers:
            A.grad, B.grad = grads[step][0].clone(), grads[step][1].clone()
        head.grad = torch.ones(3, dtype=torch.float64)
        opt.step()
        opt.zero_grad(set_to_none=True)
    for k, (A0, B0, grads, A, B) in enumerate(layers):
        ref_A, ref_B = reference_algorithm2(A0, B0, grads, S + k, lr, wd)
        assert rel(A.detach() - A0, ref_A - A0) < 1e-8
        assert rel(B.detach() - B0, ref_B - B0) < 1e-8
        assert opt.state[B]["exp_avg"].shape == (B.shape[0], A.shape[1])  # full-size moments
    # the other params: plain AdamW (a constant gradient moves by lr per step, after the decay)
    expected = torch.ones(3, dtype=torch.float64)
    for _ in range(3):
        expected = expected * (1 - lr * wd) - lr * (1 / (1 + 1e-8))
    assert torch.allclose(head.detach(), expected, rtol=0, atol=1e-12)


def test_factor_moments_keep_factor_size_state():
    A0, B0, g, gA, gB = point(8)
    A, B = torch.nn.Parameter(A0.clone()), torch.nn.Parameter(B0.clone())
    A.grad, B.grad = gA.clone(), gB.clone()
    opt = lp.LoraProAdamW([(A, B, S)], lr=1e-3, moments="factor", damping=0.0)
    opt.step()
    assert opt.state[A]["exp_avg"].shape == A.shape and opt.state[B]["exp_avg"].shape == B.shape
    adj_A, adj_B = reference_adjust(A0, B0, gA, gB, S)  # Adam's first direction is g / (|g| + eps)
    assert torch.allclose(A.detach() - A0, -1e-3 * adj_A / (adj_A.abs() + 1e-8), rtol=0, atol=1e-12)
    assert torch.allclose(B.detach() - B0, -1e-3 * adj_B / (adj_B.abs() + 1e-8), rtol=0, atol=1e-12)


def build(method_id="lora-pro", lr=1e-3, weight_decay=0.0, **params):
    bundle = models.load_model("toy")
    method = get_method(method_id)
    ctx = BuildContext(bundle, method.resolve_params(params), lr, weight_decay, steps=10)
    return bundle, method.build(ctx)


def test_factors_are_paired_by_module_with_their_scaling_and_the_scheduler_drives_the_lr():
    _, setup = build(lr=2e-3, alpha=12, rank=4)
    layers = {name: module for name, module in setup.model.named_modules() if hasattr(module, "lora_A")}
    groups = [g for g in setup.optimizer.param_groups if g["lora_pro"]]
    assert len(groups) == len(layers) == 4
    for group in groups:
        A, B = group["params"]
        owner = [m for m in layers.values() if m.lora_A["default"].weight is A]
        assert len(owner) == 1 and owner[0].lora_B["default"].weight is B
        assert group["scaling"] == pytest.approx(owner[0].scaling["default"]) == pytest.approx(3.0)
    assert len(setup.optimizer.param_groups) == 4  # the toy has no head: no plain-AdamW group

    scheduler = torch.optim.lr_scheduler.LambdaLR(setup.optimizer, lambda step: 0.0)  # lr 0: nothing moves
    before = [p.detach().clone() for g in groups for p in g["params"]]
    x = torch.randn(8, models.TOY_DIMS[0])
    setup.model(x).square().mean().backward()
    setup.optimizer.step()
    scheduler.step()
    assert all(torch.equal(p, b) for p, b in zip((p for g in groups for p in g["params"]), before))


def test_moments_parameter_is_declared_and_checked():
    from lora_explorer.errors import ConfigError

    method = get_method("lora-pro")
    assert method.resolve_params({})["moments"] == "full"
    assert method.resolve_params({"moments": "factor"})["moments"] == "factor"
    with pytest.raises(ConfigError):
        method.resolve_params({"moments": "half"})
    assert {p.name for p in method.params} >= {"rank", "alpha", "dropout", "target_modules", "moments"}


# ------------------------------------------------------------------ training
def test_toy_trains_with_factor_moments(runs_dir):
    run = lx.train(lx.RunConfig(model="toy", method="lora-pro", steps=80, method_params={"moments": "factor"}),
                   runs_dir)
    assert run.summary()["status"] == "completed", run.summary().get("error")
    losses = [r["loss"] for r in run.metrics() if "loss" in r]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
