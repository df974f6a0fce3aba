"""The Compare page (AppTest, against a real toy sweep), the comparison logic of compare.py, checked
against hand computations, and the method colours and band traces of the figures."""
import itertools
import json
import math
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import lora_explorer as lx  # after the path fix
from lora_explorer import compare, plots, store, sweeps, ui
from test_insight import charts, values  # noqa: E402
from conftest import open_page as open_app_page  # noqa: E402

COMPARE = "pages/4_Compare.py"


# ---------------------------------------------------------------- compare.py
def test_ema_is_tensorboards_debiased_average():
    # w = 0.5: s1 = 0.5, s2 = 0.25 + 1 = 1.25, s3 = 0.625 + 2 = 2.625; debiased by 1 − 0.5^t
    assert np.allclose(compare.ema([1.0, 2.0, 4.0], 0.5), [0.5 / 0.5, 1.25 / 0.75, 2.625 / 0.875])
    assert np.allclose(compare.ema([1.0, 2.0, 4.0], 0.5), [1.0, 5 / 3, 3.0])
    with_gap = compare.ema([1.0, math.nan, 2.0], 0.5)  # a gap neither moves the average nor counts
    assert with_gap[0] == 1.0 and math.isnan(with_gap[1]) and with_gap[2] == pytest.approx(5 / 3)
    assert list(compare.ema([3.0, 1.0], 0.0)) == [3.0, 1.0]
    assert list(compare.ema([0.7] * 5, 0.9)) == [0.7] * 5  # a constant stays exactly constant


def config(method="lora", seed=0, **changes):
    base = {"model": "toy", "method": method, "task": "teacher", "method_params": {"rank": 8, "alpha": 16.0},
            "task_params": {"target_rank": 4}, "lr": 0.003, "steps": 8, "seed": seed, "name": "s", "group": "g",
            "run_id": f"{method}-{seed}", "created_at": seed, "versions": {"torch": "x"}}
    return {**base, **changes}


def test_seed_groups_join_runs_that_differ_only_by_seed_name_or_group():
    configs = {"a": config(seed=0), "b": config(seed=1, name="other", group="h", run_id="b", created_at=9,
                                                  versions={"torch": "y"}),
               "c": config(seed=2, lr=0.01), "d": config("dora", seed=0),
               "e": config(seed=3, method_params={"rank": 4, "alpha": 16.0}), "f": config(seed=4)}
    assert compare.seed_groups(configs) == [["a", "b", "f"], ["c"], ["d"], ["e"]]


def test_mean_and_std_over_seeds_align_on_step():
    first = (np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0]), np.array([1.0, 2.0, 3.0]))
    second = (np.array([1.0, 2.0]), np.array([12.0, 22.0]), np.array([3.0, 6.0]))  # still running: no step 3
    band = compare.mean_std([first, second])
    assert list(band["step"]) == [1, 2, 3] and list(band["n"]) == [2, 2, 1]
    assert np.allclose(band["x"], [11, 21, 30]) and np.allclose(band["mean"], [2, 4, 3])
    assert np.allclose(band["std"][:2], [np.std([1, 3], ddof=1), np.std([2, 6], ddof=1)])
    assert math.isnan(band["std"][2])  # one run: no spread


def frame(records):
    return compare.metrics_frame(records)


def run_data(run_id, method="lora", summary=None, records=(), model_task=("toy", "teacher"), path=None, **changes):
    cfg = config(method, **changes)
    cfg["model"], cfg["task"] = model_task
    return compare.RunData(run_id, Path(path or f"/nonexistent/{run_id}"), cfg,
                           {"status": "completed", "eval_metric_name": "r2", **(summary or {})},
                           frame(list(records)))


