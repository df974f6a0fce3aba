"""LoRA Explorer: train small models with 12 fine-tuning methods and see how they differ."""
from lora_explorer import plots
from lora_explorer.api import load_run, runs, sweep, train
from lora_explorer.config import RunConfig, resolve
from lora_explorer.errors import ConfigError
from lora_explorer.methods import REGISTRY as METHODS
from lora_explorer.store import Run, list_runs, open_run
from lora_explorer.train import evaluate_run, rebuild

__all__ = ["METHODS", "ConfigError", "Run", "RunConfig", "evaluate_run", "list_runs", "load_run", "open_run",
           "plots", "rebuild", "resolve", "runs", "sweep", "train"]
