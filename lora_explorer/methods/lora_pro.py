"""LoRA-Pro (Wang, Liang et al. 2024, ICLR 2025, arXiv:2407.18242): the paper's Algorithm 2.

A plain PEFT LoRA model, moved by an optimizer that makes the low-rank update follow full
fine-tuning as closely as rank r allows. Notation (reference section 0): A is r x n, B is m x r,
the layer computes W0 x + s B A x, and the plain LoRA grads are g_A = s B^T g, g_B = s g A^T for
the full-weight gradient g. Per adapted layer, every step:

  1. adjust (g_A, g_B) in closed form (Theorem 2.1) so that the equivalent gradient
     g~ = s B g_A + s g_B A is the orthogonal projection of g onto the tangent space {B Y + Z A}:
     g~ = P_B g + (I - P_B) g P_A. The free r x r matrix X cancels in g~; it solves the Sylvester
     equation of Theorem 2.3, which keeps the adjusted grads closest to the plain ones;
  2. g~ = s B g_A + s g_B A, full size (m x n);
  3. AdamW moments on g~, full size, as full fine-tuning would keep for that weight;
  4. map the Adam direction d back to factor grads: the pseudo-grads (s B^T d, s d A^T) go through
     the same closed form (new X), and A, B take an lr step along them (+ decoupled weight decay).

Any other trainable parameter (the classifier head) gets plain AdamW inside the same optimizer.
The trained result is an ordinary LoRA adapter, saved and restored like LoRA's.
"""
from __future__ import annotations

import math

import torch

from lora_explorer.methods import _lora
from lora_explorer.methods.base import Method, Param, Setup, register

# (G + delta I)^-1 with delta = DAMPING x G's largest eigenvalue, + FLOOR so that a zero Gram matrix
# (B = 0 at init) gives finite numbers: then g_A^lora = s B^T g = 0 exactly, so g_A = 0 and the
# step reduces to LoRA-FA v2's B update g_B (A A^T)^-1 / s^2.
DAMPING = 1e-6
FLOOR = 1e-30

MOMENTS = Param("moments", str, "full",
                "Adam moments: full = the paper's Algorithm 2 (Adam on the m x n equivalent gradient; two "
                "m x n tensors per adapted layer, FT-like memory); factor = cheaper approximation with "
                "factor-size Adam moments on the adjusted g_A, g_B",
                choices=("full", "factor"))


# ------------------------------------------------------------------ the math, as plain functions
def _work_dtype(tensor: torch.Tensor) -> torch.dtype:
    """Solves run in fp32 at least (bf16/fp16 are too coarse for r x r inverses); fp64 stays fp64."""
    return torch.promote_types(tensor.dtype, torch.float32)


def _damped_eigh(gram: torch.Tensor, damping: float):
    """Eigenvalues (clamped at 0, then shifted by the damping) and eigenvectors of a symmetric PSD matrix."""
    values, vectors = torch.linalg.eigh(gram)
    values = values.clamp_min(0)
    return values + (damping * values.amax(-1, keepdim=True) + FLOOR), vectors


