"""The launcher's one door to Slurm: :class:`SlurmClient` (submit, cancel, query) and the real one.

:class:`~easlurm.orchestrate.slurm.SlurmExecutor` talks to Slurm only through this interface, so its rules —
chaining, the queue window, retries, holds, giving up — can be tested against an in-memory cluster
(``tests/fake_slurm.py``) in seconds, and against the project's real test clusters in ``tests/slurm/``.
:class:`CommandClient` is the real one: ``sbatch --parsable``, ``scancel`` and the job-state queries of
:mod:`easlurm.orchestrate.slurm_state` (sacct when accounting works, else squeue/scontrol). Torch-free.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Protocol, Sequence

from ..errors import EaslurmError
from . import slurm_state
from .slurm_state import JobInfo


class SubmissionError(EaslurmError):
    """sbatch refused a stage (no controller, bad partition/account, …); the message carries sbatch's error."""


class SlurmClient(Protocol):
    """Submit, cancel, query."""

    def submit(self, script: Path, array: Sequence[int] | None, *, cwd: Path, what: str, key: str = "") -> list[str]:
        """Submit the batch script ``script``; return the job id, or one ``A_T`` id per index of ``array`` (the
        script's ``--array`` indices, in order). ``key``: the script's ``--comment``, unique to this submission,
        by which a submission whose answer was lost is found again. ``what`` names the submission in errors
        (:class:`SubmissionError`)."""

    def cancel(self, job_ids: Sequence[str]) -> None:
        """Cancel jobs (best effort: a job that already ended is not an error)."""

    def job_infos(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        """State of each job (``UNKNOWN`` when Slurm no longer knows it); raises
        :class:`~easlurm.orchestrate.slurm_text.SlurmQueryError` when Slurm does not answer."""


def clean_env() -> dict[str, str]:
    """os.environ without the SLURM_*/SBATCH_* variables of a job the launcher may itself run in (they would leak
    into the new job), keeping SLURM_CONF (which cluster to talk to)."""
    return {k: v for k, v in os.environ.items() if k == "SLURM_CONF" or not k.startswith(("SLURM_", "SBATCH_"))}


#: What sbatch prints when the controller was too busy to answer — the call may or may not have submitted the job.
TRANSIENT_MARKS = ("socket timed out", "unable to contact slurm controller", "temporarily unavailable",
                   "slurm temporarily unable", "connection refused", "connection timed out", "timed out")


class CommandClient:
    """The Slurm client commands on this host. A submission whose answer is lost (sbatch timed out, the controller
    did not answer) is retried up to ``retries`` times with a doubling pause — but only after asking the queue
    whether a job with the submission's key (its ``--comment``) exists: a call that did submit is adopted, never
    repeated."""

    def __init__(self, retries: int = 3, backoff_s: float = 5.0, sleep: Callable[[float], None] = time.sleep):
        self.retries, self.backoff_s, self.sleep = retries, backoff_s, sleep

    def submit(self, script: Path, array: Sequence[int] | None, *, cwd: Path, what: str, key: str = "") -> list[str]:
        for attempt in range(self.retries + 1):
            try:
                job = self._sbatch(script, cwd, what)
            except _Transient as exc:
                found = self.find(key) if key else None
                if found is not None:
                    job = found
                elif attempt < self.retries:
                    self.sleep(self.backoff_s * 2 ** attempt)
                    continue
                else:
                    raise SubmissionError(f"submitting {what}: {exc} ({self.retries + 1} attempts; no job with "
                                          f"comment {key} in the queue)") from None
            return [f"{job}_{t}" for t in array] if array is not None else [job]
        raise AssertionError("unreachable")

    def _sbatch(self, script: Path, cwd: Path, what: str) -> str:
        try:
            proc = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True,
                                  timeout=120, env=clean_env(), cwd=str(cwd))
        except FileNotFoundError as exc:
            raise SubmissionError(f"submitting {what}: sbatch not found on PATH") from exc
        except subprocess.TimeoutExpired:
            raise _Transient("sbatch did not answer in 120 s") from None
        if proc.returncode != 0:
            said = (proc.stderr or proc.stdout).strip()[:500]
            if any(m in said.lower() for m in TRANSIENT_MARKS):
                raise _Transient(said)
            raise SubmissionError(f"submitting {what} failed: {said} (script {script})")
        job = proc.stdout.strip().split(";")[0]
        if not job.isdigit():
            raise SubmissionError(f"submitting {what}: unexpected sbatch answer {proc.stdout!r}")
        return job

    def find(self, key: str) -> str | None:
        """The (array) job id of the job whose comment is ``key``, or None (also when the queue does not answer)."""
        try:
            proc = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%F|%k"], capture_output=True,
                                  text=True, timeout=60, env=clean_env(), check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        for line in proc.stdout.splitlines():
            job, _, comment = line.strip().partition("|")
            if comment == key and job.isdigit():
                return job
        return None

    def cancel(self, job_ids: Sequence[str]) -> None:
        if job_ids:
            subprocess.run(["scancel", *job_ids], capture_output=True, timeout=60, env=clean_env(), check=False)

    def job_infos(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        return slurm_state.job_infos(sorted(set(job_ids))) if job_ids else {}


class _Transient(Exception):
    """sbatch's answer was lost; whether it submitted is unknown."""


__all__ = ["SubmissionError", "SlurmClient", "CommandClient", "TRANSIENT_MARKS", "clean_env"]
