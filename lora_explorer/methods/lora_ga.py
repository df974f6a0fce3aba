"""LoRA-GA (Wang, Yu, Li 2024): initialise the adapter from the gradient so that LoRA's first step
is the best low-rank approximation of full fine-tuning's first step.

1. G = mean over `estimation_batches` batches of dL/dW0, for every targeted layer (frozen model,
   no optimizer step; the batches come from a generator seeded by the run seed, so they are the
   same for every method and do not move the training order).
2. G = U S V^T; A0 = c V[:, :r]^T, B0 = c U[:, r:2r] with c = d_out^(1/4) / sqrt(gamma) ("stable"
   scale, rsLoRA scaling s = alpha / sqrt(r)).
3. W0 <- W0 - s B0 A0, so the model's output at init is unchanged.

The first SGD step then changes s B A by -eta s^2 c^2 (B0 B0^T G + G A0^T A0), which is the best
rank-2r approximation of -G. `ga_init="peft"` uses PEFT's own `init_lora_weights="lora_ga"`
instead: PEFT multiplies B0 by S[r:2r] and puts c on B only, so B0 is almost zero and the first
step reaches only the rank-r bound (see the reference, section 12).

The base weights of the adapted layers change, so a run saves them (adapted_base.safetensors,
keyed by module name) next to the adapter, and restore writes them back before loading it.
"""
from __future__ import annotations

import contextlib
import math
import warnings

import torch

from lora_explorer.errors import ConfigError
from lora_explorer.methods import _lora
from lora_explorer.methods.base import BuildContext, Method, Param, Setup, register

SEED_OFFSET = 0x6A  # the estimation batches use their own generator: seed + this, never the training one

PARAMS = _lora.LORA_PARAMS + (
    Param("estimation_batches", int, 8, "batches (of the run's batch size) averaged to estimate the gradient",
          1, 10_000),
    Param("gamma", float, 16.0, "stable-scale gamma: A0 and B0 are scaled by d_out^(1/4)/sqrt(gamma)",
          1e-6, 1e6, log=True),
    Param("ga_init", str, "paper", "paper: A0, B0 as in the paper (first step = best rank-2r); "
          "peft: PEFT's init_lora_weights='lora_ga' (B0 carries S, first step = best rank-r)",
          choices=("paper", "peft")),
)


# ---------------------------------------------------------------- the estimation batches
def estimation_indices(num_examples: int, batch_size: int, num_batches: int, seed: int) -> list[torch.Tensor]:
    """The example indices of each estimation batch: consecutive random permutations of the training
    split from a generator of their own, so they depend only on the seed."""
    generator = torch.Generator().manual_seed(seed + SEED_OFFSET)
    pending, batches = torch.empty(0, dtype=torch.long), []
    for _ in range(num_batches):
        while len(pending) < batch_size:
            pending = torch.cat([pending, torch.randperm(num_examples, generator=generator)])
        batches.append(pending[:batch_size])
        pending = pending[batch_size:]
    return batches


def _autocast(device):
    from lora_explorer.train import autocast  # lazy: train imports the methods package

    return autocast(torch.device(device))


def _run_batches(ctx: BuildContext, model, on_loss) -> None:
    """Forward over each estimation batch and hand the loss to `on_loss` (which runs the backward)."""
    indices = estimation_indices(len(ctx.task), ctx.batch_size, ctx.params["estimation_batches"], ctx.seed)
    for i, batch_indices in enumerate(indices, 1):
        ctx.status(f"estimating the gradient {i}/{len(indices)}")
        batch = ctx.task.batch(ctx.task.train, batch_indices, ctx.device)
        with _autocast(ctx.device):
            loss, _ = ctx.task.loss(model, batch)
        on_loss(loss)


@contextlib.contextmanager
def _grad_only_on(model: torch.nn.Module, weights: list[torch.Tensor]):
    """Train mode, and gradients for `weights` only (cheaper than a full backward); restored after."""
    was_training, flags = model.training, {id(p): (p, p.requires_grad) for p in model.parameters()}
    try:
        for p, _ in flags.values():
            p.requires_grad_(False)
        for w in weights:
            w.requires_grad_(True)
        model.train()
        with torch.enable_grad():
            yield
    finally:
        for p, flag in flags.values():
            p.requires_grad_(flag)
        model.train(was_training)


def estimate_gradients(ctx: BuildContext, names: list[str]) -> dict[str, torch.Tensor]:
    """G = mean over the estimation batches of dL/dW for each named Linear of the base model (fp32)."""
    model = ctx.bundle.model
    weights = [model.get_submodule(name).weight for name in names]
    sums = [torch.zeros(w.shape, dtype=torch.float32, device=w.device) for w in weights]
    count = 0

    def accumulate(loss):
        nonlocal count
        for total, grad in zip(sums, torch.autograd.grad(loss, weights)):
            total += grad.float()
        count += 1

    with _grad_only_on(model, weights):
        _run_batches(ctx, model, accumulate)
    return {name: total / count for name, total in zip(names, sums)}


def top_singular(grad: torch.Tensor, k: int, q: int):
    """The top-k singular triplets (U[:, :k], S[:k], V[:, :k]) of an fp32 matrix: torch.svd_lowrank with
    q = 4r oversampling as in the paper's code (on MiniLM it gives the same cos to 4 digits, ~6x faster than
    the exact SVD), or the exact SVD when q is not much smaller than the matrix."""
    if 2 * q >= min(grad.shape):
        u, s, vh = torch.linalg.svd(grad, full_matrices=False)
        return u[:, :k], s[:k], vh[:k].T
    u, s, v = torch.svd_lowrank(grad, q=q, niter=4)
    return u[:, :k], s[:k], v[:, :k]