class _Point:
    """The factors (A, B) of one layer at one step, with the eigendecompositions of B^T B = U diag(lam) U^T
    and A A^T = V diag(mu) V^T (from _points). Both closed-form passes of a step share them: in these
    eigenbases both inverses and the Sylvester equation are elementwise divisions."""

    def __init__(self, A, B, lam, U, mu, V):
        self.dtype = A.dtype
        self.A, self.B, self.lam, self.U, self.mu, self.V = A, B, lam, U, mu, V

    def adjust(self, gA: torch.Tensor, gB: torch.Tensor, s: float, solve_x: bool = True):
        """Theorem 2.1: g_A = (B^T B)^-1 g_A^lora / s^2 + X A,
        g_B = (I - B (B^T B)^-1 B^T) g_B^lora (A A^T)^-1 / s^2 - B X, with X from Theorem 2.3 (or 0)."""
        A, B, U, V, lam, mu = self.A, self.B, self.U, self.V, self.lam, self.mu
        ua = self.rotated_a(gA, s)
        new_gA = U @ ua  # (B^T B)^-1 g_A / s^2
        gB = gB.to(self.dtype)
        gB_ainv = ((gB @ V) / mu) @ V.mT  # g_B (A A^T)^-1   (m x r)
        # drop the part of g_B (A A^T)^-1 inside B's column space: s B g_A already covers it
        in_b = B @ (U @ ((U.mT @ (B.mT @ gB_ainv)) / lam[:, None]))
        new_gB = (gB_ainv - in_b) / (s * s)
        if solve_x:
            x = self.sylvester_x(ua)
            new_gA = new_gA + x @ A
            new_gB = new_gB - B @ x
        return new_gA, new_gB

    def rotated_a(self, gA: torch.Tensor, s: float) -> torch.Tensor:
        """ua = U^T (B^T B)^-1 g_A / s^2 (r x n), shared by g_A's first term and the Sylvester right side."""
        return (self.U.mT @ gA.to(self.dtype)) / self.lam[:, None] / (s * s)

    def sylvester_x(self, ua: torch.Tensor) -> torch.Tensor:
        """Theorem 2.3: B^T B X + X A A^T = C with C = -(B^T B)^-1 g_A A^T / s^2 = -U ua A^T.
        In the eigenbases, (U^T X V)_ij = (U^T C V)_ij / (lam_i + mu_j); both Gram matrices are
        positive definite (damped), so the solution is unique."""
        rotated_c = -(ua @ (self.A.mT @ self.V))  # U^T C V
        return self.U @ (rotated_c / (self.lam[:, None] + self.mu[None, :])) @ self.V.mT

    def equivalent(self, gA: torch.Tensor, gB: torch.Tensor, s: float) -> torch.Tensor:
        """_lora.equivalent_grad, fused: [B g_B] @ [g_A; A] is one m x n matmul instead of two."""
        return torch.cat([self.B, gB], 1) @ torch.cat([gA, self.A], 0) * s  # one m x n matmul, inner dim 2r


def _points(factors, damping: float = DAMPING) -> list[_Point]:
    """A _Point per (A, B), in fp32 at least. The eigendecompositions of every layer with the same rank
    run as one batched eigh call instead of two per layer: each call has a fixed cost (large on a GPU)."""
    cast = [(A.detach().to(_work_dtype(A)), B.detach().to(_work_dtype(B))) for A, B in factors]
    buckets: dict = {}
    for i, (A, _) in enumerate(cast):
        buckets.setdefault((A.shape[0], A.dtype, A.device), []).append(i)
    points: list = [None] * len(cast)
    for members in buckets.values():
        grams = torch.stack([gram for i in members
                             for gram in (cast[i][1].mT @ cast[i][1], cast[i][0] @ cast[i][0].mT)])
        values, vectors = _damped_eigh(grams, damping)  # [B^T B, A A^T, B^T B, A A^T, ...]
        for k, i in enumerate(members):
            points[i] = _Point(*cast[i], values[2 * k], vectors[2 * k], values[2 * k + 1], vectors[2 * k + 1])
    return points


def adjusted_grads(A, B, gA, gB, s, solve_x=True, damping=DAMPING):
    """LoRA-Pro's adjusted factor grads (Theorems 2.1 and 2.3), in the dtype of gA / gB."""
    new_gA, new_gB = _points([(A, B)], damping)[0].adjust(gA, gB, s, solve_x)
    return new_gA.to(gA.dtype), new_gB.to(gB.dtype)


def sylvester_x(A, B, gA, s, damping=DAMPING):
    """The X that adjusted_grads(solve_x=True) uses (Theorem 2.3)."""
    point = _points([(A, B)], damping)[0]
    return point.sylvester_x(point.rotated_a(gA, s)).to(gA.dtype)


