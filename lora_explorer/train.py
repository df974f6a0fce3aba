"""The training loop: one function for every method, readable top to bottom.

A method hands back (model, optimizer, hooks); the loop never asks which method it runs.
"""
from __future__ import annotations

import contextlib
import math
import os
import statistics
import threading
import time
from typing import Callable

import torch

from lora_explorer import analysis, models, store, tasks
from lora_explorer.config import RunConfig, resolve
from lora_explorer.methods import get_method
from lora_explorer.methods.base import BuildContext

SUMMARY_EVERY_S = 2.0  # how often a running run refreshes summary.json
# Building a model seeds and draws from torch's global RNG. A run is reproducible only if nothing
# else in the process (a page rebuilding a finished run, another worker) draws in between, so
# building, for training or for rebuilding, happens one at a time.
BUILD_LOCK = threading.Lock()


class _StoppedBeforeTraining(Exception):
    """A stop asked for while the model or the method was still being built (pretraining a base,
    LoRA-GA's gradient estimation, LoRA-drop's stage 1): those can take minutes."""


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    from lora_explorer.errors import ConfigError

    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps was asked for but MPS is not available on this machine")
    return torch.device(requested)


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def versions() -> dict:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def data_order(num_examples: int, batch_size: int, seed: int):
    """Batches of indices from consecutive random permutations; depends only on the seed."""
    generator = torch.Generator().manual_seed(seed)
    pending = torch.empty(0, dtype=torch.long)
    while True:
        while len(pending) < batch_size:
            pending = torch.cat([pending, torch.randperm(num_examples, generator=generator)])
        yield pending[:batch_size]
        pending = pending[batch_size:]


def lr_factor(config: RunConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        if config.lr_schedule == "linear":
            return max(0.0, 1.0 - progress)
        if config.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    return factor


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    unique = {id(p): p for p in model.parameters()}.values()  # tied/shared parameters count once
    return sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique)


