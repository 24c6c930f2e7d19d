"""What every executor shares: the :class:`Executor` protocol, the failure report, and task error records.

A task that fails with an easlurm error writes its message to ``RUN/logs/errors/<stage>-<II>.json``
(:func:`record_error`) wherever it ran — a local subprocess, a Slurm job, inside a container — so the launcher's
report carries the stage's own words (``cycles/003/start/02: not found (written by the EA phase of cycle 2)``), not
"exited with 2".
"""
from __future__ import annotations

import json
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Protocol

from ..errors import EaslurmError
from ..run_record import verify_config, verify_inputs
from ..store import RunDir, atomic_write_json
from .plan import Stage, stage_slug

Echo = Callable[[str], None]


class StageFailed(EaslurmError):
    """A task failed for good; the message names the stage, the task, the job id, the stage's error and the log."""

    def __init__(self, stage: Stage, index: int, detail: str, log: Path | None = None, job_id: str | None = None,
                 error: str | None = None):
        self.stage, self.index, self.log, self.job_id, self.error = stage, index, log, job_id, error
        where = f" (job {job_id})" if job_id else ""
        said = f"\n  {error}" if error else ""
        logs = f"\n  log: {log}" if log else ""
        super().__init__(f"stage {stage.key}, {stage.tasks[index].label}{where} failed: {detail}{said}{logs}")


class Executor(Protocol):
    """Runs a plan: every unfinished task of every stage, in stage order."""

    kind: str

    def run(self, plan: list[Stage], *, detach: bool = False) -> None:
        """Run (or, with ``detach``, only start) what is not done; raise :class:`StageFailed` on a failure."""

    def describe(self, plan: list[Stage]) -> str:
        """What :meth:`run` would do, as text (the dry run)."""


def error_path(run: RunDir, stage: Stage, index: int) -> Path:
    return run.logs / "errors" / f"{stage_slug(stage)}-{index:02d}.json"


def record_error(run: RunDir, stage: Stage, index: int, exc: BaseException) -> None:
    """Write the task's failure (type, message, where) for the launcher; never raises."""
    try:
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        atomic_write_json(error_path(run, stage, index), {
            "stage": stage.key, "task": index, "label": stage.tasks[index].label,
            "type": type(exc).__name__, "message": str(exc), "easlurm_error": isinstance(exc, EaslurmError),
            "permanent": bool(getattr(exc, "permanent", False)), "slurm_task": slurm_task_id(),
            "traceback": "".join(tb[-3:]) if not isinstance(exc, EaslurmError) else None,
            "host": socket.gethostname(), "pid": os.getpid(), "job": os.environ.get("SLURM_JOB_ID"),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    except Exception:  # noqa: BLE001 - reporting must never hide the original failure
        pass


def slurm_task_id() -> str | None:
    """This process's Slurm job as the launcher names it: ``ARRAYJOB_TASK`` in an array, else the job id."""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def _error_record(run: RunDir, stage: Stage, index: int, since: float | None) -> dict[str, Any] | None:
    path = error_path(run, stage, index)
    try:
        if since is not None and path.stat().st_mtime < since:
            return None
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return rec if isinstance(rec, dict) else None


def read_error(run: RunDir, stage: Stage, index: int, since: float | None = None) -> str | None:
    """The recorded failure message of a task (only if written after ``since``, a ``time.time()``), or None."""
    rec = _error_record(run, stage, index, since)
    if rec is None:
        return None
    msg = f"{rec.get('type')}: {rec.get('message')}"
    return msg if rec.get("easlurm_error") else f"{msg}\n{rec.get('traceback') or ''}".rstrip()


def permanent_error(run: RunDir, stage: Stage, index: int, *, since: float | None = None,
                    job: str | None = None) -> str | None:
    """The message of the task's recorded failure when it is permanent (a retry would fail the same way), else
    None. ``since``/``job``: only a record written after that time / by that Slurm job counts."""
    rec = _error_record(run, stage, index, since)
    if rec is None or rec.get("permanent") is not True:
        return None
    if job is not None and rec.get("slurm_task") != job and rec.get("job") != job:
        return None
    return f"{rec.get('type')}: {rec.get('message')}"


def clear_error(run: RunDir, stage: Stage, index: int) -> None:
    try:
        error_path(run, stage, index).unlink()
    except FileNotFoundError:
        pass


def run_task(run: RunDir, stage: Stage, index: int) -> Any:
    """Call task ``index`` of ``stage`` in this process; record its error (then re-raise) when it fails.

    First the run's ``config.yaml`` and shard manifests are checked against what the launcher recorded in
    ``run.json`` (:func:`~easlurm.run_record.verify_config`, :func:`~easlurm.run_record.verify_inputs`): a task
    never starts from a config or data that changed after launch."""
    clear_error(run, stage, index)
    try:
        verify_config(run)
        verify_inputs(run)
        return stage.tasks[index].call()
    except SystemExit:
        raise  # preemption hand-off (Preempted) and explicit exits are not failures of the stage
    except BaseException as exc:
        record_error(run, stage, index, exc)
        raise


__all__ = ["Echo", "Executor", "StageFailed", "error_path", "record_error", "read_error", "permanent_error",
           "slurm_task_id", "clear_error", "run_task"]
