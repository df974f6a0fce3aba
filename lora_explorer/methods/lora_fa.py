"""LoRA-FA (Zhang et al. 2023): A stays frozen at its random init and only B trains. PEFT's
optimizer adds the v2 closed-form correction g_B <- g_B (A A^T)^-1 / s^2, so the update s·ΔB·A is
the projection of the full gradient onto A's row space. Avoid combining with DoRA (pitfall)."""
import torch

from lora_explorer.methods import _lora
from lora_explorer.methods.base import Method, Setup, register

PEFT_DELTA = 1e-8  # the damping PEFT's LoRA-FA optimizer adds to A Aᵀ before inverting it


def build(ctx):
    from peft.optimizers import create_lorafa_optimizer

    model = _lora.peft_model(ctx)
    optimizer = create_lorafa_optimizer(model, r=ctx.params["rank"], lora_alpha=ctx.params["alpha"], lr=ctx.lr,
                                        weight_decay=ctx.weight_decay)  # also sets lora_A.requires_grad = False
    return Setup(model, optimizer, updates=lambda: _lora.factored_updates(model),
                 equivalent_gradients=lambda _step: equivalent_gradients(model))


def equivalent_gradients(model) -> dict:
    """g~ = s·g_B'·A with PEFT's corrected g_B' = g_B (A Aᵀ + δI)⁻¹ / s²: = g·A⁺A, the projection of
    the full gradient onto A's row space (A is frozen, so B's step is the only change)."""
    grads = {}
    for name, layer in _lora.adapted_layers(model).items():
        A, B = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight
        if B.grad is None:
            continue
        s = layer.scaling["default"]
        gram = A @ A.T + PEFT_DELTA * torch.eye(len(A), device=A.device, dtype=A.dtype)
        corrected = torch.linalg.solve(gram, B.grad.T).T / (s * s)  # g_B (A Aᵀ + δI)⁻¹ / s²
        grads[name] = (s * corrected @ A).float()
    return grads


RULE = (r"\begin{aligned} y &= W_0 x + s\,BA_0 x, \quad A_0\;\mathrm{frozen\ random} \\ "
        r"g_B &\leftarrow \frac{1}{s^2}\, g_B\,(A_0 A_0^\top)^{-1} \;\Rightarrow\; "
        r"\tilde{g} = g\,A_0^\top (A_0 A_0^\top)^{-1} A_0 \end{aligned}")
TRAINS = "Only B: m·r parameters per m×n layer; A stays frozen at its random init and W0 is frozen."
COST = ("Less than LoRA: A has no gradient or optimizer state, and the paper saves activation memory because "
        "only the r-dim A x, not x, is needed for B's gradient. PEFT's optimizer adds an r×r solve with A Aᵀ per "
        "layer each step.")
CAVEATS = ("ΔW's row space is fixed forever to A's random row space: each step is g projected onto it (the best "
           "rank-r step with A fixed, i.e. LoRA-Pro with A frozen), which shows in the spectra and alignment plots.")


register(Method(
    id="lora-fa", summary="LoRA with A frozen; only B trains, with the closed-form gradient correction",
    params=_lora.LORA_PARAMS, build=build, save=_lora.save_adapter, restore=_lora.restore_adapter,
    paper="Zhang et al. 2023, arXiv:2308.03303", rule=RULE, trains=TRAINS, cost=COST, caveats=CAVEATS))
