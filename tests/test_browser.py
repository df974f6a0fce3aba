"""The real app in a real browser: `streamlit run app.py` on 127.0.0.1, driven by Playwright through
Debian's chromium (never `playwright install`). Screenshots go to test-artifacts/browser/.

One journey, as a user takes it: the home page; a sweep of two toy methods from the Train page; the
loss chart growing; a run stopped; Compare showing both curves; Spectra and Alignment drawing.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = shutil.which("chromium")
playwright = pytest.importorskip("playwright.sync_api", reason="pip install -r requirements-dev.txt")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium on the PATH (apt-get install chromium)")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app served by `streamlit run` on a free port, with its own runs root."""
    runs = tmp_path_factory.mktemp("browser-runs")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(runs / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless", "true",
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env={**os.environ, "LORA_EXPLORER_RUNS": str(runs)}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("streamlit did not start:\n" + (runs / "server.log").read_text()[-2000:])
            time.sleep(0.3)
        yield url, runs
    finally:
        server.terminate()
        server.wait(20)


@pytest.fixture(scope="module")
def browser():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


def new_page(browser):
    """A page in a context of its own: a separate browser session, as another user's."""
    page = browser.new_context(viewport={"width": 1300, "height": 1000}).new_page()
    page.set_default_timeout(60_000)
    return page


@pytest.fixture(scope="module")
def page(app, browser):
    return new_page(browser)


def settle(page) -> None:
    """Wait until the script run of the page has finished."""
    page.locator("[data-testid='stApp'][data-test-script-state='notRunning']").wait_for()


def open_page(page, url: str) -> None:
    page.goto(url)
    settle(page)
    page.get_by_role("heading", level=1).first.wait_for()


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


POINTS = """(() => {
    const plot = document.querySelector('.js-plotly-plot');
    return plot && plot._fullData ? plot._fullData.map(t => (t.x || []).length) : [0];
})()"""


def trace_lengths(page) -> list[int]:
    """Points per trace of the first Plotly chart on the page (decoded: `_fullData`)."""
    return page.evaluate(f"() => {POINTS}")


def type_into(page, field: str, value: str) -> None:
    """Enter a value in the text or number field with this label, and wait for the rerun it starts."""
    box = page.get_by_label(field, exact=True)
    box.fill(value)
    box.press("Enter")
    time.sleep(1)  # the rerun starts
    settle(page)


def add_to_multiselect(page, option: str) -> None:
    """Pick an option in the page's multiselect. A rerun still in flight can redraw the widget under
    the click, so check that it took, and try again if not."""
    widget = page.locator("[data-testid='stMultiSelect']")
    for _ in range(4):
        widget.locator("input").click()
        page.keyboard.type(option, delay=50)
        try:
            page.get_by_role("option", name=option, exact=True).click(timeout=5_000)
        except playwright.TimeoutError:  # the list did not open: the widget was redrawn under us
            page.keyboard.press("Escape")
            settle(page)
            continue
        page.keyboard.press("Escape")
        time.sleep(1)  # the rerun that the new selection starts
        settle(page)
        if option in widget.inner_text().split():
            return
    raise AssertionError(f"could not choose {option!r}: {widget.inner_text()!r}")


def legend(page) -> list[str]:
    return page.evaluate("() => [...document.querySelectorAll('.legendtext')].map(e => e.textContent)")


def test_a_user_journey_through_the_app(app, page):
    url, runs = app
    try:
        journey(page, url, runs)
    except Exception:
        shot(page, "failure")  # what the user would have seen
        raise


def journey(page, url, runs):
    open_page(page, url)
    page.get_by_role("heading", name="LoRA Explorer").wait_for()
    shot(page, "1-home")

    # a sweep of two methods on the toy model, from the Train page; long enough to stop them
    open_page(page, f"{url}/Train")
    type_into(page, "steps", "20000")
    page.get_by_text("Compare methods: launch a sweep").click()
    add_to_multiselect(page, "dora")  # lora is chosen already
    page.get_by_role("button", name="Start sweep").click()
    page.get_by_text(re.compile(r"dora · seed 0")).wait_for()  # both jobs queued

    # the watched run's loss chart grows; stop it, then the second run once it is going
    page.wait_for_function(f"() => {POINTS}[0] > 5")
    first = trace_lengths(page)[0]
    page.wait_for_function(f"() => {POINTS}[0] > {first}")
    shot(page, "2-train-live")
    enabled_stop = page.locator("button:enabled", has_text="Stop")
    enabled_stop.first.click()
    page.get_by_text("Stopped after").wait_for()
    page.get_by_text(re.compile(r"dora.*running")).first.wait_for()
    time.sleep(2)  # a few steps of dora
    enabled_stop.first.click()
    (sweep_file,) = (runs / "sweeps").glob("*.json")
    sweep_id = json.loads(sweep_file.read_text())["id"]
    deadline = time.monotonic() + 60
    while True:
        statuses = sorted(json.loads((p / "summary.json").read_text())["status"]
                          for p in runs.iterdir() if (p / "summary.json").exists())
        if statuses == ["stopped", "stopped"]:
            break
        assert time.monotonic() < deadline, statuses
        time.sleep(0.5)
    settle(page)
    shot(page, "3-train-stopped")

    # Compare opens the sweep and shows both curves
    open_page(page, f"{url}/Compare?sweep={sweep_id}")
    page.locator(".js-plotly-plot").first.wait_for()
    page.wait_for_function("() => document.querySelectorAll('.legendtext').length >= 2")
    names = " ".join(legend(page))
    assert "lora" in names and "dora" in names, names
    shot(page, "4-compare")

    for name in ("Spectra", "Alignment"):
        open_page(page, f"{url}/{name}")
        page.locator(".js-plotly-plot").first.wait_for()
        assert not page.get_by_text("Traceback").count()
        shot(page, f"5-{name.lower()}")


def start_sweep_of_seeds(page, url: str, label: str, steps: int) -> None:
    """From the Train page: the toy model's LoRA, three seeds, queued as one sweep under a label."""
    open_page(page, f"{url}/Train")
    type_into(page, "steps", str(steps))
    type_into(page, "Run label (optional)", label)
    page.get_by_text("Compare methods: launch a sweep").click()
    type_into(page, "Seeds", "0,1,2")
    page.get_by_role("button", name="Start sweep").click()
    page.get_by_text(re.compile(rf"seed 2 · {label}")).first.wait_for()


QUEUE_ROWS = """(() => [...document.querySelectorAll('[data-testid="stMarkdownContainer"]')]
    .map(e => e.innerText).filter(t => / · seed \\d · (alice|bob) /.test(t)))()"""


def ours(runs: Path) -> dict:
    """(label, seed) -> (config, summary) of the runs the two sessions started."""
    found = {}
    for path in runs.iterdir():
        config = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() else {}
        if config.get("name") in ("alice", "bob"):
            found[config["name"], config["seed"]] = (path, config, json.loads((path / "summary.json").read_text()))
    return found


def click_in_row(page, row_text: str, button: str) -> None:
    """Click a button in the Queue row whose text matches (the row is one st.columns block)."""
    page.locator("[data-testid='stHorizontalBlock']", has_text=re.compile(row_text)).get_by_role(
        "button", name=button).click()


def test_two_browser_sessions_share_one_queue_and_stop_only_their_own_job(app, browser):
    """Two browsers (two sessions) queue three jobs each on one server: each sees all six, also a
    session whose queue had gone idle; a cancel and stops in one session end only those jobs; every
    run keeps its own steps and nothing of the other's."""
    url, runs = app
    alice, bob = new_page(browser), new_page(browser)
    try:
        start_sweep_of_seeds(alice, url, "alice", 300)
        alice.wait_for_function(f"() => {QUEUE_ROWS}.filter(t => t.includes('completed')).length == 3")
        start_sweep_of_seeds(bob, url, "bob", 20000)  # far longer than the test: bob's jobs end only by his clicks
        alice.wait_for_function(f"() => {QUEUE_ROWS}.length == 6", timeout=15_000)  # her idle queue's timer
        click_in_row(bob, r"seed 2 · bob .*queued", "Cancel")  # behind seed 0 (running) and seed 1
        bob.get_by_text(re.compile(r"seed 2 · bob .*cancelled")).first.wait_for()
        bob.get_by_text(re.compile(r"seed 0 · bob .*running")).first.wait_for()
        time.sleep(1)  # a few steps
        click_in_row(bob, r"seed 0 · bob .*running", "Stop")
        bob.get_by_text(re.compile(r"seed 1 · bob .*running")).first.wait_for()  # the next job was not stopped
        time.sleep(1)
        click_in_row(bob, r"seed 1 · bob .*running", "Stop")
        for page in (alice, bob):  # each session's queue lists all six, its own and the other's
            page.wait_for_function(f"() => {QUEUE_ROWS}.filter(t => /completed|stopped|cancelled/.test(t)).length == 6")
        alice.get_by_role("heading", name="Queue").scroll_into_view_if_needed()
        shot(alice, "6-two-sessions")

        deadline = time.monotonic() + 30
        while {summary["status"] for *_, summary in ours(runs).values()} - {"completed", "stopped"}:
            assert time.monotonic() < deadline, ours(runs)
            time.sleep(0.5)
        found = ours(runs)
        assert sorted(found) == [("alice", 0), ("alice", 1), ("alice", 2), ("bob", 0), ("bob", 1)]  # seed 2: none
        for (label, _), (path, config, summary) in found.items():
            assert summary["status"] == ("completed" if label == "alice" else "stopped")
            assert 0 < summary["steps_done"] <= config["steps"] == (300 if label == "alice" else 20000)
            steps = [json.loads(line)["step"] for line in (path / "metrics.jsonl").read_text().splitlines()
                     if '"loss"' in line]
            assert steps == list(range(1, summary["steps_done"] + 1)), (label, len(steps))
    except Exception:
        shot(alice, "failure-alice")
        shot(bob, "failure-bob")
        raise
    finally:
        for page in (alice, bob):
            page.context.close()
