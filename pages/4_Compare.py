"""Compare: overlay any runs (or a saved sweep), smoothed curves with seed bands, the cost of each method,
the Pareto front, the config differences and CSV/HTML exports; live while runs train."""
import pandas as pd
import streamlit as st

from lora_explorer import compare, plots, store, sweeps, ui

st.set_page_config(page_title="Compare · LoRA Explorer", layout="wide")
ui.sidebar()
manager = ui.get_manager()
root = manager.runs_dir
NO_SWEEP = ""
LIVE_REFRESH_S = 2.0

st.title("Compare runs")
st.markdown("Overlay any runs: their curves on a common axis (seeds of one configuration as mean ± std), what "
            "each cost, which runs are on the cost/quality Pareto front, and how their configurations differ. "
            "Choose runs, or open a saved sweep.")

infos = store.list_runs(root)
if not infos:
    st.info(f"No runs in `{root}` yet: train some on the **Train** page, or launch a sweep there "
            "(*Compare methods*) to compare several methods on one budget.")
    st.stop()
by_id = {info.id: info for info in infos}


def load(run_ids: list[str]) -> list[compare.RunData]:
    return ui.compare_runs([by_id[run_id] for run_id in run_ids])


# ---------------------------------------------------------------- which runs: a saved sweep, or any selection
saved = {sweep.id: sweep for sweep in sweeps.list_sweeps(root)}


def sweep_run_ids(sweep_id: str) -> list[str]:
    """The sweep's runs in launch order."""
    members = [info for info in infos if info.config.get("group") == sweep_id]
    return [info.id for info in sorted(members, key=lambda info: (_created(info), info.id))]


def _created(info: store.RunInfo) -> float:
    created = info.config.get("created_at")
    return float(created) if isinstance(created, (int, float)) else 0.0


linked = st.query_params.get("sweep")
if linked is not None and linked != st.session_state.get("sweep"):  # ?sweep=<id>: open that sweep
    if linked in saved:
        st.session_state["sweep"] = linked
    else:
        st.warning(f"No saved sweep `{linked}` in `{root / sweeps.SWEEPS_DIR}`: choose runs below.")
        del st.query_params["sweep"]
if st.session_state.get("sweep") not in (NO_SWEEP, None, *saved):
    st.session_state["sweep"] = NO_SWEEP
if st.session_state.get("sweep"):  # a sweep's runs, including the ones it started since the last rerun
    st.session_state["compare_runs"] = sweep_run_ids(st.session_state["sweep"])
elif "compare_runs" not in st.session_state:
    st.session_state["compare_runs"] = ui.default_run_ids(infos, limit=6)
st.session_state["compare_runs"] = [run_id for run_id in st.session_state["compare_runs"] if run_id in by_id]


def sweep_chosen() -> None:
    sweep_id = st.session_state["sweep"]
    if sweep_id:
        st.query_params["sweep"] = sweep_id
    elif "sweep" in st.query_params:
        del st.query_params["sweep"]


def runs_edited() -> None:
    """A hand-made selection is no longer the sweep's."""
    sweep_id = st.session_state.get("sweep")
    if sweep_id and st.session_state["compare_runs"] != sweep_run_ids(sweep_id):
        st.session_state["sweep"] = NO_SWEEP
        if "sweep" in st.query_params:
            del st.query_params["sweep"]


def sweep_option(sweep_id: str) -> str:
    if not sweep_id:
        return "— none: choose runs —"
    sweep = saved[sweep_id]
    return f"{sweep.name} · {len(sweep_run_ids(sweep_id))} runs · {sweep_id}"


col_sweep, col_runs = st.columns([2, 5])
col_sweep.selectbox("Saved sweep", [NO_SWEEP, *saved], key="sweep", format_func=sweep_option, on_change=sweep_chosen,
                    help="a comparison group launched together (Train page, or `python -m lora_explorer sweep`): "
                         "fills the runs with all of its runs; link to it with ?sweep=<id>")
