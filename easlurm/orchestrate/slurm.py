"""The Slurm executor: submit the plan as afterok-chained sbatch jobs, follow it, resubmit what failed.

Stage completion comes from the run directory (each stage's ``is_done``), job states from
:mod:`easlurm.orchestrate.slurm_state` (sacct when it works, else squeue/scontrol — clusters without accounting and
with a short ``MinJobAge`` included), and every choice — wait, adopt, resubmit, give up — from the pure
:func:`easlurm.orchestrate.decide.decide`. Scripts are rendered by :mod:`easlurm.orchestrate.sbatch`.

Chaining: a stage's submission depends (``afterok``) on the latest jobs of the unfinished tasks of the stage before
it, task by task (``afterok:123_0:123_2:456``), so a member resubmitted alone does not have to wait for the rest of
its array to be resubmitted. When a task is resubmitted, the queued jobs of later stages (whose dependency can no
longer be satisfied) are cancelled by the launcher and submitted again behind the new job. ``executor.window``
bounds how many cycles are queued at once while following (``--detach`` queues everything).

Bookkeeping goes to ``RUN/state.json``: every submission (time, reason, stage, job id → task, dependency) and the
jobs this launcher cancelled.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from ..config import Config
from ..store import RunDir, atomic_write_json, read_json
from . import slurm_state
from .base import Echo, StageFailed, read_error
from .decide import QUERY_FAILED, Decision, Policy, TaskView, Verdict, decide, is_held
from .plan import Stage, pending_stages
from .sbatch import Submission, log_path, render, scancel, submit

_MAX_QUERY_FAILURES = 30


@dataclass
class _Book:
    """What this launcher remembers beyond state.json: retries, progress at submission, hold start times."""
    retries: dict[tuple[str, int], int] = field(default_factory=dict)
    progress_at_submit: dict[tuple[str, int], int] = field(default_factory=dict)
    held_since: dict[str, float] = field(default_factory=dict)


class SlurmExecutor:
    """Submits and follows the plan on Slurm; job ids are recorded in ``RUN/state.json``."""

    kind = "slurm"

    def __init__(self, cfg: Config, run: RunDir, echo: Echo = print, python: str | None = None,
                 resuming: bool = False):
        self.cfg, self.run_dir, self.echo, self.resuming = cfg, run, echo, resuming
        self.python = python or ("python" if cfg.container.image else sys.executable)
        self.policy = Policy(cfg.executor.max_retries, cfg.executor.hold_timeout_min * 60)
        self.book = _Book()
        self._stage_seen: dict[str, float] = {}
        self._last_progress: dict[str, int] = {}
        self.decisions: list[tuple[str, int, Decision]] = []  # the latest round's, for reports and tests

    # -------------------------------------------------------------------------------------------- bookkeeping
    def load_state(self) -> dict[str, Any]:
        p = self.run_dir.state
        state = read_json(p) if p.is_file() else {}
        state.setdefault("submissions", [])
        state.setdefault("cancelled", [])
        return state

    def _save(self, state: dict[str, Any]) -> None:
        atomic_write_json(self.run_dir.state, state)

    def latest(self) -> dict[tuple[str, int], tuple[str, list[str]]]:
        """(stage key, task index) → (latest job id, that submission's dependency)."""
        out: dict[tuple[str, int], tuple[str, list[str]]] = {}
        for sub in self.load_state()["submissions"]:
            for job, index in sub.get("tasks", {}).items():
                out[(sub["stage"], int(index))] = (job, list(sub.get("dependency", [])))
        return out

    # -------------------------------------------------------------------------------------------- one round
    def _infos(self, jobs: list[str]) -> dict[str, slurm_state.JobInfo] | None:
        try:
            return slurm_state.job_infos(sorted(set(jobs))) if jobs else {}
        except slurm_state.SlurmQueryError as exc:
            self.echo(f"[slurm] job state query failed: {exc}")
            return None

    def _view(self, stage: Stage, i: int, latest: dict[tuple[str, int], tuple[str, list[str]]],
              infos: dict[str, slurm_state.JobInfo] | None, cancelled: set[str], adopting: bool) -> TaskView:
        task = stage.tasks[i]
        if task.is_done():
            return TaskView(done=True)
        key = (stage.key, i)
        if key not in latest:
            return TaskView(done=False)
        job, deps = latest[key]
        if infos is None:
            return TaskView(done=False, job=job, state=QUERY_FAILED)
        info = infos.get(job, slurm_state.JobInfo("UNKNOWN"))
        now = time.monotonic()
        if is_held(TaskView(done=False, job=job, state=info.state, reason=info.reason)):
            self.book.held_since.setdefault(job, now)
        # kill_invalid_depend cancels a job whose dependency failed: that cancel is not a person's.
        failed = slurm_state.TERMINAL_STATES - {"COMPLETED"}
        dep_failed = any(infos.get(d, slurm_state.JobInfo("UNKNOWN")).state in failed for d in deps)
        progress = task.progress()
        return TaskView(done=False, job=job, state=info.state, reason=info.reason, exit_code=info.exit_code,
                        cancelled_by_us=job in cancelled or (info.state == "CANCELLED" and dep_failed),
                        never_ran=info.elapsed_s == 0,
                        held_for_s=now - self.book.held_since.get(job, now),
                        retries=self.book.retries.get(key, 0),
                        progressed=progress > self.book.progress_at_submit.get(key, progress),
                        # --resume overrides cancels that happened before this launcher started, not later ones
                        adopting=adopting, resuming=self.resuming and adopting)

    def round(self, plan: list[Stage], *, adopting: bool = False, window: bool = True) -> bool:
        """Look at every unfinished task once, act, and return whether the run is complete.

        Raises :class:`StageFailed` when a task is given up on (after cancelling this run's queued jobs).
        """
        pending = pending_stages(plan)
        if not pending:
            return True
        state = self.load_state()
        latest = self.latest()
        cancelled = set(state["cancelled"])
        jobs = [latest[(s.key, i)][0] for s in pending for i in range(len(s.tasks)) if (s.key, i) in latest]
        deps = [d for s in pending for i in range(len(s.tasks)) for d in latest.get((s.key, i), ("", []))[1]]
        infos = self._infos(jobs + deps)
        if infos is None:
            self._query_failures = getattr(self, "_query_failures", 0) + 1
            if self._query_failures > _MAX_QUERY_FAILURES:
                raise slurm_state.SlurmQueryError(f"Slurm did not answer {self._query_failures} times in a row; "
                                                  f"the jobs keep running — follow them later with --resume")
        else:
            self._query_failures = 0
        self.decisions = []
        self._report_progress(pending)
        todo: dict[str, list[int]] = {}
        for s in pending:
            for i in range(len(s.tasks)):
                d = decide(self._view(s, i, latest, infos, cancelled, adopting), self.policy)
                self.decisions.append((s.key, i, d))
                if d.verdict is Verdict.GIVE_UP:
                    self._give_up(pending, latest, infos, s, i, d)
                if d.verdict is Verdict.SUBMIT:
                    todo.setdefault(s.key, []).append(i)
                    key = (s.key, i)
                    if d.spends_retry:
                        self.book.retries[key] = self.book.retries.get(key, 0) + 1
                    elif "reset" in d.reason:
                        self.book.retries[key] = 0
                if d.verdict is Verdict.ADOPT:
                    self.echo(f"[slurm] {s.key} {s.tasks[i].label}: adopting {d.reason}")
                if d.verdict is Verdict.SUBMIT and (s.key, i) in latest:
                    self.echo(f"[slurm] {s.key} {s.tasks[i].label}: {d.reason}")
        if not todo:
            return False
        # A resubmitted task invalidates the dependency of every queued later job: cancel and chain them again.
        first = min(k for k, s in enumerate(pending) if s.key in todo)
        stale = [latest[(s.key, i)][0] for s in pending[first + 1:] for i in range(len(s.tasks))
                 if (s.key, i) in latest and infos is not None
                 and infos.get(latest[(s.key, i)][0], slurm_state.JobInfo("UNKNOWN")).state in ("PENDING", "HELD")]
        if stale:
            scancel(stale)
            state["cancelled"] = sorted(cancelled | set(stale))
            self._save(state)
            for s in pending[first + 1:]:
                todo[s.key] = sorted(set(todo.get(s.key, [])) | {i for i in range(len(s.tasks))
                                                                if latest.get((s.key, i), ("",))[0] in stale})
        self._submit(pending, todo, latest, window)
        return False

    def _report_progress(self, pending: list[Stage]) -> None:
        """One line whenever the number of finished tasks of the current stage changes: done/total, elapsed and a
        rough ETA for the stage (from the pace of its finished tasks)."""
        s = pending[0]
        done = sum(1 for t in s.tasks if t.is_done())
        now = time.monotonic()
        first_seen = self._stage_seen.setdefault(s.key, now)
        if self._last_progress.get(s.key) == done:
            return
        self._last_progress[s.key] = done
        elapsed = now - first_seen
        eta = f", ETA {elapsed / done * (len(s.tasks) - done):.0f} s" if 0 < done < len(s.tasks) else ""
        self.echo(f"[slurm] {s.key}: {done}/{len(s.tasks)} task(s) done ({elapsed:.0f} s{eta})")

    def _give_up(self, pending: list[Stage], latest: dict[tuple[str, int], tuple[str, list[str]]],
                 infos: dict[str, slurm_state.JobInfo] | None, stage: Stage, i: int, d: Decision) -> None:
        queued = [job for (key, _), (job, _) in latest.items() if d.cancel_queued and key in {s.key for s in pending}
                  and infos is not None and infos.get(job, slurm_state.JobInfo("UNKNOWN")).state == "PENDING"]
        if queued:
            scancel(queued)
            state = self.load_state()
            state["cancelled"] = sorted(set(state["cancelled"]) | set(queued))
            self._save(state)
        job = latest.get((stage.key, i), (None,))[0]
        raise StageFailed(stage, i, d.reason, log_path(self.run_dir, stage, job) if job else None, job,
                          error=read_error(self.run_dir, stage, i))

    def _submit(self, pending: list[Stage], todo: dict[str, list[int]],
                latest: dict[tuple[str, int], tuple[str, list[str]]], window: bool) -> None:
        """Submit the ``todo`` tasks stage by stage, each stage after the latest jobs of the one before it."""
        first_cycle = next((s.cycle for s in pending if s.cycle is not None), None)
        w = self.cfg.executor.window
        current = dict(latest)
        state = self.load_state()
        for k, s in enumerate(pending):
            if window and w and first_cycle is not None and not self._in_window(s, first_cycle + w - 1):
                break
            tasks = todo.get(s.key)
            if not tasks:
                continue
            before = pending[k - 1] if k > 0 else None
            dependency = sorted({current[(before.key, j)][0] for j in range(len(before.tasks))
                                 if (before.key, j) in current and not before.tasks[j].is_done()}) if before else []
            sub = Submission(s, tuple(sorted(tasks)), tuple(dependency))
            ids = submit(self.cfg, self.run_dir, sub, self.python)
            for job, t in zip(ids, sub.tasks):
                current[(s.key, t)] = (job, dependency)
                self.book.progress_at_submit[(s.key, t)] = s.tasks[t].progress()
            state["submissions"].append({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "stage": s.key,
                                         "tasks": dict(zip(ids, sub.tasks)), "dependency": dependency})
            self._save(state)
            after = f" after {', '.join(dependency[:3])}{' …' if len(dependency) > 3 else ''}" if dependency else ""
            self.echo(f"[slurm] {s.key}: submitted {ids[0].split('_')[0]}"
                      f"{f' (array of {len(ids)})' if s.is_array else ''}{after}")

    def _in_window(self, s: Stage, last_cycle: int) -> bool:
        if s.cycle is not None:
            return s.cycle <= last_cycle
        return s.kind in ("pretrain", "init") or last_cycle >= self.cfg.run.cycles

    # -------------------------------------------------------------------------------------------- the executor
    def run(self, plan: list[Stage], *, detach: bool = False) -> None:
        """Submit what is not done (adopting still-active jobs of an earlier launcher) and, unless ``detach``,
        follow until the run is complete."""
        if self.round(plan, adopting=True, window=not detach):
            self.echo("[slurm] nothing to do: every stage's outputs exist and verify")
            return
        if detach:
            self.echo(f"[slurm] detached; follow with: python -m easlurm.status {self.run_dir.root}")
            return
        self.follow(plan)

    def follow(self, plan: list[Stage]) -> None:
        """Poll until every stage is done, acting on every round; raise :class:`StageFailed` on a give-up."""
        while not self.round(plan):
            time.sleep(self.cfg.executor.poll_s)
        self.echo("[slurm] run complete")

    def describe(self, plan: list[Stage]) -> str:
        """The dry-run text: the plan, then the exact sbatch script of every stage (nothing is submitted).
        Dependencies on jobs that do not exist yet are shown as ``afterok:<stage key>``."""
        out = [f"# easlurm plan for {self.run_dir.root} ({len(plan)} stage(s) to run)"]
        for s in plan:
            out.append(f"#   {s.key:<10} {len(s.tasks)} task(s): " + "; ".join(t.describe() for t in s.tasks[:2])
                       + (" …" if len(s.tasks) > 2 else ""))
        prev: str | None = None
        for s in plan:
            sub = Submission(s, tuple(range(len(s.tasks))), (f"<{prev}>",) if prev else ())
            script = render(self.cfg, self.run_dir, sub, self.python).rstrip()
            out += ["", f"# ---- sbatch script: {s.key} ----", script]
            prev = s.key
        return "\n".join(out) + "\n"


__all__ = ["SlurmExecutor"]
