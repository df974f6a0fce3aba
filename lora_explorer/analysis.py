"""Weight-update spectra and gradient alignment, for every method alike.

ΔW(t) = W_eff(t) − W0_original for each adapted layer, where W_eff is the weight the model really
uses. A method that knows its update in factored form (ΔW = L·R, k = a few r) hands it over and
its spectrum costs O((m+n)·k²): QR of both factors, then the SVD of a k×k core. Anything else
(full FT, DoRA) is measured densely, by passing the identity through the layer.

Alignment compares, at the run's own weights, full fine-tuning's gradient g = dL/dW_eff (from
hooks on the step's own forward and backward) with the method's equivalent gradient g~: what one
SGD step on its parameters does to W_eff, to first order (a closed form from the method, or a
finite difference through the identity probe).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

TOP_SIGMA = 64  # singular values stored per layer and step: enough to draw the spectrum


@dataclass
class Update:
    """One layer's ΔW: either factored (left @ right) or dense."""

    left: torch.Tensor | None = None  # m x k
    right: torch.Tensor | None = None  # k x n
    dense: torch.Tensor | None = None  # m x n

    def matrix(self) -> torch.Tensor:
        return self.dense if self.dense is not None else self.left @ self.right


def singular_values(update: Update, dtype=torch.float64) -> torch.Tensor:
    """All non-trivial singular values of ΔW, largest first (exact: no sampling, no truncation)."""
    if update.dense is not None:
        return torch.linalg.svdvals(update.dense.detach().to(dtype))
    left, right = update.left.detach().to(dtype), update.right.detach().to(dtype)
    q_left, r_left = torch.linalg.qr(left)  # left = Q_l R_l
    q_right, r_right = torch.linalg.qr(right.T)  # right = R_rᵀ Q_rᵀ
    return torch.linalg.svdvals(r_left @ r_right.T)  # ΔW = Q_l (R_l R_rᵀ) Q_rᵀ


def effective_weight(layer: torch.nn.Module) -> torch.Tensor:
    """The (out x in) weight a linear layer applies, whatever wraps it: the identity probe, in eval
    mode (no dropout), minus the bias."""
    base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
    d_in = base.in_features
    was_training = layer.training
    layer.eval()
    with torch.no_grad():
        eye = torch.eye(d_in, device=base.weight.device, dtype=base.weight.dtype)
        out = layer(eye) - layer(torch.zeros(1, d_in, device=eye.device, dtype=eye.dtype))
    layer.train(was_training)
    return out.T


def base_name(name: str) -> str:
    """A module's name in the base model, from its name inside a PEFT model."""
    return name.removeprefix("base_model.model.")


def outer_modules(model: torch.nn.Module, names) -> dict[str, torch.nn.Module]:
    """The outermost module of each base-model name: the adapter wrapper where there is one."""
    found = {}
    for name, module in model.named_modules():
        key = base_name(name)
        if key in names and key not in found:
            found[key] = module
    return found


def dense_updates(model: torch.nn.Module, w0: dict[str, torch.Tensor]) -> dict[str, Update]:
    """ΔW of every layer in w0 by the identity probe: valid for any method."""
    updates = {}
    for key, module in outer_modules(model, w0).items():
        weight = effective_weight(module)
        updates[key] = Update(dense=weight - w0[key].to(weight.device))
    return updates


def stats(sigma: torch.Tensor, w0_norm: float) -> dict:
    """Effective rank exp(H(σ/Σσ)), stable rank ‖ΔW‖²_F/σ₁², numerical rank (σ > 1e-6·σ₁), rank at
    90% energy, and ‖ΔW‖_F/‖W0‖_F."""
    sigma = sigma.double()
    total = float(sigma.sum())
    energy = sigma.pow(2)
    frob2 = float(energy.sum())
    if total <= 0 or frob2 <= 0:
        return {"effective_rank": 0.0, "stable_rank": 0.0, "numerical_rank": 0, "rank90": 0, "rel_norm": 0.0}
    p = sigma[sigma > 0] / total
    cumulative = torch.cumsum(energy, 0) / frob2
    return {
        "effective_rank": math.exp(float(-(p * p.log()).sum())),
        "stable_rank": frob2 / float(sigma[0]) ** 2,
        "numerical_rank": int((sigma > 1e-6 * sigma[0]).sum()),
        "rank90": int((cumulative < 0.9).sum()) + 1,
        "rel_norm": math.sqrt(frob2) / w0_norm if w0_norm > 0 else 0.0,
    }