chosen = col_runs.multiselect("Runs", list(by_id), key="compare_runs", on_change=runs_edited,
                              format_func=lambda run_id: ui.run_option(by_id[run_id]),
                              help="any runs; the newest finished ones on one model and task are chosen first")
if not chosen:
    st.info("Choose one or more runs to compare, or a saved sweep.")
    st.stop()

runs = load(chosen)
labels = ui.run_labels([by_id[run_id] for run_id in chosen])
problems = [f"`{run.id}`: {problem}" for run in runs for problem in run.problems]
if problems:
    st.warning("Some files could not be read; these runs show what could be: " + "; ".join(problems) + ".")
tasks_seen = compare.model_task_groups(runs)
if len(tasks_seen) > 1:
    st.warning("These runs train different models or tasks, so their numbers are not comparable: "
               + "; ".join(f"{model}/{task}: " + ", ".join(f"`{run_id}`" for run_id in ids)
                           for (model, task), ids in tasks_seen.items()) + ".")

# ---------------------------------------------------------------- chart settings
groups = compare.seed_groups({run.id: run.config for run in runs})
seeded = any(len(group) > 1 for group in groups)
axes = compare.x_axes(runs)
available = compare.panels(runs)
col_x, col_panels = st.columns([2, 5])
x_axis = col_x.radio("x axis", list(axes), key="x_axis", format_func=axes.get, horizontal=True,
                     help="wall-clock time shows what a faster step buys; examples (tokens for language models) "
                          "show the data each run has seen")
default_panels = [key for key in available if key in ("loss", "eval_loss") or key not in compare.PANEL_TITLES][:3]
shown = col_panels.multiselect("Curves", list(available), default=default_panels, key="panels",
                               format_func=available.get)
col_smooth, col_log, col_bands = st.columns([3, 1, 2])
smoothing = col_smooth.slider("Smoothing", 0.0, 0.99, 0.6, 0.01, key="smoothing",
                              help="TensorBoard's debiased exponential moving average; 0 = raw. The raw curve "
                                   "stays faint behind.")
log_y = col_log.toggle("log y", key="log_y")
bands = col_bands.toggle("mean ± std over seeds", value=True, key="bands", disabled=not seeded,
                         help="runs that differ only by seed (same method and config) become one curve with a "
                              "band of ± one standard deviation" if seeded else
                              "no two chosen runs differ only by seed")

SMOOTHING_FORMULA = ("Smoothed with TensorBoard's EMA: s_t = w·s_{t−1} + (1 − w)·y_t from s_0 = 0, drawn as "
                     "s_t / (1 − w^t) (debiased), w = the smoothing slider; faint: the raw values.")
BAND_FORMULA = (" Band: mean ± sample standard deviation (n − 1) over the seeds of one configuration, at the steps "
                "at least two of them logged (wall-clock x: their mean time).")
X_FORMULA = {"step": "x = optimizer step.", "elapsed_s": "x = seconds since the run's training loop started "
             "(elapsed_s; evaluation and analysis time included).",
             "examples": "x = training examples seen = step × batch size.", "tokens": "x = training tokens seen."}


def panel_text(key: str, x_title: str) -> tuple[str, str]:
    """(caption, formula) of a curve panel."""
    if key == "loss":
        caption = f"Training loss of each run against {x_title}, lower is better"
        formula = "Mean loss over the step's batch (MSE on the toy, cross-entropy otherwise)."
    elif key == "eval_loss":
        caption = f"Loss on the held-out set at each evaluation, against {x_title}"
        formula = "Mean loss over the held-out set, every eval_every steps and at the last step."
    elif key == "lr":
        caption = f"The learning rate each run used, against {x_title}: its schedule and warm-up"
        formula = "lr_t of the optimizer's first parameter group, from the schedule (constant, or linear/cosine " \
                  "decay after linear warm-up)."
    elif key == "align_cos":
        caption = (f"How well each run's gradient step points where full fine-tuning's would, mean over layers, "
                   f"against {x_title} (1 = the same direction; per layer on the Alignment page)")
        formula = ("align_cos = mean over adapted layers of ⟨g̃, g⟩_F / (‖g̃‖_F ‖g‖_F), g = ∂L/∂W the full "
                   "gradient, g̃ the full-size gradient the method follows; at the analysis steps.")
    else:
        better = "higher" if compare.higher_is_better(key) else "lower"
        caption = f"Eval {key} on the held-out set at each evaluation, against {x_title} ({better} is better)"
        formula = compare.METRIC_FORMULAS.get(key, f"{key} on the held-out set.")
    return (caption + "; one colour per method, dashes tell runs of one method apart.",
            f"{formula} {X_FORMULA[x_axis]} {SMOOTHING_FORMULA}" + (BAND_FORMULA if seeded and bands else ""))


