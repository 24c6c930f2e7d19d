"""Run a run's plan from a submitit (or Hydra submitit-launcher) pipeline: ``pip install easlurm[submitit]``.

easlurm's own Slurm executor is what a run should use on a cluster (it needs no ``sacct``, requeues from the host
and resubmits what failed); this recipe is for a pipeline that already schedules its jobs with submitit::

    import submitit
    from easlurm.contrib.submitit import run_plan

    executor = submitit.AutoExecutor(folder="submitit-logs")   # or submitit.LocalExecutor(...)
    executor.update_parameters(timeout_min=600, gpus_per_node=1, slurm_partition="gpu")
    run_plan("runs/rrdb1", executor)          # a run directory holding its config.yaml

Each unfinished task of the plan becomes one submitit job that calls the stage runner
(``python -m easlurm.orchestrate.runner RUN STAGE INDEX``'s function) with the same arguments easlurm's executors
use; the tasks of a stage are one ``map_array`` (a Slurm job array under ``AutoExecutor``), stages one after
another. A task is judged by the run's files, as everywhere in easlurm: a job that ends without its outputs raises
with the stage's own error. Pre-timeout checkpointing works as far as submitit delivers the signal (its default
``srun`` mode does); there is no requeue from the host and no retry here — run ``run_plan`` again to continue.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

__all__ = ["run_task", "run_plan"]


def run_task(run_dir: str, stage: str, index: int) -> None:
    """One task, in the job: what ``python -m easlurm.orchestrate.runner RUN STAGE INDEX`` does (an error record
    for the launcher, then the exception)."""
    from ..orchestrate.base import run_task as run
    from ..orchestrate.runner import find_run_task
    from ..store import RunDir

    rd = RunDir(run_dir)
    st, _ = find_run_task(rd, stage, index)
    run(rd, st, index)


def run_plan(run_dir: str | Path, executor: Any, echo: Callable[[str], None] = print) -> None:
    """Run every unfinished task of the run's plan through the submitit ``executor``, stage by stage; raise the
    first failure (:class:`~easlurm.orchestrate.base.StageFailed` naming the stage, task and its error)."""
    from ..config import load_run_config
    from ..orchestrate.base import StageFailed, read_error
    from ..orchestrate.plan import build_plan, pending_stages
    from ..store import RunDir

    rd = RunDir(run_dir)
    cfg = load_run_config(rd.root)
    for stage in pending_stages(build_plan(cfg, rd)):
        todo = [i for i, t in enumerate(stage.tasks) if not t.is_done()]
        echo(f"[submitit] {stage.key}: {len(todo)} task(s)")
        jobs = executor.map_array(run_task, [str(rd.root)] * len(todo), [stage.key] * len(todo), todo)
        for i, job in zip(todo, jobs):
            try:
                job.result()
            except Exception as exc:  # noqa: BLE001 - submitit wraps the task's exception; the record has its words
                raise StageFailed(stage, i, f"submitit job {job.job_id} failed",
                                  error=read_error(rd, stage, i) or str(exc).splitlines()[-1]) from exc
            if not stage.tasks[i].is_done():
                raise StageFailed(stage, i, f"submitit job {job.job_id} returned but its outputs are missing")
