"""Every performance target in one run: runs each benchmark in its own process, then writes one table.

  loop_overhead    our loop ÷ a bare PEFT + torch loop (analysis off, and at the default cadence);
                   DoRA ÷ LoRA step time in both loops
  methods_cost     every method's step time and peak memory ÷ LoRA's; LoRA-GA init ÷ 10 LoRA steps
  spectrum_speed   factored vs dense spectrum of a rank-16 update of a 4096×4096 layer
  submit_latency   `submit` → first logged loss, toy and MiniLM
  compare_render   Compare page, 12 runs × 1000 points

Writes summary.md and summary.json (with the machine) beside each benchmark's own JSON, in
benchmarks/results/ (CPU) or benchmarks/results/<device>/ (else), or in --results. --readme also
puts the table into README.md between the markers for this device. --quick runs fewer steps and
repeats (for the GPU check's short lease); its numbers are noisier. Exits 1 when a benchmark could
not run; a missed target is reported in the table (and on stderr), not by the exit status.

Run:   .venv/bin/python benchmarks/run.py [--device cpu|cuda] [--quick] [--only NAME,...] [--readme]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import machine  # noqa: E402
from benchmarks.methods_cost import method_table  # noqa: E402


def plans(device: str, quick: bool) -> dict[str, list[str]]:
    """Each benchmark's arguments."""
    return {
        "loop_overhead": ["--device", device, "--steps", "30" if quick else "60", "--repeats", "1" if quick else "2"],
        "methods_cost": ["--device", device, "--steps", "10" if quick else "15", "--repeats", "1" if quick else "2"],
        "spectrum_speed": ["--device", device],
        "submit_latency": ["--device", device, "--repeats", "1" if quick else "2"],
        "compare_render": ["--repeats", "2" if quick else "5"],
    }


@dataclass
class Target:
    what: str
    measured: float  # an int for counts
    goal: str
    met: bool
    unit: str = ""
    note: str = ""

    def row(self) -> str:
        whole = isinstance(self.measured, int) or self.measured >= 100
        value = f"{self.measured:,.0f}{self.unit}" if whole else f"{self.measured:.2f}{self.unit}"
        return f"| {self.what} | {value} | {self.goal} | {'yes' if self.met else '**no**'} | {self.note} |"


def at_least(what, measured, goal, **kw) -> Target:
    return Target(what, measured, f"≥ {goal:g}{kw.get('unit', '')}", measured >= goal, **kw)


def at_most(what, measured, goal, **kw) -> Target:
    return Target(what, measured, f"≤ {goal:g}{kw.get('unit', '')}", measured <= goal, **kw)


def targets(results: dict) -> list[Target]:
    """Every target whose benchmark ran, judged by the goal that benchmark wrote beside its numbers."""
    found = []
    if loop := results.get("loop_overhead"):
        wall = "s_per_step"  # total wall time from the end of the warm-up to the last step
        low, high = loop["target_dora_agreement"]
        agreement = loop["dora_agreement_ours_over_bare"][wall]
        found += [
            at_least("our loop ÷ bare PEFT loop, steps/s, MiniLM LoRA r=8, analysis off",
                     loop["ratio_ours_over_bare_steps_per_s"][wall], loop["target"]),
            at_least("the same with spectra + alignment at the default cadence",
                     loop["ratio_ours_analysis_over_bare_steps_per_s"][wall], loop["target_analysis"],
                     note=f"{loop['ratio_ours_analysis_over_ours_steps_per_s'][wall]:.2f} of ours without"),
            Target("DoRA ÷ LoRA step time, our loop ÷ bare loop", agreement, f"{low:.2f}–{high:.2f}",
                   low <= agreement <= high,
                   note=f"DoRA costs {loop['dora_over_lora_time_ours'][wall]:.2f}× LoRA in ours, "
                        f"{loop['dora_over_lora_time_bare'][wall]:.2f}× in bare"),
        ]
    if cost := results.get("methods_cost"):
        goals = cost["targets"]
        rows = {row["method"]: row for row in cost["rows"] if "error" not in row}
        failed = [row["method"] for row in cost["rows"] if "error" in row]
        for method, goal in goals.items():
            if method in rows:
                found += [at_most(f"{method} step time ÷ LoRA", rows[method]["step_x_lora"], goal["step"], unit="×"),
                          at_most(f"{method} peak memory ÷ LoRA", rows[method]["mem_x_lora"], goal["memory"],
                                  unit="×")]
        found.append(Target("methods that trained", len(rows), f"all {len(cost['rows'])}", not failed,
                            note=f"failed: {', '.join(failed)}" if failed else ""))
        found.append(at_most("LoRA-GA initialisation ÷ 10 LoRA steps", cost["lora_ga_init_s"] / cost["ten_lora_steps_s"],
                             goals["lora_ga_init_over_ten_steps"], unit="×",
                             note=f"{cost['lora_ga_init_s']:.2f} s vs {cost['ten_lora_steps_s']:.2f} s"))
    if spectrum := results.get("spectrum_speed"):
        found.append(at_least(f"factored ÷ dense spectrum, {spectrum['size']}×{spectrum['size']} rank "
                              f"{spectrum['rank']}, speed-up", spectrum["speedup"], spectrum["target"], unit="×",
                              note=f"{spectrum['factored_s'] * 1e3:.2f} ms vs {spectrum['dense_s']:.2f} s"))
    if submit := results.get("submit_latency"):
        for model, r in submit["results"].items():
            found.append(at_most(f"submit → first logged loss, {model} (after the app's start-up preload)",
                                 r["first_click_s"], r["target_s"], unit=" s",
                                 note=f"submitted the instant the app starts: {r['immediate_s']:.2f} s; "
                                      f"next job {r['next_job_s']:.2f} s"))
    if render := results.get("compare_render"):
        found.append(at_most(f"Compare page rerun, {render['runs']} runs × {render['points_per_run']} points",
                             render["worst_median_s"], render["target_s"], unit=" s",
                             note=f"first render, imports included: "
                                  f"{max(r['first_s'] for r in render['layouts'].values()):.2f} s"))
    return found