def test_band_curves_and_single_runs_of_a_panel():
    records = [[{"step": s, "loss": s * k, "elapsed_s": s / 10} for s in (1, 2, 3)] for k in (1.0, 3.0)]
    runs = [run_data("a", records=records[0], seed=0), run_data("b", records=records[1], seed=1),
            run_data("c", "dora", records=records[0])]
    labels = {"a": "lora · a", "b": "lora · b", "c": "dora · c"}
    groups = compare.seed_groups({run.id: run.config for run in runs})
    curves, methods = compare.panel_curves(runs, labels, "loss", smoothing=0.0, groups=groups, bands=True)
    assert list(curves) == ["lora · s · seeds 0, 1", "dora · c"]
    assert methods == {"lora · s · seeds 0, 1": "lora", "dora · c": "dora"}
    band = curves["lora · s · seeds 0, 1"]
    assert np.allclose(band["y"], [2, 4, 6]) and np.allclose(band["upper"] - band["y"], np.std([1, 3], ddof=1) * np.array([1, 2, 3]))
    assert curves["dora · c"].get("lower") is None
    runs[1] = run_data("b", records=records[1][:2], seed=1)  # seed 1 still running: no step 3 yet
    partial, _ = compare.panel_curves(runs, labels, "loss", smoothing=0.0, groups=groups, bands=True)
    band = partial["lora · s · seeds 0, 1"]
    assert np.allclose(band["y"], [2, 4, 3]) and list(band["n"]) == [2, 2, 1] and list(band["band_x"]) == [1, 2]
    single, _ = compare.panel_curves(runs, labels, "loss", "elapsed_s", smoothing=0.5, groups=groups, bands=False)
    assert list(single) == ["lora · a", "lora · b", "dora · c"]
    assert np.allclose(single["lora · a"]["x"], [0.1, 0.2, 0.3]) and np.allclose(single["lora · a"]["raw"], [1, 2, 3])
    assert np.allclose(single["lora · a"]["y"], compare.ema([1, 2, 3], 0.5))


def test_examples_are_interpolated_for_evaluation_and_alignment_lines():
    records = [{"step": 0, "align_cos": 0.5, "elapsed_s": 0.0},
               *({"step": s, "loss": 1.0, "examples": 64 * s, "elapsed_s": s * 0.1} for s in (1, 2, 4)),
               {"step": 3, "eval_loss": 2.0, "r2": 0.5, "elapsed_s": 0.35}]
    table = frame(records)
    assert list(compare.x_values(table, "examples")) == [0, 64, 128, 256, 192]
    steps, x, y = compare.curve(table, "eval_loss", "examples")
    assert list(steps) == [3] and list(x) == [192] and list(y) == [2.0]
    assert list(compare.curve(table, "align_cos", "examples")[1]) == [0]
    assert compare.curve(table, "tokens", "step")[0].size == 0  # never logged
    runs = [run_data("a", records=records), run_data("lm", records=[{"step": 1, "loss": 3.0, "tokens": 900}])]
    assert list(compare.x_axes(runs[:1])) == ["step", "elapsed_s", "examples"]
    assert list(compare.x_axes(runs)) == ["step", "elapsed_s", "examples", "tokens"]  # a language model's run
    assert list(compare.curve(runs[1].frame, "loss", "tokens")[1]) == [900]


def write_adapter(path: Path, layers: dict[str, tuple[int, int]], rank: int) -> None:
    from safetensors.numpy import save_file

    (path / "adapter").mkdir(parents=True)
    save_file({f"base_model.model.{name}.lora_{factor}.weight":
               np.zeros((rank, n) if factor == "A" else (m, rank), dtype=np.float32)
               for name, (m, n) in layers.items() for factor in "AB"}, str(path / "adapter" / "adapter_model.safetensors"))


