"""The Slurm executor: submit the plan as afterok-chained sbatch jobs, follow it, resubmit what failed.

Stage completion comes from the run directory (each stage kind's ``is_done``, asked once per round), job states
from the :class:`~easlurm.orchestrate.client.SlurmClient` (the real one: sacct when it works, else squeue/scontrol —
clusters without accounting and with a short ``MinJobAge`` included), and every choice — wait, adopt, resubmit,
give up — from the pure :func:`easlurm.orchestrate.decide.decide`. Scripts are rendered by
:mod:`easlurm.orchestrate.sbatch` with the warning leads the launcher computed (:mod:`easlurm.leads`).

Chaining: a stage's submission depends (``afterok``) on the latest jobs of the unfinished tasks of the stage before
it, task by task (``afterok:123_0:123_2:456``), so a member resubmitted alone does not have to wait for the rest of
its array to be resubmitted. When a task is resubmitted, the queued jobs of later stages (whose dependency can no
longer be satisfied) are cancelled by the launcher and submitted again behind the new job. ``executor.window``
bounds how many cycles are queued at once while following (``--detach`` queues everything).

Bookkeeping goes to ``RUN/state.json`` (:class:`~easlurm.orchestrate.state.SubmissionBook`): every submission
(time, stage, job id → task, dependency) and the jobs this launcher cancelled; what the launcher remembers beyond
it — retries, progress at submission, hold start times, query failures, the progress report — is in
:class:`Memory`.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from ..config import Config
from ..store import RunDir
from .base import Echo, StageFailed, permanent_error, read_error
from .client import CommandClient, SlurmClient
from .decide import QUERY_FAILED, Decision, Policy, TaskView, Verdict, decide, is_held
from .plan import Done, Stage, pending_stages, snapshot, to_run
from .sbatch import Submission, leads_for, log_path, render, submit
from .slurm_state import TERMINAL_STATES, JobInfo, SlurmQueryError
from .state import SubmissionBook, TaskKey

#: Rounds in a row without an answer from Slurm after which the launcher stops following (the jobs keep running).
MAX_QUERY_FAILURES = 30
_UNKNOWN = JobInfo("UNKNOWN")


@dataclass
class Memory:
    """What this launcher remembers beyond state.json: retries, progress at submission, hold start times, failed
    queries in a row, and the progress report's last count per stage."""
    retries: dict[TaskKey, int] = field(default_factory=dict)
    progress_at_submit: dict[TaskKey, int] = field(default_factory=dict)
    held_since: dict[str, float] = field(default_factory=dict)
    query_failures: int = 0
    stage_seen: dict[str, float] = field(default_factory=dict)
    reported: dict[str, int] = field(default_factory=dict)