class MemoryMeter:
    """Peak memory the run needed: CUDA's allocator peak on a GPU; on a CPU, the peak resident set of
    the process minus what it held before the model was loaded (exact in a fresh process, a lower
    bound in a long-lived one such as the app, where freed memory is reused)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mb = 0.0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.baseline_mb = self._resident_mb() if device.type != "cuda" else 0.0
        self.high_water_mb = self._high_water_mb()

    @staticmethod
    def _resident_mb() -> float:
        try:
            with open("/proc/self/statm") as handle:
                return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, IndexError):
            return 0.0

    @staticmethod
    def _high_water_mb() -> float:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    def sample(self) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        self.peak_mb = max(self.peak_mb, self._resident_mb() - self.baseline_mb)
        high_water = self._high_water_mb()
        if high_water > self.high_water_mb:  # this run set the process's peak: it includes transient activations
            self.peak_mb = max(self.peak_mb, high_water - self.baseline_mb)


def original_weights(bundle, config) -> dict:
    """W0 of every layer the analysis follows (the method's targets; the model's default targets
    for full FT), copied before a method can change them (LoRA-GA's offset, Delta-LoRA)."""
    targets = config.method_params.get("target_modules", "auto")
    return {name: bundle.model.get_submodule(name).weight.detach().clone()
            for name in models.matching_linears(bundle, targets)}


class Spectra:
    """Writes spectra.jsonl: the singular values and ranks of every adapted layer's ΔW."""

    def __init__(self, setup, w0: dict, targets: dict | None, run: store.Run):
        self.setup, self.w0, self.targets, self.run = setup, w0, targets, run
        self.last_step = None

    def record(self, step: int) -> None:
        updates = self.setup.updates() if self.setup.updates else analysis.dense_updates(self.setup.model, self.w0)
        self.run.append("spectra.jsonl", analysis.spectrum_records(step, updates, self.w0, self.targets))
        self.last_step = step


class Alignment:
    """Writes alignment.jsonl: the method's equivalent gradient g~ against full fine-tuning's
    gradient g at the run's own weights, per adapted layer. Point p (the weights after p updates,
    as in spectra.jsonl) is measured during step p + 1, whose forward and backward give g there."""

    def __init__(self, setup, layers, rank: int | None, every: int, run: store.Run):
        self.setup, self.rank, self.every, self.run = setup, rank, every, run
        self.modules = analysis.outer_modules(setup.model, layers)

    def due(self, step: int) -> bool:
        return (step - 1) % self.every == 0

    def recorder(self) -> analysis.GradientRecorder:
        return analysis.GradientRecorder(self.modules)

    def record(self, step: int, recorder: analysis.GradientRecorder) -> float | None:
        """Write point step − 1; return the mean cos over layers."""
        if self.setup.equivalent_gradients:
            equivalent = self.setup.equivalent_gradients(step)
        else:
            equivalent = {name: analysis.finite_difference_gradient(module) for name, module in self.modules.items()}
        records = [analysis.alignment_record(step - 1, name, recorder.grads[name], equivalent.get(name), self.rank)
                   for name in sorted(recorder.grads)]
        self.run.append("alignment.jsonl", records)
        cosines = [record["cos"] for record in records if record["cos"] is not None]
        return statistics.fmean(cosines) if cosines else None


def _finite(value):
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def load_base(config: RunConfig, spec, progress=None) -> models.ModelBundle:
    torch.manual_seed(config.seed)  # same seed, same head initialisation for every method
    num_labels = tasks.num_labels(spec)
    return models.load_model(config.model, spec.kind, num_labels=num_labels,
                             trust_remote_code=config.trust_remote_code, progress=progress)


def train(config: RunConfig, runs_dir: str | os.PathLike | None = None, *,
          stop_event: threading.Event | None = None,
          on_record: Callable[[dict], None] | None = None,
          on_status: Callable[[str], None] | None = None,
          on_run: Callable[[store.Run], None] | None = None) -> store.Run:
    """Train one run and return its run directory. Bad input raises ConfigError before anything is
    written; a failure during training is recorded in summary.json (status `failed`), not raised."""
    config = resolve(config)
    device = pick_device(config.device)
    method = get_method(config.method)
    spec = tasks.spec_for(config.task, models.model_kind(config.model, config.trust_remote_code))
    run = store.Run.create(store.runs_root(runs_dir), config.method)
    run.write_config({**config.to_dict(), "run_id": run.id, "resolved_device": str(device),
                      "created_at": time.time(), "versions": versions()})
    summary = {"status": "running", "run_id": run.id, "model": config.model, "task": config.task,
               "method": config.method, "steps_total": config.steps, "steps_done": 0}
    run.write_summary(summary)
    if on_run:
        on_run(run)

    def status(text):
        try:
            if on_status:
                on_status(text)
        except Exception:  # noqa: BLE001 - see emit()
            pass

    def build_status(text):
        """status() for the build, which also ends it at a stop: the loop checks for one only once
        training starts. It raises after status(), which swallows what on_status raises."""
        status(text)
        if stop_event is not None and stop_event.is_set():
            raise _StoppedBeforeTraining

    memory = MemoryMeter(device)
    try:
        build_status("loading model")
        with BUILD_LOCK:
            bundle = load_base(config, spec, progress=lambda i, n: build_status(f"pretraining the base model {i}/{n}"))
            task = tasks.build_task(spec, bundle, config.task_params)
            if bundle.from_config:
                from safetensors.torch import save_model

                save_model(bundle.model, str(run.path / "base.safetensors"))
            task.save_artifacts(run.path)
            bundle.model.to(device)
            w0 = original_weights(bundle, config)
            setup = method.build(BuildContext(bundle, config.method_params, config.lr, config.weight_decay,
                                              config.steps, task, config.batch_size, config.seed, device,
                                              run.path, build_status))
        trainable, total = count_params(setup.model)
        summary.update(trainable_params=trainable, total_params=total,
                       eval_metric_name=task.metric_name, device=str(device))
        run.write_summary(summary)
        build_status("training")  # the last moment a stop still means "before training"
        spectra = alignment = None
        if config.analysis_every:
            spectra = Spectra(setup, w0, getattr(task, "target_delta", None), run)
            alignment = Alignment(setup, w0, config.method_params.get("rank"), config.analysis_every, run)
        summary.update(_loop(config, run, setup, task, device, summary, stop_event, on_record, memory,
                             spectra, alignment))
        if summary["status"] == "stopped" and summary["steps_done"] == 0:
            raise _StoppedBeforeTraining  # between the build and the first step: nothing trained to save
        if summary["status"] in ("completed", "stopped"):
            method.save(setup.model, run.path)
    except _StoppedBeforeTraining:
        summary.update(status="stopped",
                       error="stopped before training started: no step taken, no trained weights saved")
    except Exception as error:  # noqa: BLE001 - any failure must leave a readable, finished run
        summary.update(status="failed", error=_one_line(error))
    except BaseException as error:  # KeyboardInterrupt, SystemExit: record it, then let it through
        summary.update(status="interrupted", error=_one_line(error) if str(error) else type(error).__name__)
        raise
    finally:
        summary["finished_at"] = time.time()
        run.write_summary(summary)
        run.close()
    return run


def _loop(config, run, setup, task, device, summary, stop_event, on_record, memory, spectra, alignment) -> dict:
    model, optimizer, hooks = setup.model, setup.optimizer, setup.hooks
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config))
    batches = data_order(len(task), config.batch_size, config.seed)
    step_times, examples, last_loss, last_eval = [], 0, None, {}
    start = last_summary = time.perf_counter()

    def emit(record):
        run.log(record)
        if on_record:
            try:
                on_record(record)
            except Exception:  # noqa: BLE001 - a display callback must never fail the run it displays
                pass

    def evaluate(step):
        model.eval()
        with autocast(device):
            result = task.evaluate(model, device)
        model.train()
        result = {key: _finite(value) for key, value in result.items()}
        emit({"step": step, **result, "elapsed_s": time.perf_counter() - start})
        return result

    model.train()
    status, step = "completed", 0
    if spectra:
        spectra.record(0)
    for step in range(1, config.steps + 1):
        if stop_event is not None and stop_event.is_set():
            status, step = "stopped", step - 1
            break
        batch = task.batch(task.train, next(batches), device)
        gradients = alignment.recorder() if alignment and alignment.due(step) else None
        tick = time.perf_counter()
        with gradients or contextlib.nullcontext():
            with autocast(device):
                loss, seen = task.loss(model, batch)
                if hooks.regularizer:
                    loss = loss + hooks.regularizer()
            loss_value = loss.item()
            if not math.isfinite(loss_value):  # stop before a non-finite gradient touches the weights
                emit({"step": step, "loss": None, "nonfinite": str(loss_value),
                      "elapsed_s": time.perf_counter() - start})
                return {"status": "diverged", "steps_done": step - 1, "final_loss": last_loss,
                        "error": f"loss became {loss_value} at step {step}",
                        "sec_per_step": statistics.median(step_times) if step_times else None,
                        "peak_mem_mb": memory.peak_mb}
            loss.backward()
        if hooks.before_optimizer_step:
            hooks.before_optimizer_step(step)
        analysis_s = 0.0
        if gradients:  # before the optimizer step: the gradients and weights are still those of point step − 1
            analysis_tick = time.perf_counter()
            emit({"step": step - 1, "align_cos": alignment.record(step, gradients), "elapsed_s": analysis_tick - start})
            analysis_s = time.perf_counter() - analysis_tick
        lr_used = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        if hooks.after_optimizer_step:
            hooks.after_optimizer_step(step)
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # honest step times
        step_times.append(time.perf_counter() - tick - analysis_s)  # the method's cost, not the analysis's
        examples += seen
        last_loss = loss_value
        summary["steps_done"] = step  # right even if a later step fails

        if step % config.log_every == 0 or step == config.steps:
            memory.sample()
            record = {"step": step, "loss": loss_value, "lr": lr_used,
                      "elapsed_s": time.perf_counter() - start, "step_time_s": step_times[-1],
                      "examples": step * config.batch_size}
            if task.kind == models.LM:
                record["tokens"] = examples
            emit(record)
        # a stop asked for by now ends the run after this step: its evaluation and spectrum come after on_stop
        stopping = stop_event is not None and stop_event.is_set()
        if (step % config.eval_every == 0 or step == config.steps) and not stopping:
            last_eval = {"step": step, **evaluate(step)}
        if spectra and (step % config.analysis_every == 0 or step == config.steps) and not stopping:
            spectra.record(step)
        if time.perf_counter() - last_summary > SUMMARY_EVERY_S:
            last_summary = time.perf_counter()
            run.write_summary({**summary, "steps_done": step, "final_loss": last_loss})

    if status == "stopped" and step > 0 and hooks.on_stop and hooks.on_stop():
        last_eval = {}  # the model changed since its last evaluation and spectrum
        if spectra:
            spectra.last_step = None
    if step > 0 and last_eval.get("step") != step:
        last_eval = {"step": step, **evaluate(step)}  # a stopped run still gets its final evaluation
    if spectra and step > 0 and spectra.last_step != step:
        spectra.record(step)
    memory.sample()
    return {"status": status, "steps_done": step, "final_loss": _finite(last_loss),
            "final_eval_loss": last_eval.get("eval_loss"), "final_eval_metric": last_eval.get(task.metric_name),
            "sec_per_step": statistics.median(step_times) if step_times else None,
            "peak_mem_mb": memory.peak_mb}