def test_cost_table_relative_time_and_optimizer_state(tmp_path):
    pro = tmp_path / "pro"
    write_adapter(pro, {"fc1": (64, 32), "fc2": (16, 64)}, rank=4)
    factors = 4 * (64 + 32) + 4 * (16 + 64)
    runs = [
        run_data("l1", summary={"sec_per_step": 0.01, "trainable_params": 1000, "steps_done": 10}),
        run_data("l2", summary={"sec_per_step": 0.03, "trainable_params": 1000, "steps_done": 10}, seed=1),
        run_data("d", "dora", summary={"sec_per_step": 0.03, "trainable_params": 1100, "final_eval_metric": 0.5,
                                       "peak_mem_mb": 12.5}),
        run_data("p", "lora-pro", path=pro, summary={"sec_per_step": 0.02, "trainable_params": factors + 100},
                 method_params={"rank": 4, "moments": "full"}),
        run_data("q", "lora-pro", summary={"trainable_params": 500}, method_params={"moments": "full"}),
        run_data("f", "full", summary={"sec_per_step": 0.05, "trainable_params": 9000}, model_task=("minilm", "sentiment")),
    ]
    table = compare.cost_table(runs, {run.id: f"label {run.id}" for run in runs}).set_index("run_id")
    assert table.loc["d", "x_lora"] == pytest.approx(0.03 / 0.02) and table.loc["l1", "x_lora"] == pytest.approx(0.5)
    assert math.isnan(table.loc["f", "x_lora"])  # no LoRA run on its model and task
    assert math.isnan(table.loc["q", "x_lora"])  # no s/step yet
    assert table.loc["l1", "time_s"] == pytest.approx(0.1) and table.loc["d", "peak_mem_mb"] == 12.5
    assert table.loc["d", "optimizer_state_mb"] == pytest.approx(8 * 1100 / 2 ** 20)
    full_size = 64 * 32 + 16 * 64  # two fp32 m×n moments per adapted layer, plus the 100 other params
    assert table.loc["p", "optimizer_state_mb"] == pytest.approx(8 * (full_size + 100) / 2 ** 20)
    assert not table.loc["p", "optimizer_state_estimated"] and table.loc["q", "optimizer_state_estimated"]
    assert table.loc["d", "final_eval_metric"] == 0.5 and table.loc["d", "run"] == "label d"
    assert compare.optimizer_state_bytes({"method": "lora-pro", "method_params": {"moments": "factor"}},
                                         {"trainable_params": 10}, pro) == (80, False)


def test_pareto_front_for_both_directions():
    points = {"cheap": (1.0, 0.5), "better": (2.0, 0.8), "dominated": (3.0, 0.7), "tie": (2.0, 0.8),
              "none": (math.nan, 0.9)}
    assert compare.pareto_front(points) == ["cheap", "better", "tie"]
    assert compare.pareto_front({"a": (1.0, 5.0), "b": (2.0, 3.0), "c": (3.0, 4.0)},
                                higher_is_better=False) == ["a", "b"]


def test_config_diff_keeps_only_differing_settings():
    configs = {"a": config(seed=0), "b": config(seed=1, lr=0.01, method_params={"rank": 4, "alpha": 16.0},
                                               run_id="other", created_at=5, versions={"torch": "y"})}
    full = compare.config_table(configs)
    assert {"run_id", "versions.torch", "method_params.rank", "task_params.target_rank"} <= set(full.columns)
    diff = compare.config_table(configs, differences_only=True)
    assert list(diff.columns) == ["method_params.rank", "lr", "seed"] and list(diff.index) == ["a", "b"]
    assert diff.loc["b", "lr"] == 0.01
    missing = compare.config_table({"a": {"x": 1}, "b": {}}, differences_only=True)
    assert list(missing.columns) == ["x"] and missing.loc["b", "x"] is None
    assert compare.cell_text(["q", "v"]) == '["q", "v"]' and compare.cell_text(None) == ""


def test_curves_csv_is_full_resolution_with_every_logged_key():
    records = [{"step": s, "loss": 1 / s, "lr": 0.1, "elapsed_s": s / 100, "step_time_s": 0.01, "examples": 8 * s}
               for s in range(1, 2501)] + [{"step": 2500, "eval_loss": 0.5, "r2": 0.9, "elapsed_s": 25.0}]
    runs = [run_data("a", records=records), run_data("b", "dora", records=records[:10])]
    table = pd.read_csv(pd.io.common.StringIO(compare.curves_csv(runs)))
    assert len(table) == 2501 + 10 > plots.COMPARE_POINTS  # never downsampled
    assert list(table.columns[:5]) == ["run_id", "method", "step", "elapsed_s", "examples"]
    assert {"loss", "lr", "step_time_s", "eval_loss", "r2"} <= set(table.columns)
    assert list(table["loss"][:2500]) == pytest.approx([1 / s for s in range(1, 2501)])
    assert table["method"].tolist()[-1] == "dora" and table["examples"].iloc[0] == 8
    assert "8.0" not in compare.curves_csv(runs).splitlines()[1]  # counts stay integers
    costs = pd.read_csv(pd.io.common.StringIO(compare.cost_csv(compare.cost_table(runs, {"a": "a", "b": "b"}))))
    assert list(costs.columns) == list(compare.COST_COLUMNS) and len(costs) == 2