class SlurmExecutor:
    """Submits and follows the plan on Slurm; job ids are recorded in ``RUN/state.json``.

    ``leads``: stage kind → seconds of warning before the time limit (:func:`easlurm.leads.signal_leads`);
    ``client``: how Slurm is reached (default: its commands on this host); ``clock``/``sleep``: time, for tests."""

    kind = "slurm"

    def __init__(self, cfg: Config, run: RunDir, echo: Echo = print, python: str | None = None,
                 resuming: bool = False, leads: Mapping[str, int] | None = None, client: SlurmClient | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.cfg, self.run_dir, self.echo, self.resuming = cfg, run, echo, resuming
        self.python = python or ("python" if cfg.container.image else sys.executable)
        self.policy = Policy(cfg.executor.max_retries, cfg.executor.hold_timeout_min * 60)
        self.leads = dict(leads or {})
        self.client: SlurmClient = client or CommandClient()
        self.clock, self.sleep = clock, sleep
        self.book = SubmissionBook(run)
        self.memory = Memory()
        self.decisions: list[tuple[str, int, Decision]] = []  # the latest round's, for reports and tests

    # -------------------------------------------------------------------------------------------- one round
    def _infos(self, jobs: list[str]) -> dict[str, JobInfo] | None:
        try:
            infos = self.client.job_infos(sorted(set(jobs))) if jobs else {}
        except SlurmQueryError as exc:
            self.echo(f"[slurm] job state query failed: {exc}")
            self.memory.query_failures += 1
            if self.memory.query_failures > MAX_QUERY_FAILURES:
                raise SlurmQueryError(f"Slurm did not answer {self.memory.query_failures} times in a row; the jobs "
                                      f"keep running — follow them later with --resume") from exc
            return None
        self.memory.query_failures = 0
        return infos

    def _view(self, stage: Stage, i: int, done: Done, latest: Mapping[TaskKey, tuple[str, list[str]]],
              infos: Mapping[str, JobInfo] | None, cancelled: set[str], adopting: bool) -> TaskView:
        key = (stage.key, i)
        if done[key]:
            return TaskView(done=True)
        if key not in latest:
            return TaskView(done=False)
        job, deps = latest[key]
        if infos is None:
            return TaskView(done=False, job=job, state=QUERY_FAILED)
        info = infos.get(job, _UNKNOWN)
        now = self.clock()
        if is_held(TaskView(done=False, job=job, state=info.state, reason=info.reason)):
            self.memory.held_since.setdefault(job, now)
        # kill_invalid_depend cancels a job whose dependency failed: that cancel is not a person's.
        dep_failed = any(infos.get(d, _UNKNOWN).state in TERMINAL_STATES - {"COMPLETED"} for d in deps)
        progress = stage.tasks[i].progress()
        return TaskView(done=False, job=job, state=info.state, reason=info.reason, exit_code=info.exit_code,
                        cancelled_by_us=job in cancelled or (info.state == "CANCELLED" and dep_failed),
                        never_ran=info.elapsed_s == 0,
                        held_for_s=now - self.memory.held_since.get(job, now),
                        retries=self.memory.retries.get(key, 0),
                        progressed=progress > self.memory.progress_at_submit.get(key, progress),
                        permanent_error=permanent_error(self.run_dir, stage, i, job=job)
                        if info.state in TERMINAL_STATES or info.state == "UNKNOWN" else None,
                        # --resume overrides cancels that happened before this launcher started, not later ones
                        adopting=adopting, resuming=self.resuming and adopting)

    def round(self, plan: list[Stage], *, adopting: bool = False, window: bool = True) -> bool:
        """Look at every unfinished task once, act, and return whether the run is complete.

        Raises :class:`StageFailed` when a task is given up on (after cancelling this run's queued jobs).
        """
        done = snapshot(plan)
        pending = pending_stages(plan, done)
        if not pending:
            return True
        latest = self.book.latest()
        cancelled = self.book.cancelled()
        keys = [(s.key, i) for s in pending for i in range(len(s.tasks)) if (s.key, i) in latest]
        infos = self._infos([latest[k][0] for k in keys] + [d for k in keys for d in latest[k][1]])
        self.decisions = []
        self._report_progress(pending[0], done)
        todo: dict[str, list[int]] = {}
        for s in pending:
            for i in range(len(s.tasks)):
                key = (s.key, i)
                d = decide(self._view(s, i, done, latest, infos, cancelled, adopting), self.policy)
                self.decisions.append((s.key, i, d))
                if d.verdict is Verdict.GIVE_UP:
                    self._give_up(pending, latest, infos, s, i, d)
                if d.verdict is Verdict.ADOPT:
                    self.echo(f"[slurm] {s.key} {s.tasks[i].label}: adopting {d.reason}")
                if d.verdict is not Verdict.SUBMIT:
                    continue
                todo.setdefault(s.key, []).append(i)
                if d.spends_retry:
                    self.memory.retries[key] = self.memory.retries.get(key, 0) + 1
                elif d.resets_retries:
                    self.memory.retries[key] = 0
                if key in latest:
                    self.echo(f"[slurm] {s.key} {s.tasks[i].label}: {d.reason}")
        if not todo:
            return False
        # A resubmitted task invalidates the dependency of every queued later job: cancel and chain them again.
        first = min(k for k, s in enumerate(pending) if s.key in todo)
        queued = {"PENDING", "HELD"}
        stale = [latest[(s.key, i)][0] for s in pending[first + 1:] for i in range(len(s.tasks))
                 if (s.key, i) in latest and infos is not None
                 and infos.get(latest[(s.key, i)][0], _UNKNOWN).state in queued]
        if stale:
            self.client.cancel(stale)
            self.book.add_cancelled(stale)
            for s in pending[first + 1:]:
                todo[s.key] = sorted(set(todo.get(s.key, [])) | {i for i in range(len(s.tasks))
                                                                if latest.get((s.key, i), ("",))[0] in stale})
        self._submit(pending, todo, latest, done, window)
        return False

    def _report_progress(self, s: Stage, done: Done) -> None:
        """One line whenever the number of finished tasks of the current stage changes: done/total, elapsed and a
        rough ETA for the stage (from the pace of its finished tasks)."""
        n = sum(1 for i in range(len(s.tasks)) if done[(s.key, i)])
        now = self.clock()
        first_seen = self.memory.stage_seen.setdefault(s.key, now)
        if self.memory.reported.get(s.key) == n:
            return
        self.memory.reported[s.key] = n
        elapsed = now - first_seen
        eta = f", ETA {elapsed / n * (len(s.tasks) - n):.0f} s" if 0 < n < len(s.tasks) else ""
        self.echo(f"[slurm] {s.key}: {n}/{len(s.tasks)} task(s) done ({elapsed:.0f} s{eta})")

    def _give_up(self, pending: list[Stage], latest: Mapping[TaskKey, tuple[str, list[str]]],
                 infos: Mapping[str, JobInfo] | None, stage: Stage, i: int, d: Decision) -> None:
        keys = {s.key for s in pending}
        queued = [job for (key, _), (job, _) in latest.items() if d.cancel_queued and key in keys
                  and infos is not None and infos.get(job, _UNKNOWN).state == "PENDING"]
        if queued:
            self.client.cancel(queued)
            self.book.add_cancelled(queued)
        job = latest.get((stage.key, i), (None,))[0]
        raise StageFailed(stage, i, d.reason, log_path(self.run_dir, stage, job) if job else None, job,
                          error=read_error(self.run_dir, stage, i))

    def _submit(self, pending: list[Stage], todo: dict[str, list[int]],
                latest: Mapping[TaskKey, tuple[str, list[str]]], done: Done, window: bool) -> None:
        """Submit the ``todo`` tasks stage by stage, each stage after the latest jobs of the one before it."""
        cycles = [s.cycle for s in pending if s.cycle is not None]
        w = self.cfg.executor.window
        current = dict(latest)
        for k, s in enumerate(pending):
            if window and w and cycles and not self._in_window(s, cycles[0] + w - 1, cycles[-1]):
                break
            tasks = todo.get(s.key)
            if not tasks:
                continue
            before = pending[k - 1] if k > 0 else None
            dependency = sorted({current[(before.key, j)][0] for j in range(len(before.tasks))
                                 if (before.key, j) in current and not done[(before.key, j)]}) if before else []
            sub = Submission(s, tuple(sorted(tasks)), tuple(dependency))
            ids = submit(self.cfg, self.run_dir, sub, self.client, self.python, leads_for(self.leads, s.kind.name))
            for job, t in zip(ids, sub.tasks):
                current[(s.key, t)] = (job, dependency)
                self.memory.progress_at_submit[(s.key, t)] = s.tasks[t].progress()
            self.book.add_submission(s.key, dict(zip(ids, sub.tasks)), dependency)
            after = f" after {', '.join(dependency[:3])}{' …' if len(dependency) > 3 else ''}" if dependency else ""
            self.echo(f"[slurm] {s.key}: submitted {ids[0].split('_')[0]}"
                      f"{f' (array of {len(ids)})' if s.is_array else ''}{after}")

    @staticmethod
    def _in_window(s: Stage, last_cycle: int, final_cycle: int) -> bool:
        """Whether ``s`` may be queued when the window reaches ``last_cycle`` (``final_cycle``: the plan's last)."""
        if s.cycle is not None:
            return s.cycle <= last_cycle
        return s.before_cycles or last_cycle >= final_cycle

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
            self.sleep(self.cfg.executor.poll_s)
        self.echo("[slurm] run complete")

    def describe(self, plan: list[Stage]) -> str:
        """The dry-run text: the plan, then the exact sbatch script of every stage (nothing is submitted).
        Dependencies on jobs that do not exist yet are shown as ``afterok:<stage key>``."""
        out = [f"# easlurm plan for {self.run_dir.root} ({len(plan)} stage(s) to run)"]
        runs = {s.key: to_run(s) for s in plan}
        for s in plan:
            tasks = [s.tasks[i] for i in runs[s.key]]
            out.append(f"#   {s.key:<10} {len(tasks)} task(s): " + "; ".join(t.describe() for t in tasks[:2])
                       + (" …" if len(tasks) > 2 else ""))
        prev: str | None = None
        for s in plan:
            sub = Submission(s, tuple(runs[s.key]), (f"<{prev}>",) if prev else ())
            script = render(self.cfg, self.run_dir, sub, self.python, leads_for(self.leads, s.kind.name)).rstrip()
            out += ["", f"# ---- sbatch script: {s.key} ----", script]
            prev = s.key
        return "\n".join(out) + "\n"


__all__ = ["MAX_QUERY_FAILURES", "Memory", "SlurmExecutor"]
