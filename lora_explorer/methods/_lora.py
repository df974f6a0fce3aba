"""Shared by every method built on a PEFT LoRA model: the parameters, the config, save and restore.

peft is imported inside the functions: it pulls in all of transformers, and listing methods or
rejecting bad input should not wait for that.
"""
from __future__ import annotations

from pathlib import Path

import torch

from lora_explorer.methods.base import BuildContext, Method, Param, Setup

RANK = Param("rank", int, 8, "adapter rank r", 1, 4096)
ALPHA = Param("alpha", float, 16.0, "LoRA alpha; the update is scaled by alpha/r", 1e-3, 1e6)
DROPOUT = Param("dropout", float, 0.0, "dropout on the adapter input", 0.0, 0.9)
TARGETS = Param("target_modules", str, "auto",
                "layers to adapt: auto (the model's default), all-linear, or comma-separated names")
LORA_PARAMS = (RANK, ALPHA, DROPOUT, TARGETS)


def lora_config(ctx: BuildContext, **variant):
    from peft import LoraConfig

    p = ctx.params
    return LoraConfig(r=p["rank"], lora_alpha=p["alpha"], lora_dropout=p.get("dropout", 0.0),
                      **adapter_targets(ctx), **variant)


def peft_model(ctx: BuildContext, **variant):
    from peft import get_peft_model

    return get_peft_model(ctx.bundle.model, lora_config(ctx, **variant))


def adamw(model: torch.nn.Module, ctx: BuildContext) -> torch.optim.AdamW:
    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(trainable, lr=ctx.lr, weight_decay=ctx.weight_decay)


def save_adapter(model, run_dir: Path) -> None:
    model.save_pretrained(str(Path(run_dir) / "adapter"))  # safetensors; loads with PeftModel.from_pretrained


def restore_adapter(base: torch.nn.Module, run_dir: Path, _params: dict):
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(Path(run_dir) / "adapter"))


BASE_FILE = "adapted_base.safetensors"


def adapted_layers(model, layer_type=None) -> dict:
    """module name (as in the base model) -> the PEFT layer wrapping it (LoraLayer unless given)."""
    from peft.tuners.lora import LoraLayer

    from lora_explorer.analysis import base_name

    layer_type = layer_type or LoraLayer
    return {base_name(name): module for name, module in model.named_modules() if isinstance(module, layer_type)}


def adapter_targets(ctx: BuildContext) -> dict:
    """The target_modules and modules_to_save every PEFT config of ours gets: the exact layers the
    run validated, and the new head trained in full."""
    from lora_explorer.models import matching_linears

    return {"target_modules": sorted(matching_linears(ctx.bundle, ctx.params["target_modules"])),
            "modules_to_save": ctx.bundle.head_modules or None}


def save_adapter_and_base(model, run_dir: Path) -> None:
    """For methods that change the frozen base weights of adapted layers (LoRA-GA's offset,
    Delta-LoRA's merged updates): the adapter plus those base weights, as safetensors."""
    from safetensors.torch import save_file

    save_adapter(model, run_dir)
    weights = {f"{name}.weight": layer.get_base_layer().weight.detach().contiguous().cpu()
               for name, layer in adapted_layers(model).items()}
    save_file(weights, str(Path(run_dir) / BASE_FILE))


def restore_adapter_and_base(base: torch.nn.Module, run_dir: Path, params: dict):
    from safetensors.torch import load_file

    with torch.no_grad():
        for key, weight in load_file(str(Path(run_dir) / BASE_FILE)).items():
            base.get_parameter(key).copy_(weight)
    return restore_adapter(base, run_dir, params)


def factored_updates(model, extra=None) -> dict:
    """ΔW = s·B·A per adapted layer; `extra(name, layer)` may return (left, right) factors to append
    (LoRA-GA's initial offset, Delta-LoRA's moved base)."""
    from lora_explorer.analysis import Update

    updates = {}
    for name, layer in adapted_layers(model).items():
        left, right = layer.scaling["default"] * layer.lora_B["default"].weight, layer.lora_A["default"].weight
        more = extra(name, layer) if extra else None
        if more is not None:
            left, right = torch.cat([left, more[0]], 1), torch.cat([right, more[1]], 0)
        updates[name] = Update(left=left.detach(), right=right.detach())
    return updates


def _grad(param: torch.Tensor) -> torch.Tensor:
    return param.grad if param.grad is not None else torch.zeros_like(param)


def equivalent_grad(A, B, gA, gB, s: float, ratio: float = 1.0) -> torch.Tensor:
    """g~ = s·(B·g_A + ratio·g_B·A): what one SGD step on (A, B), with B's lr `ratio` times A's
    (LoRA+), does to s·B·A, to first order (m x n)."""
    return s * (B @ gA + ratio * gB @ A)


def equivalent_gradients(model, ratio: float = 1.0, factor: float = 1.0) -> dict:
    """factor × equivalent_grad per adapted layer. The grads are the Parameters' .grad, so layers
    sharing A and B (LoRA-drop) see the sum over the layers that share them."""
    grads = {}
    for name, layer in adapted_layers(model).items():
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        s = layer.scaling["default"]
        grads[name] = equivalent_grad(A.detach(), B.detach(), _grad(A), _grad(B), factor * s, ratio).float()
    return grads


def peft_lora_method(id: str, summary: str, paper: str, *, rule: str = "", trains: str = "", cost: str = "",
                     caveats: str = "", **variant) -> Method:
    """A method that is a PEFT LoRA config variant (use_rslora, use_dora, ...) trained with AdamW.
    rule, trains, cost and caveats are the Learn page's text (see Method); `variant` goes to LoraConfig."""

    def build(ctx: BuildContext) -> Setup:
        model = peft_model(ctx, **variant)
        # DoRA's effective update is a row rescaling of W0 + sBA: full rank, measured densely, and
        # with no closed form for g~ either (the analysis takes a finite difference)
        if variant.get("use_dora"):
            return Setup(model, adamw(model, ctx))
        return Setup(model, adamw(model, ctx), updates=lambda: factored_updates(model),
                     equivalent_gradients=lambda _step: equivalent_gradients(model))

    return Method(id=id, summary=summary, params=LORA_PARAMS, build=build, save=save_adapter,
                  restore=restore_adapter, paper=paper, rule=rule, trains=trains, cost=cost, caveats=caveats)
