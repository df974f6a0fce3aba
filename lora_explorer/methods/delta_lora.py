"""Delta-LoRA (Zi et al. 2023): LoRA, and after step K the frozen weight also moves by
W += λ·s·(B_{t+1}A_{t+1} − B_t A_t). No dropout on the adapter, so dL/dW = dL/d(sBA).
The updates telescope: the total change has rank ≤ 2r (a useful contrast in the spectra)."""
import torch

from lora_explorer.errors import ConfigError
from lora_explorer.methods import _lora
from lora_explorer.methods.base import Hooks, Method, Param, Setup, register

PARAMS = (_lora.RANK, _lora.ALPHA, _lora.TARGETS,
          Param("update_ratio", float, 2.0, "λ: how much of each change of s·B·A also goes into W", 0.0, 100.0),
          Param("start_step", int, None, "K: W starts moving after this step (default: 10% of the run; the paper's "
                "500 is longer than our runs)", 0, 10**6))


def validate(params, steps, _shapes):
    if params["start_step"] is None:
        params["start_step"] = steps // 10
    if params["start_step"] >= steps:
        raise ConfigError(f"--start-step {params['start_step']} must be less than --steps {steps}")
    return params


def build(ctx):
    model = _lora.peft_model(ctx)
    layers = list(_lora.adapted_layers(model).values())
    start, ratio, before, at_start = ctx.params["start_step"], ctx.params["update_ratio"], {}, {}

    def product(layer):
        return layer.lora_B["default"].weight @ layer.lora_A["default"].weight

    @torch.no_grad()
    def snapshot(step):
        if step > start:
            for layer in layers:
                before[layer] = product(layer)
                if layer not in at_start:  # B_K and A_K, for the factored ΔW below
                    at_start[layer] = (layer.lora_B["default"].weight.clone(), layer.lora_A["default"].weight.clone())

    @torch.no_grad()
    def move_base(step):
        if step > start:
            for layer in layers:
                delta = product(layer) - before.pop(layer)
                layer.get_base_layer().weight += ratio * layer.scaling["default"] * delta

    def base_change(_name, layer):
        """W_t − W_0 = λ·s·(B_t·A_t − B_K·A_K), as factors (the updates telescope)."""
        if layer not in at_start:
            return None
        s, (b_k, a_k) = ratio * layer.scaling["default"], at_start[layer]
        return (torch.cat([s * layer.lora_B["default"].weight, -s * b_k], 1),
                torch.cat([layer.lora_A["default"].weight, a_k], 0))

    def equivalent_gradients(step):  # after step K, W also moves by λ times the change of s·B·A
        return _lora.equivalent_gradients(model, factor=1 + ratio if step > start else 1.0)

    return Setup(model, _lora.adamw(model, ctx), Hooks(before_optimizer_step=snapshot, after_optimizer_step=move_base),
                 updates=lambda: _lora.factored_updates(model, base_change), equivalent_gradients=equivalent_gradients)


RULE = (r"\begin{aligned} y &= W_t x + s\,B_t A_t x \quad \mathrm{(no\ dropout)} \\ "
        r"W_{t+1} &= W_t + \lambda\, s\,(B_{t+1} A_{t+1} - B_t A_t) \quad \mathrm{for}\; t > K \end{aligned}")
TRAINS = ("A and B train with AdamW, r(m+n) parameters per m×n layer; W gets no gradient or optimizer state but "
          "moves by λ times each change of sBA after step K.")
COST = ("LoRA-like memory, since W needs no gradient or optimizer state; after step K each step adds two m×n "
        "products BA per layer (before and after the optimizer step) and an in-place update of W. A run also "
        "saves the moved base weights of the adapted layers.")
CAVEATS = ("Dropout is off (there is no dropout parameter), so ∂L/∂W equals ∂L/∂(sBA). The W updates telescope: "
           "the total ΔW = s B_t A_t + λ s (B_t A_t − B_K A_K) has rank at most 2r, so after step K it behaves much "
           "like LoRA with scale (1 + λ)s, not like a high-rank update. The paper's K = 500 is longer than these "
           "runs; the default is 10% of the steps.")


register(Method(
    id="delta-lora", summary="LoRA whose product updates also move the frozen weight (λ·Δ(sBA) after step K)",
    params=PARAMS, build=build, save=_lora.save_adapter_and_base, restore=_lora.restore_adapter_and_base,
    validate=validate, paper="Zi et al. 2023, arXiv:2309.02411", rule=RULE, trains=TRAINS, cost=COST,
    caveats=CAVEATS))