def subspace_overlap(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    """φ = ‖U_aᵀ U_b‖²_F / k over the top-k left singular vectors of two matrices (Hu et al. 2021)."""
    k = min(k, min(a.shape), min(b.shape))
    u_a = torch.linalg.svd(a.double(), full_matrices=False)[0][:, :k]
    u_b = torch.linalg.svd(b.double(), full_matrices=False)[0][:, :k]
    return float((u_a.T @ u_b).pow(2).sum()) / k


def target_overlap(delta: torch.Tensor, target: torch.Tensor, delta_rank: int) -> float:
    """How much of ΔW's top directions lie in the true ΔW*'s top subspace: ‖U_Δᵀ U_*‖²_F / k_Δ, with
    U_* the k_* left singular vectors holding 90% of ΔW*'s energy and U_Δ ΔW's top k_Δ = min(k_*,
    rank ΔW) (singular vectors past a matrix's rank are arbitrary). Equal k gives Hu et al.'s φ."""
    k_target = stats(torch.linalg.svdvals(target.double()), 1.0)["rank90"]
    k_delta = min(k_target, delta_rank)
    if k_delta == 0:
        return 0.0
    u_delta = torch.linalg.svd(delta.double(), full_matrices=False)[0][:, :k_delta]
    u_target = torch.linalg.svd(target.double(), full_matrices=False)[0][:, :k_target]
    return float((u_delta.T @ u_target).pow(2).sum()) / k_delta


def magnitude_direction_change(w0: torch.Tensor, delta: torch.Tensor) -> dict:
    """The DoRA paper's learning pattern, per output row i of W = W0 + ΔW (the rows DoRA's magnitude
    scales): ΔM = mean_i |‖W_i‖ − ‖W0_i‖| and ΔD = mean_i (1 − cos(W_i, W0_i))."""
    w0 = w0.detach().double()
    weight = w0 + delta.detach().double().to(w0.device)
    norms, norms0 = weight.norm(dim=1), w0.norm(dim=1)
    cos = (weight * w0).sum(1) / (norms * norms0).clamp_min(1e-300)
    return {"delta_m": float((norms - norms0).abs().mean()), "delta_d": float((1 - cos).mean())}


def spectrum_records(step: int, updates: dict[str, Update], w0: dict[str, torch.Tensor],
                     targets: dict[str, torch.Tensor] | None = None) -> list[dict]:
    """One spectra.jsonl line per layer."""
    records = []
    for name in sorted(updates):
        sigma = singular_values(updates[name])
        record = {"step": step, "layer": name, "sigma": [float(s) for s in sigma[:TOP_SIGMA]],
                  **stats(sigma, float(w0[name].double().norm())),
                  **magnitude_direction_change(w0[name], updates[name].matrix())}
        if targets and name in targets:
            record["target_overlap"] = target_overlap(updates[name].matrix().detach().cpu(), targets[name],
                                                      record["numerical_rank"])
        records.append(record)
    return records


# ------------------------------------------------------------------ gradient alignment
class GradientRecorder:
    """Full fine-tuning's gradient g = dL/dW of each given layer at the current weights, collected
    during the step's own forward and backward (no extra pass): a forward hook keeps the layer's
    input x and hooks its output y, whose gradient gives g = Σ_tokens (dL/dy)ᵀ x. Use as a context
    manager around forward and backward; `grads` then holds g per layer (float32)."""

    def __init__(self, modules: dict[str, torch.nn.Module]):
        self.modules, self.grads, self._handles = modules, {}, []

    def __enter__(self) -> "GradientRecorder":
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._forward_hook(name)))
        return self

    def __exit__(self, *_exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _forward_hook(self, name):
        def hook(_module, inputs, output):
            if not (torch.is_tensor(output) and output.requires_grad):
                return
            x = inputs[0].detach()

            def on_grad(grad_y):
                g = grad_y.reshape(-1, grad_y.shape[-1]).float().T @ x.reshape(-1, x.shape[-1]).float()
                self.grads[name] = self.grads[name] + g if name in self.grads else g

            output.register_hook(on_grad)
        return hook


def finite_difference_gradient(layer: torch.nn.Module, rel_step: float = 1e-3) -> torch.Tensor | None:
    """g~ = J Jᵀ g for a layer without a closed form (DoRA, VeRA, AdaLoRA): perturb the layer's
    trainable parameters θ by ±h·θ.grad (θ.grad = Jᵀ g), read W_eff(±) with the identity probe and
    take the central difference (W_eff(+) − W_eff(−)) / 2h. Exact to first order; the parameters
    are restored bit for bit. None if the layer has no gradient this step."""
    params = [p for p in layer.parameters() if p.requires_grad and p.grad is not None]
    grad_norm = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params))
    if grad_norm == 0:
        return None
    param_norm = math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in params))
    h = rel_step * max(param_norm, 1.0) / grad_norm
    saved = [p.detach().clone() for p in params]
    weights = []
    with torch.no_grad():
        for sign in (1.0, -1.0):
            for p, p0 in zip(params, saved):
                p.copy_(p0 + sign * h * p.grad.to(p.dtype))
            weights.append(effective_weight(layer).double())
        for p, p0 in zip(params, saved):
            p.copy_(p0)
    return ((weights[0] - weights[1]) / (2 * h)).float()


