"""Overhead of our training loop against a bare PEFT + torch loop doing the same work, with the
analysis (spectra + gradient alignment) off and at its default cadence.

Both sides train minilm on the built-in `sentiment` task with LoRA (r=8, alpha=16, dropout 0,
targets query,value, the classifier in modules_to_save), AdamW lr 5e-4, batch size 16, the same
seed and the same batches (`lora_explorer.train.data_order`), for --steps steps, on --device.

Timed on both sides: the training loop after WARMUP warm-up steps, from the end of step WARMUP to
the end of the last step, divided by the number of steps in between.
  - ours: `train(...)` with log_every=1, eval_every=steps (its one evaluation comes after the
    last logged step) and analysis_every=0, timed by `elapsed_s` in metrics.jsonl. This includes
    all that our loop does per step besides the compute: batch slicing, the lr scheduler, logging,
    the stop check.
  - ours+analysis: the same with the default analysis cadence (a tenth of the run): ΔW spectra
    and gradient alignment (hooks, equivalent gradients, bounds) at steps 0, 6, 12, ... of 60.
  - bare: index the batch, forward, cross-entropy, backward, AdamW step, zero_grad, loss.item(),
    timed with perf_counter at the same points.
Model loading and evaluation are never timed. Columns: total wall (the headline ratio), the median
wall time of one step (robust to bursts of load from other processes) and the median `step_time_s`
(forward..zero_grad only).
  - bare dora / ours dora: the same two loops with DoRA (use_dora=True): DoRA's time per step ÷
    LoRA's must come out the same (±10%) in our loop as in the bare one.
Sides are interleaved (bare, ours, ours+analysis, bare dora, ours dora, bare, ...); the best run of
each side counts.

Run:   .venv/bin/python benchmarks/loop_overhead.py [--steps 60] [--repeats 2] [--threads 1] [--device cpu]
torch runs single-threaded by default: on a shared machine a busy neighbour slows a multi-threaded
step several-fold (threads wait at every barrier), which swamps a 3% margin; --threads 0 keeps
torch's default. On --device cuda both loops run under the same bf16 autocast (`train.autocast`).
Writes loop_overhead.json to the results folder (benchmarks/common.py).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lora_explorer import models, tasks  # noqa: E402
from lora_explorer.config import RunConfig, resolve  # noqa: E402
from lora_explorer.train import autocast, data_order, pick_device, train  # noqa: E402

from benchmarks.common import write_result  # noqa: E402

WARMUP = 5  # steps discarded on each side (torch lazy init, allocator warm-up)
LR, BATCH, SEED = 5e-4, 16, 0
COLUMNS = {"s_per_step": "total wall", "median_wall_step_s": "median wall step",
           "median_step_time_s": "median step_time_s"}


SIDES = ("bare", "ours", "ours+analysis", "bare dora", "ours dora")


def config(steps: int, device: str, analysis: bool = False, method: str = "lora") -> RunConfig:
    return RunConfig(model="minilm", method=method, task="sentiment", steps=steps, eval_every=steps,
                     log_every=1, lr=LR, batch_size=BATCH, seed=SEED, device=device,
                     analysis_every=None if analysis else 0,  # None: the default cadence
                     method_params=dict(rank=8, alpha=16.0, dropout=0.0, target_modules="query,value"))


def run_bare(steps: int, device: str, dora: bool = False) -> dict:
    params = resolve(config(steps, device)).task_params
    device = pick_device(device)
    torch.manual_seed(SEED)  # as train.load_base: same head initialisation
    bundle = models.load_model("minilm", "classification", num_labels=2)
    task = tasks.build_task(tasks.TASKS["sentiment"], bundle, params)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"],
                      modules_to_save=["classifier"], use_dora=dora)
    model = get_peft_model(bundle.model, lora).to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    batches = data_order(len(task), BATCH, SEED)
    data = task.train

    model.train()
    ends, step_times = [], []
    for _ in range(steps):
        idx = next(batches)
        input_ids, mask, labels = (data[key][idx].to(device) for key in ("input_ids", "attention_mask", "labels"))
        tick = time.perf_counter()
        with autocast(device):
            logits = model(input_ids=input_ids, attention_mask=mask).logits
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        end = time.perf_counter()
        step_times.append(end - tick)
        ends.append(end)
    return summarise(ends, step_times, steps)


def run_ours(steps: int, device: str, runs_dir: str, analysis: bool, method: str = "lora") -> dict:
    run = train(config(steps, device, analysis, method), runs_dir=runs_dir)
    summary = run.summary()
    if summary.get("status") != "completed":
        raise RuntimeError(f"our run did not complete: {summary}")
    logged = [r for r in run.metrics() if "loss" in r]  # training records; the eval record has none
    assert [r["step"] for r in logged] == list(range(1, steps + 1)), "expected one record per step"
    return summarise([r["elapsed_s"] for r in logged], [r["step_time_s"] for r in logged], steps)


def summarise(ends: list[float], step_times: list[float], steps: int) -> dict:
    """ends[i]: the clock at the end of step i+1. Warm-up steps are dropped."""
    ends, n = ends[WARMUP - 1:], steps - WARMUP
    return {"s_per_step": (ends[-1] - ends[0]) / n,
            "median_wall_step_s": statistics.median(b - a for a, b in zip(ends, ends[1:])),
            "median_step_time_s": statistics.median(step_times[WARMUP:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.steps <= WARMUP + 1:
        parser.error(f"--steps must be more than {WARMUP + 1}")
    if args.threads:
        torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    raw = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory() as runs_dir:
        for repeat in range(args.repeats):
            for side in SIDES:
                if side.startswith("bare"):
                    result = run_bare(args.steps, args.device, dora=side == "bare dora")
                else:
                    result = run_ours(args.steps, args.device, runs_dir, side == "ours+analysis",
                                      "dora" if "dora" in side else "lora")
                raw[side].append(result)
                print(f"  {side} #{repeat + 1}: " + ", ".join(
                    f"{label} {result[key] * 1e3:.1f} ms" for key, label in COLUMNS.items()), flush=True)
    load_after = os.getloadavg()

    best = {side: {key: min(r[key] for r in results) for key in COLUMNS} for side, results in raw.items()}
    ratios = {key: best["bare"][key] / best["ours"][key] for key in COLUMNS}  # = ours/bare in steps/s
    with_analysis = {key: best["bare"][key] / best["ours+analysis"][key] for key in COLUMNS}
    analysis_cost = {key: best["ours"][key] / best["ours+analysis"][key] for key in COLUMNS}
    # DoRA's cost relative to LoRA, measured in our loop and in the bare loop: the app must not distort it
    dora_ours = {key: best["ours dora"][key] / best["ours"][key] for key in COLUMNS}
    dora_bare = {key: best["bare dora"][key] / best["bare"][key] for key in COLUMNS}
    dora_agreement = {key: dora_ours[key] / dora_bare[key] for key in COLUMNS}

    print(f"\nminilm / sentiment / LoRA r=8, batch {BATCH}, {args.steps} steps (first {WARMUP} discarded), "
          f"{torch.get_num_threads()} torch threads, best of {args.repeats}, "
          f"load avg {load_before[0]:.1f} -> {load_after[0]:.1f} on {os.cpu_count()} CPUs\n")
    print("| ms per step | " + " | ".join(COLUMNS.values()) + " |")
    print("|---|" + "---:|" * len(COLUMNS))
    for side in SIDES:
        print(f"| {side} | " + " | ".join(f"{best[side][key] * 1e3:.1f}" for key in COLUMNS) + " |")
    for label, values in [("ours/bare", ratios), ("ours+analysis/bare", with_analysis),
                          ("ours+analysis/ours", analysis_cost)]:
        print(f"| **{label} steps/s** | " + " | ".join(f"**{values[key]:.3f}**" for key in COLUMNS) + " |")
    for label, values in [("DoRA/LoRA time, ours", dora_ours), ("DoRA/LoRA time, bare", dora_bare),
                          ("ours ÷ bare of that ratio", dora_agreement)]:
        print(f"| **{label}** | " + " | ".join(f"**{values[key]:.3f}**" for key in COLUMNS) + " |")
    print(f"\nDoRA costs {dora_ours['s_per_step']:.2f}x LoRA in our loop and {dora_bare['s_per_step']:.2f}x in the "
          f"bare loop: agreement {dora_agreement['s_per_step']:.3f} (target within 0.90-1.10)")
    print(f"ratio ours/bare steps/s: {ratios['s_per_step']:.3f} (target >= 0.97); with the analysis at its "
          f"default cadence: {with_analysis['s_per_step']:.3f} of bare, {analysis_cost['s_per_step']:.3f} of ours "
          "without it (target >= 0.85)")

    out = write_result("loop_overhead", {
        "steps": args.steps, "warmup_steps": WARMUP, "repeats": args.repeats, "batch_size": BATCH,
        "raw": raw, "best": best, "ratio_ours_over_bare_steps_per_s": ratios, "target": 0.97,
        "ratio_ours_analysis_over_bare_steps_per_s": with_analysis,
        "ratio_ours_analysis_over_ours_steps_per_s": analysis_cost, "target_analysis": 0.85,
        "dora_over_lora_time_ours": dora_ours, "dora_over_lora_time_bare": dora_bare,
        "dora_agreement_ours_over_bare": dora_agreement, "target_dora_agreement": [0.9, 1.1],
        "load_avg_1min_before_after": [load_before[0], load_after[0]]}, args.device)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
