"""The Spectra and Alignment pages (AppTest, against real toy runs), their figures, and the cross-run
analysis, each checked against an independent computation."""
import base64
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import lora_explorer as lx  # after the path fix
from lora_explorer import crossrun, plots, store, ui
from lora_explorer.errors import ConfigError
from conftest import open_page  # noqa: E402

SPECTRA, ALIGNMENT = "pages/2_Spectra.py", "pages/3_Alignment.py"
STEPS = 20
COMPARED = ("lora", "lora-drop", "adalora", "lora-ga")  # chosen on the pages; the full FT run is the reference


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """Real toy runs, trained once for the module. The lora run gets a hand-written alignment.jsonl (known
    values); no other run keeps one, so the page's handling of a missing file is exercised too."""
    root = tmp_path_factory.mktemp("runs")
    made = {}
    for method, params in [("full", {}), ("lora-ga", {"rank": 4}), ("adalora", {"rank": 4, "final_rank": 2}),
                           ("lora-drop", {"rank": 4}), ("lora", {"rank": 4})]:
        made[method] = lx.train(lx.RunConfig(model="toy", method=method, steps=STEPS, analysis_every=10,
                                             method_params=params), root)
        assert made[method].summary()["status"] == "completed", made[method].summary().get("error")
        (made[method].path / "alignment.jsonl").unlink(missing_ok=True)
    (made["lora"].path / "alignment.jsonl").write_text("".join(
        json.dumps({"step": step, "layer": layer, "cos": cos, "rel_err": 0.5, "bound_r": 0.8, "bound_2r": 0.9,
                    "grad_norm": 1.0}) + "\n"
        for step in (0, 10, 20) for layer, cos in (("fc1", step / 40), ("fc2", step / 40 + 0.1))))
    return root, made


def charts(at: AppTest) -> dict[str, dict]:
    """{chart key: Plotly spec}; an element id ends with its key: $$ID-<hash>-<key>."""
    return {chart.proto.id.split("-", 2)[2]: json.loads(chart.proto.spec) for chart in at.get("plotly_chart")}


def values(array) -> np.ndarray:
    """A trace's x/y: NumPy arrays travel as base64 typed arrays, lists as lists."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"])
    return np.asarray(array)


def label(run) -> str:
    """The run's legend label on the pages."""
    return ui.run_labels([store.RunInfo(run.id, run.path, run.config(), run.summary())])[run.id]


def copy_run(run, root: Path) -> Path:
    return Path(shutil.copytree(run.path, root / run.id))


# ---------------------------------------------------------------- the Spectra page
def test_spectra_page_shows_each_chart_with_caption_and_formula(sample, page_root):
    root, made = sample
    page_root(root)
    at = open_page(SPECTRA)
    newest = [info.id for info in lx.list_runs(root)][:4]  # ids sort by time, then by method within a second
    assert at.multiselect(key="runs").value == newest
    chosen = [made[m].id for m in COMPARED]
    at.multiselect(key="runs").set_value(chosen).run()
    assert not at.exception, at.exception
    shown = charts(at)
    expected = {"spectrum_chart", "rank_chart", "rank_heatmap", f"adalora_{made['adalora'].id}",
                f"lora_drop_{made['lora-drop'].id}"}
    if any("delta_m" in record for record in made["lora"].spectra()):
        expected.add("dora_chart")
    assert set(shown) == expected
    assert len(at.caption) == len(shown) and all(caption.proto.help for caption in at.caption)

    spectrum = shown["spectrum_chart"]
    assert spectrum["layout"]["yaxis"]["type"] == "log"
    traces = {trace["name"]: trace for trace in spectrum["data"]}
    assert list(traces) == [label(made[m]) for m in COMPARED] + ["true ΔW*"]
    lora_record = next(r for r in made["lora"].spectra() if r["step"] == STEPS and r["layer"] == "fc1")
    assert np.allclose(values(traces[label(made["lora"])]["y"]), lora_record["sigma"][:4])  # rank 4: 4 values
    truth = torch.linalg.svdvals(load_file(str(made["lora"].path / "target_delta.safetensors"))["fc1"].double())
    assert np.allclose(values(spectrum["data"][-1]["y"]), truth[:4].numpy())  # the teacher's ΔW* has rank 4