def solve_sylvester(P, Q, C):
    """X with P X + X Q = C, for symmetric positive definite P and Q, by eigendecomposition:
    P = U diag(p) U^T, Q = V diag(q) V^T, so (U^T X V)_ij = (U^T C V)_ij / (p_i + q_j)."""
    p, U = torch.linalg.eigh(P)
    q, V = torch.linalg.eigh(Q)
    return U @ ((U.mT @ C @ V) / (p[:, None] + q[None, :])) @ V.mT


# ------------------------------------------------------------------ the optimizer
def _adam_direction(state: dict, grad: torch.Tensor, betas, eps: float) -> torch.Tensor:
    """Update Adam's moments with grad (fp32) and return the bias-corrected direction m^ / (sqrt(v^) + eps)."""
    if not state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(grad)
        state["exp_avg_sq"] = torch.zeros_like(grad)
    beta1, beta2 = betas
    state["step"] += 1
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = exp_avg_sq.sqrt().div_(math.sqrt(1 - beta2 ** state["step"])).add_(eps)
    return torch.div(exp_avg, denom).div_(1 - beta1 ** state["step"])


def _apply(param: torch.Tensor, direction: torch.Tensor, lr: float, weight_decay: float) -> None:
    """AdamW's step: decoupled weight decay, then lr along -direction (cast back to the param's dtype)."""
    if weight_decay:
        param.mul_(1 - lr * weight_decay)
    param.add_(direction.to(param.dtype), alpha=-lr)


class LoraProAdamW(torch.optim.Optimizer):
    """AdamW for a LoRA model, LoRA-Pro style. One param group [A, B] per adapted layer (paired by
    module when built, so no name-order convention) carrying its scaling s; one group of the other
    trainable params gets plain AdamW. lr is read from the groups every step, so LR schedulers work."""

    def __init__(self, pairs, others=(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 moments="full", damping=DAMPING):
        if moments not in ("full", "factor"):
            raise ValueError(f"moments must be full or factor, got {moments!r}")
        groups = [{"params": [A, B], "scaling": float(s), "lora_pro": True} for A, B, s in pairs]
        others = list(others)
        if others:
            groups.append({"params": others, "lora_pro": False})
        super().__init__(groups, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, moments=moments))
        self.damping = damping

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        pair_groups = [g for g in self.param_groups
                       if g["lora_pro"] and any(p.grad is not None for p in g["params"])]
        points = _points([g["params"] for g in pair_groups], self.damping)  # all layers' eigh at once
        for group, point in zip(pair_groups, points):
            self._pair_step(group, point)
        for group in self.param_groups:
            if group["lora_pro"]:
                continue
            for p in group["params"]:
                if p.grad is not None:
                    grad = p.grad.to(_work_dtype(p.grad))  # fp32 moments, even for bf16 params
                    direction = _adam_direction(self.state[p], grad, group["betas"], group["eps"])
                    _apply(p, direction, group["lr"], group["weight_decay"])
        return loss

    def _pair_step(self, group, point: _Point) -> None:
        A, B = group["params"]
        gA = A.grad if A.grad is not None else torch.zeros_like(A)
        gB = B.grad if B.grad is not None else torch.zeros_like(B)
        s, betas, eps = group["scaling"], group["betas"], group["eps"]
        gA, gB = point.adjust(gA, gB, s)  # 1. closed form
        if group["moments"] == "full":
            full = point.equivalent(gA, gB, s)  # 2. the m x n equivalent gradient
            d = _adam_direction(self.state[B], full, betas, eps)  # 3. full-size AdamW moments
            dA, dB = point.adjust(s * (point.B.mT @ d), s * (d @ point.A.mT), s)  # 4. back to the factors
        else:  # approximation: factor-size moments on the adjusted grads
            dA = _adam_direction(self.state[A], gA, betas, eps)
            dB = _adam_direction(self.state[B], gB, betas, eps)
        _apply(A, dA, group["lr"], group["weight_decay"])  # the step uses the point's (A, B): update last
        _apply(B, dB, group["lr"], group["weight_decay"])


