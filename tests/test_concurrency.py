"""Two app sessions at once (two AppTest connections to one server process, which share its job
manager): each queues three jobs; all six finish, each session sees every job, no job's metrics leak
into another's run, and a stop in one session stops only that job."""
import time

from conftest import run_dirs
from lora_explorer import store, ui
from test_app import queue_lines, start, train_page


def wait_all_finished(timeout: float = 180.0) -> list:
    manager = ui.get_manager()
    deadline = time.monotonic() + timeout
    while any(not snap.finished for snap in manager.snapshots()):
        assert time.monotonic() < deadline, [(s.id, s.status) for s in manager.snapshots()]
        time.sleep(0.2)
    return manager.snapshots()


def wait_until_running(manager, job_id: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while manager.snapshot(job_id).status != "running":
        assert time.monotonic() < deadline, manager.snapshot(job_id).status
        time.sleep(0.1)


def test_two_sessions_queue_three_jobs_each(app_runs):
    sessions = [train_page(), train_page()]
    started = {0: [], 1: []}
    for round_ in range(3):
        for index, at in enumerate(sessions):
            steps = 20 + 10 * round_ + index  # a distinct step count per job tells their runs apart
            start(at, steps)
            started[index].append((at.session_state["job_id"], steps))
    snaps = {snap.id: snap for snap in wait_all_finished()}
    assert len(snaps) == 6 and all(snap.status == "completed" for snap in snaps.values())
    for index, at in enumerate(sessions):
        at.run()
        assert len(queue_lines(at)) == 6  # every session sees every job
        assert at.session_state["job_id"] == started[index][-1][0]  # and watches its own
    for job_id, steps in started[0] + started[1]:
        run = store.Run(snaps[job_id].run_dir)
        losses = [r["step"] for r in run.metrics() if "loss" in r]
        assert run.config()["steps"] == steps and losses == list(range(1, steps + 1))
    assert len(run_dirs(app_runs)) == 6


def test_a_stop_in_one_session_stops_only_its_job(app_runs):
    first, second = train_page(), train_page()
    start(first, 100_000)
    start(second, 100_000)
    mine, theirs = first.session_state["job_id"], second.session_state["job_id"]
    manager = ui.get_manager()
    wait_until_running(manager, mine)
    first.button(key="stop").click().run()
    assert manager.wait(mine, timeout=60).status == "stopped"
    time.sleep(0.5)
    assert manager.snapshot(theirs).status in ("queued", "running")  # untouched: it runs next
    wait_until_running(manager, theirs)
    second.button(key="stop").click().run()
    assert manager.wait(theirs, timeout=60).status == "stopped"
