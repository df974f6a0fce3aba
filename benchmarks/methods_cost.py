"""Cost of every method relative to LoRA on MiniLM: step time, peak memory, trainable parameters,
and LoRA-GA's initialisation time against 10 LoRA training steps.

Each method trains in a fresh process (`python -m lora_explorer train`), so its peak memory is its
own: on a CPU the growth of the resident set over the run, on a GPU the CUDA allocator's peak.
Methods are interleaved over --repeats rounds and the fastest round of each counts (this machine is
shared and noisy). Step time is the run's median `sec_per_step` (forward, backward, optimizer step).

Run:   .venv/bin/python benchmarks/methods_cost.py [--steps 15] [--repeats 2] [--threads 1] [--device cpu]
Writes methods_cost.json to the results folder (benchmarks/common.py).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import write_result  # noqa: E402

TARGETS = {"lora-pro": {"step": 1.3, "memory": 1.5}, "lora_ga_init_over_ten_steps": 1.0}


def run_method(method: str, args, runs_dir: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)} if args.threads else dict(os.environ)
    command = [sys.executable, "-m", "lora_explorer", "train", "--model", "minilm", "--method", method,
               "--steps", str(args.steps), "--batch-size", "16", "--eval-every", str(args.steps),
               "--eval-size", "32", "--device", args.device, "--runs-dir", runs_dir]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    summary = json.loads((Path(done.stdout.strip().splitlines()[-1]) / "summary.json").read_text())
    return {key: summary[key] for key in ("sec_per_step", "peak_mem_mb", "trainable_params")}


def lora_ga_init_seconds(args) -> float:
    """Wall time of LoRA-GA's build (gradient estimation, SVD, re-initialisation) on MiniLM, best of two
    fresh models. Each model first runs one forward and backward pass, as it would have by the time
    a training run's step times settle: the comparison is with steady-state LoRA steps."""
    import torch

    from lora_explorer import RunConfig, resolve, tasks
    from lora_explorer.methods import get_method
    from lora_explorer.methods.base import BuildContext
    from lora_explorer.train import autocast, load_base, pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    config = resolve(RunConfig(model="minilm", method="lora-ga", batch_size=16, device=args.device))
    spec, device, times = tasks.TASKS["sentiment"], pick_device(config.device), []
    for _ in range(2):
        bundle = load_base(config, spec)
        task = tasks.build_task(spec, bundle, config.task_params)
        bundle.model.to(device)
        with autocast(device):  # as training runs: on CUDA the bf16 kernels load here, not in the timing
            warm_up, _ = task.loss(bundle.model, task.batch(task.train, torch.arange(16), device))
        warm_up.backward()
        bundle.model.zero_grad(set_to_none=True)
        ctx = BuildContext(bundle, config.method_params, config.lr, 0.0, config.steps, task, 16, 0, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        get_method("lora-ga").build(ctx)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run; 0 = torch's default")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    from lora_explorer.methods import REGISTRY

    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as runs_dir:
        for round_ in range(args.repeats):
            for method in REGISTRY:
                result = run_method(method, args, runs_dir)
                print(f"round {round_ + 1} {method}: {result}", file=sys.stderr)
                if "error" in result:
                    best.setdefault(method, result)  # an error counts only if no round succeeded
                elif "error" in best.get(method, {"error": ""}) or result["sec_per_step"] < best[method]["sec_per_step"]:
                    best[method] = result
    lora = best["lora"]
    rows = []
    for method, result in best.items():
        if "error" in result:
            rows.append({"method": method, "error": result["error"]})
            continue
        rows.append({"method": method, "ms_per_step": 1000 * result["sec_per_step"],
                     "step_x_lora": result["sec_per_step"] / lora["sec_per_step"],
                     "peak_mem_mb": result["peak_mem_mb"], "mem_x_lora": result["peak_mem_mb"] / lora["peak_mem_mb"],
                     "trainable_params": result["trainable_params"]})
    init_s = lora_ga_init_seconds(args)
    ten_steps = 10 * lora["sec_per_step"]

    print("\n".join(method_table(rows)))
    print(f"\nLoRA-GA initialisation: {init_s:.2f} s; 10 LoRA steps: {ten_steps:.2f} s; "
          f"ratio {init_s / ten_steps:.2f} (target ≤ {TARGETS['lora_ga_init_over_ten_steps']:g})")
    write_result("methods_cost", {"steps": args.steps, "repeats": args.repeats, "batch_size": 16,
                                  "threads_per_run": args.threads, "rows": rows, "lora_ga_init_s": init_s,
                                  "ten_lora_steps_s": ten_steps, "targets": TARGETS}, args.device)


def method_table(rows: list[dict]) -> list[str]:
    """The per-method table in Markdown, one line per row."""
    lines = ["| method | ms/step | × LoRA | peak MB | × LoRA | trainable |", "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['method']} | failed: {row['error']} | | | | |")
        else:
            lines.append(f"| {row['method']} | {row['ms_per_step']:.0f} | {row['step_x_lora']:.2f} | "
                         f"{row['peak_mem_mb']:.0f} | {row['mem_x_lora']:.2f} | {row['trainable_params']:,} |")
    return lines


if __name__ == "__main__":
    main()