def lora_pairs(model: torch.nn.Module):
    """(A, B, s) for every trainable LoRA Linear pair, found per module: lora_A[adapter] and
    lora_B[adapter] of the same layer, with s = module.scaling[adapter]."""
    from peft.tuners.lora import LoraLayer

    pairs = []
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        for adapter, down in module.lora_A.items():
            up = module.lora_B[adapter] if adapter in module.lora_B else None
            if not (isinstance(down, torch.nn.Linear) and isinstance(up, torch.nn.Linear)):
                continue  # conv / embedding adapters keep plain AdamW
            if down.weight.requires_grad and up.weight.requires_grad:
                pairs.append((down.weight, up.weight, module.scaling[adapter]))
    return pairs


def build(ctx):
    model = _lora.peft_model(ctx)
    pairs = lora_pairs(model)
    paired = {id(p) for A, B, _ in pairs for p in (A, B)}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in paired]
    optimizer = LoraProAdamW(pairs, others, lr=ctx.lr, weight_decay=ctx.weight_decay,
                             moments=ctx.params["moments"])
    return Setup(model, optimizer, updates=lambda: _lora.factored_updates(model),
                 equivalent_gradients=lambda _step: equivalent_gradients(model))


def equivalent_gradients(model) -> dict:
    """g~ = s B g_A + s g_B A with the adjusted grads (step 1 of the optimizer): the projection of g
    onto the tangent space {B Y + Z A}, the closest any step of (A, B) can get."""
    grads = {}
    for name, layer in _lora.adapted_layers(model).items():
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        if A.grad is None and B.grad is None:
            continue
        s = layer.scaling["default"]
        gA = A.grad if A.grad is not None else torch.zeros_like(A)
        gB = B.grad if B.grad is not None else torch.zeros_like(B)
        point = _points([(A, B)])[0]
        new_gA, new_gB = point.adjust(gA, gB, s)
        grads[name] = point.equivalent(new_gA, new_gB, s).float()
    return grads


# adjust = the closed form of Theorems 2.1 and 2.3, applied to LoRA's grads and again to Adam's direction
RULE = (r"\begin{aligned} \tilde{g} &= s\,B g_A + s\,g_B A = P_B\, g + (I - P_B)\, g\, P_A \quad \mathrm{for}\; "
        r"(g_A, g_B) = \mathrm{adjust}(g_A^{\mathrm{lora}}, g_B^{\mathrm{lora}}), \quad "
        r"P_B = B (B^\top B)^{-1} B^\top,\; P_A = A^\top (A A^\top)^{-1} A \\ "
        r"d &= \mathrm{Adam}(\tilde{g}), \quad (A, B) \leftarrow (A, B) - \eta\, "
        r"\mathrm{adjust}\left(s\,B^\top d,\; s\,d A^\top\right) \end{aligned}")
TRAINS = ("A and B, r(m+n) parameters per m×n layer, with W0 frozen; the optimizer replaces their gradients by "
          "the closed form (adjust) whose equivalent gradient is the projection of g onto the tangent space "
          "{BY + ZA}.")
COST = ("With moments=full (the paper's Algorithm 2) AdamW keeps two m×n moment tensors per adapted layer, "
        "FT-like memory for those layers, and each step adds an m×n equivalent gradient plus r×r "
        "eigendecompositions of BᵀB and AAᵀ and a Sylvester solve per layer; moments=factor keeps LoRA-size "
        "moments and is cheaper.")
CAVEATS = ("At init B = 0, so BᵀB is singular: a damped inverse gives g_A = 0 and the first steps reduce to "
           "LoRA-FA v2's B update, and early steps are numerically delicate, so the solves run in fp32. "
           "moments=factor is an approximation, not the paper's algorithm.")


register(Method(
    id="lora-pro", summary="LoRA whose optimizer steps the factors along full fine-tuning's AdamW "
                           "update, projected onto what rank r can represent",
    params=_lora.LORA_PARAMS + (MOMENTS,), build=build, save=_lora.save_adapter, restore=_lora.restore_adapter,
    paper="Wang, Liang et al. 2024 (ICLR 2025), arXiv:2407.18242", rule=RULE, trains=TRAINS, cost=COST,
    caveats=CAVEATS))
