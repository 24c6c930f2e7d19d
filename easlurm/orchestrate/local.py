"""Run a plan on this machine: the local executor (subprocesses, a concurrency cap, round-robin GPUs) and the debug
executor (stage functions called in-process, one after another — for tests and stepping through with a debugger).

Unlike submitit's LocalExecutor, which starts every job at once on the same GPUs, the local executor starts at most
``executor.local.max_parallel`` tasks and gives task k the GPU ``local.gpus[k % len(gpus)]`` via
``CUDA_VISIBLE_DEVICES``. Each task is ``python -m easlurm.orchestrate.runner RUN STAGE INDEX`` (inside the
container when one is configured), logging to ``RUN/logs/<stage>/task-II.log``. A failed task is retried up to
``executor.max_retries`` times (it resumes from its own checkpoint; the count is per task); then the run stops with
:class:`~easlurm.orchestrate.base.StageFailed` carrying the stage's own error message and the log path.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TextIO

from ..config import Config
from ..errors import ConfigError
from ..store import RunDir, make_dirs
from . import container
from .base import Echo, StageFailed, permanent_error, read_error, run_task
from .plan import Stage, pending_stages, task_log, to_run


@dataclass
class _Running:
    index: int
    proc: subprocess.Popen[bytes]
    log: TextIO
    attempt: int
    started: float


class LocalExecutor:
    """Runs pending stages in order; the tasks of one stage side by side up to the concurrency cap."""

    kind = "local"

    def __init__(self, cfg: Config, run: RunDir, echo: Echo = print, python: str | None = None):
        self.cfg, self.run_dir, self.echo = cfg, run, echo
        self.cap = cfg.executor.local.max_parallel
        self.gpus = list(cfg.executor.local.gpus)
        # Inside a container the image's python runs; outside, the interpreter running the launcher.
        self.python = python or ("python" if cfg.container.image else sys.executable)
        self.started = 0          # tasks started so far: the round-robin GPU counter
        self.launched: list[tuple[str, int, str | None]] = []  # (stage key, task index, CUDA_VISIBLE_DEVICES)

    def command(self, stage: Stage, index: int) -> list[str]:
        """The process that runs task ``index`` of ``stage``."""
        argv = [self.python, "-m", "easlurm.orchestrate.runner", str(self.run_dir.root), stage.key, str(index)]
        return container.wrap(self.cfg, self.run_dir.root, argv)

    def run(self, plan: list[Stage], *, detach: bool = False) -> None:
        if detach:
            raise ConfigError("--detach: the local executor runs in the foreground (use executor.kind: slurm)")
        for stage in pending_stages(plan):
            self.run_stage(stage)

    def describe(self, plan: list[Stage]) -> str:
        out = [f"# easlurm plan for {self.run_dir.root} ({len(plan)} stage(s) to run, local executor, up to "
               f"{self.cap} task(s) at once)"]
        for s in plan:
            for i in to_run(s):
                out.append(f"{s.key:<10} {s.tasks[i].label:<18} {' '.join(shlex.quote(w) for w in self.command(s, i))}")
        return "\n".join(out) + "\n"

    def _env(self, width: int) -> tuple[dict[str, str], str | None]:
        """The task's environment; ``width``: how many of this stage's tasks run side by side."""
        env = dict(os.environ)
        gpu = None
        if self.gpus:
            gpu = str(self.gpus[self.started % len(self.gpus)])
            env["CUDA_VISIBLE_DEVICES"] = gpu
        # Share the cores between the tasks that run side by side instead of every task assuming it owns all of
        # them; a stage of one task (pretrain, EA, fusion, evaluation) gets them all.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // width)))
        env["PYTHONUNBUFFERED"] = "1"
        return env, gpu

    def _start(self, stage: Stage, index: int, attempt: int, width: int) -> _Running:
        path = task_log(self.run_dir, stage, index)
        make_dirs(path.parent)
        log = open(path, "a", encoding="utf-8")
        argv = self.command(stage, index)
        env, gpu = self._env(width)
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} attempt {attempt + 1}: {' '.join(argv)}"
                  f"{f' (CUDA_VISIBLE_DEVICES={gpu})' if gpu is not None else ''}\n")
        log.flush()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
        self.launched.append((stage.key, index, gpu))
        self.started += 1
        return _Running(index, proc, log, attempt, time.time())

    def run_stage(self, stage: Stage) -> None:
        todo = [i for i, t in enumerate(stage.tasks) if not t.is_done()]
        if not todo:
            return
        self.echo(f"[local] {stage.key}: {len(todo)} task(s), up to {self.cap} at once")
        queue = [(i, 0) for i in todo]
        running: list[_Running] = []
        failure: StageFailed | None = None
        t0 = time.monotonic()
        finished = 0
        try:
            while queue or running:
                while queue and len(running) < self.cap and failure is None:
                    i, attempt = queue.pop(0)
                    running.append(self._start(stage, i, attempt, min(self.cap, len(todo))))
                time.sleep(0.1)
                for r in list(running):
                    rc = r.proc.poll()
                    if rc is None:
                        continue
                    running.remove(r)
                    r.log.close()
                    # Files are the truth: a task stopped by a signal right after its final commit (exit 140/143)
                    # is finished, not failed.
                    if stage.tasks[r.index].is_done():
                        finished += 1
                        elapsed = time.monotonic() - t0
                        eta = elapsed / finished * (len(todo) - finished)
                        self.echo(f"[local] {stage.key} {stage.tasks[r.index].label}: done ({finished}/{len(todo)}"
                                  f", {elapsed:.0f} s{f', ETA {eta:.0f} s' if finished < len(todo) else ''})")
                        continue
                    detail = f"exit code {rc}" if rc != 0 else "exited 0 but its outputs are missing"
                    error = read_error(self.run_dir, stage, r.index, since=r.started)
                    hopeless = permanent_error(self.run_dir, stage, r.index, since=r.started)
                    if hopeless and failure is None:
                        failure = StageFailed(stage, r.index, f"{detail}, with an error a retry cannot fix (not "
                                              f"retried)", task_log(self.run_dir, stage, r.index), error=error)
                        queue.clear()
                    elif r.attempt < self.cfg.executor.max_retries and failure is None:
                        self.echo(f"[local] {stage.key} {stage.tasks[r.index].label}: {detail}"
                                  f"{f' ({error.splitlines()[0]})' if error else ''}; retrying "
                                  f"({r.attempt + 1}/{self.cfg.executor.max_retries})")
                        queue.append((r.index, r.attempt + 1))
                    elif failure is None:
                        failure = StageFailed(stage, r.index, f"{detail} after {r.attempt + 1} attempt(s)",
                                              task_log(self.run_dir, stage, r.index), error=error)
                        queue.clear()
                if failure is not None and not running:
                    break
        finally:
            for r in running:  # only on an exception above (e.g. KeyboardInterrupt): leave nothing behind
                r.proc.terminate()
                r.proc.wait()
                r.log.close()
        if failure is not None:
            raise failure
        self.echo(f"[local] {stage.key}: done in {time.monotonic() - t0:.1f} s")


class DebugExecutor:
    """Calls each unfinished task's stage function in this process, in order (no concurrency, no retries)."""

    kind = "debug"

    def __init__(self, cfg: Config, run: RunDir, echo: Echo = print):
        self.cfg, self.run_dir, self.echo = cfg, run, echo
        self.calls: list[tuple[str, int]] = []

    def run(self, plan: list[Stage], *, detach: bool = False) -> None:
        if detach:
            raise ConfigError("--detach: the debug executor runs in the foreground (use executor.kind: slurm)")
        for stage in pending_stages(plan):
            for i, task in enumerate(stage.tasks):
                if task.is_done():
                    continue
                self.echo(f"[debug] {stage.key} {task.label}")
                self.calls.append((stage.key, i))
                try:
                    run_task(self.run_dir, stage, i)
                except Exception as exc:
                    raise StageFailed(stage, i, "raised", error=f"{type(exc).__name__}: {exc}") from exc
                if not task.is_done():
                    raise StageFailed(stage, i, "returned but its outputs are missing")

    def describe(self, plan: list[Stage]) -> str:
        return "\n".join(f"{s.key:<10} {s.tasks[i].label:<18} {s.tasks[i].describe()}" for s in plan
                         for i in to_run(s)) + "\n"


__all__ = ["LocalExecutor", "DebugExecutor", "StageFailed"]
