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
repeats (for the GPU check's short lease); its numbers are noisier.

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
    """Every target whose benchmark ran, from the benchmarks' JSON."""
    found = []
    if loop := results.get("loop_overhead"):
        wall = "s_per_step"  # total wall time from the end of the warm-up to the last step
        found += [
            at_least("our loop ÷ bare PEFT loop, steps/s, MiniLM LoRA r=8, analysis off",
                     loop["ratio_ours_over_bare_steps_per_s"][wall], 0.97),
            at_least("the same with spectra + alignment at the default cadence",
                     loop["ratio_ours_analysis_over_bare_steps_per_s"][wall], 0.85,
                     note=f"{loop['ratio_ours_analysis_over_ours_steps_per_s'][wall]:.2f} of ours without"),
            Target("DoRA ÷ LoRA step time, our loop ÷ bare loop", loop["dora_agreement_ours_over_bare"][wall],
                   "0.90–1.10", 0.9 <= loop["dora_agreement_ours_over_bare"][wall] <= 1.1,
                   note=f"DoRA costs {loop['dora_over_lora_time_ours'][wall]:.2f}× LoRA in ours, "
                        f"{loop['dora_over_lora_time_bare'][wall]:.2f}× in bare"),
        ]
    if cost := results.get("methods_cost"):
        rows = {row["method"]: row for row in cost["rows"] if "error" not in row}
        failed = [row["method"] for row in cost["rows"] if "error" in row]
        if "lora-pro" in rows:
            found += [at_most("LoRA-Pro step time ÷ LoRA", rows["lora-pro"]["step_x_lora"], 1.3, unit="×"),
                      at_most("LoRA-Pro peak memory ÷ LoRA", rows["lora-pro"]["mem_x_lora"], 1.5, unit="×")]
        found.append(Target("methods that trained", len(rows), f"all {len(cost['rows'])}", not failed,
                            note=f"failed: {', '.join(failed)}" if failed else ""))
        found.append(at_most("LoRA-GA initialisation ÷ 10 LoRA steps", cost["lora_ga_init_s"] / cost["ten_lora_steps_s"],
                             1.0, unit="×", note=f"{cost['lora_ga_init_s']:.2f} s vs {cost['ten_lora_steps_s']:.2f} s"))
    if spectrum := results.get("spectrum_speed"):
        found.append(at_least("factored ÷ dense spectrum, 4096×4096 rank 16, speed-up", spectrum["speedup"], 50,
                              unit="×", note=f"{spectrum['factored_s'] * 1e3:.2f} ms vs {spectrum['dense_s']:.2f} s"))
    if submit := results.get("submit_latency"):
        for model, label in (("toy", "toy"), ("minilm", "MiniLM")):
            if model in submit["results"]:
                r = submit["results"][model]
                found.append(at_most(f"submit → first logged loss, {label} (after the app's start-up preload)",
                                     r["first_click_s"], r["target_s"], unit=" s",
                                     note=f"submitted the instant the app starts: {r['immediate_s']:.2f} s; "
                                          f"next job {r['next_job_s']:.2f} s"))
    if render := results.get("compare_render"):
        found.append(at_most("Compare page rerun, 12 runs × 1000 points", render["worst_median_s"], 1.0, unit=" s",
                             note=f"first render, imports included: "
                                  f"{max(r['first_s'] for r in render['layouts'].values()):.2f} s"))
    return found


def markdown(found: list[Target], results: dict, info: dict, quick: bool) -> str:
    where = info.get("gpu") or f"{info['cpu']}, {info['cpu_count']} cores"
    lines = [f"Measured {info['timestamp'][:10]} at commit {info['commit']} on {where}, {info['memory_gib']} GiB, "
             f"{info['device']}, torch {info['torch']}, transformers {info['transformers']}, peft {info['peft']}; "
             f"load average {info['load_avg_1min']:.1f} at the start{' (--quick)' if quick else ''}.", "",
             "| target | measured | goal | met | note |", "|---|---:|---:|:---:|---|",
             *(target.row() for target in found)]
    if cost := results.get("methods_cost"):
        lines += ["", "| method | ms/step | × LoRA | peak MB | × LoRA | trainable |", "|---|---:|---:|---:|---:|---:|"]
        for row in cost["rows"]:
            if "error" in row:
                lines.append(f"| {row['method']} | failed: {row['error']} | | | | |")
            else:
                lines.append(f"| {row['method']} | {row['ms_per_step']:.0f} | {row['step_x_lora']:.2f} | "
                             f"{row['peak_mem_mb']:.0f} | {row['mem_x_lora']:.2f} | {row['trainable_params']:,} |")
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
    folder.mkdir(parents=True, exist_ok=True)
    info = machine(args.device)

    results, failures = {}, []
    for name, argv in chosen.items():
        print(f"\n=== {name} {' '.join(argv)}", flush=True)
        tick = time.perf_counter()
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *argv], cwd=ROOT,
                              env={**os.environ, "BENCH_RESULTS": str(folder)})
        print(f"=== {name}: {time.perf_counter() - tick:.0f} s, exit {done.returncode}", flush=True)
        if done.returncode != 0:
            failures.append(name)
            continue
        results[name] = json.loads((folder / f"{name}.json").read_text())

    found = targets(results)
    table = markdown(found, results, info, args.quick)
    if failures:
        table += f"\nBenchmarks that failed to run: {', '.join(failures)}.\n"
    (folder / "summary.md").write_text(table)
    (folder / "summary.json").write_text(json.dumps({"machine": info, "quick": args.quick, "failed": failures,
                                                     "targets": [asdict(target) for target in found]}, indent=2))
    print("\n" + table + f"\nwrote {folder / 'summary.md'} and summary.json")
    if args.readme:
        update_readme(ROOT / "README.md", args.device, table)
    missed = [target.what for target in found if not target.met]
    if missed or failures:
        print(f"{len(missed)} target(s) missed, {len(failures)} benchmark(s) failed", file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
