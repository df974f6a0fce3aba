"""User data: CSV or JSONL with `text` and `label` (classification) or `text` (language modelling).

Every problem with a file is a ConfigError naming the file and what is wrong, in one line.
"""
from __future__ import annotations

import csv
import functools
import io
import json
import os
import random

from lora_explorer.errors import ConfigError

MAX_BYTES = 50 * 2**20
MAX_ROWS = 200_000
MIN_ROWS = 4
SUFFIXES = (".csv", ".jsonl", ".json")


def looks_like_file(task: str) -> bool:
    return task.lower().endswith(SUFFIXES) or os.sep in task or os.path.exists(task)


def has_labels(source: str) -> bool:
    """Whether the data has a `label` column (hf: datasets are assumed to)."""
    if source.startswith("hf:"):
        return True
    try:
        load_rows(source, "classification")
    except ConfigError as error:
        return "no 'label' column" not in str(error)
    return True


def load_rows(source: str, kind: str) -> list[tuple[str, str | None]]:
    """(text, label) pairs; label is None for language-modelling data."""
    if source.startswith("hf:"):
        return _hub_rows(source[3:], kind)
    try:
        stat = os.stat(source)
    except OSError as error:
        raise ConfigError(f"cannot read data file {source!r}: {error.strerror or error}") from None
    return _file_rows(source, stat.st_mtime_ns, stat.st_size, kind)


@functools.lru_cache(maxsize=8)
def _file_rows(path: str, _mtime: int, size: int, kind: str) -> list:
    name = os.path.basename(path)
    if os.path.isdir(path):
        raise ConfigError(f"data file {name!r} is a directory")
    if not os.path.isfile(path):  # a device or a pipe: its size says nothing, reading it may never end
        raise ConfigError(f"data file {name!r} is not a regular file")
    if size > MAX_BYTES:
        raise ConfigError(f"data file {name!r} is {size / 2**20:.0f} MiB; the limit is {MAX_BYTES // 2**20} MiB")
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as error:
        raise ConfigError(f"cannot read data file {name!r}: {error.strerror or error}") from None
    return parse(raw, name, kind)


def parse(raw: bytes, name: str, kind: str) -> list[tuple[str, str | None]]:
    """Validate and parse the bytes of an uploaded or local file."""
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"data file {name!r} is {len(raw) / 2**20:.0f} MiB; the limit is {MAX_BYTES // 2**20} MiB")
    if b"\x00" in raw[:8192]:
        raise ConfigError(f"data file {name!r} looks binary; expected UTF-8 CSV or JSONL text")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(f"data file {name!r} is not valid UTF-8 (byte {error.start}); save it as UTF-8") from None
    if not text.strip():
        raise ConfigError(f"data file {name!r} is empty")
    records = _jsonl_records(text, name) if name.lower().endswith((".jsonl", ".json")) else _csv_records(text, name)
    return _rows(records, name, kind)


def _csv_records(text: str, name: str):
    reader = csv.reader(io.StringIO(text))
    try:
        header = [column.strip() for column in next(reader)]
        for line_number, fields in enumerate(reader, start=2):
            if not fields:
                continue
            if len(fields) != len(header):
                raise ConfigError(f"data file {name!r} line {line_number} has {len(fields)} fields, "
                                  f"the header has {len(header)}")
            yield line_number, dict(zip(header, fields))
    except csv.Error as error:
        raise ConfigError(f"data file {name!r} is not valid CSV: {error}") from None


def _jsonl_records(text: str, name: str):
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(f"data file {name!r} line {line_number} is not JSON: {error.msg}") from None
        if not isinstance(record, dict):
            raise ConfigError(f"data file {name!r} line {line_number} is not a JSON object")
        yield line_number, record


def _rows(records, name: str, kind: str) -> list:
    need = ("text", "label") if kind == "classification" else ("text",)
    rows = []
    for line_number, record in records:
        missing = [column for column in need if column not in record]
        if missing:
            raise ConfigError(f"data file {name!r} has no {missing[0]!r} column (line {line_number}; "
                              f"columns: {', '.join(map(str, record)) or 'none'})")
        text = record["text"]
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"data file {name!r} line {line_number}: 'text' is empty or not a string")
        label = None
        if kind == "classification":
            label = record["label"]
            if label is None or isinstance(label, (dict, list)) or str(label).strip() == "":
                raise ConfigError(f"data file {name!r} line {line_number}: 'label' is empty or not a value")
            label = str(label).strip()
        rows.append((text, label))
        if len(rows) > MAX_ROWS:
            raise ConfigError(f"data file {name!r} has more than {MAX_ROWS} rows; use a sample")
    if len(rows) < MIN_ROWS:
        raise ConfigError(f"data file {name!r} has {len(rows)} rows; at least {MIN_ROWS} are needed")
    if kind == "classification" and len({label for _, label in rows}) < 2:
        raise ConfigError(f"data file {name!r} has a single label; classification needs at least two")
    return rows


def _hub_rows(dataset: str, kind: str) -> list:
    try:
        import datasets
    except ImportError:
        raise ConfigError("hf: datasets need the optional package 'datasets' (pip install datasets)") from None
    try:
        table = datasets.load_dataset(dataset, split="train")
    except Exception as error:
        raise ConfigError(f"cannot load dataset {dataset!r}: {str(error).splitlines()[0][:200]}") from None
    if len(table) > MAX_ROWS:
        table = table.shuffle(seed=0).select(range(MAX_ROWS))
    return _rows(enumerate(table, start=1), f"hf:{dataset}", kind)


def split(rows: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    n_eval = min(len(rows) - 1, max(1, round(eval_fraction * len(rows))))
    return shuffled[n_eval:], shuffled[:n_eval]
