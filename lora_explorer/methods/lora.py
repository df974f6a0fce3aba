"""LoRA (Hu et al. 2021): W = W0 + (alpha/r)·B·A with A random and B = 0; only A and B train."""
from lora_explorer.methods import _lora
from lora_explorer.methods.base import register

register(_lora.peft_lora_method("lora", "low-rank update W0 + (alpha/r)·B·A; base frozen",
                                "Hu et al. 2021, arXiv:2106.09685"))
