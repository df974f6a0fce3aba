"""The Streamlit glue: the only module of the package that imports streamlit.

- `get_manager()`: the process-wide JobManager (st.cache_resource), shared by every tab and page.
- `param_input()`: one widget for one declared `Param`, so forms are generated from declarations.
- small helpers the pages call: choosing tasks, saving uploads, progress text, the runs table,
  choosing runs to compare, charts with their caption, cached cross-run analysis.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path

import streamlit as st

from lora_explorer import crossrun, data_files, models, store, tasks
from lora_explorer.config import RunConfig, resolve
from lora_explorer.errors import ConfigError
from lora_explorer.jobs import JobManager, JobSnapshot
from lora_explorer.methods.base import REGISTRY, Param

UPLOAD = "upload a CSV/JSONL file"


PAGES = (("app.py", "Home", ":material/home:"), ("pages/1_Train.py", "Train", ":material/model_training:"),
         ("pages/2_Spectra.py", "Spectra", ":material/ssid_chart:"),
         ("pages/3_Alignment.py", "Alignment", ":material/compare_arrows:"),
         ("pages/4_Compare.py", "Compare", ":material/stacked_line_chart:"),
         ("pages/5_Learn.py", "Learn", ":material/school:"))
APP_DIR = Path(__file__).resolve().parents[1]  # where app.py and pages/ live (in a checkout)


def sidebar() -> None:
    """The navigation every page shows (in a checkout, a page whose file is missing is left out)."""
    checkout = (APP_DIR / "app.py").exists()
    for path, label, icon in PAGES:
        if not checkout or (APP_DIR / path).exists():
            st.sidebar.page_link(path, label=label, icon=icon)


@st.cache_resource(show_spinner=False)
def get_manager() -> JobManager:
    """One job manager per server process: jobs outlive reruns, page switches and closed tabs."""
    _leave_a_core_for_the_server()
    threading.Thread(target=models.preload, name="lora-explorer-preload", daemon=True).start()
    return JobManager(store.runs_root())  # $LORA_EXPLORER_RUNS, else ./runs


def _leave_a_core_for_the_server() -> None:
    """Training shares the process with the web server. Torch's default of one thread per core makes
    its threads spin against the server (and anything else on the machine): on 2 busy cores a toy step
    took 50-200x longer. Unless the user chose (OMP_NUM_THREADS), keep one core free."""
    if os.environ.get("OMP_NUM_THREADS"):
        return
    import torch

    torch.set_num_threads(max(1, min(torch.get_num_threads(), (os.cpu_count() or 2) - 1)))


def current_job_id() -> str | None:
    """The job this tab watches: ?job=<id> (survives a reload) or the one started in this session."""
    job_id = st.query_params.get("job") or st.session_state.get("job_id")
    if job_id and not re.fullmatch(r"[0-9a-f]{1,32}", job_id):  # not a job id: ignore a hand-edited URL
        del st.query_params["job"]
        job_id = st.session_state.get("job_id")
    if job_id:
        st.session_state["job_id"] = job_id
        if st.query_params.get("job") != job_id:
            st.query_params["job"] = job_id  # query params are dropped on a page switch; put it back
    return job_id or None


def linked_choice(key: str, options) -> str | None:
    """?<key>=<value> from a link (the Learn page's "try it"): the value to preselect, once. The
    parameter is dropped, so the user's later choice sticks."""
    value = st.query_params.get(key)
    if value is not None:
        del st.query_params[key]
    return value if value in options else None


QUEUE_ROWS = 30  # jobs listed in the Train page's queue, newest first


def queue_line(snap: JobSnapshot) -> str:
    """One job of the queue in Markdown: id, method, seed, sweep label, status and queue position."""
    config = snap.config
    where = f" · position {snap.queue_position}" if snap.queue_position else ""
    label = f" · {config.name}" if config.name else ""
    return (f"`{snap.id}` **{config.method}** · seed {config.seed}{label} · {config.model}/"
            f"{task_label(config.task)} · {snap.status}{where}")


def preset_summary(preset) -> str:
    """What running a preset launches, in one line."""
    base = preset.base
    grid = "".join(f" × {name} {values}" for name, values in preset.grid.items())
    seeds = f" × seeds {list(preset.seeds)}" if len(preset.seeds) > 1 else ""
    return f"{', '.join(preset.methods)}{grid}{seeds} on {base.model}, {base.steps} steps each"


def sweep_progress(sweep, root) -> tuple[int, int]:
    """(finished runs, planned runs) of a sweep."""
    finished = sum(info.status != "running" for info in sweep.runs(root))
    return finished, _planned_runs(sweep.id, str(root))


@st.cache_data(show_spinner=False, max_entries=64)
def _planned_runs(sweep_id: str, root: str) -> int:
    from lora_explorer import sweeps

    return len(sweeps.load(sweep_id, root).configs())


def watch_job(job_id: str) -> None:
    st.session_state["job_id"] = job_id
    st.query_params["job"] = job_id


# ---------------------------------------------------------------- form widgets from Param declarations
def _number(param: Param, value):
    cast = int if param.type is int else float
    return None if value is None else cast(value)


def param_input(param: Param, key: str, *, default_hint=None, label: str | None = None, disabled: bool = False):
    """Render one widget for `param` and return its value.

    Params whose default is None are optional: the widget starts empty, a placeholder shows the
    value the run would get (`default_hint`), and an empty widget returns None ("model default").
    """
    label = label or param.name.replace("_", " ")
    optional = param.default is None
    placeholder = f"default: {_fmt(default_hint)}" if default_hint is not None else "default"
    help_text = param.help + (" — leave empty for the default" if optional else "")
    if param.type is bool:
        return st.checkbox(label, value=bool(param.default), key=key, help=help_text, disabled=disabled)
    if param.choices:
        options = list(param.choices)
        index = options.index(param.default) if param.default in options else 0
        return st.selectbox(label, options, index=index, key=key, help=help_text, disabled=disabled)
    if param.type in (int, float):
        kwargs = dict(min_value=_number(param, param.min), max_value=_number(param, param.max),
                      value=_number(param, param.default), key=key, help=help_text, disabled=disabled,
                      placeholder=placeholder if optional else None)
        if param.type is float:
            kwargs["format"] = "%.3e" if param.log else "%g"
            kwargs["step"] = _float_step(param, default_hint)
        return st.number_input(label, **kwargs)
    text = st.text_input(label, value="" if param.default is None else str(param.default), key=key,
                         help=help_text, disabled=disabled, placeholder=placeholder if optional else None)
    return None if optional and not text.strip() else text


def _float_step(param: Param, hint) -> float:
    reference = param.default if param.default is not None else hint
    if isinstance(reference, (int, float)) and reference > 0:
        return float(10 ** round(math.log10(reference) - 1))  # one decade below
    return 0.01


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def params_form(params, prefix: str, *, hints: dict | None = None, columns: int = 3) -> dict:
    """Widgets for a tuple of Params laid out in columns; returns {name: value}."""
    hints = hints or {}
    values = {}
    cols = st.columns(columns)
    for index, param in enumerate(params):
        with cols[index % columns]:
            values[param.name] = param_input(param, f"{prefix}.{param.name}", default_hint=hints.get(param.name))
    return values


# ---------------------------------------------------------------- choosing a task
def model_kind(model: str) -> str | None:
    """The kind of a built-in model; None for hub models (known only once the task is chosen)."""
    return models.BUILTIN_MODELS[model].kind if models.is_builtin(model) else None


def task_choices(model: str) -> list[str]:
    """Built-in tasks the model can train on (its default first), then the upload entry if files work."""
    kind = model_kind(model)
    builtin = models.BUILTIN_MODELS.get(model)
    names = []
    for name, spec in tasks.TASKS.items():
        try:
            tasks.check_compatible(spec, model, kind)
        except ConfigError:
            continue
        names.append(name)
    if builtin and builtin.default_task in names:
        names.remove(builtin.default_task)
        names.insert(0, builtin.default_task)
    if accepts_files(model):
        names.append(UPLOAD)
    return names


def accepts_files(model: str) -> bool:
    kind = model_kind(model)
    try:
        tasks.check_compatible(tasks.spec_for("data.csv", kind), model, kind)
    except ConfigError:
        return False
    return True


def file_kind(model: str) -> str:
    """What a data file must hold for this model: labelled text, or plain text for an LM."""
    return model_kind(model) or models.CLASSIFICATION


def save_upload(raw: bytes, name: str, kind: str, root: str | Path | None = None) -> tuple[Path, list]:
    """Validate an uploaded file and store it as <runs root>/uploads/<hash>-<safe name>.

    Raises ConfigError (nothing is written) when the file is not usable. The name is generated from
    the content, so uploading the same file twice reuses one copy.
    """
    rows = data_files.parse(raw, name, kind)
    suffix = Path(name).suffix.lower()
    suffix = suffix if suffix in data_files.SUFFIXES else ".csv"
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(name).stem).strip("_")[:40] or "data"
    folder = store.runs_root(root) / "uploads"
    path = folder / f"{hashlib.sha256(raw).hexdigest()[:12]}-{stem}{suffix}"
    if not path.exists():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            partial = path.with_name("." + path.name + ".tmp")
            partial.write_bytes(raw)
            partial.replace(path)
        except OSError as error:
            raise ConfigError(f"cannot save the upload under {str(folder)!r}: {error.strerror or error}") from None
    return path, rows


