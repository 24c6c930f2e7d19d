"""Run a plan on this machine: the local executor (subprocesses, a concurrency cap, round-robin GPUs) and the debug
executor (stage functions called in-process, one after another — for tests and stepping through with a debugger).

Unlike submitit's LocalExecutor, which starts every job at once on the same GPUs, the local executor starts at most
``executor.local.max_parallel`` tasks and gives task k the GPU ``local.gpus[k % len(gpus)]`` via
``CUDA_VISIBLE_DEVICES``. A failed task is retried up to ``executor.max_retries`` times (it resumes from its own
checkpoint); then the run stops with :class:`StageFailed` naming the task and its log.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

from ..config import Config
from ..errors import EaslurmError
from ..store import RunDir
from . import container
from .plan import Stage, pending_stages, task_done

DoneFn = Callable[[Stage, int, RunDir], bool]


class StageFailed(EaslurmError):
    """A task failed after all retries; the message names the stage, the task, the job id and the log path."""

    def __init__(self, stage: Stage, index: int, detail: str, log: Path | None = None, job_id: str | None = None):
        self.stage, self.index, self.log, self.job_id = stage, index, log, job_id
        where = f" (job {job_id})" if job_id else ""
        logs = f"; log: {log}" if log else ""
        super().__init__(f"stage {stage.key}, {stage.tasks[index].label}{where} failed: {detail}{logs}")


def log_path(run: RunDir, stage: Stage, index: int) -> Path:
    """``RUN/logs/<stage>/<task>.log`` (one file per task, appended to on every attempt)."""
    return run.root / "logs" / stage.key.replace("/", "-") / f"task-{index:02d}.log"


@dataclass
class _Running:
    index: int
    proc: subprocess.Popen[bytes]
    log: TextIO
    attempt: int


class LocalExecutor:
    """Runs pending stages in order; the tasks of one stage side by side up to the concurrency cap."""

    def __init__(self, cfg: Config, run: RunDir, echo: Callable[[str], None] = print, done: DoneFn = task_done,
                 python: str | None = None):
        self.cfg, self.run_dir, self.echo, self.done = cfg, run, echo, done
        self.cap = cfg.executor.local.max_parallel
        self.gpus = list(cfg.executor.local.gpus)
        # Inside a container the image's python runs; outside, the interpreter running the launcher.
        self.python = python or ("python" if cfg.container.image else sys.executable)
        self.started = 0          # tasks started so far: the round-robin GPU counter
        self.launched: list[tuple[str, int, str | None]] = []  # (stage key, task index, CUDA_VISIBLE_DEVICES)

    def run(self, plan: list[Stage]) -> None:
        for stage in pending_stages(plan, self.run_dir) if self.done is task_done else plan:
            self.run_stage(stage)

    def _env(self) -> tuple[dict[str, str], str | None]:
        env = dict(os.environ)
        gpu = None
        if self.gpus:
            gpu = str(self.gpus[self.started % len(self.gpus)])
            env["CUDA_VISIBLE_DEVICES"] = gpu
        # Share the cores instead of every task assuming it owns all of them.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.cap)))
        env["PYTHONUNBUFFERED"] = "1"
        return env, gpu

    def _start(self, stage: Stage, index: int, attempt: int) -> _Running:
        path = log_path(self.run_dir, stage, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        log = open(path, "a", encoding="utf-8")
        argv = container.wrap(self.cfg, self.run_dir.root, stage.tasks[index].argv(self.python))
        env, gpu = self._env()
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} attempt {attempt + 1}: {' '.join(argv)}"
                  f"{f' (CUDA_VISIBLE_DEVICES={gpu})' if gpu is not None else ''}\n")
        log.flush()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
        self.launched.append((stage.key, index, gpu))
        self.started += 1
        return _Running(index, proc, log, attempt)

    def run_stage(self, stage: Stage) -> None:
        todo = [i for i in range(len(stage.tasks)) if not self.done(stage, i, self.run_dir)]
        if not todo:
            return
        self.echo(f"[local] {stage.key}: {len(todo)} task(s), up to {self.cap} at once")
        queue = [(i, 0) for i in todo]
        running: list[_Running] = []
        failure: StageFailed | None = None
        t0 = time.monotonic()
        try:
            while queue or running:
                while queue and len(running) < self.cap and failure is None:
                    i, attempt = queue.pop(0)
                    running.append(self._start(stage, i, attempt))
                time.sleep(0.1)
                for r in list(running):
                    rc = r.proc.poll()
                    if rc is None:
                        continue
                    running.remove(r)
                    r.log.close()
                    if rc == 0 and self.done(stage, r.index, self.run_dir):
                        continue
                    detail = f"exit code {rc}" if rc != 0 else "exited 0 but its outputs are missing"
                    if r.attempt < self.cfg.executor.max_retries and failure is None:
                        self.echo(f"[local] {stage.key} {stage.tasks[r.index].label}: {detail}; retrying "
                                  f"({r.attempt + 1}/{self.cfg.executor.max_retries})")
                        queue.append((r.index, r.attempt + 1))
                    elif failure is None:
                        failure = StageFailed(stage, r.index, f"{detail} after {r.attempt + 1} attempt(s)",
                                              log_path(self.run_dir, stage, r.index))
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


def stage_main(module: str) -> Callable[[list[str]], int | None]:
    """The ``main(argv)`` of a stage CLI module (``pkg/__main__.py`` or a plain module)."""
    mod = importlib.import_module(module)
    main = getattr(mod, "main", None)
    if main is None:
        main = importlib.import_module(f"{module}.__main__").main
    return main


class DebugExecutor:
    """Calls each task's ``main(args)`` in this process, in order (no concurrency, no retries)."""

    def __init__(self, cfg: Config, run: RunDir, echo: Callable[[str], None] = print):
        self.cfg, self.run_dir, self.echo = cfg, run, echo
        self.calls: list[tuple[str, int]] = []

    def run(self, plan: list[Stage]) -> None:
        for stage in pending_stages(plan, self.run_dir):
            for i, task in enumerate(stage.tasks):
                if task_done(stage, i, self.run_dir):
                    continue
                self.echo(f"[debug] {stage.key} {task.label}")
                main = stage_main(task.module)
                self.calls.append((stage.key, i))
                rc = main(list(task.args))
                if rc not in (0, None) or not task_done(stage, i, self.run_dir):
                    raise StageFailed(stage, i, f"main() returned {rc}")
