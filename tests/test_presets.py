"""Presets: each plans a valid sweep, and its findings are computed from the runs, numbers included."""
import dataclasses
import re

import pytest

from lora_explorer import presets, store, sweeps
from lora_explorer.config import RunConfig


def test_every_preset_plans_a_valid_sweep():
    expected = {"lora-plus": 4, "dora-cost": 2, "adalora": 2, "rslora-rank": 6, "alignment": 4, "low-rank-target": 4}
    for preset_id, count in expected.items():
        sweep = presets.PRESETS[preset_id].plan()
        assert sweep.preset == preset_id and len(sweep.configs()) == count, preset_id


def test_smoothing_is_tensorboards_debiased_ema():
    records = [{"step": 1, "loss": 1.0}, {"step": 2, "eval_loss": 9.0}, {"step": 2, "loss": 0.0},
               {"step": 3, "loss": float("nan")}, {"step": 4, "loss": 0.5}]
    w = 0.6
    first = (1 - w) * 1.0 / (1 - w)
    second = (w * (1 - w) * 1.0 + (1 - w) * 0.0) / (1 - w ** 2)
    third = (w * (w * (1 - w) * 1.0) + (1 - w) * 0.5) / (1 - w ** 3)
    steps, smoothed = zip(*presets.smoothed_losses(records, w))
    assert steps == (1, 2, 4) and smoothed == pytest.approx([first, second, third])


def numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+\.\d+", text)]


def toy(preset_id, root, **changes):
    """A preset's sweep on the toy model, short, so that its findings can be checked."""
    preset = presets.PRESETS[preset_id]
    preset = dataclasses.replace(preset, base=RunConfig(model="toy", steps=20), **changes)
    sweep = preset.plan()
    sweeps.run(sweep, root)
    return preset, sweep.runs(root)


def test_lora_plus_findings_state_the_measured_losses(tmp_path):
    preset, infos = toy("lora-plus", tmp_path, seeds=(0,))
    lines = preset.findings(infos)
    by_method = {info.config["method"]: info for info in infos}
    early = {m: presets.loss_at(by_method[m], 0.2) for m in by_method}
    assert numbers(lines[0])[:2] == pytest.approx([round(early["lora-plus"], 3), round(early["lora"], 3)])
    verdict = "better than" if early["lora-plus"] < early["lora"] * 0.99 else (
        "worse than" if early["lora-plus"] > early["lora"] * 1.01 else "about the same as")
    assert verdict in lines[0]


def test_alignment_and_low_rank_findings_come_from_the_files(tmp_path):
    preset, infos = toy("alignment", tmp_path)
    lines = preset.findings(infos)
    assert [line.split(":")[0] for line in lines] == ["lora", "lora-ga", "lora-pro", "full"]
    full = next(info for info in infos if info.config["method"] == "full")
    assert numbers(lines[-1])[:2] == pytest.approx([1.0, 1.0], abs=1e-3)  # full FT follows its own gradient
    lora = next(info for info in infos if info.config["method"] == "lora")
    step0 = [r["cos"] for r in store.Run(lora.path).alignment() if r["step"] == 0]
    assert numbers(lines[0])[0] == pytest.approx(round(sum(step0) / len(step0), 3))
    assert full.status == "completed"

    preset, infos = toy("low-rank-target", tmp_path / "target")
    lines = preset.findings(infos)
    assert sorted(line.split(" on a ")[0] + " " + line.split(" on a ")[1].split(" target")[0] for line in lines) == [
        "full full-rank", "full rank-4", "lora full-rank", "lora rank-4"]


def test_findings_need_the_runs_they_compare(tmp_path):
    preset, infos = toy("dora-cost", tmp_path, methods=("lora",))
    assert preset.findings(infos) == []
    assert presets.findings("dora-cost", tmp_path) == []  # no sweep of this preset under this root