def test_a_run_with_corrupt_files_still_reads(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config()))
    (path / "summary.json").write_text("{broken")
    (path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    run = compare.read_run(path)
    assert run.status == "interrupted" and list(run.frame["loss"]) == [2.0]
    assert run.problems == ("summary.json is missing or unreadable, so the run is listed as interrupted",)


# ---------------------------------------------------------------- figures
def lab(color: str) -> np.ndarray:
    rgb = np.array([int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    rgb = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ rgb
    f = np.cbrt(np.maximum(xyz / np.array([0.95047, 1.0, 1.08883]), 0.008856))
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_every_method_has_its_own_distinct_colour():
    from lora_explorer.methods import REGISTRY

    assert set(plots.METHOD_COLORS) == set(REGISTRY) and len(set(plots.METHOD_COLORS.values())) == 12
    for a, b in itertools.combinations(plots.METHOD_COLORS.values(), 2):
        assert np.linalg.norm(lab(a) - lab(b)) > 25, (a, b)
    assert plots.method_color("lora") == plots.METHOD_COLORS["lora"]
    assert plots.method_color("plugin") == plots.method_color("plugin")  # a stable colour for unknown methods


def test_method_colours_are_the_same_in_every_figure():
    infos = [store.RunInfo(f"2026-{m}-{i}", Path("."), {"method": m}, {}) for i, m in enumerate(["lora", "dora", "lora"])]
    colors = ui.method_colors(infos)
    labels = list(colors)
    spectra = [{"step": 0, "layer": "fc1", "sigma": [2.0, 1.0], "stable_rank": 1.25, "effective_rank": 1.5,
                "delta_m": 0.1, "delta_d": 0.2}]
    alignment = [{"step": 0, "layer": "fc1", "cos": 0.5, "bound_r": 0.7, "bound_2r": 0.9}]
    figures = [plots.spectrum_figure(dict.fromkeys(labels, spectra), "fc1", 0, colors=colors),
               plots.rank_figure(dict.fromkeys(labels, spectra), "fc1", colors=colors),
               plots.dora_figure(dict.fromkeys(labels, spectra), colors=colors),
               plots.alignment_figure(dict.fromkeys(labels, alignment), colors=colors),
               plots.overlap_figure({key: {"fc1": 0.5} for key in labels}, 4, colors=colors),
               plots.intruder_figure({key: {"fc1": 1} for key in labels}, 10, colors=colors),
               plots.loss_figure({key: [{"step": 1, "loss": 1.0}] for key in labels}, colors=colors),
               plots.curves_figure({label: {"x": [1, 2], "y": [1, 2]} for label in labels}, colors=colors)]
    for figure in figures:
        for trace in figure.data:
            label = next(label for label in labels if trace.name.startswith(label))
            color = trace.marker.color if trace.type == "bar" or trace.mode == "markers" else trace.line.color
            assert color == plots.METHOD_COLORS[label.split(" ")[0]], (trace.name, color)
    bars = plots.first_step_alignment_figure(dict.fromkeys(labels, alignment), colors=colors).data[0]
    assert list(bars.marker.color) == [colors[label] for label in labels]
    assert colors[labels[0]] == colors[labels[2]] != colors[labels[1]]  # two LoRA runs share a hue
    assert plots.method_dashes({"a": "lora", "b": "dora", "c": "lora"}) == {"a": "solid", "b": "solid", "c": "dash"}


def test_curves_figure_draws_bands_raw_curves_and_downsamples():
    x = np.arange(1, 1001, dtype=float)
    curves = {"lora · seeds 0, 1": {"x": x, "y": x, "raw": x + 1, "lower": x - 1, "upper": x + 2,
                                    "n": np.full(1000, 2)},
              "dora": {"x": x[:5], "y": x[:5]}}
    figure = plots.curves_figure(curves, colors={"lora · seeds 0, 1": "#111111", "dora": "#222222"},
                                 dashes={"dora": "dash"}, y_title="loss", log_y=True)
    band, raw, mean, dora = figure.data
    assert band.fill == "toself" and not band.showlegend and band.fillcolor == "#111111"
    assert len(band.x) == 2 * len(mean.x) and len(mean.x) <= plots.COMPARE_POINTS and mean.x[-1] == 1000
    assert band.y[0] == 3 and band.y[-1] == 0.5  # upper from the left, lower back; log-y: lower floored above 0
    assert raw.opacity < 1 and not raw.showlegend and "mean of %{customdata} runs" in mean.hovertemplate
    assert set(mean.customdata) == {2}
    assert dora.line.dash == "dash" and dora.mode == "lines+markers" and figure.layout.yaxis.type == "log"


def test_pareto_figure_rings_the_front():
    figure = plots.pareto_figure({"a": (1.0, 0.5), "b": (2.0, 0.9), "c": (3.0, 0.6)}, ["a", "b"], x_title="time",
                                 y_title="r2", colors={"a": "#000001"})
    a, _, c, front = figure.data
    assert a.marker.line.color == "black" and c.marker.line.color == "white" and a.marker.color == "#000001"
    assert list(front.x) == [1.0, 2.0] and front.line.dash == "dash"


@pytest.mark.parametrize("figure", [lambda: plots.curves_figure({}), lambda: plots.pareto_figure({}, [], x_title="x",
                                                                                               y_title="y")])
def test_compare_figures_say_when_they_have_nothing_to_draw(figure):
    drawn = figure()
    assert not drawn.data and drawn.layout.annotations[0].text.startswith("no ")


# ---------------------------------------------------------------- the page
@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory):
    """A real toy sweep: LoRA and DoRA, seeds 0 and 1, 8 steps each (trained once for the module)."""
    root = tmp_path_factory.mktemp("runs")
    made = lx.sweep(["lora", "dora"], seeds=[0, 1], runs_dir=root, model="toy", steps=8, progress=False)
    assert all(run.summary()["status"] == "completed" for run in made)
    (sweep,) = sweeps.list_sweeps(root)
    return root, sweep, {(run.config()["method"], run.config()["seed"]): run for run in made}


def open_page(query_params: dict | None = None) -> AppTest:
    return open_app_page(COMPARE, query_params)


def legend(spec: dict) -> list[str]:
    return [trace["name"] for trace in spec["data"] if trace.get("showlegend", True)]


def label(run) -> str:
    return ui.run_labels([store.RunInfo(run.id, run.path, run.config(), run.summary())])[run.id]


def test_a_sweep_link_opens_its_runs_with_seed_bands_costs_and_differences(sweep_root, page_root):
    root, sweep, made = sweep_root
    page_root(root)
    at = open_page({"sweep": sweep.id})
    assert at.selectbox(key="sweep").value == sweep.id
    assert sorted(at.multiselect(key="compare_runs").value) == sorted(run.id for run in made.values())
    shown = charts(at)
    assert set(shown) == {"curve_loss", "curve_eval_loss", "curve_r2", "pareto_chart"}
    assert len(at.caption) >= len(shown) and all(caption.proto.help for caption in at.caption[:len(shown)])
    loss = shown["curve_loss"]
    assert legend(loss) == [f"lora · {sweep.name} · seeds 0, 1", f"dora · {sweep.name} · seeds 0, 1"]
    bands = [trace for trace in loss["data"] if trace.get("fill") == "toself"]
    assert [trace["fillcolor"] for trace in bands] == [plots.METHOD_COLORS["lora"], plots.METHOD_COLORS["dora"]]
    mean = next(trace for trace in loss["data"] if trace["name"] == f"lora · {sweep.name} · seeds 0, 1")
    raw = [np.array([r["loss"] for r in made[("lora", seed)].metrics() if "loss" in r]) for seed in (0, 1)]
    assert np.allclose(values(mean["y"]), compare.ema(raw[0], 0.6) / 2 + compare.ema(raw[1], 0.6) / 2)

    costs = at.dataframe[0].value
    assert sorted(costs["run"]) == sorted(label(run) for run in made.values())
    lora_mean = np.mean([made[("lora", seed)].summary()["sec_per_step"] for seed in (0, 1)])
    dora = costs.set_index("run").loc[label(made[("dora", 0)])]
    assert dora["x_lora"] == pytest.approx(made[("dora", 0)].summary()["sec_per_step"] / lora_mean)
    assert dora["trainable_params"] == made[("dora", 0)].summary()["trainable_params"]
    assert dora["optimizer_state"] == f"{8 * dora['trainable_params'] / 2 ** 20:.3g} MB"
    assert list(at.dataframe[1].value.columns) == ["method", "seed"]  # the differences only

    at.toggle(key="diff_only").set_value(False).run()
    assert {"lr", "method_params.rank", "run_id"} <= set(at.dataframe[1].value.columns)
    pareto = charts(at)["pareto_chart"]
    assert {trace["name"] for trace in pareto["data"]} >= {label(run) for run in made.values()}


def test_single_runs_share_their_methods_colour_and_differ_by_dash(sweep_root, page_root):
    root, sweep, made = sweep_root
    page_root(root)
    at = open_page({"sweep": sweep.id})
    at.toggle(key="bands").set_value(False)
    at.slider(key="smoothing").set_value(0.0)
    at.radio(key="x_axis").set_value("elapsed_s")
    at.toggle(key="log_y").set_value(True).run()
    assert not at.exception, at.exception
    loss = charts(at)["curve_loss"]
    assert loss["layout"]["xaxis"]["title"]["text"] == "wall-clock seconds" and loss["layout"]["yaxis"]["type"] == "log"
    traces = {trace["name"]: trace for trace in loss["data"]}
    assert set(traces) == {label(run) for run in made.values()}  # no raw copies when not smoothed
    lora0, lora1 = traces[label(made[("lora", 0)])], traces[label(made[("lora", 1)])]
    assert lora0["line"]["color"] == lora1["line"]["color"] == plots.METHOD_COLORS["lora"]
    assert {lora0["line"]["dash"], lora1["line"]["dash"]} == {"solid", "dash"}
    metrics = made[("lora", 0)].metrics()
    assert np.allclose(values(lora0["y"]), [r["loss"] for r in metrics if "loss" in r])
    assert np.allclose(values(lora0["x"]), [r["elapsed_s"] for r in metrics if "loss" in r])


def test_choosing_runs_by_hand_leaves_the_sweep_and_an_empty_choice_says_so(sweep_root, page_root):
    root, sweep, made = sweep_root
    page_root(root)
    at = open_page({"sweep": sweep.id})
    at.multiselect(key="compare_runs").set_value([made[("dora", 1)].id]).run()
    assert at.selectbox(key="sweep").value == "" and "sweep" not in at.query_params
    assert legend(charts(at)["curve_loss"]) == [label(made[("dora", 1)])]
    at.multiselect(key="compare_runs").set_value([]).run()
    assert not at.exception, at.exception
    assert any("Choose one or more runs" in message.value for message in at.info) and not at.get("plotly_chart")
    at.selectbox(key="sweep").select(sweep.id).run()
    assert len(at.multiselect(key="compare_runs").value) == 4 and at.query_params["sweep"] in (sweep.id, [sweep.id])


def test_mixed_tasks_and_corrupt_files_warn_once_and_still_draw(sweep_root, page_root, tmp_path):
    _, sweep, made = sweep_root
    good, other_task, corrupt = (Path(shutil.copytree(made[key].path, tmp_path / made[key].id))
                                 for key in (("lora", 0), ("dora", 0), ("lora", 1)))
    settings = json.loads((other_task / "config.json").read_text())
    (other_task / "config.json").write_text(json.dumps({**settings, "task": "/data/reviews.csv"}))
    (corrupt / "summary.json").write_text("{broken")
    with open(corrupt / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 9, "lo')  # a truncated last line
    page_root(tmp_path)
    at = open_page()
    at.multiselect(key="compare_runs").set_value([good.name, other_task.name, corrupt.name]).run()
    assert not at.exception, at.exception
    warnings = [warning.value for warning in at.warning]
    assert len(warnings) == 2
    mixed = next(text for text in warnings if "different models or tasks" in text)
    assert "toy/teacher" in mixed and "toy/reviews.csv" in mixed and other_task.name in mixed
    unreadable = next(text for text in warnings if "could not be read" in text)
    assert corrupt.name in unreadable and "summary.json" in unreadable
    loss = charts(at)["curve_loss"]  # the corrupt run is still drawn from its readable lines: with its seed 0
    assert legend(loss) == [f"lora · {sweep.name} · seeds 0, 1", label(made[("dora", 0)])]
    costs = at.dataframe[0].value.set_index("run")
    assert costs["status"].tolist().count("interrupted") == 1


def test_without_runs_or_with_an_unknown_sweep_the_page_says_so(sweep_root, page_root, tmp_path):
    page_root(tmp_path / "empty")
    at = open_page()
    assert "No runs" in at.info[0].value and not at.get("plotly_chart")
    root, _, _ = sweep_root
    page_root(root)
    at = open_page({"sweep": "20990101-000000-sweep-nothere"})
    assert "No saved sweep `20990101-000000-sweep-nothere`" in at.warning[0].value
    assert at.multiselect(key="compare_runs").value and "curve_loss" in charts(at)
    assert [link.proto.label for link in at.get("page_link")][-2:] == ["Compare", "Learn"]


def test_a_running_run_is_drawn_and_grows_on_each_refresh(sweep_root, page_root, tmp_path):
    _, _, made = sweep_root
    path = Path(shutil.copytree(made[("lora", 0)].path, tmp_path / made[("lora", 0)].id))
    summary = json.loads((path / "summary.json").read_text())
    # pid 1 on this host: a process that is alive, so the run stays `running`
    (path / "summary.json").write_text(json.dumps({**summary, "status": "running", "pid": 1,
                                                   "pid_start": store.process_start_time(1),
                                                   "host": socket.gethostname()}))
    lines = (path / "metrics.jsonl").read_text().splitlines(keepends=True)
    training = [i for i, line in enumerate(lines) if '"loss"' in line]
    (path / "metrics.jsonl").write_text("".join(lines[: training[3] + 1]))
    page_root(tmp_path)
    at = open_page({"run": path.name})
    assert at.multiselect(key="compare_runs").value == [path.name]
    assert at.dataframe[0].value["status"].tolist() == ["running"]
    assert len(values(charts(at)["curve_loss"]["data"][-1]["x"])) == 4
    assert any("Pareto front appears when runs finish" in message.value for message in at.info)
    (path / "metrics.jsonl").write_text("".join(lines))  # the run logged more steps
    at.run()
    assert len(values(charts(at)["curve_loss"]["data"][-1]["x"])) == len(training)


def test_png_export_says_what_it_needs_when_it_cannot_render(sweep_root, page_root, monkeypatch):
    import importlib.util

    root, sweep, _ = sweep_root
    page_root(root)
    if importlib.util.find_spec("kaleido") is None:  # no PNG button, a caption says what it needs
        at = open_page({"sweep": sweep.id})
        assert not at.get("button") and "needs kaleido" in at.caption[-1].value
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",  # kaleido "installed", but rendering fails
                        lambda name, *args: object() if name == "kaleido" else find_spec(name, *args))
    monkeypatch.setattr(plots.go.Figure, "to_image", lambda self, **kwargs: (_ for _ in ()).throw(
        RuntimeError("Kaleido requires Google Chrome to be installed")))
    at = open_page({"sweep": sweep.id})
    at.button(key="png_curve_loss").click().run()
    assert not at.exception, at.exception
    assert any("PNG export failed (RuntimeError: Kaleido requires Google Chrome" in caption.value
               for caption in at.caption)
    assert "curve_loss" in charts(at)


def test_text_values_are_exported_but_not_drawn():
    records = [{"step": 1, "loss": 2.0, "elapsed_s": 0.1}, {"step": 2, "loss": None, "nonfinite": "nan", "elapsed_s": 0.2},
               {"step": 3, "loss": "oops", "elapsed_s": 0.3, "flag": True}]
    run = run_data("a", records=records)
    steps, _, y = compare.curve(run.frame, "loss")
    assert list(steps) == [1] and list(y) == [2.0]
    assert compare.panels([run]) == {"loss": "training loss"}
    table = compare.curves_frame([run])
    assert table["nonfinite"].tolist()[1] == "nan" and table["loss"].tolist()[2] == "oops" and len(table) == 3
    assert "flag" in compare.curves_csv([run]).splitlines()[0]


def test_lora_pro_optimizer_state_uses_the_saved_adapters_layer_shapes(tmp_path):
    run = lx.train(model="toy", method="lora-pro", steps=2, analysis_every=0, runs_dir=tmp_path, progress=False,
                   method_params={"rank": 4})
    summary = run.summary()
    shapes = compare.adapter_shapes(run.path)
    assert {name.rsplit(".", 1)[-1] for name in shapes} == {"fc1", "fc2", "fc3", "out"}
    assert shapes["base_model.model.fc1"] == ((4, 32), (64, 4))  # A: r×n, B: m×r
    state, estimated = compare.optimizer_state_bytes(run.config(), summary, run.path)
    assert not estimated and state == 8 * (64 * 32 + 64 * 64 + 64 * 64 + 16 * 64)  # the toy trains only adapters
    assert summary["trainable_params"] == sum(a[0] * a[1] + b[0] * b[1] for a, b in shapes.values())