# ---------------------------------------------------------------- curves, costs and the Pareto front (live)
live = any(run.status == "running" for run in runs)


@st.fragment(run_every=LIVE_REFRESH_S if live else None)
def live_view(run_ids: list[str], was_live: bool) -> None:
    runs = load(run_ids)
    sweep_id = st.session_state.get("sweep")
    if was_live and sweep_id and {info.id for info in store.list_runs(root)
                                  if info.config.get("group") == sweep_id} - set(run_ids):
        st.rerun()  # the sweep started another run: a full rerun adds it to the selection
    colors_by_method = {run.method: plots.method_color(run.method) for run in runs}
    x_title = axes[x_axis]
    for key in shown:
        curves, methods = compare.panel_curves(runs, labels, key, x_axis, smoothing=smoothing,
                                               groups=groups, bands=bands and seeded)
        figure = plots.curves_figure(curves, x_title=x_title, y_title=available[key], log_y=log_y,
                                     colors={label: colors_by_method[m] for label, m in methods.items()},
                                     dashes=plots.method_dashes(methods), uirevision=f"curves_{key}")
        caption, formula = panel_text(key, x_title)
        ui.chart(figure, f"curve_{key}", caption, formula)
        ui.figure_exports(figure, f"curve_{key}", f"{key}-vs-{x_axis}")

    st.subheader("Cost")
    table = compare.cost_table(runs, labels)
    view = table[["run", "status", "steps", "sec_per_step", "x_lora", "peak_mem_mb", "trainable_params"]].copy()
    view["optimizer_state"] = [("≈ " if estimated else "") + (f"{mb:.3g} MB" if pd.notna(mb) else "")
                               for mb, estimated in zip(table["optimizer_state_mb"],
                                                        table["optimizer_state_estimated"])]
    view["final_loss"] = table["final_loss"]
    view["final_eval"] = [f"{value:.4g} {metric}" if pd.notna(value) else ""
                          for value, metric in zip(table["final_eval_metric"], table["eval_metric"])]
    st.dataframe(view, hide_index=True, key="cost_table", column_config={
        "run": st.column_config.TextColumn("run", help="method · name · id suffix"),
        "steps": st.column_config.NumberColumn("steps", format="%d", help="steps done"),
        "sec_per_step": st.column_config.NumberColumn("s/step", format="%.4g",
                                                      help="median seconds per training step (analysis excluded)"),
        "x_lora": st.column_config.NumberColumn(
            "× LoRA", format="%.2f", help="s/step ÷ the mean s/step of the LoRA runs chosen here on the same "
                                          "model and task; blank when there is none"),
        "peak_mem_mb": st.column_config.NumberColumn(
            "peak MB", format="%.1f", help="CUDA allocator peak on a GPU; on a CPU the growth of the process's "
                                           "resident memory since the run started (exact only in a fresh process "
                                           "such as the CLI)"),
        "trainable_params": st.column_config.NumberColumn("trainable", format="localized"),
        "optimizer_state": st.column_config.TextColumn("optimizer state", help=compare.OPTIMIZER_STATE_HELP),
        "final_loss": st.column_config.NumberColumn("final loss", format="%.4g", help="training loss at the last step"),
        "final_eval": st.column_config.TextColumn("final eval", help="the task's metric at the final evaluation"),
    })
    st.caption("What each run cost: time per step (and relative to LoRA), memory, parameters and optimizer state, "
               "next to where it ended.",
               help="× LoRA = (s/step) / mean(s/step of the LoRA runs, same model and task). "
                    "Optimizer state: " + compare.OPTIMIZER_STATE_HELP)

    st.subheader("Pareto front")
    finished = table[table["final_eval_metric"].notna() & (table["status"] != "running")]
    metrics = [metric for metric in dict.fromkeys(finished["eval_metric"]) if metric]
    if not metrics:
        st.info("No chosen run has finished with a final evaluation yet: the Pareto front appears when runs finish.")
    else:
        metric = metrics[0]
        cost = st.radio("cost", list(compare.PARETO_X), key="pareto_x", format_func=compare.PARETO_X.get,
                        horizontal=True)
        ranked = finished[finished["eval_metric"] == metric]
        points = {row.run: (getattr(row, cost), row.final_eval_metric) for row in ranked.itertuples()}
        higher = compare.higher_is_better(metric)
        front = compare.pareto_front(points, higher_is_better=higher)
        method_of = dict(zip(table["run"], table["method"]))
        figure = plots.pareto_figure(points, front, x_title=compare.PARETO_X[cost], y_title=f"final eval {metric}",
                                     log_x=cost == "trainable_params",
                                     colors={label: plots.method_color(method_of[label]) for label in points})
        ui.chart(figure, "pareto_chart",
                 f"Final eval {metric} ({'higher' if higher else 'lower'} is better) against "
                 f"{compare.PARETO_X[cost]}: the ringed runs on the dashed front are beaten on both by no other run.",
                 "Run a dominates run b when cost(a) ≤ cost(b) and a's metric is at least as good, one of them "
                 "strictly; the front = the runs no run dominates. time = median s/step × steps done.")
        ui.figure_exports(figure, "pareto_chart", f"pareto-{metric}-vs-{cost}")
        other = [row.run for row in finished.itertuples() if row.eval_metric != metric]
        if other:
            st.caption(f"Not on this chart (their task reports another metric): {', '.join(other)}.")
    if was_live and not any(run.status == "running" for run in runs):
        st.rerun()  # a full rerun declares the fragment without run_every: the refresh stops