def test_spectra_page_views_layers_and_steps(sample, page_root):
    root, made = sample
    page_root(root)
    at = open_page(SPECTRA)
    at.multiselect(key="runs").set_value([made[m].id for m in COMPARED])
    at.radio(key="view").set_value("cumulative")
    at.selectbox(key="layer").select("fc2")
    at.select_slider(key="step").set_value(10).run()
    assert not at.exception, at.exception
    spectrum = charts(at)["spectrum_chart"]
    assert spectrum["layout"]["yaxis"]["type"] == "linear"
    record = next(r for r in made["lora"].spectra() if r["step"] == 10 and r["layer"] == "fc2")
    sigma = np.array(record["sigma"])
    lora_trace = next(trace for trace in spectrum["data"] if trace["name"] == label(made["lora"]))
    assert np.allclose(values(lora_trace["y"]), np.cumsum(sigma ** 2) / np.sum(sigma ** 2))
    ranks = charts(at)["rank_chart"]["data"]
    r_line = next(trace for trace in ranks if trace["name"] == f"{label(made['lora'])} r = 4")
    assert list(values(r_line["y"])) == [4, 4] and r_line["line"]["dash"] == "dash"


def test_spectra_page_link_preselects_a_run(sample, page_root):
    root, made = sample
    page_root(root)
    at = open_page(SPECTRA, {"run": made["full"].id})
    assert at.multiselect(key="runs").value[0] == made["full"].id


def test_spectra_page_warns_on_corrupt_files(sample, page_root, tmp_path):
    _, made = sample
    lora, adalora, drop = (copy_run(made[m], tmp_path) for m in ("lora", "adalora", "lora-drop"))
    (lora / "spectra.jsonl").write_text("not json\n{\"step\": \n")
    (adalora / "adalora_ranks.jsonl").write_text("garbage\n")
    (drop / "lora_drop.json").write_text("{broken")
    for copy in (lora, adalora, drop):
        (copy / "target_delta.safetensors").write_bytes(b"\x00" * 16)
    page_root(tmp_path)
    at = open_page(SPECTRA)
    warnings = " ".join(warning.value for warning in at.warning)
    assert f"Run `{made['lora'].id}`: spectra.jsonl has no readable line" in warnings
    assert "adalora_ranks.jsonl" in warnings and "lora_drop.json" in warnings
    assert "target_delta.safetensors" in warnings
    assert "spectrum_chart" in charts(at)


def test_spectra_page_without_runs_says_so(page_root, tmp_path):
    page_root(tmp_path / "empty")
    at = open_page(SPECTRA)
    assert "No run" in at.info[0].value and not at.get("plotly_chart")


# ---------------------------------------------------------------- the Alignment page
def test_alignment_page_charts_and_missing_records(sample, page_root):
    root, made = sample
    page_root(root)
    at = open_page(ALIGNMENT)
    chosen = at.multiselect(key="runs").value
    assert chosen[0] == made["lora"].id and len(chosen) == 4  # the run with alignment first
    chosen = [made[m].id for m in COMPARED]
    at.multiselect(key="runs").set_value(chosen).run()
    assert not at.exception, at.exception
    info = " ".join(message.value for message in at.info)
    assert "no alignment.jsonl" in info and all(run_id in info for run_id in chosen[1:])
    shown = charts(at)
    assert set(shown) == {"alignment_chart", "first_step_chart", "overlap_chart", "intruder_chart"}
    assert len(at.caption) == 4 and all(caption.proto.help for caption in at.caption)

    mean, bound_r, bound_2r = shown["alignment_chart"]["data"]
    assert list(values(mean["x"])) == [0, 10, 20]
    assert np.allclose(values(mean["y"]), [0.05, 0.3, 0.55])  # mean of fc1 and fc2
    assert np.allclose(values(bound_r["y"]), 0.8) and bound_2r["line"]["dash"] == "dot"
    assert np.allclose(values(shown["first_step_chart"]["data"][0]["y"]), [0.05])

    at.toggle(key="per_layer").set_value(True).run()
    fc1, fc2 = charts(at)["alignment_chart"]["data"][:2]
    assert fc1["showlegend"] and not fc2["showlegend"]  # one legend entry per run
    assert fc2["hovertemplate"].startswith("fc2<br>") and np.allclose(values(fc2["y"]), [0.1, 0.35, 0.6])

    overlap = shown["overlap_chart"]["data"]
    assert [trace["name"] for trace in overlap] == [label(made[m]) for m in COMPARED]
    phi = np.concatenate([values(trace["y"]) for trace in overlap])
    assert np.all((phi[~np.isnan(phi)] >= 0) & (phi[~np.isnan(phi)] <= 1 + 1e-9))
    assert len(shown["intruder_chart"]["data"]) == 5  # the four runs and the full fine-tuning reference


