"""LoRA-drop (Zhou et al. 2024): keep a LoRA only where its output matters.

Stage 1 trains a LoRA on a sample of the data for a few steps and measures each adapted layer's
importance Σ‖ΔW_i x‖² over the sample. Layers are kept in decreasing importance until their
cumulative share reaches `threshold`; stage 2 gives each kept layer its own LoRA, and the other
layers of the same shape share one (the very same Parameter objects, so the optimizer sees them
once). lora_drop.json records the importances and the kept/shared split.
"""
import json
from pathlib import Path

import torch

from lora_explorer.errors import ConfigError
from lora_explorer.methods import _lora
from lora_explorer.methods.base import Method, Param, Setup, register

SPLIT_FILE = "lora_drop.json"
PARAMS = _lora.LORA_PARAMS + (
    Param("threshold", float, 0.9, "T: keep the most important layers until their share of importance ≥ T",
          1e-6, 1.0),
    Param("sample_fraction", float, 0.1, "share of the training data used by stage 1", 1e-3, 1.0),
    Param("stage1_steps", int, None, "steps of the stage-1 LoRA run (default: 10% of the run, at least 5)", 1, 10**6),
)


def validate(params, steps, _shapes):
    if not 0 < params["threshold"] <= 1:
        raise ConfigError(f"--threshold must be in (0, 1], got {params['threshold']:g}")
    if params["stage1_steps"] is None:
        params["stage1_steps"] = max(5, steps // 10)
    return params


def importances(ctx) -> dict:
    """Stage 1: a short LoRA run on a sample, then Σ‖s·B·A·x‖² per layer. The stage-1 adapter is
    unloaded afterwards, leaving the base model exactly as it was (no copy of the model needed)."""
    model = _lora.peft_model(ctx)
    optimizer = _lora.adamw(model, ctx)
    generator = torch.Generator().manual_seed(ctx.seed + 1)
    size = max(1, round(ctx.params["sample_fraction"] * len(ctx.task)))
    sample = torch.randperm(len(ctx.task), generator=generator)[:size]
    for step in range(ctx.params["stage1_steps"]):
        ctx.status(f"LoRA-drop stage 1: {step + 1}/{ctx.params['stage1_steps']}")
        chosen = sample[torch.randint(len(sample), (ctx.batch_size,), generator=generator)]
        loss, _ = ctx.task.loss(model, ctx.task.batch(ctx.task.train, chosen, ctx.device))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    totals, handles = {}, []
    for name, layer in _lora.adapted_layers(model).items():
        def accumulate(_module, _inputs, output, name=name, scale=layer.scaling["default"]):
            totals[name] = totals.get(name, 0.0) + float((scale * output.float()).pow(2).sum())
        handles.append(layer.lora_B["default"].register_forward_hook(accumulate))
    model.eval()
    with torch.no_grad():
        for start in range(0, len(sample), ctx.batch_size):
            ctx.task.loss(model, ctx.task.batch(ctx.task.train, sample[start:start + ctx.batch_size], ctx.device))
    for handle in handles:
        handle.remove()
    ctx.bundle.model = model.unload()  # the original modules back, untouched by stage 1
    ctx.bundle.model.train()
    return totals


def split(importance: dict, shapes: dict, threshold: float) -> dict:
    """Kept layers, and the groups (by shape) of layers that share one LoRA."""
    total = sum(importance.values()) or 1.0
    kept, share = [], 0.0
    for name in sorted(importance, key=importance.get, reverse=True):
        if share >= threshold:
            break
        kept.append(name)
        share += importance[name] / total
    groups = {}
    for name in importance:
        if name not in kept:
            groups.setdefault("x".join(map(str, shapes[name])), []).append(name)
    return {"importance": {n: v / total for n, v in importance.items()}, "kept": kept,
            "shared": [names for names in groups.values()]}


def tie(model, shared_groups) -> None:
    """Every layer of a group uses the first layer's A and B Parameters."""
    layers = _lora.adapted_layers(model)
    for names in shared_groups:
        first = layers[names[0]]
        for name in names[1:]:
            layers[name].lora_A["default"].weight = first.lora_A["default"].weight
            layers[name].lora_B["default"].weight = first.lora_B["default"].weight


def build(ctx):
    importance = importances(ctx)
    model = _lora.peft_model(ctx)
    shapes = {name: tuple(layer.get_base_layer().weight.shape) for name, layer in _lora.adapted_layers(model).items()}
    plan = split(importance, shapes, ctx.params["threshold"])
    tie(model, plan["shared"])
    if ctx.run_dir is not None:
        (Path(ctx.run_dir) / SPLIT_FILE).write_text(json.dumps(plan, indent=2))
    return Setup(model, _lora.adamw(model, ctx), updates=lambda: _lora.factored_updates(model),
                 equivalent_gradients=lambda _step: _lora.equivalent_gradients(model))


def restore(base, run_dir, params):
    model = _lora.restore_adapter(base, run_dir, params)
    tie(model, json.loads((Path(run_dir) / SPLIT_FILE).read_text())["shared"])
    return model


RULE = (r"\begin{aligned} I_i &= \frac{\sum_{x \in D_s} \|s\,B_i A_i x_i\|^2}"
        r"{\sum_j \sum_{x \in D_s} \|s\,B_j A_j x_j\|^2}, \quad \mathrm{keep\ the\ largest\ } I_i "
        r"\mathrm{\ until\ } \sum I_i \geq T \\ "
        r"W_i &= W_{0,i} + s\,B_{g(i)} A_{g(i)}, \quad \mathrm{dropped\ layers\ of\ a\ shape\ share\ one\ } "
        r"(B, A) \end{aligned}")
TRAINS = ("Stage 2 trains A and B, r(m+n) parameters per kept m×n layer plus r(m+n) per group of dropped layers of "
          "the same shape, which share one pair; W0 is frozen.")
COST = ("Before training, a short stage-1 LoRA run (stage1_steps on a sample_fraction of the data) and one forward "
        "pass over the sample to score the layers. Stage 2 costs about as much compute as LoRA, with fewer "
        "trainable parameters and a smaller optimizer state.")
CAVEATS = ("The paper leaves details open (importance per module or per transformer layer, warm start or not): "
           "this app scores each adapted module, shares per layer shape, and starts stage 2 from a fresh LoRA. "
           "Layers that share a LoRA have identical ΔW, so their spectra repeat.")


register(Method(
    id="lora-drop", summary="LoRA only on the layers that matter; the others of a shape share one LoRA",
    params=PARAMS, build=build, save=_lora.save_adapter, restore=restore, validate=validate,
    paper="Zhou et al. 2024, arXiv:2402.07721", rule=RULE, trains=TRAINS, cost=COST, caveats=CAVEATS))
