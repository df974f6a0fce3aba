"""DoRA (Liu et al. 2024): W = m · (W0 + sBA) / ‖W0 + sBA‖_row; the magnitude m, A and B train.
The row norm is detached as in the paper; the effective update is full rank in general."""
from lora_explorer.methods import _lora
from lora_explorer.methods.base import register

register(_lora.peft_lora_method("dora", "weight-decomposed LoRA: trained magnitude x LoRA-updated direction",
                                "Liu et al. 2024, arXiv:2402.09353", use_dora=True))
