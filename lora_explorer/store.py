"""The run directory: the one interface between training, analysis, the app, the CLI and notebooks.

    <runs root>/<run id>/
        config.json       every resolved setting + library versions
        metrics.jsonl     one JSON object per logged step (append-only, flushed per line)
        summary.json      status and final numbers, always replaced atomically
        adapter/ | weights.safetensors   trained weights (PEFT adapter, or full FT weights)
        base.safetensors  base weights of models built from a config (toy, tiny-lm)
        spectra.jsonl     per analysis step and adapted layer: σ of ΔW, ranks, norms, ΔM/ΔD
        alignment.jsonl   per analysis step and adapted layer: cos(g~, g), rel. error, rank-r/2r bounds
        (method files)    target_delta.safetensors (toy teacher), adalora_ranks.jsonl, lora_drop.json, ...
"""
from __future__ import annotations

import functools
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lora_explorer.errors import ConfigError

STATUSES = ("running", "completed", "stopped", "diverged", "failed", "interrupted")
_LIVE = set()  # run dirs trained by this process right now
_LIVE_LOCK = threading.Lock()


def runs_root(path: str | os.PathLike | None = None) -> Path:
    return Path(path or os.environ.get("LORA_EXPLORER_RUNS") or "runs").expanduser().resolve()


def write_json(path: Path, data: dict) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(partial, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def read_json(path: Path) -> dict | None:
    try:
        with open(path) as handle:
            data = json.load(handle)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def process_start_time(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (field 22 of /proc/<pid>/stat, counted
    after the last ')' since the command name may hold spaces and parentheses). With the pid it names
    one process: a later process that reuses the pid has another start time. None without /proc or
    without that process."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


@functools.cache
def _own_start_time(pid: int) -> int | None:
    """This process's start time, read once; keyed by pid because a forked child is another process."""
    return process_start_time(pid)


def writable_root(root: str | os.PathLike | None = None) -> Path:
    """The runs root, created if missing; ConfigError when runs cannot be written there."""
    root = runs_root(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create runs directory {str(root)!r}: {error.strerror or error}") from None
    if not os.access(root, os.W_OK):
        raise ConfigError(f"runs directory {str(root)!r} is not writable")
    return root


def read_metrics(path: Path) -> list[dict]:
    """Every complete line of metrics.jsonl; a truncated or corrupt line is skipped, never fatal."""
    records = []
    try:
        with open(path) as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    records.append(record)
    except OSError:
        pass
    return records


class Run:
    """Writer and reader of one run directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._metrics = None

    @property
    def id(self) -> str:
        return self.path.name

    # ---- writing (the training process)
    @classmethod
    def create(cls, root: Path, method: str) -> "Run":
        writable_root(root)
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{method}-{secrets.token_hex(3)}"
        path = root / run_id
        path.mkdir()
        return cls(path)

    def write_config(self, config: dict) -> None:
        write_json(self.path / "config.json", config)

    def log(self, record: dict) -> None:
        if self._metrics is None:
            self._metrics = open(self.path / "metrics.jsonl", "a", buffering=1)  # line-buffered
        self._metrics.write(json.dumps(record) + "\n")

    def append(self, filename: str, records: list[dict]) -> None:
        """Append JSON lines to another file of the run (spectra.jsonl, ...)."""
        with open(self.path / filename, "a") as handle:
            handle.write("".join(json.dumps(record) + "\n" for record in records))

    def write_summary(self, summary: dict) -> None:
        pid = os.getpid()
        started = _own_start_time(pid)
        summary = {**summary, "pid": pid, **({"pid_start": started} if started is not None else {}),
                   "host": socket.gethostname(), "updated_at": time.time()}
        running = summary.get("status") == "running"
        if running:  # live before the file says running, and still live until the file says otherwise
            with _LIVE_LOCK:
                _LIVE.add(self.path.resolve())
        write_json(self.path / "summary.json", summary)
        if not running:
            with _LIVE_LOCK:
                _LIVE.discard(self.path.resolve())

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None

    # ---- reading (anyone)
    def config(self) -> dict:
        return read_json(self.path / "config.json") or {}

    def metrics(self) -> list[dict]:
        return read_metrics(self.path / "metrics.jsonl")

    def spectra(self) -> list[dict]:
        return read_metrics(self.path / "spectra.jsonl")

    def alignment(self) -> list[dict]:
        return read_metrics(self.path / "alignment.jsonl")

    def summary(self) -> dict:
        """The summary, with a run whose process has died while running marked `interrupted`."""
        summary = read_json(self.path / "summary.json")
        if summary is None:
            return {"status": "interrupted", "error": "summary.json missing or unreadable"}
        if summary.get("status") == "running" and not self._alive(summary):
            latest = read_json(self.path / "summary.json")  # the run may have just finished
            if latest is not None and latest.get("status") != "running":
                return latest
            summary = {**summary, "status": "interrupted",
                       "error": "the training process ended while the run was running"}
            try:
                write_json(self.path / "summary.json", summary)
            except OSError:
                pass  # read-only runs root: still report it as interrupted
        return summary

    def _alive(self, summary: dict) -> bool:
        if summary.get("host") not in (None, socket.gethostname()):
            return True  # another machine's process: we cannot tell
        pid = summary.get("pid")
        if pid == os.getpid():
            with _LIVE_LOCK:
                return self.path.resolve() in _LIVE
        try:
            os.kill(int(pid), 0)
        except (ProcessLookupError, TypeError, ValueError):
            return False
        except PermissionError:
            pass  # a process of another user holds the pid: its start time still tells whether it is the run's
        # After a restart another process may hold the pid; only one started when the writer did is the run.
        recorded, current = summary.get("pid_start"), process_start_time(int(pid))
        return recorded is None or current is None or recorded == current


@dataclass
class RunInfo:
    id: str
    path: Path
    config: dict
    summary: dict

    @property
    def status(self) -> str:
        return self.summary.get("status", "interrupted")


def list_runs(root: str | os.PathLike | None = None) -> list[RunInfo]:
    """All runs under the root, newest first; folders that are not runs are ignored."""
    base = runs_root(root)
    if not base.is_dir():
        return []
    infos = []
    for path in base.iterdir():
        if path.is_dir() and (path / "config.json").exists():
            run = Run(path)
            infos.append(RunInfo(run.id, path, run.config(), run.summary()))
    return sorted(infos, key=lambda info: info.id, reverse=True)


def open_run(path_or_id: str | os.PathLike, root: str | os.PathLike | None = None) -> Run:
    """A run by directory path, or by id under the runs root; the id may not leave the root."""
    candidate = Path(path_or_id)
    if not candidate.is_dir():
        base = runs_root(root)
        candidate = (base / str(path_or_id)).resolve()
        if base not in candidate.parents:
            raise ConfigError(f"run {str(path_or_id)!r} is outside the runs directory")
    if not (candidate / "config.json").exists():
        raise ConfigError(f"{str(path_or_id)!r} is not a run directory (no config.json)")
    return Run(candidate)
