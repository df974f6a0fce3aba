"""VeRA (Kopiczko et al. 2024): h = W0 x + diag(b)·B·diag(d)·A x with A, B frozen random matrices
shared by every layer; only the vectors b (init 0) and d (init d_initial) train: d_out + r per layer.
PEFT slices the shared matrices per layer, so layers of different shapes can share them."""


from lora_explorer.methods import _lora
from lora_explorer.methods.base import Method, Param, Setup, register

AUTO_RANK_CAP = 256  # the paper's typical r, capped by the layers of a small model

PARAMS = (
    Param("rank", int, 0, f"rank r of the shared random matrices; 0 = min({AUTO_RANK_CAP}, smallest layer dim)",
          0, 4096),
    Param("d_initial", float, 0.1, "initial value of the trained d vector", 1e-6, 10.0),
    _lora.TARGETS,
)


def validate(params, _steps, shapes):
    if params["rank"] == 0:
        params["rank"] = min(AUTO_RANK_CAP, min(min(shape) for shape in shapes.values()))
    return params


def build(ctx):
    from peft import VeraConfig, get_peft_model

    p = ctx.params
    config = VeraConfig(r=p["rank"], d_initial=p["d_initial"], projection_prng_key=ctx.seed, save_projection=True,
                        **_lora.adapter_targets(ctx))
    model = get_peft_model(ctx.bundle.model, config)
    return Setup(model, _lora.adamw(model, ctx), updates=lambda: factored_updates(model))


def factored_updates(model) -> dict:
    """ΔW = diag(b)·B·diag(d)·A with PEFT's per-layer slices of the shared matrices."""
    from peft.tuners.vera import VeraLayer

    from lora_explorer.analysis import Update

    updates = {}
    for name, layer in _lora.adapted_layers(model, VeraLayer).items():
        out_features, in_features = layer.get_base_layer().weight.shape
        b, d = layer.vera_lambda_b["default"], layer.vera_lambda_d["default"]
        left = b[:, None] * layer.vera_B["default"][:out_features, :] * d[None, :]
        updates[name] = Update(left=left.detach(), right=layer.vera_A["default"][:, :in_features].detach())
    return updates


RULE = (r"y = W_0 x + \mathrm{diag}(b)\,B\,\mathrm{diag}(d)\,Ax, \quad A, B\;\mathrm{frozen\ random,\ shared}, "
        r"\quad b_0 = 0,\; d_0 = d_{\mathrm{initial}}")
TRAINS = ("Only the vectors b (one entry per output row) and d (one per rank): m + r parameters per m×n layer; "
          "W0 and the random A and B, shared by every layer and drawn from the run's seed, are frozen.")
COST = ("The fewest trainable parameters and the smallest optimizer state, but the forward runs at a large rank "
        "(r = 256 by default here, capped by the smallest layer), so its matmuls are bigger than LoRA's at r = 8.")
CAVEATS = ("It needs a large r and a much larger learning rate than LoRA, since it trains only small scaling "
           "vectors: the app's default lr is 10× LoRA's. ΔW has rank at most r, and because every layer uses the "
           "same random A and B, singular vectors look alike across layers by construction.")


register(Method(
    id="vera", summary="shared frozen random A, B; trains only scaling vectors b and d per layer",
    params=PARAMS, build=build, save=_lora.save_adapter, restore=_lora.restore_adapter, validate=validate,
    lr_factor=10.0, paper="Kopiczko, Blankevoort, Asano 2024, arXiv:2310.11454",
    rule=RULE, trains=TRAINS, cost=COST, caveats=CAVEATS))
