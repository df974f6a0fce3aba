"""What a fine-tuning method is: declared parameters, a build function and optional step hooks.

The training loop only ever talks to this interface, so a new method is one new module that calls
`register(...)`; nothing else in the package changes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from lora_explorer.errors import ConfigError


@dataclass(frozen=True)
class Param:
    """One method parameter. The Train form and the CLI flags are generated from these."""

    name: str
    type: type  # int, float, bool or str
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    log: bool = False  # shown on a log scale / as scientific notation in the UI

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def coerce(self, value: Any) -> Any:
        """Convert and range-check a user value; raise ConfigError with a one-line reason."""
        label = self.flag
        if self.type is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ConfigError(f"{label} must be true or false, got {value!r}")
            return bool(value)
        if self.type in (int, float):
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{label} must be a number, got {value!r}") from None
            if not math.isfinite(number):
                raise ConfigError(f"{label} must be a finite number, got {value!r}")
            if self.type is int:
                if number != int(number):
                    raise ConfigError(f"{label} must be a whole number, got {value!r}")
                number = int(number)
            if self.min is not None and number < self.min:
                raise ConfigError(f"{label} must be at least {self.min:g}, got {number:g}")
            if self.max is not None and number > self.max:
                raise ConfigError(f"{label} must be at most {self.max:g}, got {number:g}")
            return number
        value = str(value)
        if self.choices and value not in self.choices:
            raise ConfigError(f"{label} must be one of {', '.join(self.choices)}, got {value!r}")
        return value


@dataclass
class Hooks:
    """Optional callbacks, called by the loop in this order every step:
    loss (+ regularizer()) -> backward -> before_optimizer_step(step) -> optimizer.step()
    -> after_optimizer_step(step) -> zero_grad; and on_stop() once when a stop ends training early.
    """

    regularizer: Callable[[], torch.Tensor] | None = None  # added to the task loss (e.g. AdaLoRA's orthogonality)
    before_optimizer_step: Callable[[int], None] | None = None
    after_optimizer_step: Callable[[int], None] | None = None
    # once, when a stop ends training early, before the last step's evaluation, spectrum and the save: puts
    # the model in the state its saved form loads as (AdaLoRA: the pruning mask, re-applied only every ΔT
    # steps); returns whether the model changed
    on_stop: Callable[[], bool] | None = None


@dataclass
class Setup:
    """What a method hands back to the loop. `updates`, when given, returns every adapted layer's
    ΔW in factored form (lora_explorer.analysis.Update), keyed by module name in the base model, so
    its spectrum is exact and cheap; without it the analysis measures ΔW densely.

    `equivalent_gradients(step)`, when given, returns every adapted layer's equivalent gradient g~
    (m x n): to first order, the change of W_eff that one SGD step on the method's parameters makes,
    per unit of the base lr, after any adjustment the method makes to its gradients. It is called
    after backward and before_optimizer_step(step), before the optimizer step. Without it the
    analysis takes a finite difference (analysis.finite_difference_gradient)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    hooks: Hooks = field(default_factory=Hooks)
    updates: Callable[[], dict] | None = None
    equivalent_gradients: Callable[[int], dict] | None = None


@dataclass
class BuildContext:
    """Everything a method may need to build itself, without knowing the model or task."""

    bundle: Any  # lora_explorer.models.ModelBundle
    params: dict  # the method's resolved parameters
    lr: float
    weight_decay: float
    steps: int
    task: Any = None  # lora_explorer.tasks.Task, for methods that look at data at build time
    batch_size: int = 16
    seed: int = 0
    device: Any = "cpu"
    run_dir: Any = None  # where a method may write its own artifacts (rank allocation, importances)
    status: Callable[[str], None] = lambda text: None  # progress of long build steps, shown to the user


@dataclass
class Method:
    id: str
    summary: str
    params: tuple[Param, ...]
    build: Callable[[BuildContext], Setup]
    # save(setup_model, run_dir) writes the trained weights; restore(base_model, run_dir, params)
    # rebuilds the trained model from the run directory alone.
    save: Callable[[torch.nn.Module, Any], None]
    restore: Callable[[torch.nn.Module, Any, dict], torch.nn.Module]
    lr_factor: float = 1.0  # default lr = the model's adapter lr x this factor
    paper: str = ""
    # Teaching text for the Learn page, in the notation of the reference (W0 is m x n, A is r x n,
    # B is m x r, s = alpha/r, y = W0 x + s B A x, g = dL/dW):
    rule: str = ""  # the update rule / parametrisation, LaTeX for st.latex (no surrounding $)
    trains: str = ""  # one sentence: what trains, what is frozen, trainable parameters per m x n layer
    cost: str = ""  # compute and memory relative to LoRA, and why
    caveats: str = ""  # pitfalls a user of the app should know
    # validate(params, steps, shapes) -> params: checks across parameters and the run (raise
    # ConfigError), and fills values that depend on the model; shapes = {layer: (out, in)} targeted.
    validate: Callable[[dict, int, dict], dict] | None = None

    def resolve_params(self, given: dict | None) -> dict:
        given = dict(given or {})
        known = {p.name: p for p in self.params}
        unknown = sorted(set(given) - set(known))
        if unknown:
            flags = ", ".join("--" + name.replace("_", "-") for name in unknown)
            raise ConfigError(f"method '{self.id}' has no parameter {flags}")
        return {name: p.coerce(given[name]) if name in given else p.default for name, p in known.items()}


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.id in REGISTRY:
        raise RuntimeError(f"method id '{method.id}' registered twice")
    REGISTRY[method.id] = method
    return method


def get_method(method_id: str) -> Method:
    try:
        return REGISTRY[method_id]
    except KeyError:
        raise ConfigError(f"unknown method '{method_id}'; choose one of: {', '.join(REGISTRY)}") from None
