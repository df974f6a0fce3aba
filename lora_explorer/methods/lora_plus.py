"""LoRA+ (Hayou et al. 2024): LoRA with B's learning rate `ratio` times A's.

peft's create_loraplus_optimizer puts every 1-D parameter (biases, norms) in B's group too, and
ignores a plain `weight_decay=` (pitfall): the decay goes through `loraplus_weight_decay`.
"""
import torch

from lora_explorer.methods import _lora
from lora_explorer.methods.base import Method, Param, Setup, register

RATIO = Param("ratio", float, 16.0, "lr_B / lr_A (the paper suggests about 16)", 1.0, 1024.0)


def build(ctx):
    from peft.optimizers import create_loraplus_optimizer

    model = _lora.peft_model(ctx)
    optimizer = create_loraplus_optimizer(model, torch.optim.AdamW, lr=ctx.lr,
                                          loraplus_lr_ratio=ctx.params["ratio"],
                                          loraplus_weight_decay=ctx.weight_decay)
    return Setup(model, optimizer, updates=lambda: _lora.factored_updates(model),
                 equivalent_gradients=lambda _step: _lora.equivalent_gradients(model, ratio=ctx.params["ratio"]))


RULE = r"y = W_0 x + s\,BAx, \quad \eta_B = \lambda\,\eta_A \quad (\lambda = \mathrm{ratio} \approx 16)"
TRAINS = ("A and B as in LoRA, r(m+n) parameters per m×n layer, with B on a learning rate `ratio` times A's; "
          "W0 is frozen.")
COST = "Same compute and memory as LoRA: only the optimizer's parameter groups (their learning rates) differ."
CAVEATS = ("PEFT's create_loraplus_optimizer silently ignores a plain weight_decay= and puts every 1-D parameter "
           "(biases, norms) in B's fast group; the app passes the decay as loraplus_weight_decay. With a large "
           "ratio, lower the base lr a little, as the paper advises.")


register(Method(
    id="lora-plus", summary="LoRA with a larger learning rate for B (lr_B = ratio x lr_A)",
    params=_lora.LORA_PARAMS + (RATIO,), build=build, save=_lora.save_adapter, restore=_lora.restore_adapter,
    paper="Hayou, Ghosh, Yu 2024, arXiv:2402.12354", rule=RULE, trains=TRAINS, cost=COST, caveats=CAVEATS))
