"""``RUN/state.json``: what the Slurm launcher submitted and cancelled (one owner; bookkeeping, not truth).

The run's files say what is done; this record says which job last tried each task, what it waited for, and which
jobs this launcher cancelled (so a cancel of its own is not mistaken for a person's). ``status`` reads it for job
ids and submission times. Entries: ``submissions`` — ``{"time", "stage", "tasks": {job id: task index},
"dependency": [job ids]}`` in submission order — and ``cancelled`` — job ids. Torch-free.
"""
from __future__ import annotations

import time
from typing import Any

from ..errors import record_shape
from ..store import RunDir, atomic_write_json, read_json

#: (stage key, task index)
TaskKey = tuple[str, int]


class SubmissionBook:
    """Reads and appends ``RUN/state.json`` (a missing file reads as empty; a damaged one is a
    :class:`~easlurm.errors.CheckpointError` naming it and how to recover)."""

    def __init__(self, run: RunDir):
        self.run = run

    def load(self) -> dict[str, Any]:
        if not self.run.state.exists() and not self.run.state.is_symlink():
            return {"submissions": [], "cancelled": []}
        with record_shape(self.run.state):
            state = read_json(self.run.state)
            if not isinstance(state, dict):
                raise TypeError(f"expected a JSON object, got {type(state).__name__}")
            state.setdefault("submissions", [])
            state.setdefault("cancelled", [])
            if not isinstance(state["submissions"], list) or not isinstance(state["cancelled"], list):
                raise TypeError("'submissions' and 'cancelled' must be lists")
            for sub in state["submissions"]:
                if not (isinstance(sub, dict) and isinstance(sub.get("stage"), str)
                        and isinstance(sub.get("tasks", {}), dict)
                        and all(isinstance(i, int) and not isinstance(i, bool) for i in sub.get("tasks", {}).values())
                        and isinstance(sub.get("dependency", []), list)):
                    raise TypeError(f"submission {str(sub)[:80]} is not a submission record")
        return state

    def latest(self) -> dict[TaskKey, tuple[str, list[str]]]:
        """(stage key, task index) → (latest job id, that submission's dependency)."""
        out: dict[TaskKey, tuple[str, list[str]]] = {}
        for sub in self.load()["submissions"]:
            for job, index in sub.get("tasks", {}).items():
                out[(sub["stage"], int(index))] = (str(job), [str(d) for d in sub.get("dependency", [])])
        return out

    def history(self) -> dict[TaskKey, list[tuple[str, str]]]:
        """(stage key, task index) → every (job id, submission time ``YYYY-MM-DDTHH:MM:SS``), oldest first."""
        out: dict[TaskKey, list[tuple[str, str]]] = {}
        for sub in self.load()["submissions"]:
            for job, index in sub.get("tasks", {}).items():
                out.setdefault((sub["stage"], int(index)), []).append((str(job), str(sub.get("time", ""))))
        return out

    def cancelled(self) -> set[str]:
        return {str(j) for j in self.load()["cancelled"]}

    def add_submission(self, stage: str, jobs: dict[str, int], dependency: list[str]) -> None:
        state = self.load()
        state["submissions"].append({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "stage": stage, "tasks": jobs,
                                     "dependency": list(dependency)})
        atomic_write_json(self.run.state, state)

    def add_cancelled(self, jobs: list[str]) -> None:
        state = self.load()
        state["cancelled"] = sorted(set(state["cancelled"]) | set(jobs))
        atomic_write_json(self.run.state, state)


__all__ = ["TaskKey", "SubmissionBook"]
