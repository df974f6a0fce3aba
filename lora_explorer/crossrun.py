"""Analysis computed when a page asks for it, from saved runs: how one run's weight update compares
with another's, and what its trained weights did to the pretrained ones. Plus the readers of the
method-specific files the pages draw (AdaLoRA ranks, LoRA-drop split, the toy's true ΔW*).

No Streamlit here; the pages cache these calls. A run that cannot be read raises ConfigError with
one line, so a page can show it instead of crashing.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model

from lora_explorer import analysis, models, store, tasks
from lora_explorer.config import RunConfig
from lora_explorer.errors import ConfigError
from lora_explorer.train import BUILD_LOCK, load_base, rebuild

# The identity probe runs in the model's float32: singular values of ΔW below this fraction of
# ‖W_eff‖_F are rounding, not update (measured: ~1e-7 on the toy, where ‖W_eff‖_F is about 5).
ROUNDING = 1e-5
FINISHED = ("completed", "stopped")  # the statuses of runs whose final weights are saved


def adapted_layers(run: store.Run) -> list[str]:
    """The layers whose update the run recorded in spectra.jsonl, in recorded order."""
    return list(dict.fromkeys(record["layer"] for record in run.spectra() if isinstance(record.get("layer"), str)))


def final_weights(run_dir: str | os.PathLike) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{layer: (W0, W_eff)} in float64 for every adapted layer: the pretrained weight and the weight the
    trained model applies. W0 comes from a freshly loaded base model, never from the rebuilt one:
    LoRA-GA and Delta-LoRA move the base weight they keep. The tensors are shared between callers
    (one rebuild per run, however many comparisons): read them, never change them in place."""
    run = store.open_run(run_dir)
    try:
        summary_version = (run.path / "summary.json").stat().st_mtime_ns  # rewritten when a run changes
    except OSError:
        summary_version = None
    return _final_weights(run.path.resolve(), summary_version)


@functools.lru_cache(maxsize=6)
def _final_weights(path: Path, _summary_version) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    run = store.Run(path)
    layers = adapted_layers(run)
    if not layers:
        raise ConfigError(f"run {run.id} has no readable spectra.jsonl: its adapted layers are unknown")
    status = run.summary().get("status")
    if status not in FINISHED:
        raise ConfigError(f"run {run.id} is {status}: it has no final weights")
    try:
        config = RunConfig.from_dict(run.config())
        spec = tasks.spec_for(config.task, models.model_kind(config.model, config.trust_remote_code))
        with BUILD_LOCK, torch.random.fork_rng(devices=[]):  # see train.BUILD_LOCK
            base = load_base(config, spec).model
        if (run.path / "base.safetensors").exists():  # models built from a config: their saved W0
            load_model(base, str(run.path / "base.safetensors"))
        trained, _, _ = rebuild(run.path, device="cpu")
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - any unreadable or mismatched file of the run
        raise ConfigError(f"cannot rebuild run {run.id}: {type(error).__name__}: {error}".splitlines()[0]) from None
    effective = {}
    for name, module in trained.named_modules():
        key = analysis.base_name(name)
        if key in layers and key not in effective:  # the outermost module of that name: the adapter wrapper
            effective[key] = analysis.effective_weight(module).double()
    return {name: (base.get_submodule(name).weight.detach().double(), effective[name])
            for name in layers if name in effective}


def _update_rank(w0: torch.Tensor, w_eff: torch.Tensor) -> int:
    sigma = torch.linalg.svdvals(w_eff - w0)
    return int((sigma > ROUNDING * float(w_eff.norm())).sum())


