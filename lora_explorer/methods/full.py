"""Full fine-tuning: every weight trains with AdamW. The reference the other methods approximate."""
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from lora_explorer.methods.base import Method, Setup, register


def build(ctx):
    model = ctx.bundle.model
    model.requires_grad_(True)
    return Setup(model, torch.optim.AdamW(model.parameters(), lr=ctx.lr, weight_decay=ctx.weight_decay))


def save(model, run_dir):
    save_model(model, str(Path(run_dir) / "weights.safetensors"))  # handles tied weights; no pickle


def restore(base, run_dir, _params):
    load_model(base, str(Path(run_dir) / "weights.safetensors"))
    return base


register(Method(
    id="full", summary="full fine-tuning: all weights train (the reference)",
    params=(), build=build, save=save, restore=restore, lr_factor=0.1))
