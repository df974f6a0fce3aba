"""Full fine-tuning: every weight trains with AdamW. The reference the other methods approximate."""
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from lora_explorer.methods.base import Method, Setup, register
from lora_explorer.models import matching_linears


def build(ctx):
    model = ctx.bundle.model
    model.requires_grad_(True)
    layers = {name: model.get_submodule(name) for name in matching_linears(ctx.bundle, "auto")}

    def equivalent_gradients(_step):  # full FT follows its own gradient: g~ = g, the reference
        return {name: layer.weight.grad.float() for name, layer in layers.items() if layer.weight.grad is not None}

    return Setup(model, torch.optim.AdamW(model.parameters(), lr=ctx.lr, weight_decay=ctx.weight_decay),
                 equivalent_gradients=equivalent_gradients)


def save(model, run_dir):
    save_model(model, str(Path(run_dir) / "weights.safetensors"))  # handles tied weights; no pickle


def restore(base, run_dir, _params):
    load_model(base, str(Path(run_dir) / "weights.safetensors"))
    return base


RULE = r"W_{t+1} = \mathrm{AdamW}(W_t,\, g_t), \quad g_t = \frac{\partial L}{\partial W_t}"
TRAINS = "Every weight of the model trains, all m·n entries of each m×n layer; nothing is frozen."
COST = ("The most memory of all: the gradient and AdamW's two moments of every weight take about 3× the weight "
        "memory (fp32), against state for only r(m+n) parameters per layer with LoRA. Per step it need not be "
        "slower: on small models LoRA's small adapter kernels can dominate, so wall-clock times on the toy "
        "models here are not method costs.")
CAVEATS = ("The reference the other methods approximate: its ΔW = W_t − W_0 can have any rank, and its own "
           "gradient is the g every other method's equivalent gradient is compared with. Its default learning "
           "rate is 10× lower than the adapter methods' (lr_factor 0.1).")


register(Method(
    id="full", summary="full fine-tuning: all weights train (the reference)",
    params=(), build=build, save=save, restore=restore, lr_factor=0.1,
    rule=RULE, trains=TRAINS, cost=COST, caveats=CAVEATS))
