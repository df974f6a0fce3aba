"""benchmarks/run.py turns the benchmarks' JSON into one table of targets, met or not."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import run  # noqa: E402

LOOP = {"ratio_ours_over_bare_steps_per_s": {"s_per_step": 0.95},
        "ratio_ours_analysis_over_bare_steps_per_s": {"s_per_step": 0.88},
        "ratio_ours_analysis_over_ours_steps_per_s": {"s_per_step": 0.93},
        "dora_agreement_ours_over_bare": {"s_per_step": 1.12},
        "dora_over_lora_time_ours": {"s_per_step": 1.2}, "dora_over_lora_time_bare": {"s_per_step": 1.07},
        "target": 0.97, "target_analysis": 0.85, "target_dora_agreement": [0.9, 1.1]}
COST = {"rows": [{"method": "lora", "ms_per_step": 250.0, "step_x_lora": 1.0, "peak_mem_mb": 190.0, "mem_x_lora": 1.0,
                  "trainable_params": 74498},
                 {"method": "lora-pro", "ms_per_step": 300.0, "step_x_lora": 1.2, "peak_mem_mb": 300.0,
                  "mem_x_lora": 1.58, "trainable_params": 74498},
                 {"method": "vera", "error": "boom"}],
        "lora_ga_init_s": 2.0, "ten_lora_steps_s": 2.5,
        "targets": {"lora-pro": {"step": 1.3, "memory": 1.5}, "lora_ga_init_over_ten_steps": 1.0}}


def test_each_target_is_judged_by_its_goal():
    found = {target.what: target for target in run.targets({"loop_overhead": LOOP, "methods_cost": COST})}
    assert not found["our loop ÷ bare PEFT loop, steps/s, MiniLM LoRA r=8, analysis off"].met  # 0.95 < 0.97
    assert found["the same with spectra + alignment at the default cadence"].met  # 0.88 >= 0.85
    assert not found["DoRA ÷ LoRA step time, our loop ÷ bare loop"].met  # 1.12 outside 0.90-1.10
    assert found["lora-pro step time ÷ LoRA"].met and not found["lora-pro peak memory ÷ LoRA"].met
    assert found["LoRA-GA initialisation ÷ 10 LoRA steps"].measured == pytest.approx(0.8)
    assert not found["methods that trained"].met and "vera" in found["methods that trained"].note
    assert not any("submit" in what or "spectrum" in what for what in found)  # those benchmarks did not run


def test_the_table_goes_into_the_readme_between_its_device_markers(tmp_path):
    info = {"timestamp": "2026-12-05T00:00:00", "commit": "abc1234", "cpu": "Some CPU", "cpu_count": 2,
            "memory_gib": 24.0, "device": "cpu", "torch": "2", "transformers": "5", "peft": "0.21",
            "load_avg_1min": 1.0}
    results = {"loop_overhead": LOOP, "methods_cost": COST}
    table = run.markdown(run.targets(results), results, info, quick=False)
    assert "| **no** |" in table and "| vera | failed: boom |" in table and "Some CPU, 2 cores" in table
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- benchmarks:cpu -->\nold\n<!-- /benchmarks:cpu -->\n"
                      "<!-- benchmarks:cuda -->\ngpu\n<!-- /benchmarks:cuda -->\nend\n")
    run.update_readme(readme, "cpu", table)
    text = readme.read_text()
    assert "old" not in text and table in text and "\ngpu\n" in text and text.endswith("end\n")
    with pytest.raises(SystemExit, match="no <!-- benchmarks:rocm -->"):
        run.update_readme(readme, "rocm", table)


def test_the_committed_table_is_what_the_committed_results_say():
    """summary.md is derived from the benchmarks' JSON, never edited by hand."""
    import json

    folder = ROOT / "benchmarks" / "results"
    summary = json.loads((folder / "summary.json").read_text())
    results = {name: json.loads((folder / f"{name}.json").read_text()) for name in run.plans("cpu", False)}
    found = run.targets(results)
    assert len(found) == 11 and [t.met for t in found] == [t["met"] for t in summary["targets"]]
    assert run.markdown(found, results, summary["machine"], summary["quick"]) == (folder / "summary.md").read_text()
    assert (folder / "summary.md").read_text() in (ROOT / "README.md").read_text()
