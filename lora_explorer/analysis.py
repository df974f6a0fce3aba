"""Weight-update spectra, for every method alike.

ΔW(t) = W_eff(t) − W0_original for each adapted layer, where W_eff is the weight the model really
uses. A method that knows its update in factored form (ΔW = L·R, k = a few r) hands it over and
its spectrum costs O((m+n)·k²): QR of both factors, then the SVD of a k×k core. Anything else
(full FT, DoRA) is measured densely, by passing the identity through the layer.
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


def dense_updates(model: torch.nn.Module, w0: dict[str, torch.Tensor]) -> dict[str, Update]:
    """ΔW of every layer in w0 by the identity probe: valid for any method."""
    found = {}
    for name, module in model.named_modules():
        key = base_name(name)
        if key in w0 and key not in found:  # the outermost module of that name: the adapter wrapper
            weight = effective_weight(module)
            found[key] = Update(dense=weight - w0[key].to(weight.device))
    return found


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


def spectrum_records(step: int, updates: dict[str, Update], w0_norms: dict[str, float],
                     targets: dict[str, torch.Tensor] | None = None) -> list[dict]:
    """One spectra.jsonl line per layer."""
    records = []
    for name in sorted(updates):
        sigma = singular_values(updates[name])
        record = {"step": step, "layer": name, "sigma": [float(s) for s in sigma[:TOP_SIGMA]],
                  **stats(sigma, w0_norms[name])}
        if targets and name in targets:
            target = targets[name]
            k = max(1, int((torch.linalg.svdvals(target.double()) > 1e-6).sum()))
            delta = updates[name].matrix().detach().cpu()
            record["target_overlap"] = subspace_overlap(delta, target, k) if delta.abs().sum() > 0 else 0.0
        records.append(record)
    return records
