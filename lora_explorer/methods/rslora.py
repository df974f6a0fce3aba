"""rsLoRA (Kalajdzievski 2023): LoRA scaled by alpha/sqrt(r) instead of alpha/r, so higher ranks
keep learning (no gradient collapse). At a fixed alpha the scale is sqrt(r) times LoRA's."""
from lora_explorer.methods import _lora
from lora_explorer.methods.base import register

register(_lora.peft_lora_method("rslora", "LoRA with rank-stable scaling alpha/sqrt(r)",
                                "Kalajdzievski 2023, arXiv:2312.03732", use_rslora=True))