def test_alignment_page_without_a_full_run_says_so(sample, page_root, tmp_path):
    _, made = sample
    copy_run(made["lora"], tmp_path)
    page_root(tmp_path)
    at = open_page(ALIGNMENT)
    assert any("No finished full fine-tuning run on model `toy`" in message.value for message in at.info)
    assert set(charts(at)) == {"alignment_chart", "first_step_chart"}


# ---------------------------------------------------------------- cross-run analysis
def test_final_weights_use_the_pretrained_w0_even_when_the_base_moved(sample):
    _, made = sample
    run = made["lora-ga"]  # LoRA-GA offsets the base it keeps: W0 must come from a fresh base
    base = load_file(str(run.path / "base.safetensors"))
    recorded = {r["layer"]: r["sigma"] for r in run.spectra() if r["step"] == STEPS}
    weights = crossrun.final_weights(run.path)
    assert set(weights) == set(recorded) == {"fc1", "fc2", "fc3", "out"}
    for name, (w0, w_eff) in weights.items():
        assert torch.equal(w0, base[f"{name}.weight"].double())
        sigma = torch.linalg.svdvals(w_eff - w0)[: len(recorded[name])]
        assert torch.allclose(sigma, torch.tensor(recorded[name], dtype=torch.float64), atol=1e-4 * float(sigma[0]))


def test_subspace_overlap_of_a_run_with_itself_is_one_and_with_full_ft_in_range(sample):
    _, made = sample
    itself = crossrun.subspace_overlap_with(made["lora"].path, made["lora"].path, k=4)
    assert set(itself) == {"fc1", "fc2", "fc3", "out"}
    assert all(phi == pytest.approx(1.0) for phi in itself.values())
    with_full = crossrun.subspace_overlap_with(made["lora"].path, made["full"].path, k=4)
    assert all(0 <= phi <= 1 for phi in with_full.values())
    assert any(phi < 0.99 for phi in with_full.values())  # a rank-4 LoRA does not find full FT's subspace


def test_subspace_overlap_refuses_runs_on_another_task(sample, tmp_path):
    _, made = sample
    other = copy_run(made["full"], tmp_path)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "task": "data.csv"}))
    with pytest.raises(ConfigError, match="different tasks"):
        crossrun.subspace_overlap_with(made["lora"].path, other, k=4)


def test_one_intruder_built_into_a_matrix_is_counted_once():
    generator = torch.Generator().manual_seed(0)
    m, n = 16, 8
    u = torch.linalg.qr(torch.randn(m, m, generator=generator, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))[0]
    w0 = u[:, :n] @ torch.diag(torch.linspace(4, 1, n, dtype=torch.float64)) @ v.T  # spans u_1..u_8 only
    intruder = u[:, n] * 10  # orthogonal to every left singular vector of W0, and the largest direction
    w_eff = w0 + torch.outer(intruder, v[:, 0])
    assert crossrun.count_intruders(w0, w0) == 0
    assert crossrun.count_intruders(w0, w_eff) == 1
    assert crossrun.count_intruders(w0, w_eff, threshold=0.0) == 0


