"""LoRA (Hu et al. 2021): W = W0 + (alpha/r)·B·A with A random and B = 0; only A and B train."""
from lora_explorer.methods import _lora
from lora_explorer.methods.base import Method, Setup, register


def build(ctx):
    model = _lora.peft_model(ctx)
    return Setup(model, _lora.adamw(model, ctx))


register(Method(
    id="lora", summary="low-rank update W0 + (alpha/r)·B·A; base frozen",
    params=_lora.LORA_PARAMS, build=build, save=_lora.save_adapter, restore=_lora.restore_adapter,
    paper="Hu et al. 2021, arXiv:2106.09685"))