def task_params_for(task: str, model: str) -> tuple[Param, ...]:
    try:
        return tasks.spec_for(task, model_kind(model)).params
    except ConfigError:
        return ()


def default_hints(config: RunConfig) -> dict:
    """The values a run would get for settings left empty (built-in models only: no hub access)."""
    if not models.is_builtin(config.model):
        hints = dict(models.HUB_DEFAULTS)
        method = REGISTRY.get(config.method)
        hints["lr"] *= method.lr_factor if method else 1.0
        return hints
    try:
        resolved = resolve(RunConfig(model=config.model, method=config.method,
                                     task=config.task if config.task in tasks.TASKS else None))
    except ConfigError:
        return {}
    return {name: getattr(resolved, name) for name in ("lr", "steps", "batch_size", "eval_every", "analysis_every")}


# ---------------------------------------------------------------- showing a job
def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def progress_text(snap: JobSnapshot) -> str:
    """E.g. 'running: 40/300 steps · ETA 3 s' or 'completed: 300/300 steps'."""
    text = f"{snap.status}: {snap.step}/{snap.total_steps} steps"
    if snap.status == "running":
        if snap.step == 0 and snap.phase == "queued":
            text += " · starting"
        if snap.phase and snap.phase not in ("training", "queued"):
            text += f" · {snap.phase}"
        if snap.eta_s is not None:
            text += f" · ETA {_duration(snap.eta_s)}"
    elif snap.status == "queued" and snap.queue_position:
        text += f" · position {snap.queue_position} in the queue"
    return text


