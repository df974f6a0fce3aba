"""The Streamlit app, driven by AppTest: home page, Train page, a live job, bad input, stop, re-attach.

AppTest has no browser timer, so `run_every` fragments never fire by themselves: the tests poll
with repeated `at.run()`. Every test gets its own runs root and a fresh job manager (toy model only).
"""
import base64
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lora_explorer import data_files, plots, store, ui  # noqa: E402  (after the path fix)
from lora_explorer.errors import ConfigError  # noqa: E402
from conftest import APP, open_page  # noqa: E402

TRAIN = "pages/1_Train.py"
METHODS = {"full", "lora", "lora-plus", "rslora", "dora", "vera", "lora-fa", "lora-drop", "adalora", "delta-lora",
           "lora-ga", "lora-pro"}


def train_page(query_params: dict | None = None) -> AppTest:
    return open_page(TRAIN, query_params, timeout=30)


def progress(at: AppTest) -> str:
    bars = at.get("progress")
    return bars[0].proto.text if bars else ""


def run_until(at: AppTest, predicate, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        at.run()
        assert not at.exception, at.exception
        if predicate(at):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}; progress: {progress(at)!r}")
        time.sleep(0.2)


def chart_traces(at: AppTest) -> list[dict]:
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    return json.loads(charts[0].proto.spec)["data"]


