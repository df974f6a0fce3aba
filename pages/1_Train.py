"""Train: choose a model, a task and a method, start a background job and watch its loss live."""
import pandas as pd
import streamlit as st

from lora_explorer import models, plots, sweeps, tasks, ui
from lora_explorer.config import COMMON_PARAMS, RunConfig
from lora_explorer.errors import ConfigError
from lora_explorer.methods import REGISTRY

CUSTOM = "other: hub id or local directory"
st.set_page_config(page_title="Train · LoRA Explorer", layout="wide")
ui.sidebar()
manager = ui.get_manager()

st.title("Train")

# ---------------------------------------------------------------- what to train
col_model, col_task, col_method = st.columns(3)
with col_model:
    choice = st.selectbox("Model", [*models.BUILTIN_MODELS, CUSTOM], key="model",
                          help="built-in models work offline; any Hugging Face model id or local directory also works")
    trust = False
    if choice == CUSTOM:
        model = st.text_input("Hub id or local directory", key="model_custom",
                              placeholder="e.g. prajjwal1/bert-tiny or /path/to/model").strip()
        trust = st.checkbox("trust remote code", value=False, key="trust_remote_code",
                            help="allow the model repository to run its own Python code when it loads")
        if trust:
            st.warning("Trusting remote code runs Python files from the model repository on this machine, "
                       "with your permissions, when the model loads. Enable it only for repositories you trust.")
    else:
        model = choice
        st.caption(models.BUILTIN_MODELS[model].summary)

with col_task:
    task_options = ui.task_choices(model)
    task_choice = st.selectbox("Task", task_options, key="task",
                               help="the first entry is the model's own task; text models also take your data")
    task = None
    if task_choice == ui.UPLOAD:
        kind = ui.file_kind(model)
        columns = "`text` and `label`" if kind == models.CLASSIFICATION else "`text`"
        upload = st.file_uploader(f"CSV or JSONL with {columns} columns", type=["csv", "jsonl", "json"],
                                  key="upload")
        if upload is not None:
            try:
                path, rows = ui.save_upload(upload.getvalue(), upload.name, kind, manager.runs_dir)
            except ConfigError as error:
                st.error(str(error))
            else:
                task = str(path)
                labels = sorted({label for _, label in rows if label is not None})
                st.caption(f"{len(rows)} rows" + (f", labels: {', '.join(labels[:10])}" if labels else ""))
    elif task_choice:
        task = task_choice
        st.caption(tasks.TASKS[task].summary)

with col_method:
    method_ids = list(REGISTRY)
    linked = ui.linked_choice("method", method_ids)  # ?method=<id>: "try it" on the Learn page
    method = st.selectbox("Method", method_ids, index=method_ids.index(linked or "lora"),
                          key="method", format_func=lambda i: f"{i} — {REGISTRY[i].summary}")
    if REGISTRY[method].paper:
        st.caption(REGISTRY[method].paper)

# ---------------------------------------------------------------- settings, generated from the declarations
hints = ui.default_hints(RunConfig(model=model, method=method, task=task))
st.subheader("Training settings")
common = ui.params_form(COMMON_PARAMS, "common", hints=hints, columns=5)
method_params, task_params = {}, {}
if REGISTRY[method].params:
    st.subheader(f"{method} settings")
    method_params = ui.params_form(REGISTRY[method].params, f"method.{method}", columns=4)
task_declared = ui.task_params_for(task, model) if task else ()
if task_declared:
    with st.expander("Task data settings"):
        task_params = ui.params_form(task_declared, f"task.{task_choice}", columns=4)
name = st.text_input("Run label (optional)", key="run_name", max_chars=80)

# ---------------------------------------------------------------- start / stop
col_start, col_stop, _ = st.columns([1, 1, 6])
start = col_start.button("Start", key="start", type="primary", disabled=task is None)
job_id = ui.current_job_id()
if start:
    config = RunConfig(model=model, method=method, task=task, method_params=method_params,
                       task_params=task_params, trust_remote_code=trust, name=name, **common)
    try:
        job_id = manager.submit(config)  # validates first: a ConfigError launches nothing
    except ConfigError as error:
        st.error(str(error))
    else:
        ui.watch_job(job_id)
snap = manager.snapshot(job_id) if job_id else None
if col_stop.button("Stop", key="stop", disabled=snap is None or snap.finished,
                   help="stop after the current step; the partial weights are saved"):
    manager.stop(snap.id)
    snap = manager.snapshot(snap.id)

