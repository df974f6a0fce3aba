"""Every fine-tuning method, registered by id. Importing this package registers them all, in the
order the app and the CLI list them."""
from lora_explorer.methods.base import REGISTRY, Method, Param, get_method
from lora_explorer.methods import full, lora, lora_plus, rslora, dora, vera, lora_fa  # noqa: F401  (registers)
from lora_explorer.methods import lora_drop, adalora, delta_lora, lora_ga, lora_pro  # noqa: F401  (registers)

__all__ = ["REGISTRY", "Method", "Param", "get_method"]