def subspace_overlap_with(run_dir: str | os.PathLike, reference_dir: str | os.PathLike,
                          k: int = 8) -> dict[str, float | None]:
    """Per layer both runs adapted: φ = ‖U_aᵀU_b‖²_F / k between the top-k left singular vectors of
    the two runs' final ΔW (Hu et al. 2021). k shrinks to the smaller rank of the two updates where
    it is lower (singular vectors past a matrix's rank are arbitrary); None where either ΔW is 0.
    Two random k-dimensional subspaces of R^m give φ ≈ k/m."""
    run, reference = store.open_run(run_dir), store.open_run(reference_dir)
    mine, theirs = run.config(), reference.config()
    for field in ("model", "task"):
        if mine.get(field) != theirs.get(field):
            raise ConfigError(f"runs {run.id} and {reference.id} have different {field}s "
                              f"({mine.get(field)} vs {theirs.get(field)}): their updates cannot be compared")
    reference_layers = set(adapted_layers(reference))
    common = [name for name in adapted_layers(run) if name in reference_layers]
    if not common:
        raise ConfigError(f"runs {run.id} and {reference.id} adapted no layer in common")
    weights, reference_weights = final_weights(run.path), final_weights(reference.path)
    overlap = {}
    for name in common:
        if name not in weights or name not in reference_weights:
            continue
        (w0, w_eff), (ref_w0, ref_w_eff) = weights[name], reference_weights[name]
        layer_k = min(k, _update_rank(w0, w_eff), _update_rank(ref_w0, ref_w_eff))
        overlap[name] = analysis.subspace_overlap(w_eff - w0, ref_w_eff - ref_w0, layer_k) if layer_k else None
    return overlap


def intruder_dimensions(run_dir: str | os.PathLike, top_k: int = 10, threshold: float = 0.5) -> dict[str, int]:
    """Per layer: how many of the top-k left singular vectors of W_eff have a best |cos| below
    `threshold` with every left singular vector of W0 (Shuttleworth et al. 2024, arXiv 2410.21228;
    the detection of peft's lora/intruders.py)."""
    return {name: count_intruders(w0, w_eff, top_k, threshold) for name, (w0, w_eff) in final_weights(run_dir).items()}


def count_intruders(w0: torch.Tensor, w_eff: torch.Tensor, top_k: int = 10, threshold: float = 0.5) -> int:
    """How many of the top-k left singular vectors of `w_eff` have a best |cos| below `threshold` with
    every left singular vector of `w0`."""
    u_base = torch.linalg.svd(w0, full_matrices=False)[0]
    u_tuned = torch.linalg.svd(w_eff, full_matrices=False)[0][:, :top_k]
    best_cos = (u_tuned.T @ u_base).abs().max(dim=1).values
    return int((best_cos < threshold).sum())


# ---------------------------------------------------------------- method-specific files, for the pages
def true_spectra(run_dir: str | os.PathLike) -> dict[str, list[float]] | None:
    """σ of the toy teacher's true ΔW* per layer; None when the run has no target_delta.safetensors."""
    path = Path(run_dir) / "target_delta.safetensors"
    if not path.exists():
        return None
    try:
        targets = load_file(str(path))
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
        raise ConfigError(f"{path.name} of run {Path(run_dir).name} is unreadable: {error}".splitlines()[0]) from None
    return {name: [float(s) for s in torch.linalg.svdvals(delta.double())[:analysis.TOP_SIGMA]]
            for name, delta in targets.items()}


def adalora_ranks(run_dir: str | os.PathLike) -> list[dict] | None:
    """adalora_ranks.jsonl: [{"step": t, "ranks": {layer: kept rank}}]; None when the run has none."""
    path = Path(run_dir) / "adalora_ranks.jsonl"
    if not path.exists():
        return None
    records = [record for record in store.read_metrics(path)
               if isinstance(record.get("step"), int) and isinstance(record.get("ranks"), dict)]
    if not records:
        raise ConfigError(f"{path.name} of run {Path(run_dir).name} has no readable line")
    return records


def lora_drop_split(run_dir: str | os.PathLike) -> dict | None:
    """lora_drop.json: {"importance": {layer: share}, "kept": [...], "shared": [[...], ...]}; None when absent."""
    path = Path(run_dir) / "lora_drop.json"
    if not path.exists():
        return None
    split = store.read_json(path)
    if split is None or not isinstance(split.get("importance"), dict):
        raise ConfigError(f"{path.name} of run {Path(run_dir).name} is unreadable")
    return split