live_view(chosen, live)

# ---------------------------------------------------------------- configurations
st.subheader("Configuration")
differences = st.toggle("differences only", value=True, key="diff_only",
                        help="the settings that differ between the chosen runs (ids, creation times and library "
                             "versions left out)")
configs = compare.config_table({labels[run.id]: run.config for run in runs}, differences_only=differences)
if differences and configs.shape[1] == 0:
    st.caption("The chosen runs have the same configuration.")
else:
    st.dataframe(configs.map(compare.cell_text), key="config_table")

# ---------------------------------------------------------------- export
st.subheader("Export")
col_curves, col_costs, _ = st.columns([1, 1, 3])
col_curves.download_button("Curves (CSV)",
                           lambda: compare.curves_csv([compare.read_run(by_id[i].path) for i in chosen]),
                           file_name="curves.csv", mime="text/csv", key="export_curves", on_click="ignore",
                           icon=":material/download:",
                           help="every logged line of every chosen run at full resolution: run id, method, step, "
                                "elapsed_s, examples and every logged key")
col_costs.download_button("Cost table (CSV)",
                          lambda: compare.cost_csv(compare.cost_table([compare.read_run(by_id[i].path)
                                                                       for i in chosen], labels)),
                          file_name="costs.csv", mime="text/csv", key="export_costs", on_click="ignore",
                          icon=":material/download:", help="the cost table with every column, unformatted")
png = "" if ui.can_render_png() else " Server-side PNG export needs kaleido (pip install kaleido) and Chrome or " \
                                    "Chromium on this machine."
st.caption("Each chart's HTML button saves it as a self-contained interactive file; its camera icon saves a PNG "
           "in the browser." + png)
