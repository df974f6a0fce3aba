"""Every fine-tuning method, registered by id. Importing this package registers them all."""
from lora_explorer.methods.base import REGISTRY, Method, Param, get_method
from lora_explorer.methods import full, lora, lora_plus, rslora, dora, lora_fa  # noqa: F401  (registers)

__all__ = ["REGISTRY", "Method", "Param", "get_method"]