def progress_fraction(snap: JobSnapshot) -> float:
    return min(1.0, snap.step / snap.total_steps) if snap.total_steps else 0.0


def final_summary(snap: JobSnapshot) -> dict:
    """summary.json of the job's run directory ({} before the run exists)."""
    return store.Run(snap.run_dir).summary() if snap.run_dir else {}


def task_label(task) -> str:
    """A built-in task's name, or just the file name of a data file."""
    task = str(task or "")
    return task if task in tasks.TASKS or task.startswith("hf:") else Path(task).name


def runs_table(root, limit: int = 50) -> list[dict]:
    """One row per run in the runs root, newest first."""
    rows = []
    for info in store.list_runs(root)[:limit]:
        summary, config = info.summary, info.config
        task = str(summary.get("task") or config.get("task") or "")
        rows.append({
            "id": info.id,
            "model": summary.get("model") or config.get("model"),
            "method": summary.get("method") or config.get("method"),
            "task": task_label(task),
            "status": info.status,
            "steps_done": summary.get("steps_done"),
            "final_loss": summary.get("final_loss"),
            "eval_metric": summary.get("eval_metric_name"),
            "final_eval": summary.get("final_eval_metric"),
            "sec_per_step": summary.get("sec_per_step"),
        })
    return rows


# ---------------------------------------------------------------- comparing runs (Spectra, Alignment)
def runs_with(root, *filenames: str) -> list[store.RunInfo]:
    """Runs (newest first) that have at least one of the files."""
    return [info for info in store.list_runs(root) if any((info.path / name).exists() for name in filenames)]


def run_labels(infos: list[store.RunInfo]) -> dict[str, str]:
    """A short legend label per run id: its method, its name if it has one (a sweep's runs share
    theirs), and the id's random suffix."""
    return {info.id: " · ".join(filter(None, (info.config.get("method", "?"), info.config.get("name"),
                                              info.id.rsplit("-", 1)[-1])))
            for info in infos}


def method_colors(infos: list[store.RunInfo]) -> dict[str, str]:
    """{legend label (run_labels): the colour of the run's method}: one colour per method on every page."""
    from lora_explorer import plots

    labels = run_labels(infos)
    return {labels[info.id]: plots.method_color(info.config.get("method")) for info in infos}


def run_option(info: store.RunInfo) -> str:
    config = info.config
    return f"{info.id} · {config.get('model')}/{task_label(config.get('task'))} · {info.status}"


def linked_run_id() -> str | None:
    """?run=<id>: the run a link asked for."""
    return st.query_params.get("run") or None


def default_run_ids(infos: list[store.RunInfo], limit: int = 4,
                    first_from: list[store.RunInfo] | None = None) -> list[str]:
    """The run of a ?run= link (else the newest finished one, of `first_from` when given), then the
    newest finished runs on the same model and task (comparable runs), at most `limit`."""
    candidates = first_from or infos
    linked = [info for info in infos if info.id == linked_run_id()]
    finished = [info for info in candidates if info.status in crossrun.FINISHED]
    first = (linked or finished or candidates[:1] or [None])[0]
    if first is None:
        return []
    same = [info for info in infos if info.status in crossrun.FINISHED and info.id != first.id
            and same_model_and_task(info, first)]
    return [first.id] + [info.id for info in same][: limit - 1]