def squared_singular_values(g: torch.Tensor) -> torch.Tensor:
    """σ_i(g)², largest first: the eigenvalues of the smaller Gram matrix in float64, as exact as
    svdvals for this purpose and about twice as fast (the bounds dominate the alignment's cost)."""
    g = g.double()
    gram = g.T @ g if g.shape[1] <= g.shape[0] else g @ g.T
    return torch.linalg.eigvalsh(gram).flip(0).clamp_min(0)


def attainable_cos(energy: torch.Tensor, k: int) -> float:
    """The largest cos(M, g) any rank-k matrix M reaches, from energy = σ_i(g)² (largest first):
    √(Σ_{i≤k} σ_i² / Σ_i σ_i²) (Eckart–Young: the best is g's own rank-k truncation)."""
    total = float(energy.sum())
    return min(1.0, math.sqrt(float(energy[:k].sum()) / total)) if total > 0 else 0.0


def alignment_record(step: int, layer: str, g: torch.Tensor, g_tilde: torch.Tensor | None,
                     rank: int | None) -> dict:
    """cos(g~, g), ‖g~ − g‖/‖g‖ and the rank-r / rank-2r bounds of one layer (cos None when
    either gradient is zero; bounds None for a method without a rank, full FT)."""
    g = g.detach().double()
    g_norm = float(g.norm())
    record = {"step": step, "layer": layer, "cos": None, "rel_err": None, "bound_r": None, "bound_2r": None,
              "grad_norm": g_norm}
    if g_norm == 0:
        return record
    if g_tilde is not None:
        g_tilde = g_tilde.detach().double().to(g.device)
        g_tilde_norm = float(g_tilde.norm())
        record["rel_err"] = float((g_tilde - g).norm()) / g_norm
        if g_tilde_norm > 0:
            record["cos"] = float((g_tilde * g).sum()) / (g_tilde_norm * g_norm)
    if rank:
        energy = squared_singular_values(g)
        record["bound_r"], record["bound_2r"] = attainable_cos(energy, rank), attainable_cos(energy, 2 * rank)
    return record
