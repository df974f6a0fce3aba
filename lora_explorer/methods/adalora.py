"""AdaLoRA (Zhang et al. 2023): ΔW = P·diag(λ)·Q with an orthogonality penalty on P and Q; a cubic
budget schedule prunes the least important λ from `rank` per layer down to `final_rank` on average.

PEFT adds the penalty only to a loss computed inside the model, and our tasks compute the loss
outside it, so the same penalty is a regularizer hook here. update_and_allocate needs the gradients,
so it runs after the optimizer step and before zero_grad. The rank each layer keeps is written to
adalora_ranks.jsonl whenever PEFT masks to a new pattern: between masking steps (every ΔT) the
optimizer regrows pruned λ a little, which the saved rank pattern drops again on load.
"""
import json
from pathlib import Path

import torch

from lora_explorer.errors import ConfigError
from lora_explorer.methods import _lora
from lora_explorer.methods.base import Hooks, Method, Param, Setup, register

RANKS_FILE = "adalora_ranks.jsonl"
PARAMS = (
    Param("rank", int, 12, "initial rank of every layer (the starting budget)", 1, 4096),
    Param("final_rank", int, 8, "average rank per layer left when the schedule ends", 1, 4096),
    _lora.ALPHA, _lora.DROPOUT, _lora.TARGETS,
    Param("warmup_fraction", float, 0.1, "share of the steps before pruning starts (tinit)", 0.0, 0.9),
    Param("final_fraction", float, 0.2, "share of the steps at the final budget (tfinal)", 0.0, 0.9),
    Param("delta_t", int, 1, "prune every ΔT steps", 1, 10**6),
    Param("orth_reg_weight", float, 0.5, "weight of the orthogonality penalty on P and Q", 0.0, 100.0),
    Param("beta1", float, 0.85, "EMA of the sensitivity", 0.0, 0.9999),
    Param("beta2", float, 0.85, "EMA of the uncertainty", 0.0, 0.9999),
)


def _schedule(params, steps):
    return round(params["warmup_fraction"] * steps), round(params["final_fraction"] * steps)


def validate(params, steps, _shapes):
    if params["final_rank"] > params["rank"]:
        raise ConfigError(f"--final-rank {params['final_rank']} is larger than the initial --rank {params['rank']}")
    tinit, tfinal = _schedule(params, steps)
    # PEFT's first call after T - tfinal masks by scores it must already have: at least 2 steps before it
    if steps - tinit - tfinal < 1 or steps - tfinal < 2:
        raise ConfigError(f"--steps {steps} is too few for AdaLoRA's schedule ({tinit} warm-up and {tfinal} final "
                          "steps leave no room to prune); train longer or lower the fractions")
    return params


def active_ranks(model) -> dict:
    """Unmasked singular values per adapted layer."""
    return {name: int((layer.lora_E["default"] != 0).sum()) for name, layer in _lora.adapted_layers(model).items()}


