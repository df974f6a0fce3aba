"""DoRA (Liu et al. 2024): W = m · (W0 + sBA) / ‖W0 + sBA‖_row; the magnitude m, A and B train.
The row norm is detached as in the paper; the effective update is full rank in general."""
from lora_explorer.methods import _lora
from lora_explorer.methods.base import Method, Setup, register


def build(ctx):
    model = _lora.peft_model(ctx, use_dora=True)
    return Setup(model, _lora.adamw(model, ctx))


register(Method(
    id="dora", summary="weight-decomposed LoRA: trained magnitude x LoRA-updated direction",
    params=_lora.LORA_PARAMS, build=build, save=_lora.save_adapter, restore=_lora.restore_adapter,
    paper="Liu et al. 2024, arXiv:2402.09353"))
