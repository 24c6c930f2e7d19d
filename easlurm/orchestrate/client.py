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
from pathlib import Path
from typing import Protocol, Sequence

from ..errors import EaslurmError
from . import slurm_state
from .slurm_state import JobInfo


class SubmissionError(EaslurmError):
    """sbatch refused a stage (no controller, bad partition/account, …); the message carries sbatch's error."""


class SlurmClient(Protocol):
    """Submit, cancel, query."""

    def submit(self, script: Path, array: Sequence[int] | None, *, cwd: Path, what: str) -> list[str]:
        """Submit the batch script ``script``; return the job id, or one ``A_T`` id per index of ``array`` (the
        script's ``--array`` indices, in order). ``what`` names the submission in errors
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


class CommandClient:
    """The Slurm client commands on this host."""

    def submit(self, script: Path, array: Sequence[int] | None, *, cwd: Path, what: str) -> list[str]:
        try:
            proc = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True,
                                  timeout=120, env=clean_env(), cwd=str(cwd))
        except FileNotFoundError as exc:
            raise SubmissionError(f"submitting {what}: sbatch not found on PATH") from exc
        except subprocess.TimeoutExpired as exc:
            raise SubmissionError(f"submitting {what}: sbatch timed out") from exc
        if proc.returncode != 0:
            raise SubmissionError(f"submitting {what} failed: {(proc.stderr or proc.stdout).strip()[:500]} "
                                  f"(script {script})")
        job = proc.stdout.strip().split(";")[0]
        if not job.isdigit():
            raise SubmissionError(f"submitting {what}: unexpected sbatch answer {proc.stdout!r}")
        return [f"{job}_{t}" for t in array] if array is not None else [job]

    def cancel(self, job_ids: Sequence[str]) -> None:
        if job_ids:
            subprocess.run(["scancel", *job_ids], capture_output=True, timeout=60, env=clean_env(), check=False)

    def job_infos(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        return slurm_state.job_infos(sorted(set(job_ids))) if job_ids else {}


__all__ = ["SubmissionError", "SlurmClient", "CommandClient", "clean_env"]
