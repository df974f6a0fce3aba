"""Time from `JobManager.submit` to the first logged training loss, as a user of the app sees it.

Each model is measured in fresh processes that have imported what the app imports at start-up
(lora_explorer and its UI glue):
  - immediate: the first job, submitted at once (it waits for peft and transformers to import);
  - first click: the first job, submitted once the app's start-up preload (models.preload, run in a
    background thread when the job manager is created) has finished, as when a user has taken a
    few seconds to fill the form;
  - next job: a second identical job in the same process.
Targets: toy ≤ 1.5 s, MiniLM ≤ 6 s, on this CPU (for the first click and later jobs).

Run:   .venv/bin/python benchmarks/submit_latency.py [--repeats 2] [--device auto]
Writes submit_latency.json to the results folder (benchmarks/common.py).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import write_result  # noqa: E402

TARGETS = {"toy": 1.5, "minilm": 6.0}

CHILD = r"""
import json, sys, tempfile, time
sys.path.insert(0, sys.argv[1])
import lora_explorer.ui  # what the app has imported before the first click
from lora_explorer.config import RunConfig
from lora_explorer.jobs import JobManager

def first_loss(manager, model):
    tick = time.perf_counter()
    job = manager.submit(RunConfig(model=model, steps=5, eval_every=5, device=sys.argv[4]))
    while True:
        snap = manager.snapshot(job)
        if any("loss" in r for r in snap.records):
            seconds = time.perf_counter() - tick
            break
        if snap.finished:
            raise SystemExit(f"job ended without a loss: {snap.status} {snap.error}")
        time.sleep(0.005)
    manager.wait(job, timeout=300)
    return seconds

with tempfile.TemporaryDirectory() as root:
    manager = JobManager(root)
    if sys.argv[3] == "preloaded":
        from lora_explorer.models import preload
        preload()  # what ui.get_manager starts in the background
    print(json.dumps({"first": first_loss(manager, sys.argv[2]), "next": first_loss(manager, sys.argv[2])}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    results = {}
    for model in TARGETS:
        samples = {"immediate": [], "preloaded": []}
        for _ in range(args.repeats):
            for mode in samples:
                done = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), model, mode, args.device],
                                      capture_output=True, text=True, timeout=600, check=True)
                samples[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
        results[model] = {"immediate_s": min(s["first"] for s in samples["immediate"]),
                          "first_click_s": min(s["first"] for s in samples["preloaded"]),
                          "next_job_s": min(s["next"] for s in samples["immediate"] + samples["preloaded"]),
                          "samples": samples, "target_s": TARGETS[model]}
    print(f"\nsubmit → first logged loss, best of {args.repeats} fresh processes, load avg {os.getloadavg()[0]:.1f}\n")
    print("| model | immediate first job (s) | first click after preload (s) | next job (s) | target |")
    print("|---|---:|---:|---:|---:|")
    for model, r in results.items():
        print(f"| {model} | {r['immediate_s']:.2f} | {r['first_click_s']:.2f} | {r['next_job_s']:.2f} | "
              f"≤ {r['target_s']:g} |")
    out = write_result("submit_latency", {"results": results, "repeats": args.repeats}, args.device)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