# ---------------------------------------------------------------- build, save, restore
@contextlib.contextmanager
def _seeded(ctx: BuildContext):
    """Dropout during estimation and svd_lowrank draw from the global RNG: seed them from the run seed
    and leave the global state as it was."""
    device = torch.device(ctx.device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(ctx.seed)
        yield


@torch.no_grad()
def _paper_init(model, grads: dict[str, torch.Tensor], rank: int, gamma: float) -> None:
    for name, layer in _lora.adapted_layers(model).items():
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        base = layer.get_base_layer().weight
        u, _, v = top_singular(grads[name], 2 * rank, q=min(4 * rank, min(base.shape)))
        c = base.shape[0] ** 0.25 / math.sqrt(gamma)
        a.copy_(c * v[:, :rank].T)
        b.copy_(c * u[:, rank:2 * rank])
        offset = layer.scaling["default"] * (b.float() @ a.float())
        base.copy_((base.float() - offset).to(base.dtype))


def build(ctx: BuildContext) -> Setup:
    from peft import LoraGAConfig, get_peft_model, preprocess_loraga

    if ctx.task is None:
        raise ConfigError("lora-ga needs the task's training data to estimate the gradient")
    p = ctx.params
    with _seeded(ctx):
        if p["ga_init"] == "paper":
            names = _lora.adapter_targets(ctx)["target_modules"]
            grads = estimate_gradients(ctx, names)
            ctx.status("LoRA-GA: SVD of the gradient and initialisation")
            model = get_peft_model(ctx.bundle.model, _lora.lora_config(ctx, use_rslora=True))
            _paper_init(model, grads, p["rank"], p["gamma"])
        else:
            config = _lora.lora_config(ctx, use_rslora=True, init_lora_weights="lora_ga",
                                       lora_ga_config=LoraGAConfig(direction="ArB2r", scale="stable",
                                                                   stable_gamma=p["gamma"]))
            with warnings.catch_warnings():  # its backward-count hook warns when a layer's input needs no grad
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                preprocess_loraga(ctx.bundle.model, config,
                                  lambda: _run_batches(ctx, ctx.bundle.model, lambda loss: loss.backward()))
            ctx.status("LoRA-GA: SVD of the gradient and initialisation")
            model = get_peft_model(ctx.bundle.model, config)  # also subtracts s B0 A0 from W0
    # ΔW relative to the original W0 = s·B_t·A_t − s·B_0·A_0: rank ≤ 2r
    initial = {name: (-layer.scaling["default"] * layer.lora_B["default"].weight.detach().clone(),
                      layer.lora_A["default"].weight.detach().clone())
               for name, layer in _lora.adapted_layers(model).items()}
    return Setup(model, _lora.adamw(model, ctx), updates=lambda: _lora.factored_updates(model, lambda n, _: initial[n]),
                 equivalent_gradients=lambda _step: _lora.equivalent_gradients(model))


def validate(params: dict, steps: int, shapes: dict) -> dict:
    name, shape = min(shapes.items(), key=lambda item: min(item[1]))
    if 2 * params["rank"] > min(shape):
        raise ConfigError(f"--rank {params['rank']} is too large for lora-ga: B0 takes singular vectors r..2r, so "
                          f"2r must fit layer {name} ({shape[0]}x{shape[1]}); the largest rank here is {min(shape) // 2}")
    return params


RULE = (r"\begin{aligned} G &= \mathrm{mean}\,\frac{\partial L}{\partial W_0} = U S V^\top, \quad "
        r"A_0 = c\,V_{:,1:r}^\top,\; B_0 = c\,U_{:,r+1:2r},\; c = \frac{m^{1/4}}{\sqrt{\gamma}} \\ "
        r"W_0 &\leftarrow W_0 - s\,B_0 A_0, \quad s = \frac{\alpha}{\sqrt{r}} \end{aligned}")
TRAINS = "A and B, r(m+n) parameters per m×n layer, as in LoRA; W0 is frozen after its one-time offset by −s B0 A0."
COST = ("Before training: estimation_batches forward and backward passes on the frozen model, one fp32 m×n "
        "gradient per target layer and a truncated SVD of each. Afterwards each step costs the same as LoRA; a run "
        "also saves the offset base weights of the adapted layers.")
CAVEATS = ("PEFT's own LoRA-GA init differs from the paper: it puts the gradient's singular values in B0 and the "
           "stable factor on B only, so B0 is nearly zero and the first step reaches only the best rank-r (not "
           "rank-2r) approximation of full FT's; ga_init chooses between the paper's init (default) and PEFT's. "
           "Per the authors the best lr is near full FT's rather than LoRA's larger one; a large lr with a small "
           "batch oscillates.")


register(Method(
    id="lora-ga", summary="LoRA initialised from the gradient's SVD so its first step matches full FT's best "
                          "rank-2r approximation (rsLoRA scaling; base weights offset)",
    params=PARAMS, build=build, save=_lora.save_adapter_and_base, restore=_lora.restore_adapter_and_base,
    validate=validate,
    paper="Wang, Yu, Li 2024, arXiv:2407.05000", rule=RULE, trains=TRAINS, cost=COST, caveats=CAVEATS))