def test_method_files_are_read_or_refused(sample, tmp_path):
    _, made = sample
    assert crossrun.adalora_ranks(made["lora"].path) is None and crossrun.lora_drop_split(made["lora"].path) is None
    ranks = crossrun.adalora_ranks(made["adalora"].path)
    assert ranks[-1]["step"] == STEPS and set(ranks[-1]["ranks"]) == {"fc1", "fc2", "fc3", "out"}
    split = crossrun.lora_drop_split(made["lora-drop"].path)
    assert sum(split["importance"].values()) == pytest.approx(1.0)
    broken = copy_run(made["adalora"], tmp_path)
    (broken / "adalora_ranks.jsonl").write_text("[]\n")
    with pytest.raises(ConfigError, match="no readable line"):
        crossrun.adalora_ranks(broken)


# ---------------------------------------------------------------- figures
def spectrum_record(step, sigma, layer="fc1"):
    sigma = np.asarray(sigma, dtype=float)
    return {"step": step, "layer": layer, "sigma": list(sigma),
            "stable_rank": float(np.sum(sigma ** 2) / sigma[0] ** 2) if sigma[0] > 0 else 0.0}


def test_spectrum_figure_modes_zeros_and_nearest_step():
    records = [spectrum_record(0, [0.0, 0.0]), spectrum_record(10, [4.0, 3.0, 0.0])]
    absolute = plots.spectrum_figure({"a": records}, "fc1", 10)
    assert absolute.layout.yaxis.type == "log" and list(absolute.data[0].y) == [4.0, 3.0]  # σ = 0 not drawn
    normalised = plots.spectrum_figure({"a": records}, "fc1", 10, mode="normalised", true_sigma=[2.0, 0.0])
    assert np.allclose(normalised.data[0].y, [0.8, 0.6]) and np.allclose(normalised.data[1].y, [1.0])
    cumulative = plots.spectrum_figure({"a": records}, "fc1", 15, mode="cumulative")
    assert cumulative.layout.yaxis.type == "linear" and np.allclose(cumulative.data[0].y, [16 / 25, 1.0])
    assert cumulative.data[0].name == "a (step 10)"  # no record at 15: the latest earlier one
    at_zero = plots.spectrum_figure({"a": records}, "fc1", 0)
    assert not at_zero.data and "no non-zero update" in at_zero.layout.annotations[0].text


def test_rank_and_heatmap_figures():
    records = [{**spectrum_record(step, [1.0]), "effective_rank": step / 10, "layer": layer}
               for step in (0, 10, 20) for layer in ("layer.10", "layer.2")]
    ranks = plots.rank_figure({"a": records}, "layer.2", ranks_by_label={"a": {"r": 8, "final r": 2}})
    assert [trace.name for trace in ranks.data] == ["a", "a stable rank", "a r = 8", "a final r = 2"]
    assert [trace.showlegend for trace in ranks.data] == [True, False, False, False]  # one legend entry per run
    assert list(ranks.data[0].y) == [0.0, 1.0, 2.0] and ranks.data[1].line.dash == "dot"
    assert list(ranks.data[2].x) == [0, 20] and list(ranks.data[2].y) == [8, 8] and ranks.data[3].line.dash == "dashdot"
    heatmap = plots.rank_heatmap_figure(records).data[0]
    assert list(heatmap.y) == ["2", "10"]  # numeric order, common prefix dropped
    assert heatmap.z.shape == (2, 3) and list(heatmap.z[0]) == [0.0, 1.0, 2.0]
    assert plots.configured_ranks({"method_params": {"rank": 8, "final_rank": 2}}) == {"r": 8, "final r": 2}
    assert plots.configured_ranks({"method_params": {}}) == {}


def test_adalora_figure_holds_each_allocation_until_it_changes():
    records = [{"step": 1, "ranks": {"q": 4, "v": 4}}, {"step": 4, "ranks": {"q": 2, "v": 3}},
               {"step": 6, "ranks": {"q": 2, "v": 3}}]
    heatmap = plots.adalora_ranks_figure(records).data[0]
    assert list(heatmap.x) == [1, 2, 3, 4, 5, 6]
    assert list(heatmap.z[0]) == [4, 4, 4, 2, 2, 2] and list(heatmap.z[1]) == [4, 4, 4, 3, 3, 3]


