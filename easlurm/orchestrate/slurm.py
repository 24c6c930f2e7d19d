"""The Slurm executor: each Adam phase one job array, each other stage one job, chained with ``afterok``.

The whole remaining chain is submitted at once (or ``executor.window`` cycles ahead), so the scheduler starts each
phase the moment the previous one ends — no polling gap. Jobs go through submitit: the task function
(:class:`StageCall`) is checkpointable, so on submitit's pre-timeout/preemption signal (USR2) the trainer commits a
checkpoint at its next iteration and submitit requeues the task, which resumes from it.

Following a run does not rely on submitit's ``result()``, which blocks forever on a cluster without accounting:
stage completion comes from the run directory, job states from :mod:`easlurm.orchestrate.slurm_state` (sacct when it
works, else squeue/scontrol). When a stage fails, the launcher waits until none of its jobs is active any more,
then resubmits the unfinished remainder, up to ``executor.max_retries`` times.
"""
from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import Config, StageResources
from ..errors import EaslurmError
from ..store import RunDir, atomic_write_json, read_json
from . import container, slurm_state
from .local import StageFailed, stage_main
from .plan import Stage, pending_stages, stage_done, task_done

_MAX_QUERY_FAILURES = 30
_FAILED = {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


def _checkpointable_base() -> type:
    from submitit.helpers import Checkpointable

    return Checkpointable


class SubmissionError(EaslurmError):
    """sbatch refused a stage (no controller, bad partition/account, …); the message carries sbatch's error."""


class StageCall(_checkpointable_base()):  # type: ignore[misc]
    """Runs one stage CLI inside the Slurm task: ``StageCall()(module, args)``.

    ``checkpoint()`` (inherited) resubmits the same call: the stage resumes from the files it committed.
    """

    def __call__(self, module: str, args: Sequence[str]) -> int:
        rc = stage_main(module)(list(args))
        if rc not in (0, None):
            raise RuntimeError(f"python -m {module} {' '.join(map(shlex.quote, args))} exited with {rc}")
        return 0


def job_name(cfg: Config, stage: Stage) -> str:
    return f"easlurm-{cfg.run.name}-{stage.key.replace('/', '-')}"


def sbatch_parameters(cfg: Config, stage: Stage, dependency: str | None) -> dict[str, Any]:
    """submitit ``SlurmExecutor.update_parameters`` arguments for ``stage`` (resources from ``executor.slurm``)."""
    s = cfg.executor.slurm
    res: StageResources = getattr(s, stage.kind)
    params: dict[str, Any] = {
        "job_name": job_name(cfg, stage),
        "time": res.time_min,
        "cpus_per_task": res.cpus,
        "mem": f"{res.mem_gb}GB",
        "ntasks_per_node": 1,
        "array_parallelism": s.array_parallelism,
        "use_srun": False,  # one process per task; srun would only add a step and a second signal path
    }
    if res.gpus:
        params["gpus_per_node"] = res.gpus
    for key in ("partition", "account", "qos"):
        if getattr(s, key):
            params[key] = getattr(s, key)
    extra: dict[str, Any] = dict(res.extra)
    if dependency:
        extra["dependency"] = dependency
        extra["kill-on-invalid-dep"] = "yes"
    if extra:
        params["additional_parameters"] = extra
    return params


def log_path(run: RunDir, stage: Stage, job_id: str) -> Path:
    """submitit's stderr log of one job (array task ids look like ``123_4``)."""
    return stage_folder(run, stage) / f"{job_id}_0_log.err"


def stage_folder(run: RunDir, stage: Stage) -> Path:
    return run.slurm / stage.key.replace("/", "-")


class SlurmExecutor:
    """Submits and follows the plan on Slurm; job ids are recorded in ``RUN/state.json``."""

    def __init__(self, cfg: Config, run: RunDir, echo: Callable[[str], None] = print, python: str | None = None):
        self.cfg, self.run_dir, self.echo = cfg, run, echo
        self.python = python or ("python" if cfg.container.image else sys.executable)
        self.retries = 0
        self.task_of: dict[str, int] = {}  # job id → task index in its stage (arrays may hold a subset)
        for sub in self.load_state()["submissions"]:
            self.task_of.update(sub.get("tasks", {}))

    # -------------------------------------------------------------------------------------------- bookkeeping
    def load_state(self) -> dict[str, Any]:
        p = self.run_dir.state
        return read_json(p) if p.is_file() else {"submissions": []}

    def _record(self, submitted: dict[str, list[str]], reason: str, tasks: dict[str, int]) -> None:
        state = self.load_state()
        state["submissions"].append({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "reason": reason,
                                     "stages": submitted, "tasks": tasks})
        atomic_write_json(self.run_dir.state, state)

    def latest_jobs(self) -> dict[str, list[str]]:
        """Stage key → job ids of its most recent submission."""
        latest: dict[str, list[str]] = {}
        for sub in self.load_state()["submissions"]:
            latest.update(sub["stages"])
        return latest

    # -------------------------------------------------------------------------------------------- submission
    def _executor(self, stage: Stage, dependency: str | None) -> Any:
        import submitit

        ex = submitit.SlurmExecutor(folder=stage_folder(self.run_dir, stage),
                                    python=container.python_command(self.cfg, self.run_dir.root, self.python))
        ex.update_parameters(**sbatch_parameters(self.cfg, stage, dependency))
        return ex

    def submit(self, stages: list[Stage], after: str | None = None, reason: str = "launch") -> dict[str, list[str]]:
        """Submit ``stages`` as one afterok chain (first one after job ``after``); return stage → job ids."""
        submitted: dict[str, list[str]] = {}
        prev = after
        for stage in stages:
            todo = [i for i in range(len(stage.tasks)) if not task_done(stage, i, self.run_dir)]
            if not todo:
                continue
            ex = self._executor(stage, f"afterok:{prev}" if prev else None)
            try:
                ids = self._submit_stage(ex, stage, todo)
            except Exception as exc:  # submitit raises FailedJobError (sbatch's stderr) or OSError (no sbatch)
                if submitted:
                    self._record(submitted, reason + " (partial)",
                                 {j: self.task_of[j] for v in submitted.values() for j in v})
                raise SubmissionError(f"submitting stage {stage.key} failed: {str(exc).strip()[:500]}") from exc
            prev = ids[0].split("_")[0]
            submitted[stage.key] = ids
            self.task_of.update({j: i for j, i in zip(ids, todo)})
            self.echo(f"[slurm] {stage.key}: submitted {prev}"
                      f"{f' (array of {len(ids)})' if stage.is_array else ''}"
                      f"{f' after {after}' if after and stage is stages[0] else ''}")
            after = None
        if submitted:
            self._record(submitted, reason, {j: self.task_of[j] for ids in submitted.values() for j in ids})
        return submitted

    @staticmethod
    def _submit_stage(ex: Any, stage: Stage, todo: list[int]) -> list[str]:
        """Submit one stage (an array of the unfinished members, or one job); return its job ids."""
        if stage.is_array:
            jobs = ex.map_array(StageCall(), [stage.tasks[i].module for i in todo],
                                [list(stage.tasks[i].args) for i in todo])
            return [j.job_id for j in jobs]
        return [ex.submit(StageCall(), stage.tasks[0].module, list(stage.tasks[0].args)).job_id]

    def _window(self, stages: list[Stage], first_cycle: int | None) -> list[Stage]:
        """``stages`` cut to ``executor.window`` cycles counted from ``first_cycle`` (the oldest unfinished one);
        fusion and evaluation join once the window reaches past the last cycle. 0 → no cut."""
        w = self.cfg.executor.window
        if not w or first_cycle is None:
            return stages
        last = first_cycle + w - 1
        out = []
        for s in stages:
            if s.cycle is not None and s.cycle > last:
                break
            if s.cycle is None and s.kind != "pretrain" and last < self.cfg.run.cycles - 1:
                break
            out.append(s)
        return out

    # -------------------------------------------------------------------------------------------- following
    def _states(self, jobs: dict[str, list[str]]) -> dict[str, str]:
        ids = sorted({j for ids in jobs.values() for j in ids})
        return slurm_state.job_states(ids) if ids else {}

    def _active(self, jobs: dict[str, list[str]], states: dict[str, str]) -> list[str]:
        return [j for ids in jobs.values() for j in ids if not slurm_state.is_terminal(states.get(j, "UNKNOWN"))]

    def run(self, plan: list[Stage], detach: bool = False) -> None:
        """Submit what is not done (adopting still-active jobs of an earlier launcher) and, unless ``detach``,
        follow until the run is complete."""
        pending = pending_stages(plan, self.run_dir)
        if not pending:
            self.echo("[slurm] nothing to do: every stage's outputs exist and verify")
            return
        jobs = {k: v for k, v in self.latest_jobs().items() if k in {s.key for s in pending}}
        states = self._states(jobs)
        adopted = {k: v for k, v in jobs.items() if any(not slurm_state.is_terminal(states.get(j, "UNKNOWN"))
                                                         for j in v)}
        if adopted:
            self.echo(f"[slurm] adopting active jobs of an earlier launch: {', '.join(sorted(adopted))}")
        self._submit_remaining(plan, adopted, reason="launch" if not jobs else "resume", detach=detach)
        if detach:
            self.echo(f"[slurm] detached; follow with: python -m easlurm.status {self.run_dir.root}")
            return
        self.follow(plan)

    def _submit_remaining(self, plan: list[Stage], adopted: dict[str, list[str]], reason: str,
                          detach: bool = False) -> None:
        """Submit the pending stages after the last adopted (still active) one, chained after it."""
        pending = pending_stages(plan, self.run_dir)
        last = max((k for k, s in enumerate(pending) if s.key in adopted), default=-1)
        rest = pending[last + 1:]
        if not detach:
            first_cycle = next((s.cycle for s in pending if s.cycle is not None), None)
            rest = self._window(rest, first_cycle)
        after = adopted[pending[last].key][0].split("_")[0] if last >= 0 else None
        self.submit(rest, after=after, reason=reason)

    def follow(self, plan: list[Stage]) -> None:
        """Poll until every stage is done; resubmit failed remainders; raise :class:`StageFailed` when out of
        retries."""
        poll = self.cfg.executor.poll_s
        query_failures = 0
        while True:
            pending = pending_stages(plan, self.run_dir)
            if not pending:
                self.echo("[slurm] run complete")
                return
            jobs = {k: v for k, v in self.latest_jobs().items() if k in {s.key for s in pending}}
            try:
                states = self._states(jobs)
                query_failures = 0
            except slurm_state.SlurmQueryError as exc:
                # A controller restart or a slow sacct is no reason to abandon a run that keeps running.
                query_failures += 1
                if query_failures > _MAX_QUERY_FAILURES:
                    raise
                self.echo(f"[slurm] job state query failed ({exc}); retrying ({query_failures})")
                time.sleep(poll)
                continue
            # Files first: a job may have finished between the listing above and the state query.
            pending = pending_stages(plan, self.run_dir)
            if not pending:
                continue
            active = self._active(jobs, states)
            failed = [(s, j, states.get(j)) for s in pending for j in jobs.get(s.key, [])
                      if states.get(j) in _FAILED]
            if not active:
                if not failed and all(s.key in jobs for s in pending):
                    # Terminal without failure but outputs missing (e.g. an EA job that exited 0 early).
                    failed = [(s, jobs[s.key][0], states.get(jobs[s.key][0])) for s in pending[:1]]
                unsubmitted = [s for s in pending if s.key not in jobs]
                if failed:
                    stage, job, state = failed[0]
                    if self.retries >= self.cfg.executor.max_retries:
                        index = self.task_of.get(job, 0)
                        raise StageFailed(stage, index, f"Slurm state {state}; no retries left "
                                          f"({self.retries}/{self.cfg.executor.max_retries})",
                                          log_path(self.run_dir, stage, job), job)
                    self.retries += 1
                    self.echo(f"[slurm] {stage.key} job {job} ended {state}; resubmitting the unfinished "
                              f"remainder (retry {self.retries}/{self.cfg.executor.max_retries})")
                    self._submit_remaining(plan, {}, reason=f"retry {self.retries} after {job} {state}")
                elif unsubmitted:  # the window moved on
                    self._submit_remaining(plan, {}, reason="window")
            elif failed:
                # Later stages wait on the failed one with afterok and will never start: cancel them now instead
                # of relying on the scheduler. Never touch the failed stage itself (its other tasks keep running,
                # and a requeued task of it is PENDING too).
                order = [s.key for s in pending]
                first_failed = min(order.index(s.key) for s, _, _ in failed)
                later = [j for key in order[first_failed + 1:] for j in jobs.get(key, [])
                         if states.get(j) == "PENDING"]
                if later:
                    subprocess.run(["scancel", *later], capture_output=True, timeout=30)
            elif self.cfg.executor.window:
                # Keep `window` cycles queued: chain the stages that entered the window after the last submitted.
                first = next((s.cycle for s in pending if s.cycle is not None), None)
                missing = [s for s in self._window(pending, first) if s.key not in jobs]
                submitted = [s for s in pending if s.key in jobs]
                if missing and submitted:
                    self._submit_remaining(plan, {submitted[-1].key: jobs[submitted[-1].key]}, reason="window")
            time.sleep(poll)


def describe(cfg: Config, run: RunDir, stages: list[Stage], python: str | None = None) -> str:
    """The ``--dry-run`` text: the plan, then the exact sbatch script of every stage (nothing is submitted).

    Dependencies on jobs that do not exist yet are shown as ``afterok:<stage key>``.
    """
    from submitit.slurm.slurm import _make_sbatch_string

    py = python or ("python" if cfg.container.image else sys.executable)
    out = [f"# easlurm plan for {run.root} ({len(stages)} stage(s) to run)"]
    for s in stages:
        out.append(f"#   {s.key:<10} {len(s.tasks)} task(s): " + "; ".join(
            " ".join(shlex.quote(w) for w in container.wrap(cfg, run.root, t.argv(py))) for t in s.tasks[:2])
            + (" …" if len(s.tasks) > 2 else ""))
    prev: str | None = None
    for s in stages:
        params = sbatch_parameters(cfg, s, f"afterok:<{prev}>" if prev else None)
        additional = params.pop("additional_parameters", None)
        command = " ".join([container.python_command(cfg, run.root, py), "-u", "-m", "submitit.core._submit",
                            shlex.quote(str(stage_folder(run, s)))])
        text = _make_sbatch_string(command=command, folder=stage_folder(run, s), map_count=(
            len(s.tasks) if s.is_array else None), additional_parameters=additional,
            stderr_to_stdout=False, **params)
        out += ["", f"# ---- sbatch script: {s.key} ----", text.rstrip()]
        prev = s.key
    return "\n".join(out) + "\n"


__all__ = ["SlurmExecutor", "StageCall", "StageFailed", "describe", "sbatch_parameters", "EaslurmError"]
