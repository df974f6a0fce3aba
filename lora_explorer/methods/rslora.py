"""rsLoRA (Kalajdzievski 2023): LoRA scaled by alpha/sqrt(r) instead of alpha/r, so higher ranks
keep learning (no gradient collapse). At a fixed alpha the scale is sqrt(r) times LoRA's."""
from lora_explorer.methods import _lora
from lora_explorer.methods.base import Method, Setup, register


def build(ctx):
    model = _lora.peft_model(ctx, use_rslora=True)
    return Setup(model, _lora.adamw(model, ctx))


register(Method(
    id="rslora", summary="LoRA with rank-stable scaling alpha/sqrt(r)",
    params=_lora.LORA_PARAMS, build=build, save=_lora.save_adapter, restore=_lora.restore_adapter,
    paper="Kalajdzievski 2023, arXiv:2312.03732"))
