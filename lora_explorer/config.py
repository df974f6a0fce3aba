"""A run's settings: what the user gives (`RunConfig`) and its fully resolved form (`resolve`).

`resolve` is the single place where input is checked; it raises ConfigError with one clear line
and touches nothing on disk, so the CLI and the app can validate before anything is launched.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from lora_explorer import models, tasks
from lora_explorer.errors import ConfigError
from lora_explorer.methods import get_method
from lora_explorer.methods.base import Param

LIMITS = dict(steps=1_000_000, batch_size=4096, rank=4096)
SCHEDULES = ("constant", "linear", "cosine")
DEVICES = ("auto", "cpu", "cuda", "mps")

# Training settings shared by every method; declared once for the CLI and the Train form.
COMMON_PARAMS = (
    Param("lr", float, None, "learning rate (default: the model's adapter lr x the method's factor)",
          0.0, 10.0, log=True),
    Param("steps", int, None, "optimizer steps (default: the model's)", 1, LIMITS["steps"]),
    Param("batch_size", int, None, "examples per step (default: the model's)", 1, LIMITS["batch_size"]),
    Param("seed", int, 0, "same seed = same head init and same data order for every method", 0, 2**31 - 1),
    Param("log_every", int, 1, "log the training loss every N steps", 1, LIMITS["steps"]),
    Param("eval_every", int, None, "evaluate every N steps (and always at the end)", 1, LIMITS["steps"]),
    Param("analysis_every", int, None, "record ΔW spectra and gradient alignment every N steps, from step 0 "
          "(spectra also at the end; default: a tenth of the run; 0 = off)", 0, LIMITS["steps"]),
    Param("weight_decay", float, 0.0, "AdamW weight decay", 0.0, 10.0),
    Param("lr_schedule", str, "constant", "learning-rate schedule after warm-up", choices=SCHEDULES),
    Param("warmup_steps", int, 0, "linear warm-up steps", 0, LIMITS["steps"]),
    Param("device", str, "auto", "auto = cuda, then mps, then cpu", choices=DEVICES),
)


@dataclass
class RunConfig:
    model: str = "toy"
    method: str = "lora"
    task: str | None = None  # None = the model's default task
    method_params: dict = field(default_factory=dict)
    task_params: dict = field(default_factory=dict)
    lr: float | None = None
    steps: int | None = None
    batch_size: int | None = None
    seed: int = 0
    log_every: int = 1
    eval_every: int | None = None
    analysis_every: int | None = None
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    device: str = "auto"
    trust_remote_code: bool = False
    name: str = ""  # a label for humans; run ids are generated
    group: str = ""  # the sweep this run belongs to (lora_explorer.sweeps), if any

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


def resolve(config: RunConfig) -> RunConfig:
    """A copy with every default filled in and every value checked. Raises ConfigError."""
    resolved = dataclasses.replace(config, method_params=dict(config.method_params),
                                   task_params=dict(config.task_params))
    method = get_method(resolved.method)
    resolved.method_params = method.resolve_params(resolved.method_params)

    if not isinstance(resolved.model, str) or not resolved.model.strip():
        raise ConfigError("choose a model: " + ", ".join(models.BUILTIN_MODELS) + ", a hub id or a local directory")
    kind = models.model_kind(resolved.model, resolved.trust_remote_code)
    builtin = models.BUILTIN_MODELS.get(resolved.model)
    if resolved.task in (None, ""):
        if builtin is None:
            raise ConfigError(f"model {resolved.model!r} has no built-in task; pass a .csv/.jsonl file or hf:<dataset>")
        resolved.task = builtin.default_task
    spec = tasks.spec_for(resolved.task, kind)
    tasks.check_compatible(spec, resolved.model, kind)
    known = {p.name: p for p in spec.params}
    unknown = sorted(set(resolved.task_params) - set(known))
    if unknown:
        raise ConfigError(f"task {spec.name!r} has no parameter --{unknown[0].replace('_', '-')}")
    resolved.task_params = {name: p.coerce(resolved.task_params[name]) if name in resolved.task_params
                            else p.default for name, p in known.items()}

    defaults = builtin.defaults if builtin else models.HUB_DEFAULTS
    for param in COMMON_PARAMS:
        value = getattr(resolved, param.name)
        if value is None:
            value = defaults.get(param.name)
            if param.name == "lr":
                value = defaults.get("lr_by_method", {}).get(method.id, defaults["lr"] * method.lr_factor)
        if value is None and param.name == "analysis_every":
            value = max(1, (resolved.steps or defaults["steps"]) // 10)
        setattr(resolved, param.name, param.coerce(value))
    if resolved.lr <= 0 or not math.isfinite(resolved.lr):
        raise ConfigError(f"--lr must be a positive number, got {resolved.lr:g}")
    resolved.eval_every = min(resolved.eval_every, resolved.steps)
    resolved.name = clean_label(resolved.name)
    from lora_explorer.train import pick_device

    pick_device(resolved.device)  # an unavailable device is bad input, not a failed run

    if "target_modules" in resolved.method_params:
        shapes = models.linear_shapes(resolved.model, spec.kind, resolved.method_params["target_modules"],
                                      trust_remote_code=resolved.trust_remote_code)
        _check_rank(resolved.method_params.get("rank", 0), shapes)
        if method.validate:
            resolved.method_params = method.validate(dict(resolved.method_params), resolved.steps, shapes)
    if spec.name not in tasks.TASKS:
        tasks.num_labels(spec)  # parses and validates the user's file now, before anything is launched
    return resolved


def _check_rank(rank: int, shapes: dict) -> None:
    """Rank 0 means "let the method choose"; any other rank must fit every targeted layer."""
    smallest_name, smallest = min(shapes.items(), key=lambda item: min(item[1]))
    if rank > min(smallest):
        raise ConfigError(f"--rank {rank} is larger than layer {smallest_name} "
                          f"({smallest[0]}x{smallest[1]}); the largest rank here is {min(smallest)}")


def clean_label(name) -> str:
    """Human labels are kept only as text in config.json; keep them short and printable."""
    text = "".join(ch for ch in str(name or "") if ch.isprintable())
    return text.strip()[:80]