def same_model_and_task(a: store.RunInfo, b: store.RunInfo) -> bool:
    return all(a.config.get(field) == b.config.get(field) for field in ("model", "task"))


def chart(figure, key: str, caption: str, formula: str) -> None:
    """A Plotly chart with its one-line caption; the caption's tooltip gives the formula."""
    st.plotly_chart(figure, key=key, width="stretch", config={"scrollZoom": False})
    st.caption(_plain(caption), help=_plain(formula))


def _plain(text: str) -> str:
    """Formulas write subscripts with _ and ΔW* with *: not Markdown emphasis."""
    return text.replace("_", "\\_").replace("*", "\\*")


@st.cache_data(show_spinner=False, max_entries=256)
def subspace_overlap(run_dir: str, reference_dir: str, k: int, finished_at: tuple) -> dict:
    """crossrun.subspace_overlap_with, computed once per pair of finished runs (`finished_at` of both
    is in the key, so a run trained again under the same id is recomputed)."""
    return crossrun.subspace_overlap_with(run_dir, reference_dir, k)


@st.cache_data(show_spinner=False, max_entries=256)
def intruder_dimensions(run_dir: str, top_k: int, threshold: float, finished_at) -> dict:
    """crossrun.intruder_dimensions, computed once per finished run."""
    return crossrun.intruder_dimensions(run_dir, top_k, threshold)


# ---------------------------------------------------------------- the Compare page: runs as they are now, exports
FRAMES_KEPT = 256  # runs whose parsed metrics.jsonl stays in memory between reruns


@st.cache_resource(show_spinner=False)
def _frames() -> OrderedDict:
    """Process-wide {run dir: (metrics.jsonl's mtime and size, its DataFrame)}: one entry per run (a live
    run replaces its own), the least recently used dropped beyond FRAMES_KEPT; never modified in place."""
    return OrderedDict()


def metrics_frame(run_dir: str | Path):
    """compare.metrics_frame of a run's metrics.jsonl, parsed again only when the file changed."""
    from lora_explorer import compare

    path = str(run_dir)
    try:
        stat = os.stat(os.path.join(path, "metrics.jsonl"))
        stamp = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        stamp = None
    cache = _frames()
    cached = cache.get(path)
    if cached is not None and stamp is not None and cached[0] == stamp:
        cache.move_to_end(path)
        return cached[1]
    frame = compare.metrics_frame(store.read_metrics(Path(path) / "metrics.jsonl"))
    cache[path] = (stamp, frame)
    while len(cache) > FRAMES_KEPT:
        cache.popitem(last=False)
    return frame


def compare_runs(infos: list[store.RunInfo]) -> list:
    """compare.RunData of each run as it is now on disk: config and summary read again (a live run's
    status and costs change), metrics from metrics_frame."""
    from lora_explorer import compare

    runs = []
    for info in infos:
        run = store.Run(info.path)
        now = store.RunInfo(info.id, info.path, run.config() or info.config, run.summary())
        runs.append(compare.read_run(info.path, now, metrics_frame(info.path)))
    return runs


def figure_exports(figure, key: str, name: str) -> None:
    """Download buttons under a chart: the figure as one self-contained HTML file (Plotly included, opens
    offline), built only when clicked; and a PNG where kaleido is installed, rendered on request, with a
    caption saying why when it cannot be (kaleido also needs Chrome or Chromium)."""
    col_html, col_png, _ = st.columns([1, 1, 6])
    col_html.download_button("HTML", lambda: figure.to_html(include_plotlyjs=True, full_html=True),
                             file_name=f"{name}.html", mime="text/html", key=f"html_{key}", on_click="ignore",
                             icon=":material/download:", type="tertiary",
                             help="the interactive chart in one file, Plotly included: opens offline")
    if not can_render_png():
        return
    png_key = f"png_bytes_{key}"
    if col_png.button("PNG", key=f"png_{key}", type="tertiary", icon=":material/image:",
                      help="render a PNG on the server (needs kaleido and Chrome or Chromium)"):
        try:
            st.session_state[png_key] = figure.to_image(format="png", scale=2)
        except Exception as error:  # noqa: BLE001 - kaleido/Chrome raise many kinds; say so, keep the page
            st.session_state.pop(png_key, None)
            st.caption(f"PNG export failed ({type(error).__name__}: {str(error)[:160]}); it needs kaleido with "
                       "Chrome or Chromium. The camera icon on the chart saves a PNG in the browser.")
    if st.session_state.get(png_key):
        col_png.download_button("save PNG", st.session_state[png_key], file_name=f"{name}.png", mime="image/png",
                                key=f"png_save_{key}", on_click="ignore", type="tertiary")


def can_render_png() -> bool:
    """Whether kaleido is installed (cheap: nothing is imported); whether it finds a browser shows on use."""
    import importlib.util

    return importlib.util.find_spec("kaleido") is not None