def markdown(found: list[Target], results: dict, info: dict, quick: bool) -> str:
    where = f"{info['cpu']}, {info['cpu_count']} cores, {info['memory_gib']} GiB"
    if info.get("gpu"):
        where = f"{info['gpu']} (CUDA {info['cuda']}) with {where} of host memory"
    lines = [f"Measured {info['timestamp'][:10]} at commit {info['commit']} on {where}, device {info['device']}, "
             f"torch {info['torch']}, transformers {info['transformers']}, peft {info['peft']}; "
             f"load average {info['load_avg_1min']:.1f} at the start{' (--quick)' if quick else ''}.", "",
             "| target | measured | goal | met | note |", "|---|---:|---:|:---:|---|",
             *(target.row() for target in found)]
    if cost := results.get("methods_cost"):
        lines += ["", *method_table(cost["rows"])]
    return "\n".join(lines) + "\n"


def update_readme(readme: Path, device: str, table: str) -> None:
    """Replace the table between `<!-- benchmarks:DEVICE -->` and `<!-- /benchmarks:DEVICE -->`."""
    text = readme.read_text()
    start, end = f"<!-- benchmarks:{device} -->", f"<!-- /benchmarks:{device} -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {start} ... {end} section")
    readme.write_text(pattern.sub(lambda _: f"{start}\n{table}{end}", text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast, as the app trains)")
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument("--only", default="", help="comma-separated benchmark names; default: all")
    parser.add_argument("--results", help="folder for the JSON and the table")
    parser.add_argument("--readme", action="store_true", help="also write the table into README.md")
    args = parser.parse_args()
    chosen = plans(args.device, args.quick)
    if args.only:
        unknown = set(args.only.split(",")) - set(chosen)
        if unknown:
            parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}; choose from {', '.join(chosen)}")
        chosen = {name: argv for name, argv in chosen.items() if name in args.only.split(",")}
    folder = Path(args.results or ROOT / "benchmarks" / "results" / ("" if args.device == "cpu" else args.device))
    folder = folder.resolve()  # the benchmarks run from the repository root
    folder.mkdir(parents=True, exist_ok=True)
    info = machine(args.device)

    results, failures = {}, []
    for name, argv in chosen.items():
        print(f"\n=== {name} {' '.join(argv)}", flush=True)
        tick = time.perf_counter()
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *argv], cwd=ROOT,
                              env={**os.environ, "BENCH_RESULTS": str(folder)})
        print(f"=== {name}: {time.perf_counter() - tick:.0f} s, exit {done.returncode}", flush=True)
        try:
            if done.returncode != 0:
                raise ValueError(f"exit {done.returncode}")
            results[name] = json.loads((folder / f"{name}.json").read_text())
        except (OSError, ValueError) as error:
            failures.append(f"{name} ({error})")

    found = targets(results)
    table = markdown(found, results, info, args.quick)
    if failures:
        table += f"\nBenchmarks that failed to run: {', '.join(failures)}.\n"
    (folder / "summary.md").write_text(table)
    (folder / "summary.json").write_text(json.dumps({"machine": info, "quick": args.quick, "failed": failures,
                                                     "targets": [asdict(target) for target in found]}, indent=2))
    print("\n" + table + f"\nwrote {folder / 'summary.md'} and summary.json")
    if args.readme and failures:
        print("README.md left as it was: a table with failed benchmarks would replace a complete one", file=sys.stderr)
    elif args.readme:
        update_readme(ROOT / "README.md", args.device, table)
    missed = [target.what for target in found if not target.met]
    if missed or failures:
        print(f"{len(missed)} target(s) missed, {len(failures)} benchmark(s) failed", file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
