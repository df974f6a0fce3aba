"""Background training jobs: a queue, worker threads, stop, status and thread-safe snapshots.

No Streamlit here: the app keeps one JobManager in st.cache_resource and only reads snapshots;
worker threads never touch the UI. One worker by default, because one GPU is shared.
"""
from __future__ import annotations

import queue
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lora_explorer import store
from lora_explorer.config import RunConfig, resolve
from lora_explorer.errors import ConfigError

FINISHED = ("completed", "stopped", "diverged", "failed", "cancelled")


@dataclass(frozen=True)
class JobSnapshot:
    id: str
    config: RunConfig
    status: str  # queued | running | completed | stopped | diverged | failed | cancelled
    phase: str  # what a running job is doing right now ("loading model", "training", ...)
    step: int
    total_steps: int
    records: tuple  # every metrics record so far (training and evaluation lines)
    run_dir: Path | None
    error: str | None
    queue_position: int | None
    submitted_at: float
    started_at: float | None
    finished_at: float | None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def eta_s(self) -> float | None:
        """Seconds left, from the time per step so far."""
        elapsed = [r["elapsed_s"] for r in self.records if "loss" in r]
        if self.status != "running" or not elapsed or self.step == 0:
            return None
        return elapsed[-1] / self.step * (self.total_steps - self.step)


@dataclass
class Job:
    id: str
    config: RunConfig
    status: str = "queued"
    phase: str = "queued"
    step: int = 0
    records: list = field(default_factory=list)
    run_dir: Path | None = None
    error: str | None = None
    submitted_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    stop_event: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


class JobManager:
    def __init__(self, runs_dir=None, workers: int = 1, keep_finished: int = 200):
        self.runs_dir = runs_dir
        self.keep_finished = keep_finished
        self._jobs: dict[str, Job] = {}
        self._order: list[str] = []  # submission order, for queue positions
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._threads = [threading.Thread(target=self._work, name=f"lora-explorer-worker-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, config: RunConfig) -> str:
        """Validate now (raises ConfigError, launches nothing) and queue; returns the job id."""
        resolved = resolve(config)
        store.writable_root(self.runs_dir)  # a job that could not write its run would only fail later
        job = Job(id=secrets.token_hex(4), config=resolved)
        with self._lock:
            self._jobs[job.id] = job
            self._order.append(job.id)
            self._prune()
        self._queue.put(job.id)
        return job.id

    def stop(self, job_id: str) -> None:
        """Stop a running job after its current step, or cancel a queued one."""
        job = self._get(job_id)
        with job.lock:
            job.stop_event.set()
            if job.status == "queued":
                job.status, job.phase, job.finished_at = "cancelled", "cancelled", time.time()

    def snapshot(self, job_id: str) -> JobSnapshot | None:
        with self._lock:
            job = self._jobs.get(job_id)
            waiting = [i for i in self._order if self._jobs[i].status == "queued"]
        if job is None:
            return None
        with job.lock:
            return JobSnapshot(job.id, job.config, job.status, job.phase, job.step, job.config.steps,
                               tuple(job.records), job.run_dir, job.error,
                               waiting.index(job.id) + 1 if job.id in waiting else None,
                               job.submitted_at, job.started_at, job.finished_at)

    def snapshots(self) -> list[JobSnapshot]:
        with self._lock:
            ids = list(reversed(self._order))
        return [snap for snap in map(self.snapshot, ids) if snap is not None]

    def wait(self, job_id: str, timeout: float | None = None) -> JobSnapshot:
        deadline = None if timeout is None else time.time() + timeout
        while True:
            snap = self.snapshot(job_id)
            if snap.finished or (deadline is not None and time.time() > deadline):
                return snap
            time.sleep(0.05)

    def _get(self, job_id: str) -> Job:
        with self._lock:
            if job_id not in self._jobs:
                raise ConfigError(f"no job {job_id!r}")
            return self._jobs[job_id]

    def _prune(self) -> None:
        finished = [i for i in self._order if self._jobs[i].status in FINISHED]
        for job_id in finished[: max(0, len(finished) - self.keep_finished)]:
            self._order.remove(job_id)
            del self._jobs[job_id]

    def _work(self) -> None:
        from lora_explorer.train import train

        while True:
            job_id = self._queue.get()  # blocks: never while holding the lock
            with self._lock:
                job = self._jobs.get(job_id)
            if job is None:  # cancelled and pruned while it waited
                continue
            with job.lock:
                if job.status != "queued":  # cancelled while waiting
                    continue
                job.status, job.phase, job.started_at = "running", "starting", time.time()
            run_dir, error = None, None
            try:
                run = train(job.config, self.runs_dir, stop_event=job.stop_event,
                            on_record=lambda record, job=job: self._record(job, record),
                            on_status=lambda text, job=job: self._phase(job, text),
                            on_run=lambda run, job=job: setattr(job, "run_dir", run.path))
                run_dir, summary = run.path, run.summary()
                status, error = summary.get("status", "failed"), summary.get("error")
            except Exception as exc:  # noqa: BLE001 - a job must never kill its worker
                status, error = "failed", f"{type(exc).__name__}: {exc}".splitlines()[0]
            with job.lock:
                job.status, job.phase, job.error = status, status, error
                job.run_dir, job.finished_at = run_dir, time.time()
                if run_dir is not None:
                    job.step = summary.get("steps_done", job.step)

    @staticmethod
    def _record(job: Job, record: dict) -> None:
        with job.lock:
            job.records.append(record)
            if "loss" in record:
                job.step = record["step"]

    @staticmethod
    def _phase(job: Job, text: str) -> None:
        with job.lock:
            job.phase = text