def build(ctx):
    from peft import AdaLoraConfig, get_peft_model

    p = ctx.params
    tinit, tfinal = _schedule(p, ctx.steps)
    config = AdaLoraConfig(init_r=p["rank"], target_r=p["final_rank"], lora_alpha=p["alpha"],
                           lora_dropout=p["dropout"], tinit=tinit, tfinal=tfinal, deltaT=p["delta_t"],
                           beta1=p["beta1"], beta2=p["beta2"], orth_reg_weight=p["orth_reg_weight"],
                           total_step=ctx.steps, **_lora.adapter_targets(ctx))
    model = get_peft_model(ctx.bundle.model, config)
    # (is it Q?, parameter) for every factor: Q = lora_A (r x in), P = lora_B (out x r)
    factors = [("lora_A" in name, param) for name, param in model.named_parameters()
               if "lora_A" in name or "lora_B" in name]
    record = {"last": None, "pattern": None, "step": 0}

    def log_ranks(always: bool = False):
        ranks = active_ranks(model)  # exact right after a mask
        if (always or ranks != record["last"]) and ctx.run_dir is not None:
            with open(Path(ctx.run_dir) / RANKS_FILE, "a") as handle:
                handle.write(json.dumps({"step": record["step"], "ranks": ranks}) + "\n")
        record["last"] = ranks

    def orthogonality():
        # PEFT's penalty: mean over P and Q of ‖QQᵀ − I‖_F and ‖PᵀP − I‖_F (unsquared)
        total = 0.0
        for is_q, param in factors:
            gram = param @ param.T if is_q else param.T @ param
            total = total + torch.linalg.matrix_norm(gram - torch.eye(len(gram), device=gram.device))
        return p["orth_reg_weight"] * total / len(factors)

    def allocate(step):
        model.base_model.update_and_allocate(step)
        pattern = model.peft_config["default"].rank_pattern  # a new dict each time PEFT masks to a new budget
        record["step"] = step
        if step in (1, ctx.steps) or pattern is not record["pattern"]:  # the first and last step: the chart's ends
            record["pattern"] = pattern
            log_ranks(always=step == ctx.steps)

    def updates():
        """ΔW = P·diag(λ)·Q · alpha/init_r (PEFT's fixed ranknum), pruned λ being zero."""
        from lora_explorer.analysis import Update

        return {name: Update(left=(layer.lora_B["default"] * layer.scaling["default"]
                                   / (layer.ranknum["default"] + 1e-5)).detach(),
                             right=(layer.lora_A["default"] * layer.lora_E["default"]).detach())
                for name, layer in _lora.adapted_layers(model).items()}

    def mask_as_saved() -> bool:
        """A stopped run drops the regrown λ now, as its saved rank pattern will on load, so that its final
        evaluation and spectrum are of the model it saves."""
        rank_pattern = model.peft_config["default"].rank_pattern
        changed = False
        if rank_pattern:
            before = [layer.lora_E["default"].detach().clone() for layer in _lora.adapted_layers(model).values()]
            model.base_model.rankallocator.mask_using_rank_pattern(model.base_model.model, rank_pattern)
            after = [layer.lora_E["default"] for layer in _lora.adapted_layers(model).values()]
            changed = any(not torch.equal(old, new) for old, new in zip(before, after))
        log_ranks(always=True)  # the chart's end: the ranks the run saves
        return changed

    return Setup(model, _lora.adamw(model, ctx),
                 Hooks(regularizer=orthogonality, after_optimizer_step=allocate, on_stop=mask_as_saved),
                 updates=updates)


# P = lora_B (m x r), diag(lambda) = lora_E, Q = lora_A (r x n); r_0 is the initial rank (`rank`), K the
# number of adapted layers; the penalty is PEFT's: the mean over all 2K factors of the unsquared norms
RULE = (r"\begin{aligned} \Delta W &= \frac{\alpha}{r_0}\, P\,\mathrm{diag}(\lambda)\,Q, \quad "
        r"L' = L + \frac{\gamma}{2K} \sum_{k=1}^{K} \left(\|P_k^\top P_k - I\|_F + \|Q_k Q_k^\top - I\|_F\right) \\ "
        r"\lambda_i &\leftarrow 0 \;\mathrm{for\ the\ lowest}\; S_i = s(\lambda_i) + \mathrm{mean}_j\, s(P_{ji}) "
        r"+ \mathrm{mean}_j\, s(Q_{ij}), \quad s(w) = \bar{I}(w)\,\bar{U}(w),\; I(w) = \left|w\,\frac{\partial L}"
        r"{\partial w}\right| \end{aligned}")
TRAINS = ("P, Q and the singular values λ: r_0(m+n) + r_0 parameters per m×n layer at the initial rank "
          "r_0 = `rank` (pruned λ are masked to zero, their parameters stay); W0 is frozen.")
COST = ("A little more than LoRA at the same initial rank: each step adds the orthogonality penalty (r×r Gram "
        "matrices per layer) and updates the importance scores, moving averages of sensitivity and uncertainty "
        "kept for every entry of P, λ and Q. Training starts at `rank` per layer, above final_rank, so early "
        "steps train more parameters than a LoRA at the final rank would.")
CAVEATS = ("PEFT needs total_step, which the app sets to the run's steps: the pruning schedule (warm-up, cubic "
           "budget decay, final phase) is laid out over them, so changing --steps changes when ranks are cut. "
           "The scale stays α/r_0 as ranks are pruned, and PEFT adds the orthogonality penalty only to a "
           "loss computed inside the model, so the app adds it itself; the rank each layer keeps is logged to "
           "adalora_ranks.jsonl.")


register(Method(
    id="adalora", summary="SVD-form adapter that prunes its rank budget to the most important layers",
    params=PARAMS, build=build, save=_lora.save_adapter, restore=_lora.restore_adapter, validate=validate,
    paper="Zhang et al. 2023, arXiv:2303.10512", rule=RULE, trains=TRAINS, cost=COST, caveats=CAVEATS))