def test_lora_drop_figure_colours_kept_and_shared_layers():
    split = {"importance": {"a": 0.6, "b": 0.1, "c": 0.3}, "kept": ["a", "c"], "shared": [["b"]]}
    kept, shared = plots.lora_drop_figure(split).data
    assert list(kept.x) == ["a", "c"] and list(shared.x) == ["b"] and kept.marker.color != shared.marker.color


def test_dora_figure_takes_only_runs_with_magnitude_and_direction():
    records = [{"step": s, "layer": layer, "delta_m": s * m, "delta_d": s * 0.1} for s in (0, 5) for layer, m in
               (("a", 1.0), ("b", 2.0))]
    figure = plots.dora_figure({"dora": records, "old": [spectrum_record(0, [1.0])]})
    assert len(figure.data) == 1 and figure.data[0].name == "dora"
    assert list(figure.data[0].x) == [0.0, 0.0, 0.5, 0.5] and list(figure.data[0].y) == [0.0, 0.0, 5.0, 10.0]
    assert list(plots.dora_figure({"dora": records}, "b").data[0].y) == [0.0, 10.0]


def test_alignment_figures_and_full_ft_without_bounds():
    lora = [{"step": s, "layer": layer, "cos": c, "bound_r": 0.7, "bound_2r": 0.9}
            for s, layer, c in [(0, "a", 0.2), (0, "b", 0.4), (5, "a", 0.5), (5, "b", 0.7)]]
    full = [{"step": s, "layer": "a", "cos": 1.0, "bound_r": None, "bound_2r": None} for s in (0, 5)]
    mean = plots.alignment_figure({"lora": lora, "full": full})
    assert [trace.name for trace in mean.data] == ["lora", "lora best rank-r", "lora best rank-2r", "full"]
    assert np.allclose(mean.data[0].y, [0.3, 0.6]) and np.allclose(mean.data[1].y, [0.7, 0.7])
    per_layer = plots.alignment_figure({"lora": lora}, per_layer=True, bounds=False)
    assert [trace.showlegend for trace in per_layer.data] == [True, False]  # the run's two layers, one entry
    assert np.allclose(per_layer.data[1].y, [0.4, 0.7]) and per_layer.data[1].hovertemplate.startswith("b<br>")
    bars = plots.first_step_alignment_figure({"lora": lora, "full": full})
    assert list(bars.data[0].x) == ["lora", "full"] and np.allclose(bars.data[0].y, [0.3, 1.0])
    assert np.allclose(bars.data[2].y[0], 0.9) and math.isnan(bars.data[2].y[1])


def test_layer_bars_leave_gaps_for_missing_values():
    figure = plots.overlap_figure({"lora": {"fc1": 0.5, "fc2": None}}, k=4)
    assert np.allclose(figure.data[0].y[:1], [0.5]) and math.isnan(figure.data[0].y[1])
    assert figure.layout.yaxis.range == (0, 1.05)
    intruders = plots.intruder_figure({"lora": {"fc1": 2}, "full": {"fc1": 0}}, top_k=10)
    assert [trace.name for trace in intruders.data] == ["lora", "full"] and intruders.layout.barmode == "group"


@pytest.mark.parametrize("figure", [
    lambda: plots.spectrum_figure({}, "fc1", 0), lambda: plots.rank_figure({}, "fc1"),
    lambda: plots.rank_heatmap_figure([]), lambda: plots.adalora_ranks_figure([]),
    lambda: plots.lora_drop_figure({}), lambda: plots.dora_figure({}), lambda: plots.alignment_figure({}),
    lambda: plots.first_step_alignment_figure({}), lambda: plots.overlap_figure({}, 4),
    lambda: plots.intruder_figure({}, 10)])
def test_every_figure_says_when_it_has_nothing_to_draw(figure):
    drawn = figure()
    assert not drawn.data and drawn.layout.annotations[0].text.startswith("no ")
