"""``RUN/run.json``: how a run was launched (one owner) — its executor, and every launch's command and version.

The first launch names the run's executor; ``--resume`` uses it unless told otherwise, and ``status`` and the bill
read it to price GPU-hours the way the run really ran. Torch-free.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

from . import __version__
from .errors import CheckpointError
from .store import RunDir, atomic_write_json, read_json

#: The executors a run may be launched with.
EXECUTORS = ("slurm", "local", "debug")


def read(run: RunDir) -> dict[str, Any]:
    """The record (``{"executor", "launches": [...]}``); empty for a run never launched or an unreadable record."""
    try:
        rec = read_json(run.record) if run.record.is_file() else {}
    except CheckpointError:
        return {}
    return rec if isinstance(rec, dict) else {}


def record_launch(run: RunDir, executor: str, argv: Sequence[str]) -> None:
    """Append this launch (executor, command, version, time); the first names the run's executor."""
    rec = read(run) or {"executor": executor, "launches": []}
    rec.setdefault("launches", []).append({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "executor": executor,
                                           "command": list(argv), "version": __version__})
    atomic_write_json(run.record, rec)


def recorded_executor(run: RunDir) -> str | None:
    """The executor a run was launched with, or None for a run that was never launched."""
    kind = read(run).get("executor")
    return kind if kind in EXECUTORS else None


__all__ = ["EXECUTORS", "read", "record_launch", "recorded_executor"]
