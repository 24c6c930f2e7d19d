"""An in-memory Slurm behind easlurm's :class:`~easlurm.orchestrate.client.SlurmClient` interface, for fast tests of
the launcher's follow loop (the real clusters are in tests/slurm/).

Jobs live in a dict: a submission parses the script easlurm rendered (its ``--array`` and ``--dependency`` lines, so
the tests see what sbatch would get) and queues its jobs PENDING; the test moves them (``start``, ``finish``,
``fail``, ``hold``, ``forget``) and, for a job that finishes, writes the task's marker file as the real stage would
write its outputs. Nothing sleeps.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from easlurm.orchestrate.slurm_state import JobInfo, SlurmQueryError
from easlurm.stages.kind import StageKind, TaskSpec


@dataclass
class Submitted:
    job: str                      # the job id (an array's id)
    ids: list[str]                # one per task: "A_T" for arrays
    stage: str                    # from the job name
    dependency: list[str]
    script: str


@dataclass
class FakeSlurm:
    """Submit, cancel, query — in memory. ``down``: queries raise :class:`SlurmQueryError` while it is > 0."""
    jobs: dict[str, JobInfo] = field(default_factory=dict)
    submitted: list[Submitted] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    queries: int = 0
    down: int = 0
    next_id: int = 100

    def submit(self, script: Path, array: Sequence[int] | None, *, cwd: Path, what: str, key: str = "") -> list[str]:
        text = script.read_text()
        job = str(self.next_id)
        self.next_id += 1
        ids = [f"{job}_{t}" for t in array] if array is not None else [job]
        m = re.search(r"^#SBATCH --array=([0-9,]+)%\d+$", text, re.M)
        assert (m is not None) == (array is not None) and (m is None or m.group(1).split(",") == [str(t) for t in
                                                                                                   array or ()])
        dep = re.search(r"^#SBATCH --dependency=afterok:(\S+)$", text, re.M)
        name = re.search(r"^#SBATCH --job-name=easlurm-\S+?-(\S+)$", text, re.M)
        assert re.search(rf"^#SBATCH --comment={re.escape(key)}$", text, re.M), "the key is the job's comment"
        for i in ids:
            self.jobs[i] = JobInfo("PENDING")
        self.submitted.append(Submitted(job, ids, name.group(1) if name else "?",
                                        dep.group(1).split(":") if dep else [], text))
        return ids

    def cancel(self, job_ids: Sequence[str]) -> None:
        for j in job_ids:
            self.cancelled.append(j)
            info = self.jobs.get(j)
            if info is not None and info.state in ("PENDING", "HELD", "RUNNING"):
                self.jobs[j] = JobInfo("CANCELLED", elapsed_s=0.0 if info.state != "RUNNING" else 5.0)

    def job_infos(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        self.queries += 1
        if self.down > 0:
            self.down -= 1
            raise SlurmQueryError("'squeue' failed (exit 1): slurm_load_jobs error: Socket timed out")
        return {j: self.jobs.get(j, JobInfo("UNKNOWN")) for j in job_ids}

    # ---------------------------------------------------------------------------------------------- the test's hand
    def set(self, job: str, state: str, *, reason: str = "", exit_code: int | None = None,
            elapsed_s: float | None = 10.0) -> None:
        self.jobs[job] = JobInfo(state, reason, exit_code, elapsed_s)

    def forget(self, job: str) -> None:
        """Slurm no longer knows the job (MinJobAge, no accounting)."""
        self.jobs.pop(job, None)

    def of_stage(self, stage_slug: str) -> list[Submitted]:
        return [s for s in self.submitted if s.stage == stage_slug]


def marker_is_done(cfg: Any, run: Any, out: str, index: int, cycle: int | None = None) -> bool:
    return marker(out, index, cycle).exists()


def marker(out: str | Path, index: int, cycle: int | None) -> Path:
    return Path(out) / f"{'' if cycle is None else f'{cycle}-'}{index}.end"


def counted(name: str, n: int, out: Path, cycles: Any = None, array: bool = False, calls: list[str] | None = None
            ) -> StageKind:
    """A kind of ``n`` tasks done when their marker exists (``calls`` collects every done check asked); a task's
    progress is the number in its ``.progress`` file (see :func:`set_progress`)."""
    def is_done(cfg: Any, run: Any, out: str, index: int, cycle: int | None = None) -> bool:
        if calls is not None:
            calls.append(f"{name}/{cycle}/{index}")
        return marker_is_done(cfg, run, out, index, cycle)

    def progress(cfg: Any, run: Any, out: str, index: int, cycle: int | None = None) -> int:
        p = marker(out, index, cycle).with_suffix(".progress")
        return int(p.read_text()) if p.exists() else 0

    def tasks(cfg: Any, cycle: int | None) -> list[TaskSpec]:
        extra = (("cycle", cycle),) if cycle is not None else ()
        return [TaskSpec(f"{name} {i}", (("out", str(out / name)), ("index", i), *extra)) for i in range(n)]

    (out / name).mkdir(parents=True, exist_ok=True)
    return StageKind(name=name, summary="test kind", entry="fake_slurm:never_called", tasks=tasks, is_done=is_done,
                     cycles=cycles, array=array, progress=progress)


def set_progress(out: Path, name: str, index: int, cycle: int | None, units: int) -> None:
    marker(out / name, index, cycle).with_suffix(".progress").write_text(str(units))


def never_called(**kw: Any) -> None:
    raise AssertionError("the launcher never runs a task itself on Slurm")
