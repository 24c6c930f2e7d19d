"""``python -m easlurm.orchestrate.runner RUN STAGE INDEX``: run one task of a run's plan in this process.

What the local executor starts for every task (and what a person can run by hand to redo one task): it rebuilds the
plan from ``RUN/config.yaml``, finds the task and calls its stage function with its typed arguments. A failure is
recorded for the launcher (:func:`easlurm.orchestrate.base.record_error`) and printed as one
``easlurm: error: …`` line on stderr; the exit status is 2 for an easlurm error, 1 for anything else.
"""
from __future__ import annotations

import argparse
import logging
import sys

from ..config import load_run_config
from ..errors import EaslurmError
from ..store import RunDir, apply_group_umask
from .base import run_task
from .plan import Stage, Task, build_plan, find_task


def find_run_task(run: RunDir, stage_key: str, index: int) -> tuple[Stage, Task]:
    """A task of the run's plan, ready to run in this process (:func:`~easlurm.orchestrate.base.run_task` checks
    the config and data against ``run.json`` first): the run's file modes applied, the plan rebuilt from its
    config."""
    cfg = load_run_config(run.root)
    apply_group_umask(cfg.run.group_shared)
    return find_task(build_plan(cfg, run), stage_key, index)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m easlurm.orchestrate.runner", description=__doc__.split("\n")[0])
    ap.add_argument("run", help="run directory")
    ap.add_argument("stage", help="stage key, e.g. adam/003")
    ap.add_argument("index", type=int, help="task index in the stage (the member slot for an Adam phase; the task "
                                            "index with adam.members_per_task > 1)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(name)s: %(message)s")
    run = RunDir(args.run)
    try:
        stage, task = find_run_task(run, args.stage, args.index)
    except EaslurmError as exc:
        print(f"easlurm: error: {exc}", file=sys.stderr)
        return 2
    if not task.kind.busy(task.cfg, task.arguments):
        # E.g. an Adam phase's slot that is not Adam-trained, named by a plain `sbatch --array=0-4 jobs/adam.sh`:
        # the launcher queues no job for it; one that runs anyway has nothing to do and succeeds.
        print(f"[task] {stage.key} {task.label}: no work in this task (its kind says so); nothing to run", flush=True)
        return 0
    from ..runtime import configure_threads  # torch: only a task process gets here

    threads = configure_threads()
    print(f"[task] {stage.key} {task.label}: {task.describe()} ({threads} threads)", flush=True)
    try:
        run_task(run, stage, args.index)
    except EaslurmError as exc:
        print(f"easlurm: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
