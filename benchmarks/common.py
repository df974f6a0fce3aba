"""What every benchmark shares: where results go and a description of the machine they came from.

Results go to benchmarks/results/, or to the folder named by BENCH_RESULTS (benchmarks/run.py sets it,
so that a GPU run does not overwrite the CPU numbers that README quotes).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def results_dir() -> Path:
    folder = Path(os.environ.get("BENCH_RESULTS") or ROOT / "benchmarks" / "results")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_result(name: str, result: dict, device: str = "cpu") -> Path:
    path = results_dir() / f"{name}.json"
    path.write_text(json.dumps({**result, "machine": machine(device)}, indent=2) + "\n")
    return path


def machine(device: str = "cpu") -> dict:
    """The facts a reader needs to weigh the numbers: processor, cores, memory, accelerator, versions, load."""
    import torch

    from lora_explorer.train import versions

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(), "memory_gib": _memory_gib(), "torch_threads": torch.get_num_threads(),
            "device": device, "load_avg_1min": os.getloadavg()[0], "commit": _commit(),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"), **versions()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages * page_size / 2**30, 1)


def _commit() -> str | None:
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return None
    return done.stdout.strip() or None