# ---------------------------------------------------------------- several methods as one comparison group
with st.expander("Compare methods: launch a sweep"):
    st.caption("The same model, task, data order and training settings for every run; the settings of "
               f"**{method}** above apply to every method that has them (e.g. rank). The sweep is saved, and "
               "the Compare page opens it.")
    col_methods, col_seeds = st.columns([3, 1])
    sweep_methods = col_methods.multiselect("Methods", method_ids, default=[method], key="sweep_methods")
    sweep_seeds = col_seeds.text_input("Seeds", value=str(common.get("seed", 0)), key="sweep_seeds",
                                       help="comma-separated, e.g. 0,1,2: each method runs once per seed")
    if st.button("Start sweep", key="start_sweep", disabled=task is None):
        base = RunConfig(model=model, method=method, task=task, task_params=task_params,
                         trust_remote_code=trust, **common)
        try:  # the whole sweep is checked before any run is queued
            sweep = sweeps.plan(base, sweep_methods, sweep_seeds, method_params, name)
            job_ids = sweeps.submit(manager, sweep)
        except ConfigError as error:
            st.error(str(error))
        else:
            st.session_state["sweep_id"] = sweep.id
            ui.watch_job(job_ids[0])
            job_id, snap = job_ids[0], manager.snapshot(job_ids[0])
    if st.session_state.get("sweep_id"):
        st.page_link("pages/4_Compare.py", label=f"Open sweep {st.session_state['sweep_id']} on the Compare page",
                     icon=":material/stacked_line_chart:", query_params={"sweep": st.session_state["sweep_id"]})

# ---------------------------------------------------------------- the watched job, refreshed every second while it runs
if job_id and snap is None:
    st.info(f"Job `{job_id}` is not known to this server (it may have been restarted); "
            "its run directory, if any, is listed under Recent runs.")
live = snap is not None and not snap.finished
log_y = st.toggle("log-scale loss", key="log_y") if snap is not None else False


@st.fragment(run_every=1.0 if live else None)
def live_view(job_id: str, was_live: bool, log_y: bool) -> None:
    snap = manager.snapshot(job_id)
    if snap is None:
        return
    config = snap.config
    st.markdown(f"**Job `{snap.id}`** · model `{config.model}` · method `{config.method}` · "
                f"task `{ui.task_label(config.task)}` · **{snap.status}**"
                + (f" · {snap.phase}" if snap.phase != snap.status else ""))
    st.progress(ui.progress_fraction(snap), text=ui.progress_text(snap))
    if snap.status == "queued":
        st.info(f"Waiting for the worker: position {snap.queue_position} in the queue.")
    label = config.name or config.method
    figure = plots.loss_figure({label: list(snap.records)}, log_y=log_y, colors={label: plots.method_color(config.method)})
    st.plotly_chart(figure, key="loss_chart", width="stretch", config={"scrollZoom": False})
    if snap.finished:
        summary = ui.final_summary(snap)
        cols = st.columns(4)
        metric = summary.get("eval_metric_name")
        if metric and summary.get("final_eval_metric") is not None:
            cols[0].metric(f"final eval {metric}", f"{summary['final_eval_metric']:.4g}")
        if summary.get("final_eval_loss") is not None:
            cols[1].metric("final eval loss", f"{summary['final_eval_loss']:.4g}")
        if summary.get("final_loss") is not None:
            cols[2].metric("final train loss", f"{summary['final_loss']:.4g}")
        if summary.get("sec_per_step") is not None:
            cols[3].metric("time per step", f"{summary['sec_per_step'] * 1000:.1f} ms")
        if snap.status in ("failed", "diverged"):
            st.error(snap.error or f"the run {snap.status}")
        elif snap.status == "stopped":
            st.warning(snap.error or f"Stopped after {snap.step} steps; the weights so far are saved.")
        elif snap.status == "cancelled":
            st.info("Cancelled before it started.")
        if snap.run_dir:
            st.caption(f"run directory: `{snap.run_dir}`")
    if was_live and snap.finished:
        st.rerun()  # a full rerun declares the fragment without run_every: the timer stops


if snap is not None:
    live_view(snap.id, live, log_y)


# ---------------------------------------------------------------- the queue: every job of this server
queue_active = any(not s.finished for s in manager.snapshots())


@st.fragment(run_every=1.0 if queue_active else 5.0)  # idle, it still notices jobs other sessions queue
def queue_view(was_active: bool) -> None:
    snaps = manager.snapshots()
    if any(not s.finished for s in snaps) and not was_active:
        st.rerun()  # another session queued a job: a full rerun speeds the timer up and lists it
    if not snaps:
        return
    st.subheader("Queue")
    for snap in snaps[:ui.QUEUE_ROWS]:
        col_text, col_bar, col_button = st.columns([4, 3, 1])
        col_text.markdown(ui.queue_line(snap))
        col_bar.progress(ui.progress_fraction(snap), text=ui.progress_text(snap))
        if not snap.finished and col_button.button("Cancel" if snap.status == "queued" else "Stop",
                                                   key=f"stop_{snap.id}"):
            manager.stop(snap.id)
            st.rerun()  # show the new status at once
    if was_active and all(s.finished for s in snaps):
        st.rerun()  # as live_view: a full rerun stops the timer


queue_view(queue_active)

# ---------------------------------------------------------------- history
st.subheader("Recent runs")
rows = ui.runs_table(manager.runs_dir)
if rows:
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="runs_table", column_config={
        "final_loss": st.column_config.NumberColumn(format="%.4g"),
        "final_eval": st.column_config.NumberColumn(format="%.4g"),
        "sec_per_step": st.column_config.NumberColumn("sec/step", format="%.4f"),
    })
else:
    st.caption(f"No runs yet in `{manager.runs_dir}`.")