def rebuild(run_dir: str | os.PathLike, device: str | None = None):
    """The exact trained model of a run, from its directory alone. Returns (model, task, device)."""
    from safetensors.torch import load_model

    run = store.open_run(run_dir)
    config = RunConfig.from_dict(run.config())
    target = pick_device(device or "auto")
    spec = tasks.spec_for(config.task, models.model_kind(config.model, config.trust_remote_code))
    with BUILD_LOCK, torch.random.fork_rng(devices=[]):  # leave the RNG as a training run in flight expects it
        bundle = load_base(config, spec)
        if (run.path / "base.safetensors").exists():
            load_model(bundle.model, str(run.path / "base.safetensors"))
        task = tasks.build_task(spec, bundle, config.task_params)
        model = get_method(config.method).restore(bundle.model, run.path, config.method_params)
    return model.to(target), task, target


def evaluate_run(run_dir: str | os.PathLike, device: str | None = None) -> dict:
    """Rebuild a run's model and evaluate it; compare with what the run recorded."""
    model, task, target = rebuild(run_dir, device)
    model.eval()
    with autocast(target):
        result = task.evaluate(model, target)
    summary = store.open_run(run_dir).summary()
    return {"eval_loss": result["eval_loss"], "metric_name": task.metric_name,
            "metric": result[task.metric_name], "summary_eval_loss": summary.get("final_eval_loss"),
            "summary_metric": summary.get("final_eval_metric")}