def values(array) -> np.ndarray:
    """A trace's x/y: NumPy arrays travel as base64 typed arrays, lists as lists."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"])
    return np.asarray(array)


def start(at: AppTest, steps: int, **widgets) -> None:
    at.selectbox(key="model").select("toy")
    at.selectbox(key="method").select("lora")
    at.number_input(key="common.steps").set_value(steps)
    for key, value in widgets.items():
        at.number_input(key=key).set_value(value)
    at.button(key="start").click().run()
    assert not at.exception, at.exception


def summaries(root: Path) -> list[dict]:
    return [store.Run(path).summary() for path in sorted(root.iterdir()) if (path / "config.json").exists()]


def test_home_lists_methods(app_runs):
    at = AppTest.from_file(APP, default_timeout=30).run()
    assert not at.exception
    assert at.title[0].value == "LoRA Explorer"
    table = at.dataframe[0].value
    assert set(table["id"]) == METHODS
    assert table.set_index("id").loc["lora", "paper"].startswith("Hu et al. 2021")
    assert any("Train" in block.value for block in at.markdown)


def test_train_live_chart_until_completed(app_runs):
    at = train_page()
    assert at.selectbox(key="task").options == ["teacher"]  # the toy model's own task, nothing else
    start(at, 40)
    job_id = at.session_state["job_id"]
    assert at.query_params["job"] == job_id

    run_until(at, lambda at: progress(at).startswith("completed"), what="the job to complete")
    assert progress(at) == "completed: 40/40 steps"
    train, evals = chart_traces(at)
    losses = values(train["y"])
    assert len(losses) == 40 and list(values(train["x"])) == list(range(1, 41))
    assert losses[-5:].mean() < losses[:5].mean()
    assert train["mode"] == "lines" and evals["mode"] == "markers" and len(values(evals["y"])) >= 1
    assert any(metric.label == "final eval r2" for metric in at.metric)

    (summary,) = summaries(app_runs)
    assert summary["status"] == "completed" and summary["steps_done"] == 40
    table = at.dataframe[0].value
    assert list(table["status"]) == ["completed"] and table["final_eval"].notna().all()


@pytest.mark.parametrize("key, value, message", [
    ("method.lora.rank", 100, "--rank 100 is larger than layer out"),  # the toy's last layer is 64->16
    ("common.lr", 0.0, "--lr must be a positive number"),
])
def test_bad_input_shows_error_and_starts_nothing(app_runs, key, value, message):
    at = train_page()
    start(at, 40, **{key: value})
    assert [error.value for error in at.error] and message in at.error[0].value
    assert "job_id" not in at.session_state and "job" not in at.query_params
    assert not at.get("plotly_chart") and not at.get("progress")
    assert ui.get_manager().snapshots() == []
    assert not app_runs.exists() or not any(app_runs.iterdir())


def test_stop_a_running_job(app_runs):
    at = train_page()
    start(at, 100_000)
    run_until(at, lambda at: re.match(r"running: [1-9]", progress(at)), what="the first steps")
    at.button(key="stop").click().run()
    run_until(at, lambda at: progress(at).startswith("stopped"), timeout=30, what="the job to stop")
    assert at.warning and "Stopped after" in at.warning[0].value
    assert at.button(key="stop").disabled
    (summary,) = summaries(app_runs)
    assert summary["status"] == "stopped" and 0 < summary["steps_done"] < 100_000


def test_reattach_by_query_param(app_runs):
    first = train_page()
    start(first, 30)
    job_id = first.session_state["job_id"]
    run_until(first, lambda at: progress(at).startswith("completed"), what="the job to complete")

    again = train_page({"job": job_id})  # a new connection, as after a browser reload
    assert again.session_state["job_id"] == job_id
    assert progress(again) == "completed: 30/30 steps"
    assert len(values(chart_traces(again)[0]["y"])) == 30

    unknown = train_page({"job": "feedbeef"})
    assert not train_page({"job": "`**x**`"}).info  # not an id: ignored
    assert any("not known to this server" in info.value for info in unknown.info)
    assert not unknown.get("plotly_chart")


def test_save_upload_validates_and_names_safely(app_runs):
    raw = b"text,label\n" + b"".join(f"sentence {i},{'pos' if i % 2 else 'neg'}\n".encode() for i in range(8))
    path, rows = ui.save_upload(raw, "../../my data!.csv", "classification", app_runs)
    assert path.parent == app_runs / "uploads" and path.read_bytes() == raw
    assert re.fullmatch(r"[0-9a-f]{12}-my_data\.csv", path.name) and len(rows) == 8
    assert ui.save_upload(raw, "again.csv", "classification", app_runs)[0].read_bytes() == raw
    with pytest.raises(ConfigError, match="no 'label' column"):
        ui.save_upload(b"text\na\nb\nc\nd\n", "bad.csv", "classification", app_runs)
    assert len(list((app_runs / "uploads").iterdir())) == 2


def test_loss_figure_downsamples_and_keeps_the_last_step():
    records = [{"step": s, "loss": 1.0 / s} for s in range(1, 10_001)] + [{"step": 10_000, "eval_loss": 0.5}]
    fig = plots.loss_figure({"lora": records, "empty": []}, log_y=True)
    train = fig.data[0]
    assert len(train.x) <= plots.MAX_POINTS and train.x[0] == 1 and train.x[-1] == 10_000
    assert fig.data[1].mode == "markers" and list(fig.data[1].y) == [0.5]
    assert fig.layout.yaxis.type == "log" and len(fig.data) == 3


def widget(at: AppTest, key: str):
    for kind in ("number_input", "text_input", "selectbox", "checkbox"):
        found = [w for w in getattr(at, kind) if w.key == key]
        if found:
            return found[0]
    return None


def test_every_method_has_its_own_fields_with_help(app_runs):
    from lora_explorer.methods import REGISTRY

    at = train_page()
    for method in REGISTRY.values():
        at.selectbox(key="method").select(method.id).run()
        assert not at.exception, at.exception
        for param in method.params:
            field = widget(at, f"method.{method.id}.{param.name}")
            assert field is not None, (method.id, param.name)
            assert field.help.startswith(param.help), (method.id, param.name)


@pytest.mark.parametrize("method, fields, message", [
    ("adalora", {"method.adalora.final_rank": 20}, "--final-rank 20 is larger than the initial --rank 12"),
    ("delta-lora", {"common.steps": 10, "method.delta-lora.start_step": 10}, "must be less than --steps 10"),
    ("lora-ga", {"method.lora-ga.rank": 9}, "2r must fit"),
    ("vera", {"method.vera.rank": 17}, "larger than layer"),
    ("lora-fa", {"method.lora-fa.target_modules": "nosuchlayer"}, "nosuchlayer"),
    ("dora", {"method.dora.target_modules": "fc1,,,"}, ""),
    ("adalora", {"common.steps": 3, "method.adalora.warmup_fraction": 0.5, "method.adalora.final_fraction": 0.5},
     "too few"),
])
def test_invalid_method_settings_show_one_error_and_start_nothing(app_runs, method, fields, message):
    at = train_page()
    at.selectbox(key="method").select(method).run()
    for key, value in fields.items():
        field = widget(at, key)
        (at.text_input(key=key) if field.type == "text_input" else at.number_input(key=key)).set_value(value)
    at.button(key="start").click().run()
    assert not at.exception, at.exception
    if not message:  # tolerated input (empty names are dropped): it must then start a job
        assert not at.error and ui.get_manager().snapshots()
        return
    assert len(at.error) == 1 and message in at.error[0].value, [e.value for e in at.error]
    assert ui.get_manager().snapshots() == [] and (not app_runs.exists() or summaries(app_runs) == [])


def queue_lines(at: AppTest) -> list[str]:
    return [block.value for block in at.markdown if block.value.startswith("`")]


def start_sweep(at: AppTest, steps: int, methods, seeds: str, **widgets) -> None:
    at.selectbox(key="model").select("toy")
    at.selectbox(key="method").select("lora")
    at.number_input(key="common.steps").set_value(steps)
    for key, value in widgets.items():
        at.number_input(key=key).set_value(value)
    at.multiselect(key="sweep_methods").set_value(methods)
    at.text_input(key="sweep_seeds").set_value(seeds)
    at.button(key="start_sweep").click().run()
    assert not at.exception, at.exception


def test_sweep_from_the_train_page_queues_a_saved_group(app_runs):
    from lora_explorer import sweeps

    at = train_page()
    start_sweep(at, 6, ["lora", "dora"], "0, 1")
    assert not at.error
    (sweep,) = sweeps.list_sweeps(app_runs)
    assert sweep.methods == ["lora", "dora"] and sweep.seeds == [0, 1]
    assert at.session_state["sweep_id"] == sweep.id
    run_until(at, lambda at: len(queue_lines(at)) == 4 and all("completed" in line for line in queue_lines(at)),
              timeout=120, what="the four jobs")
    assert sorted((line.split("**")[1], line.split("seed ")[1][0]) for line in queue_lines(at)) == [
        ("dora", "0"), ("dora", "1"), ("lora", "0"), ("lora", "1")]
    runs = sweep.runs(app_runs)
    assert len(runs) == 4 and all(info.status == "completed" for info in runs)
    (link,) = [link.proto for link in at.get("page_link") if sweep.id in link.proto.label]
    assert link.label == f"Open sweep {sweep.id} on the Compare page" and "Compare" in link.page


@pytest.mark.parametrize("methods, seeds, message", [
    ([], "0", "choose at least one method"),
    (["lora", "dora"], "0,zero", "--seeds must be a comma-separated list of ints"),
    (["lora", "adalora"], "0", "--final-rank 8 is larger than the initial --rank 4"),  # LoRA's rank 4 applies
])
def test_a_bad_sweep_shows_one_error_and_queues_nothing(app_runs, methods, seeds, message):
    at = train_page()
    start_sweep(at, 3, methods, seeds, **{"method.lora.rank": 4})
    assert len(at.error) == 1 and message in at.error[0].value
    assert ui.get_manager().snapshots() == [] and not (app_runs / "sweeps").exists()


def test_queued_jobs_can_be_cancelled_from_the_queue(app_runs):
    at = train_page()
    start_sweep(at, 100_000, ["lora", "rslora", "vera"], "0")
    manager = ui.get_manager()
    queued = [snap.id for snap in manager.snapshots() if snap.status == "queued"]
    assert len(queued) >= 2 and all("position" in line for line in queue_lines(at) if "queued" in line)
    for job_id in queued:
        at.button(key=f"stop_{job_id}").click().run()
    assert [manager.snapshot(job_id).status for job_id in queued] == ["cancelled"] * len(queued)
    running = next(snap.id for snap in manager.snapshots() if snap.status in ("running", "queued"))
    at.button(key=f"stop_{running}").click().run()
    assert manager.wait(running, timeout=60).status in ("stopped", "cancelled")


def test_a_try_it_link_preselects_the_method_once(app_runs):
    at = train_page({"method": "dora"})
    assert at.selectbox(key="method").value == "dora" and "method" not in at.query_params
    at.selectbox(key="method").select("vera").run()
    assert at.selectbox(key="method").value == "vera"


def upload(at: AppTest, model: str, name: str, data: bytes) -> AppTest:
    at.selectbox(key="model").select(model).run()
    at.selectbox(key="task").select(ui.UPLOAD).run()
    at.file_uploader(key="upload").upload(name, data, "text/csv").run()
    assert not at.exception, at.exception
    return at


LABELLED = b"text,label\n" + b"".join(b"review %d,%s\n" % (i, b"pos" if i % 2 else b"neg") for i in range(8))
BAD_UPLOADS = [  # (model, file name, bytes, the error's words)
    ("minilm", "empty.csv", b"", "is empty"),
    ("minilm", "blank.jsonl", b"\n \n", "is empty"),
    ("minilm", "image.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "looks binary"),
    ("minilm", "latin1.csv", "text,label\ncaf\u00e9 cr\u00e8me,pos\n".encode("latin-1"), "not valid UTF-8"),
    ("minilm", "utf16.csv", "text,label\nhello,pos\n".encode("utf-16"), "looks binary"),
    ("minilm", "huge.csv", LABELLED * 4, "the limit is"),  # MAX_BYTES is lowered for this case
    ("minilm", "many.csv", LABELLED, "more than 5 rows"),  # and MAX_ROWS for this one
    ("minilm", "nolabel.csv", b"text\na\nb\nc\nd\n", "no 'label' column"),
    ("minilm", "renamed.csv", b"sentence,label\na,1\nb,0\nc,1\nd,0\n", "no 'text' column"),
    ("minilm", "ragged.csv", b"text,label\na,1\nb,0,extra\n", "line 3 has 3 fields"),
    ("minilm", "broken.jsonl", b'{"text": "a", "label": 1}\n{"text": \n', "line 2 is not JSON"),
    ("minilm", "list.jsonl", b'["a", 1]\n', "not a JSON object"),
    ("minilm", "short.csv", b"text,label\na,pos\nb,neg\n", "at least 4"),
    ("minilm", "onelabel.csv", b"text,label\na,x\nb,x\nc,x\nd,x\n", "single label"),
    ("minilm", "numbers.jsonl", b'{"text": 5, "label": "a"}\n' * 4, "'text' is empty or not a string"),
    ("minilm", "nested.jsonl", b'{"text": "a", "label": {"x": 1}}\n' * 4, "'label' is empty or not a value"),
]


@pytest.mark.parametrize("model, name, data, message", BAD_UPLOADS, ids=[case[1] for case in BAD_UPLOADS])
def test_a_bad_upload_shows_one_error_saves_nothing_and_cannot_start(app_runs, monkeypatch, model, name, data,
                                                                      message):
    monkeypatch.setattr(data_files, "MAX_BYTES", len(LABELLED) * 2 if name == "huge.csv" else data_files.MAX_BYTES)
    monkeypatch.setattr(data_files, "MAX_ROWS", 5 if name == "many.csv" else data_files.MAX_ROWS)
    at = upload(train_page(), model, name, data)
    assert len(at.error) == 1 and message in at.error[0].value and name in at.error[0].value, \
        [error.value for error in at.error]
    assert "Traceback" not in at.error[0].value and "\n" not in at.error[0].value
    assert at.button(key="start").disabled and at.button(key="start_sweep").disabled
    assert not (app_runs / "uploads").exists() and ui.get_manager().snapshots() == []


def test_an_upload_with_extra_columns_is_accepted_and_saved_once(app_runs):
    data = b"id,text,label,source\n" + b"".join(b"%d,review %d,%s,web\n" % (i, i, b"pos" if i % 2 else b"neg")
                                                  for i in range(6))
    at = upload(train_page(), "minilm", "extra columns.csv", data)
    assert not at.error and any(caption.value == "6 rows, labels: neg, pos" for caption in at.caption)
    assert not at.button(key="start").disabled
    (saved,) = (app_runs / "uploads").iterdir()
    assert saved.read_bytes() == data and saved.name.endswith("-extra_columns.csv")


def test_a_runs_root_that_cannot_be_written_shows_one_error(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # even root cannot create a directory under a file
    monkeypatch.setenv("LORA_EXPLORER_RUNS", str(blocker / "runs"))
    ui.get_manager.clear()
    try:
        at = train_page()
        start(at, 5)
        assert len(at.error) == 1 and "cannot create runs directory" in at.error[0].value, at.error
        assert "job_id" not in at.session_state and ui.get_manager().snapshots() == []
        at = upload(train_page(), "minilm", "reviews.csv", LABELLED)  # a good file, nowhere to keep it
        assert len(at.error) == 1 and "cannot save the upload" in at.error[0].value, at.error
        assert at.button(key="start").disabled
    finally:
        ui.get_manager.clear()
    assert blocker.read_text() == "not a folder" and [p.name for p in tmp_path.iterdir()] == ["a-file"]


def test_a_label_that_looks_like_a_path_stays_a_label(app_runs):
    at = train_page()
    at.text_input(key="run_name").set_value("../../outside")
    start(at, 3)
    run_until(at, lambda at: progress(at).startswith("completed"), what="the job to complete")
    (run,) = [path for path in app_runs.iterdir() if (path / "config.json").exists()]
    assert json.loads((run / "config.json").read_text())["name"] == "../../outside"
    assert not (app_runs.parent.parent / "outside").exists() and run.parent == app_runs
